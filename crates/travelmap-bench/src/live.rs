//! The live side of the service under a steady stream of events: how long an acknowledged event
//! takes to show in the caseloads and alerts (projection lag), and whether many server-sent
//! event subscribers keep up with the feed (fan-out).
//!
//! Both post at a fixed rate (open loop: the schedule does not wait for the service) from lanes
//! that each own a share of the clients, so a client's events still arrive in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::server::Api;
use crate::workload::{EventRef, Workload};
use crate::{histogram, micros};

/// Lanes posting at once; each owns the clients whose number falls in its share.
const LANES: usize = 64;
/// Every this many events, the lag until it is visible in the alerts is measured.
const LAG_SAMPLE_EVERY: usize = 10;

/// What a paced run achieved.
pub struct Paced {
    pub offered_per_second: f64,
    pub events: usize,
    pub elapsed: Duration,
}

impl Paced {
    pub fn achieved_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Projection lag: acknowledged → visible in caseloads and alerts.
pub struct Lag {
    pub paced: Paced,
    /// Microseconds from the receipt to the answer of a read that waits for the event's
    /// position (`min_position`), including that read's round trip.
    pub lag: Histogram<u64>,
}

/// Fan-out: many subscribers following the feed while events are posted.
pub struct FanOut {
    pub paced: Paced,
    pub subscribers: usize,
    /// Microseconds from an event's receipt to its arrival at a subscriber, over every
    /// subscriber and event (0 where the stream was faster than the receipt).
    pub delivery: Histogram<u64>,
    /// How long after the last receipt the slowest subscriber had everything.
    pub drained_after: Duration,
    /// Every subscriber received every event exactly once, in order.
    pub complete: bool,
}

/// Posts `events` at `per_second` over lanes; `on_receipt` is called with each event and its
/// position as soon as it is acknowledged.
async fn post_paced(
    api: &Api,
    workload: &Arc<Workload>,
    events: &[EventRef],
    per_second: f64,
    on_receipt: Arc<dyn Fn(EventRef, u64, Instant) + Send + Sync>,
) -> anyhow::Result<Paced> {
    let mut lanes = Vec::with_capacity(LANES);
    let mut posting = JoinSet::new();
    for _ in 0..LANES {
        let (send, mut receive) = mpsc::unbounded_channel::<EventRef>();
        lanes.push(send);
        let (api, workload, on_receipt) = (api.clone(), workload.clone(), on_receipt.clone());
        posting.spawn(async move {
            while let Some(event) = receive.recv().await {
                let position = api.post_event_at(workload.event(event).to_owned()).await?;
                on_receipt(event, position, Instant::now());
            }
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / per_second);
    for (n, event) in events.iter().enumerate() {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        lanes[event.client as usize % LANES]
            .send(*event)
            .ok()
            .context("a posting lane stopped")?;
    }
    drop(lanes);
    while let Some(lane) = posting.join_next().await {
        lane??;
    }
    Ok(Paced {
        offered_per_second: per_second,
        events: events.len(),
        elapsed: started.elapsed(),
    })
}

/// Posts `events` at `per_second` and measures, for a sample, how long until the caseloads and
/// alerts reflect them.
pub async fn projection_lag(
    api: &Api,
    workload: &Arc<Workload>,
    events: &[EventRef],
    per_second: f64,
) -> anyhow::Result<Lag> {
    let lag = Arc::new(Mutex::new(histogram()?));
    let checks = Arc::new(Mutex::new(JoinSet::<anyhow::Result<()>>::new()));
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let on_receipt = {
        let (api, lag, checks, workload) =
            (api.clone(), lag.clone(), checks.clone(), workload.clone());
        Arc::new(
            move |event: EventRef, position: u64, acknowledged: Instant| {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !n.is_multiple_of(LAG_SAMPLE_EVERY) {
                    return;
                }
                let (api, lag) = (api.clone(), lag.clone());
                let client = workload.clients[event.client as usize].client_id;
                checks.lock().expect("checks").spawn(async move {
                    api.get(&format!(
                        "/v1/alerts?client_id={client}&min_position={position}"
                    ))
                    .await?;
                    lag.lock()
                        .expect("lag")
                        .record(micros(acknowledged.elapsed()))?;
                    Ok(())
                });
            },
        ) as Arc<dyn Fn(EventRef, u64, Instant) + Send + Sync>
    };
    let paced = post_paced(api, workload, events, per_second, on_receipt).await?;
    let mut checks = std::mem::take(&mut *checks.lock().expect("checks"));
    while let Some(check) = checks.join_next().await {
        check??;
    }
    let lag = std::mem::replace(&mut *lag.lock().expect("lag"), histogram()?);
    Ok(Lag { paced, lag })
}

/// Opens `subscribers` event streams at the head, posts `events` at `per_second`, and checks
/// that every subscriber receives every event once, in order, and how late.
pub async fn fan_out(
    api: &Api,
    workload: &Arc<Workload>,
    events: &[EventRef],
    per_second: f64,
    subscribers: usize,
) -> anyhow::Result<FanOut> {
    let (head, _) = api.health().await?;
    let acknowledged: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let expected_last = head + events.len() as u64;
    let mut streams = JoinSet::new();
    for _ in 0..subscribers {
        let response = api
            .stream(&format!("/v1/subscriptions/feed?after={head}"))
            .await?;
        streams.spawn(follow(response, head, expected_last));
    }
    let on_receipt = {
        let acknowledged = acknowledged.clone();
        Arc::new(move |_: EventRef, position: u64, at: Instant| {
            acknowledged.lock().expect("acks").insert(position, at);
        }) as Arc<dyn Fn(EventRef, u64, Instant) + Send + Sync>
    };
    let paced = post_paced(api, workload, events, per_second, on_receipt).await?;
    let last_receipt = Instant::now();
    let mut delivery = histogram()?;
    let mut complete = true;
    let mut drained = last_receipt;
    while let Some(followed) = streams.join_next().await {
        let followed = followed??;
        complete &= followed.in_order_once;
        drained = drained.max(followed.finished);
        for (position, arrived) in followed.arrivals {
            let acknowledged = acknowledged.lock().expect("acks").get(&position).copied();
            let late =
                acknowledged.map_or(Duration::ZERO, |at| arrived.saturating_duration_since(at));
            delivery.record(micros(late))?;
        }
    }
    Ok(FanOut {
        paced,
        subscribers,
        delivery,
        drained_after: drained.saturating_duration_since(last_receipt),
        complete,
    })
}

struct Followed {
    arrivals: Vec<(u64, Instant)>,
    in_order_once: bool,
    finished: Instant,
}

/// Reads one subscriber's stream until it has seen `last`.
async fn follow(
    mut response: reqwest::Response,
    after: u64,
    last: u64,
) -> anyhow::Result<Followed> {
    // Bytes, not text: a chunk can end inside a character.
    let mut buffer: Vec<u8> = Vec::new();
    let mut arrivals = Vec::with_capacity((last - after) as usize);
    let mut expected = after + 1;
    let mut in_order_once = true;
    let deadline = Instant::now() + Duration::from_secs(300);
    while expected <= last {
        ensure!(
            Instant::now() < deadline,
            "a subscriber stalled at {expected}"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(60), response.chunk())
            .await
            .context("no data for 60 s")??
            .context("the stream ended")?;
        let now = Instant::now();
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            let block = String::from_utf8(block)?;
            let Some(id) = block.lines().find_map(|line| line.strip_prefix("id:")) else {
                continue;
            };
            let position: u64 = id.trim().parse()?;
            in_order_once &= position == expected;
            expected = position + 1;
            arrivals.push((position, now));
        }
    }
    Ok(Followed {
        arrivals,
        in_order_once,
        finished: Instant::now(),
    })
}
