//! The dispatcher: a task per active webhook, each following the feed from its webhook's cursor
//! and delivering one event at a time.
//!
//! Per webhook the loop is: read a page of the scoped feed after the cursor; POST each admitted
//! event; on a 2xx move the cursor to the event's position; on anything else pause (see
//! [`Backoff`]) and read again from the cursor. Reading again, rather than holding on to the
//! event, means every attempt is made with need-to-know decided afresh and with the personal
//! fields as they are now: an event whose client withdrew consent, was restricted or erased
//! meanwhile is sent as the feed now shows it, or not at all. A page is delivered from for a
//! few seconds at most ([`PAGE_FRESH_FOR`]), so a slow receiver does not stretch those
//! decisions either. When a page is all delivered (or
//! all left out), the cursor moves past it, and at the head the task waits for the next commit.
//!
//! Only the process holding the store's delivery lease runs the tasks
//! ([`WebhookStore::lead`]); the others wait for it. The task list is brought in line with the
//! registrations whenever this process changes one, and every [`Policy::refresh`] for changes
//! made through other processes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use travelmap_domain::RecordedEvent;
use travelmap_domain::audit::{AuditRecord, Operation, Outcome};
use travelmap_service::Journeys;
use travelmap_service::health::{Reporter, waiting_for_lease};
use travelmap_service::subscriptions::Scope;
use travelmap_store::webhooks::{Attempt, AttemptOutcome, Standing, State, Webhook};
use travelmap_store::{AuditLog, WebhookStore};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::destinations::Destinations;
use crate::signing;

/// How many events of the feed one read takes. Memory per webhook is one page.
const PAGE: usize = 100;
/// The longest error text kept in the delivery log.
const MAX_ERROR_TEXT: usize = 500;
/// How long after a page of the feed was read its next event may still be taken from it.
/// Need-to-know and the personal fields are decided when a page is read; a receiver slow to
/// answer (up to its timeout per event) would otherwise be sent, minutes later, events of a
/// client whose access ended meanwhile (a restriction, an erasure, a closed involvement).
/// Older, the rest of the page is read again from the cursor, as the live feed does with the
/// pages it shares. (An event taken in time is then audited and sent, which may itself wait.)
const PAGE_FRESH_FOR: Duration = Duration::from_secs(5);
/// What the delivery log says of an attempt until its answer is logged: if it stays so, the
/// process delivering it stopped without recording one.
const IN_FLIGHT: &str =
    "no answer recorded: delivery stopped while the request was under way (it may have arrived)";
/// The pause after the store, the log or the audit trail failed (not the receiver's fault, so
/// not counted as an attempt).
const STORE_PAUSE: Duration = Duration::from_secs(1);

/// Turns a recorded event into the body POSTed for it. The binary hands in the API's serialiser,
/// so a delivery carries an event exactly as `GET /v1/events` shows it.
pub type EventBody = Arc<dyn Fn(&RecordedEvent) -> Vec<u8> + Send + Sync>;

/// How deliveries are made and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The pauses between attempts at an event.
    pub backoff: Backoff,
    /// How long a receiver has to answer one delivery.
    pub timeout: Duration,
    /// After this many failed attempts at one event, the webhook is paused (its cursor stays
    /// before the event, so resuming delivers it and everything after).
    pub max_attempts: u32,
    /// How often registrations are read again, to notice changes made through another process.
    pub refresh: Duration,
}

impl Default for Policy {
    /// Pauses of 1 s doubling to 15 minutes, 10 s to answer, and 300 attempts: a day and a half
    /// to three days of failures before a webhook is paused (each pause is drawn from the upper
    /// half of its nominal length).
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            timeout: Duration::from_secs(10),
            max_attempts: 300,
            refresh: Duration::from_secs(5),
        }
    }
}

/// Delivers every active webhook of the store.
pub struct Dispatcher {
    journeys: Arc<Journeys>,
    webhooks: Arc<dyn WebhookStore>,
    audit: Arc<dyn AuditLog>,
    body: EventBody,
    policy: Policy,
    /// The addresses receivers may be at; the HTTP client's resolver applies them to names.
    destinations: Destinations,
    http: reqwest::Client,
    /// Whether an agency still takes part (is declared in the configuration): the webhooks of
    /// one taken out are not delivered, and stay registered should it come back.
    takes_part: AgencyCheck,
    /// The webhooks whose events cannot be read just now, each with whether the cause is this
    /// process's configuration (a master key it lacks): readiness shows them, since a webhook
    /// that never gets its events is as broken as registrations that cannot be read.
    unreadable: std::sync::Mutex<HashMap<Uuid, bool>>,
    /// Wakes the supervisor when [`Self::unreadable`] changes, to report it at once.
    unreadable_changed: tokio::sync::Notify,
}

/// Whether an agency takes part; see [`Dispatcher::delivering_to`].
pub type AgencyCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Why a webhook's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Told to stop (shutdown, or the webhook was deleted or paused).
    Stopped,
    /// An event failed `max_attempts` times; the webhook is now paused.
    Paused,
    /// Another process took over delivery.
    Deposed,
}

/// An event whose delivery has failed so far.
#[derive(Debug, Clone, Copy)]
struct Failing {
    event_id: travelmap_domain::EventId,
    /// Attempts made at it, all told.
    attempts: u32,
    /// Of those, the ones made before the webhook was last resumed.
    before_resume: u32,
    /// When the last of them ended.
    at: chrono::DateTime<Utc>,
}

/// What one attempt came to.
enum Sent {
    Delivered,
    Failed,
    /// Delivery was stopped while the request was under way.
    Interrupted,
}

struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Ended>,
}

impl Dispatcher {
    pub fn new(
        journeys: Arc<Journeys>,
        webhooks: Arc<dyn WebhookStore>,
        audit: Arc<dyn AuditLog>,
        body: EventBody,
        policy: Policy,
        destinations: Destinations,
    ) -> Self {
        if let Some(proxy) = destinations.proxy() {
            tracing::info!(
                proxy = %proxy.shown(),
                "webhook deliveries go through the configured proxy, except to this machine and to addresses in allowed networks"
            );
        }
        Self {
            journeys,
            webhooks,
            audit,
            body,
            policy,
            http: http_client(&policy, &destinations),
            destinations,
            takes_part: Arc::new(|_| true),
            unreadable: std::sync::Mutex::new(HashMap::new()),
            unreadable_changed: tokio::sync::Notify::new(),
        }
    }

    /// Notes whether `webhook`'s events could be read (`None`) or not (with whether the cause
    /// is a misconfiguration).
    fn note_readable(&self, webhook: Uuid, fault: Option<bool>) {
        let mut unreadable = self.unreadable.lock().expect("unreadable webhooks lock");
        let changed = match fault {
            Some(misconfiguration) => {
                unreadable.insert(webhook, misconfiguration) != Some(misconfiguration)
            }
            None => unreadable.remove(&webhook).is_some(),
        };
        if changed {
            self.unreadable_changed.notify_one();
        }
    }

    /// Reports the deliveries as working, unless some webhook's events cannot be read.
    fn report_readable(&self, health: &Reporter) {
        let unreadable = self.unreadable.lock().expect("unreadable webhooks lock");
        if unreadable.is_empty() {
            health.running();
        } else {
            health.failed(
                unreadable
                    .values()
                    .any(|misconfiguration| *misconfiguration),
            );
        }
    }

    /// Delivers only the webhooks of agencies for which `takes_part` holds (all by default).
    /// An agency taken out of the configuration must receive nothing more, though the
    /// webhooks it registered are still stored.
    pub fn delivering_to(mut self, takes_part: AgencyCheck) -> Self {
        self.takes_part = takes_part;
        self
    }

    /// Delivers until `stop` turns true: waits for the delivery lease, runs a task per active
    /// webhook, and waits for the lease again if another process takes it over. `health` hears
    /// whether the registrations, the lease and each webhook's events could be read (not
    /// whether receivers answer: that is theirs, and each delivery log shows it).
    pub async fn run(self, mut stop: watch::Receiver<bool>, health: Reporter) {
        let dispatcher = Arc::new(self);
        health.running();
        loop {
            tokio::select! {
                led = waiting_for_lease(dispatcher.webhooks.lead(), &health) => if let Err(error) = led {
                    health.failing();
                    tracing::warn!(%error, "cannot take the webhook delivery lease; trying again");
                    if pause(STORE_PAUSE, &mut stop).await {
                        return;
                    }
                    continue;
                },
                _ = stopped(&mut stop) => return,
            }
            match dispatcher.clone().supervise(&mut stop, &health).await {
                Ended::Deposed => {
                    tracing::warn!("another process took over webhook delivery");
                }
                Ended::Stopped | Ended::Paused => return,
            }
        }
    }

    /// Keeps one task per active webhook until told to stop or deposed.
    async fn supervise(
        self: Arc<Self>,
        stop: &mut watch::Receiver<bool>,
        health: &Reporter,
    ) -> Ended {
        let mut tasks: HashMap<Uuid, Task> = HashMap::new();
        // Webhooks left out for their agency, warned about once.
        let mut warned: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
        let mut changes = self.webhooks.changes();
        let ended = loop {
            let finished: Vec<Uuid> = tasks
                .iter()
                .filter(|(_, task)| task.handle.is_finished())
                .map(|(id, _)| *id)
                .collect();
            let mut deposed = false;
            for id in finished {
                let task = tasks.remove(&id).expect("listed above");
                deposed |= matches!(task.handle.await, Ok(Ended::Deposed));
                self.note_readable(id, None);
            }
            if deposed {
                break Ended::Deposed;
            }
            match self.webhooks.list(None).await {
                Ok(webhooks) => {
                    self.report_readable(health);
                    let (active, left_out): (Vec<Webhook>, Vec<Webhook>) = webhooks
                        .into_iter()
                        .filter(|webhook| webhook.state == State::Active)
                        .partition(|webhook| (self.takes_part)(&webhook.agency));
                    for webhook in left_out {
                        if warned.insert(webhook.id) {
                            tracing::warn!(
                                webhook = %webhook.id, agency = %webhook.agency,
                                "a webhook's agency is not declared in the configuration; \
                                 nothing is delivered to it"
                            );
                        }
                    }
                    let active: HashMap<Uuid, Webhook> = active
                        .into_iter()
                        .map(|webhook| (webhook.id, webhook))
                        .collect();
                    for (id, task) in &tasks {
                        if !active.contains_key(id) {
                            let _ = task.stop.send(true);
                        }
                    }
                    for (id, webhook) in active {
                        tasks.entry(id).or_insert_with(|| {
                            let (stop, stopped) = watch::channel(false);
                            let handle = tokio::spawn(self.clone().deliver(webhook, stopped));
                            Task { stop, handle }
                        });
                    }
                }
                Err(error) => {
                    health.failing();
                    tracing::warn!(%error, "cannot read the webhook registrations");
                }
            }
            tokio::select! {
                _ = stopped(stop) => break Ended::Stopped,
                _ = changes.changed() => {}
                _ = self.unreadable_changed.notified() => {}
                _ = tokio::time::sleep(self.policy.refresh) => {}
            }
        };
        for task in tasks.values() {
            let _ = task.stop.send(true);
        }
        for (_, task) in tasks {
            let _ = task.handle.await;
        }
        // Delivery stops here (stopped, or taken over by another process): what was noted of
        // these tasks' webhooks no longer holds, and would otherwise be reported when this
        // process delivers again.
        self.unreadable
            .lock()
            .expect("unreadable webhooks lock")
            .clear();
        ended
    }

    /// Delivers one webhook until stopped, paused or deposed.
    async fn deliver(self: Arc<Self>, webhook: Webhook, mut stop: watch::Receiver<bool>) -> Ended {
        let scope = Scope {
            agency: Some(webhook.agency.clone()),
            purpose: webhook.purpose,
            types: webhook.types.iter().cloned().collect::<BTreeSet<_>>(),
        };
        let mut head = self.journeys.log().head();
        let mut cursor = webhook.cursor;
        // The event that failed last, how many attempts it has had, and how many of those came
        // before the webhook was last resumed (a resumed webhook has its full number of attempts
        // again, while the count the receiver sees goes on).
        let mut failing = self.failing_before(&webhook).await;
        // The pause that was due after the last failed attempt, before this process stopped:
        // a service restarted often must not spend a receiver's attempts in a hurry.
        if let Some(failed) = &failing {
            let since_resume = failed.attempts.saturating_sub(failed.before_resume);
            let due = failed.at + self.policy.backoff.delay(since_resume);
            if let Ok(left) = (due - Utc::now()).to_std()
                && pause(left, &mut stop).await
            {
                return Ended::Stopped;
            }
        }
        'pages: loop {
            if *stop.borrow() {
                return Ended::Stopped;
            }
            let page = match self.journeys.scoped_feed(&scope, cursor, PAGE).await {
                Ok(page) => {
                    self.note_readable(webhook.id, None);
                    page
                }
                Err(error) => {
                    self.note_readable(webhook.id, Some(error.is_misconfiguration()));
                    tracing::warn!(webhook = %webhook.id, %error, "cannot read the feed for a webhook");
                    if pause(STORE_PAUSE, &mut stop).await {
                        return Ended::Stopped;
                    }
                    continue;
                }
            };
            // From the end of the read, and never before the page's first event: a read slower
            // than the freshness allowed would otherwise be made again and again, sending
            // nothing.
            let read_at = Instant::now();
            for (index, event) in page.batch.events.iter().enumerate() {
                if index > 0 && read_at.elapsed() > PAGE_FRESH_FOR {
                    continue 'pages;
                }
                let (attempt, before_resume) = match failing {
                    Some(Failing {
                        event_id,
                        attempts,
                        before_resume,
                        ..
                    }) if event_id == event.draft.id => (attempts + 1, before_resume),
                    _ => (1, 0),
                };
                let since_resume = attempt.saturating_sub(before_resume);
                // Deleted, paused or taken over through another process since this task last
                // looked: not one more request (the registrations are read again only now and
                // then, and a retrying task may never reach a cursor save, which would tell).
                match self.webhooks.standing(webhook.id).await {
                    Ok(Standing::Deliver) => {}
                    Ok(Standing::Stopped) => return Ended::Stopped,
                    Ok(Standing::Deposed) => return Ended::Deposed,
                    Err(error) => {
                        tracing::warn!(webhook = %webhook.id, %error, "cannot check a webhook before delivering");
                        if pause(STORE_PAUSE, &mut stop).await {
                            return Ended::Stopped;
                        }
                        continue 'pages;
                    }
                }
                // Used up already: the last attempt was under way when its process stopped or
                // died, and its answer was never logged.
                if since_resume > self.policy.max_attempts {
                    tracing::warn!(
                        webhook = %webhook.id, attempts = attempt - 1,
                        "a webhook's receiver used up its attempts; the webhook is paused"
                    );
                    return self.give_up(&webhook, &mut stop).await;
                }
                let sent = self
                    .attempt(&webhook, event, attempt, since_resume, &mut stop)
                    .await;
                match sent {
                    Ok(Sent::Interrupted) => return Ended::Stopped,
                    Ok(Sent::Delivered) => {
                        failing = None;
                        if let Some(ended) = self.advance(&webhook, event.meta.position).await {
                            return ended;
                        }
                        cursor = event.meta.position;
                    }
                    Ok(Sent::Failed) if since_resume >= self.policy.max_attempts => {
                        tracing::warn!(
                            webhook = %webhook.id, attempts = attempt,
                            "a webhook's receiver kept failing; the webhook is paused"
                        );
                        return self.give_up(&webhook, &mut stop).await;
                    }
                    Ok(Sent::Failed) => {
                        failing = Some(Failing {
                            event_id: event.draft.id,
                            attempts: attempt,
                            before_resume,
                            at: Utc::now(),
                        });
                        if pause(self.policy.backoff.delay(since_resume), &mut stop).await {
                            return Ended::Stopped;
                        }
                        continue 'pages;
                    }
                    Err(error) => {
                        tracing::warn!(webhook = %webhook.id, %error, "a webhook delivery could not be made");
                        if pause(STORE_PAUSE, &mut stop).await {
                            return Ended::Stopped;
                        }
                        continue 'pages;
                    }
                }
            }
            if page.next_after > cursor {
                // The rest of the page was not for this webhook.
                if let Some(ended) = self.advance(&webhook, page.next_after).await {
                    return ended;
                }
                cursor = page.next_after;
                continue;
            }
            if page.batch.events.is_empty() {
                tokio::select! {
                    moved = head.wait_for(|head| *head > cursor) => if moved.is_err() {
                        // The log is closed: the process is shutting down.
                        return Ended::Stopped;
                    },
                    _ = stopped(&mut stop) => return Ended::Stopped,
                }
            }
        }
    }

    /// Saves the cursor; `Some` when the task must end.
    async fn advance(&self, webhook: &Webhook, position: u64) -> Option<Ended> {
        match self.webhooks.advance(webhook.id, position).await {
            Ok(()) => None,
            Err(travelmap_store::Error::NotLeader) => Some(Ended::Deposed),
            // The event was acknowledged; if the cursor cannot be saved, a later start delivers
            // it again, which receivers de-duplicate. Carry on.
            Err(error) => {
                tracing::warn!(webhook = %webhook.id, %error, "cannot save a webhook's cursor");
                None
            }
        }
    }

    /// Where delivery of `webhook` stood when this process last stopped it or it was paused,
    /// from its attempt log: the attempts already made at the event after its cursor, so that
    /// a restart does not give a failing receiver a fresh count. A webhook resumed after its
    /// last attempt failed for good has its full number of attempts again.
    async fn failing_before(&self, webhook: &Webhook) -> Option<Failing> {
        let log = match self
            .webhooks
            .attempts(webhook.id, travelmap_store::webhooks::ATTEMPTS_KEPT)
            .await
        {
            Ok(log) => log,
            Err(error) => {
                tracing::warn!(webhook = %webhook.id, %error, "cannot read a webhook's attempt log; counting attempts afresh");
                return None;
            }
        };
        let last = log.first()?;
        if last.position <= webhook.cursor || last.outcome == AttemptOutcome::Delivered {
            return None;
        }
        // The last attempt that gave up on this event (newest first), which a resume followed.
        let before_resume = log
            .iter()
            // Back to an earlier delivery of the same event at most (its cursor was not saved).
            .take_while(|attempt| {
                attempt.event_id == last.event_id && attempt.outcome != AttemptOutcome::Delivered
            })
            .find(|attempt| attempt.outcome == AttemptOutcome::Failed)
            .map_or(0, |failed| failed.attempt);
        Some(Failing {
            event_id: last.event_id,
            attempts: last.attempt,
            before_resume,
            at: last.at,
        })
    }

    /// Pauses a webhook whose receiver used up its attempts. Kept trying while the store
    /// refuses: the last attempt is logged as the one given up on, and a webhook started again
    /// over it would read that as a resume, with a whole number of attempts again that nobody
    /// granted. Ends without pausing only on a stop, or once another process has taken over
    /// delivery (whose own task decides then).
    async fn give_up(&self, webhook: &Webhook, stop: &mut watch::Receiver<bool>) -> Ended {
        loop {
            match self.webhooks.set_state(webhook.id, State::Paused).await {
                Ok(_) => return Ended::Paused,
                Err(error) => {
                    tracing::error!(webhook = %webhook.id, %error, "cannot pause a webhook; trying again");
                    if let Ok(Standing::Deposed) = self.webhooks.standing(webhook.id).await {
                        return Ended::Deposed;
                    }
                    if pause(STORE_PAUSE, stop).await {
                        return Ended::Stopped;
                    }
                }
            }
        }
    }

    /// Makes one attempt at delivering `event`: audits the disclosure, POSTs, logs the attempt.
    /// `attempt` counts every attempt at the event, `since_resume` those since the webhook was
    /// last resumed (which decide when it gives up). An error means the attempt was not made
    /// (the audit trail could not be written).
    async fn attempt(
        &self,
        webhook: &Webhook,
        event: &RecordedEvent,
        attempt: u32,
        since_resume: u32,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Sent, travelmap_store::Error> {
        let delivery = Uuid::new_v4();
        let entry = |at, status, error, duration_ms, outcome| Attempt {
            id: delivery,
            webhook_id: webhook.id,
            event_id: event.draft.id,
            position: event.meta.position,
            attempt,
            at,
            status,
            error,
            duration_ms,
            outcome,
        };
        // A receiver at an address the configuration does not (or no longer) permit, or whose
        // name cannot be resolved, gets no request, so no disclosure either: only the refusal
        // is logged, as a failed attempt. (The client's resolver judges a name again as it
        // connects.) Dated before judging, and with no duration: the log must not tell how
        // long the service's resolver took, which the text does not tell either.
        let at = Utc::now();
        let judged = tokio::select! {
            judged = self.destinations.delivery_problem(&webhook.url, self.policy.timeout) => judged,
            // Nothing was sent: a stop while a name resolves is no attempt.
            _ = stopped(stop) => return Ok(Sent::Interrupted),
        };
        if let Some(undeliverable) = judged {
            let error = undeliverable
                .to_string()
                .chars()
                .take(MAX_ERROR_TEXT)
                .collect();
            let outcome = self.unless_delivered(since_resume);
            self.log(webhook, entry(at, None, Some(error), 0, outcome))
                .await;
            return Ok(Sent::Failed);
        }
        // Nothing leaves unlogged: the disclosure is in the trail before the request is sent.
        self.audit
            .append(vec![disclosure(webhook, event, delivery)])
            .await?;
        // Logged before the request leaves, and replaced once it has its answer: a process that
        // dies meanwhile (a crash, `kill -9`) leaves the attempt counted, so the next one the
        // receiver sees is numbered on, and the log shows every request the trail shows.
        let begun = entry(
            Utc::now(),
            None,
            Some(IN_FLIGHT.to_owned()),
            0,
            AttemptOutcome::Retrying,
        );
        self.log(webhook, begun).await;
        let body = (self.body)(event);
        let timestamp = Utc::now().timestamp();
        let started = Instant::now();
        let request = self
            .http
            .post(&webhook.url)
            .timeout(self.policy.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Travelmap-Webhook-Id", webhook.id.to_string())
            .header("Travelmap-Event-Id", event.draft.id.to_string())
            .header("Travelmap-Event-Type", event.draft.event.event_type())
            .header("Travelmap-Delivery-Id", delivery.to_string())
            .header("Travelmap-Attempt", attempt.to_string())
            .header("Travelmap-Timestamp", timestamp.to_string())
            .header(
                signing::SIGNATURE_HEADER,
                signing::signature(&webhook.secret, timestamp, &body),
            )
            .body(body)
            .send();
        // Stopping (a shutdown, the webhook deleted) cuts the request short, but the request
        // may already have reached the receiver: the attempt is logged all the same, so that
        // the count the receiver sees goes on after a restart instead of starting again at 1.
        let (answer, interrupted) = tokio::select! {
            answer = request => (Some(answer), false),
            _ = stopped(stop) => (None, true),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let (status, error) = match answer {
            Some(Ok(response)) => (Some(response.status().as_u16()), None),
            Some(Err(error)) => (None, Some(describe(&error, self.policy.timeout))),
            None => (None, Some("cut short: delivery stopped".to_owned())),
        };
        let delivered = status.is_some_and(|status| (200..300).contains(&status));
        let outcome = if delivered {
            AttemptOutcome::Delivered
        } else if interrupted {
            AttemptOutcome::Retrying
        } else {
            self.unless_delivered(since_resume)
        };
        self.log(
            webhook,
            entry(Utc::now(), status, error, duration_ms, outcome),
        )
        .await;
        Ok(if interrupted {
            Sent::Interrupted
        } else if delivered {
            Sent::Delivered
        } else {
            Sent::Failed
        })
    }

    /// The outcome of an attempt that was not delivered: the last one allowed since the
    /// webhook was last resumed gives up, any other is tried again.
    fn unless_delivered(&self, since_resume: u32) -> AttemptOutcome {
        if since_resume >= self.policy.max_attempts {
            AttemptOutcome::Failed
        } else {
            AttemptOutcome::Retrying
        }
    }

    /// Logs an attempt. A failure is only warned of: the attempt was made (or refused) and its
    /// outcome stands; only its line in the log is missing.
    async fn log(&self, webhook: &Webhook, attempt: Attempt) {
        if let Err(error) = self.webhooks.log_attempt(attempt).await {
            tracing::warn!(webhook = %webhook.id, %error, "cannot log a webhook delivery attempt");
        }
    }
}

/// The client deliveries are made with.
fn http_client(policy: &Policy, destinations: &Destinations) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        // A redirect would send personal data to a URL nobody registered.
        .redirect(reqwest::redirect::Policy::none());
    // Straight to the receiver unless the operator names a proxy: one from the environment
    // would resolve the receiver's name itself, out of the resolver's reach, and would carry
    // plain-HTTP deliveries (allowed only to this machine) across the network. The operator's
    // proxy is used as `Destinations::through_proxy` says, which keeps URLs naming this
    // machine or an address in an allowed network off it.
    let builder = match destinations.proxy() {
        None => builder.no_proxy(),
        Some(proxy) => {
            let through = proxy.url().clone();
            let destinations = destinations.clone();
            builder.proxy(reqwest::Proxy::custom(move |url| {
                destinations.through_proxy(url).then(|| through.clone())
            }))
        }
    };
    builder
        .dns_resolver(destinations.resolver())
        .connect_timeout(policy.timeout)
        .user_agent(concat!("travelmap-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client's settings are valid")
}

/// The audit entry of one delivery attempt: a disclosure of the client's event to the webhook's
/// agency, for the webhook's purpose, named by the credential that registered it.
fn disclosure(webhook: &Webhook, event: &RecordedEvent, delivery: Uuid) -> AuditRecord {
    AuditRecord {
        at: Utc::now()
            .duration_trunc(TimeDelta::microseconds(1))
            .unwrap_or_else(|_| Utc::now()),
        credential: webhook.credential.clone(),
        agency: webhook.agency.clone(),
        actor: None,
        operation: Operation::Disclosure,
        client_id: Some(event.draft.client_id),
        purpose: serde_purpose(webhook.purpose),
        justification: None,
        request_id: Some(delivery.to_string()),
        outcome: Outcome::Allowed,
        action: format!("webhook {}", webhook.id),
        returned: Some(event.draft.id.to_string()),
    }
}

fn serde_purpose(purpose: travelmap_domain::payloads::Purpose) -> Option<String> {
    serde_json::to_value(purpose)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
}

/// Why a request got no answer, for the delivery log: short, and without the URL (which the
/// log's readers know, and which may carry a token in its path).
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    let text = if error.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else {
        let mut text = if error.is_connect() {
            "could not connect".to_owned()
        } else if error.is_redirect() {
            "redirects are not followed".to_owned()
        } else {
            "the request failed".to_owned()
        };
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    };
    text.chars().take(MAX_ERROR_TEXT).collect()
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Sleeps for `duration`; true when `stop` turned true meanwhile.
async fn pause(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => *stop.borrow(),
        _ = stopped(stop) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A receiver on this machine that answers every request 200.
    async fn local_receiver() -> u16 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0; 4096];
                    let _ = connection.read(&mut request).await;
                    let _ = connection
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        port
    }

    /// The delivery client resolves names through the destinations: a name of this machine is
    /// not reached while loopback is not allowed, and is once it is.
    #[tokio::test]
    async fn the_delivery_client_connects_only_to_permitted_addresses() {
        let port = local_receiver().await;
        let url = format!("http://receiver.example:{port}/");
        let hosts = || {
            HashMap::from([(
                "receiver.example".to_owned(),
                vec![std::net::IpAddr::from([127, 0, 0, 1])],
            )])
        };
        let policy = Policy::default();
        let refused = http_client(
            &policy,
            &Destinations::public_only().resolving_from(hosts()),
        )
        .post(&url)
        .send()
        .await
        .expect_err("loopback is not allowed");
        let described = describe(&refused, policy.timeout);
        assert!(
            described.contains("refused: receiver.example has no address"),
            "{described}"
        );
        let answer = http_client(
            &policy,
            &Destinations::public_and_loopback().resolving_from(hosts()),
        )
        .post(&url)
        .send()
        .await
        .expect("loopback is allowed");
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
    }

    /// Behind a proxy named by a host name on an internal address, the delivery client reaches
    /// the proxy (its name is not filtered as a receiver's would be), asks it for a tunnel to the
    /// receiver's name, which this machine need not resolve, and authenticates with the
    /// percent-decoded user name and password of the proxy's URL.
    #[tokio::test]
    async fn behind_a_proxy_the_client_tunnels_through_it_with_its_credentials() {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let head = tokio::spawn(async move {
            let (mut connection, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buffer = [0; 1024];
            while !head.windows(4).any(|end| end == b"\r\n\r\n") {
                let read = connection.read(&mut buffer).await.unwrap();
                assert!(read > 0, "the request ended early");
                head.extend_from_slice(&buffer[..read]);
            }
            let _ = connection
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
            String::from_utf8(head).unwrap()
        });
        let proxy = crate::destinations::ForwardProxy::parse(&format!(
            "http://deliveries:p%40ss@Proxy.Internal.:{port}"
        ))
        .unwrap();
        // The proxy's name resolves to loopback, which receivers may not be at here.
        let destinations =
            Destinations::public_only()
                .via_proxy(proxy)
                .resolving_from(HashMap::from([(
                    "proxy.internal.".to_owned(),
                    vec![std::net::IpAddr::from([127, 0, 0, 1])],
                )]));
        let failed = http_client(&Policy::default(), &destinations)
            .post("https://receiver.invalid/hooks")
            .send()
            .await
            .expect_err("the proxy refuses the tunnel");
        // Were the proxy not reached, nothing would be accepted: fail rather than wait.
        let head = tokio::time::timeout(std::time::Duration::from_secs(10), head)
            .await
            .expect("the proxy was asked")
            .unwrap();
        assert!(
            head.starts_with("CONNECT receiver.invalid:443 HTTP/1.1\r\n"),
            "{head}"
        );
        // base64 of `deliveries:p@ss`.
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authorization: basic zgvsaxzlcmllczpwqhnz\r\n"),
            "{head}"
        );
        let described = describe(&failed, Policy::default().timeout);
        assert!(
            !described.contains("p%40ss") && !described.contains("p@ss"),
            "{described}"
        );
    }
}
