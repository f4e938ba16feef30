//! What agency systems that subscribe to the feed (a server-sent event stream, a webhook) may
//! receive: the global feed, cut down to the clients the subscriber's agency has a need to know
//! about, and to the event types it asked for.
//!
//! Need-to-know is decided per client when the page is read, from the client's journey as
//! recorded so far (the same rule as every other read): an agency receives a client's events
//! while it has an open involvement or a consent covering the subscription's purpose. Events of a
//! client under a restriction of processing are never sent to an agency's subscriber; one that
//! reads every client (an auditor's or administrator's) receives them marked as restricted, as
//! the global feed keeps every position, and the caller withholds their personal fields unless
//! the reader audits.
//!
//! Many subscribers follow the head of the feed at once. Rather than each reading the log and
//! deciding access on its own, one [`FeedHub`] reads each new page once, decides access for its
//! clients once, and broadcasts it; a [`Subscription`] takes pages from the hub while it keeps
//! up, and reads the log itself (at its own pace) while it is behind: resuming from an old
//! position, or after falling behind the hub's bounded backlog. The hub keeps its latest pages
//! (a bounded number of events, for a few seconds) and broadcasts only weak handles to them, so a
//! consumer that stops reading (its connection stalled) holds no page the hub has let go of, and
//! never makes the others wait.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};

use chrono::Utc;
use tokio::sync::{broadcast, watch};
use travelmap_domain::payloads::Purpose;
use travelmap_domain::{ClientId, RecordedEvent};
use travelmap_projections::Access;
use travelmap_projections::health::Reporter;

use crate::{Journeys, MAX_FEED_PAGE, Result};

/// Which events a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The subscriber's agency; `None` for a subscriber that may read every client (an auditor
    /// or administrator).
    pub agency: Option<String>,
    /// Why the subscriber processes the events; consents name the purposes they cover.
    pub purpose: Purpose,
    /// Event types (`job.lost`) or families of types (`job.*`); empty for every type.
    pub types: BTreeSet<String>,
}

impl Scope {
    /// Whether the scope asks for events of this type.
    pub fn wants_type(&self, event_type: &str) -> bool {
        self.types.is_empty()
            || self
                .types
                .iter()
                .any(|wanted| pattern_matches(wanted, event_type))
    }

    /// Whether and how the subscriber may receive `event`, given who may read its client now.
    /// A restricted client's events reach only a subscriber that reads every client.
    pub fn admission(&self, event: &RecordedEvent, access: Option<&Access>) -> Option<Admission> {
        // Statistics are given as aggregates only: a webhook registered for them before that
        // was so delivers nothing more (new ones, and streams, are refused that purpose).
        if !self.wants_type(event.draft.event.event_type())
            || self.purpose == travelmap_domain::payloads::Purpose::Statistics
        {
            return None;
        }
        let access = access?;
        let Some(agency) = &self.agency else {
            return Some(Admission::Whole);
        };
        if access.restricted || !reaches_agencies(event.draft.event.event_type()) {
            return None;
        }
        if access.allows(agency, self.purpose) {
            Some(Admission::Whole)
        } else if access.told_of_its_end(agency, self.purpose, event) {
            Some(Admission::Notice)
        } else {
            None
        }
    }
}

/// How an event reaches a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// As the subscriber may read it.
    Whole,
    /// Only to tell the agency that its access ended, so without the personal fields it no
    /// longer has a need to know.
    Notice,
}

/// Events a subscriber receives, in position order, with the clients among them whose
/// processing is restricted (only ever for a subscriber that reads every client).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub events: Vec<RecordedEvent>,
    pub restricted: HashSet<ClientId>,
}

impl Batch {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn extend(&mut self, more: Batch) {
        self.events.extend(more.events);
        self.restricted.extend(more.restricted);
    }

    /// Adds `event` if `scope` admits it, given its client's `access`.
    fn admit(&mut self, scope: &Scope, event: &RecordedEvent, access: Option<&Access>) {
        let Some(admission) = scope.admission(event, access) else {
            return;
        };
        if access.is_some_and(|access| access.restricted) {
            self.restricted.insert(event.draft.client_id);
        }
        let mut event = event.clone();
        if admission == Admission::Notice {
            event.personal = travelmap_domain::PersonalData::Withheld;
        }
        self.events.push(event);
    }
}

/// A page of the feed as one subscriber sees it.
#[derive(Debug, Clone)]
pub struct ScopedPage {
    /// The events the subscriber may receive, in position order.
    pub batch: Batch,
    /// Where the next page starts: the position of the last event read, whether it was sent or
    /// left out. A subscriber that stores it never reads an event twice.
    pub next_after: u64,
}

/// Whether events of `event_type` are ever sent to an agency's subscriber. A restriction and
/// its lifting are not: they are the data-protection officer's decisions about the record, with
/// the officer's reasons, and an agency learns of a restriction from the `403 restricted` its
/// reads get, not from its feed, which would also send it a restriction that ended before it
/// read that far.
pub fn reaches_agencies(event_type: &str) -> bool {
    !matches!(event_type, "processing.restricted" | "restriction.lifted")
}

/// Whether `pattern` (a type or a family such as `job.*`) names a type an agency's subscriber
/// can receive: a webhook, always an agency's, asking only for others would never deliver.
pub fn reaches_agencies_pattern(pattern: &str) -> bool {
    travelmap_domain::catalogue::event_types()
        .iter()
        .filter(|info| reaches_agencies(info.event_type))
        .any(|info| pattern_matches(pattern, info.event_type))
}

/// Whether `pattern` names an event type in the catalogue, or a family of them (`job.*`).
pub fn is_known_type_pattern(pattern: &str) -> bool {
    travelmap_domain::catalogue::event_types()
        .iter()
        .any(|info| pattern_matches(pattern, info.event_type))
}

/// Whether `pattern`, a type (`job.lost`) or a family of them (`job.*`), names `event_type`.
fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => prefix.ends_with('.') && event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

impl Journeys {
    /// Who may read each client of `events` now. Decided once per client, however many of its
    /// events the page holds.
    pub async fn feed_access(&self, events: &[RecordedEvent]) -> Result<HashMap<ClientId, Access>> {
        let mut clients: Vec<ClientId> = events.iter().map(|event| event.draft.client_id).collect();
        clients.sort_unstable();
        clients.dedup();
        let now = Utc::now();
        Ok(self
            .current_states(clients)
            .await?
            .into_iter()
            .map(|(client_id, state)| (client_id, state.access(now)))
            .collect())
    }

    /// Reads up to `limit` events of the feed after `after` and keeps those `scope` admits.
    pub async fn scoped_feed(&self, scope: &Scope, after: u64, limit: usize) -> Result<ScopedPage> {
        let events = self.feed(after, limit.clamp(1, MAX_FEED_PAGE)).await?;
        let next_after = events.last().map_or(after, |event| event.meta.position);
        let wanted: Vec<RecordedEvent> = events
            .into_iter()
            .filter(|event| scope.wants_type(event.draft.event.event_type()))
            .collect();
        let access = self.feed_access(&wanted).await?;
        let mut batch = Batch::default();
        for event in &wanted {
            batch.admit(scope, event, access.get(&event.draft.client_id));
        }
        Ok(ScopedPage { batch, next_after })
    }
}

/// Pages the hub announces to subscribers that are momentarily slower than the feed.
const HUB_BACKLOG: usize = 256;
/// Events of its latest pages the hub keeps in memory for them. The announcements are weak
/// handles: a page the hub has let go of is freed, whoever has not taken it yet, and read from
/// the log by a subscriber that still needs it. Without this bound, a subscriber that stopped
/// reading held every page in the announcement ring: up to 256 pages of 500 events during a
/// bulk load, hundreds of megabytes. A quarter of that still keeps a couple of seconds of a bulk
/// load for subscribers that lag behind it (more than 16,000 events/s), so that they are not all
/// sent to read the log at once.
const HUB_KEPT_EVENTS: usize = 32_768;
/// Events per page, read by the hub or by a subscriber catching up.
const PAGE: usize = 500;
/// A hub page older than this is not used: access (a restriction, an erasure) may have changed
/// since it was read, so the subscriber reads the range afresh instead. Seconds, not less: a
/// subscriber that is briefly slow (its audit entries queue behind everyone else's) must not be
/// pushed into reading the log itself, which costs far more than using the hub's page.
const PAGE_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// A page of the feed with the access of its clients, as the hub read it.
#[derive(Debug)]
pub struct HubPage {
    /// When the hub read it: access decided then goes stale.
    pub read_at: std::time::Instant,
    pub after: u64,
    pub up_to: u64,
    pub events: Vec<RecordedEvent>,
    pub access: HashMap<ClientId, Access>,
}

/// The hub's latest pages: at most [`HUB_KEPT_EVENTS`] events. A page older than
/// [`PAGE_FRESH_FOR`], which no subscriber would use, is let go of when the next page comes or
/// after as long without one; the newest is kept otherwise.
#[derive(Default)]
struct KeptPages {
    pages: VecDeque<Arc<HubPage>>,
    events: usize,
}

/// Reads the head of the feed once for every subscriber.
pub struct FeedHub {
    journeys: Arc<Journeys>,
    pages: broadcast::Sender<Weak<HubPage>>,
    /// The latest pages, what the announcements point to.
    kept: std::sync::Mutex<KeptPages>,
    /// The position up to which pages have been broadcast.
    cursor: watch::Sender<u64>,
}

impl FeedHub {
    /// A hub that starts at the log's current head.
    pub fn new(journeys: Arc<Journeys>) -> Self {
        let head = *journeys.log().head().borrow();
        Self {
            journeys,
            pages: broadcast::channel(HUB_BACKLOG).0,
            kept: Default::default(),
            cursor: watch::channel(head).0,
        }
    }

    /// Keeps `page` among the latest, letting go of the oldest beyond the bounds.
    fn keep(&self, page: Arc<HubPage>) {
        let mut kept = self.kept.lock().expect("hub pages lock");
        kept.events += page.events.len();
        kept.pages.push_back(page);
        while kept.pages.len() > 1
            && let Some(oldest) = kept.pages.front()
            && (kept.events > HUB_KEPT_EVENTS || oldest.read_at.elapsed() > PAGE_FRESH_FOR)
        {
            kept.events -= oldest.events.len();
            kept.pages.pop_front();
        }
    }

    /// Lets go of every page kept.
    fn let_go(&self) {
        *self.kept.lock().expect("hub pages lock") = KeptPages::default();
    }

    /// Reads and broadcasts pages as the head moves, until `shutdown` turns true, telling
    /// `health` whether each read worked.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, health: Reporter) {
        let mut head = self.journeys.log().head();
        health.running();
        loop {
            if self.pages.receiver_count() == 0 {
                // Nobody follows: skip to the head without reading or deciding anything, so the
                // hub costs nothing on the write path. A subscriber that arrives reads the log
                // up to the hub's cursor itself.
                let now_at = *head.borrow_and_update();
                self.cursor.send_replace(now_at);
                self.let_go();
                // Nothing to read is nothing to fail: an earlier failure is over.
                health.running();
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let after = *self.cursor.borrow();
            let page = async {
                let events = self.journeys.feed(after, PAGE).await?;
                let access = self.journeys.feed_access(&events).await?;
                Ok::<_, crate::Error>((events, access))
            };
            match page.await {
                Ok((events, _)) if events.is_empty() => {
                    health.running();
                    let keeping = !self.kept.lock().expect("hub pages lock").pages.is_empty();
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return },
                        _ = shutdown.changed() => return,
                        // Pages no subscriber would use any more are let go of while the feed
                        // is quiet too.
                        () = tokio::time::sleep(PAGE_FRESH_FOR), if keeping => self.let_go(),
                    }
                }
                Ok((events, access)) => {
                    health.running();
                    let up_to = events.last().map_or(after, |event| event.meta.position);
                    // The cursor moves first: a subscriber that sees it and reads the range
                    // itself, then also gets the page, drops what it already has.
                    self.cursor.send_replace(up_to);
                    let page = Arc::new(HubPage {
                        read_at: std::time::Instant::now(),
                        after,
                        up_to,
                        events,
                        access,
                    });
                    let announced = Arc::downgrade(&page);
                    self.keep(page);
                    let _ = self.pages.send(announced);
                }
                Err(error) => {
                    health.failing();
                    tracing::error!(%error, "the feed hub could not read the feed; retrying in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Follows the feed for `scope` from just after `after`.
    pub fn subscribe(self: &Arc<Self>, scope: Scope, after: u64) -> Subscription {
        Subscription {
            pages: self.pages.subscribe(),
            hub: self.clone(),
            scope,
            cursor: after,
        }
    }
}

/// One subscriber's way along the feed.
pub struct Subscription {
    hub: Arc<FeedHub>,
    pages: broadcast::Receiver<Weak<HubPage>>,
    scope: Scope,
    cursor: u64,
}

impl Subscription {
    /// Takes the events of a hub page the scope admits, if the page follows on from the cursor
    /// and is fresh; returns false (taking nothing) otherwise.
    fn take(&mut self, page: &HubPage, into: &mut Batch) -> bool {
        if page.up_to <= self.cursor {
            return true;
        }
        if page.after > self.cursor || page.read_at.elapsed() > PAGE_FRESH_FOR {
            return false;
        }
        let cursor = self.cursor;
        self.cursor = page.up_to;
        for event in page
            .events
            .iter()
            .filter(|event| event.meta.position > cursor)
        {
            into.admit(&self.scope, event, page.access.get(&event.draft.client_id));
        }
        true
    }

    /// Like [`Self::next_batch`], but once something has come, waits up to `linger` for more (up
    /// to a page) and returns it all as one batch. Every batch sent is logged; with many
    /// subscribers on a busy feed, one entry per subscriber per commit would be more audit
    /// entries than events.
    pub async fn next_batch_within(
        &mut self,
        linger: std::time::Duration,
    ) -> Result<Option<Batch>> {
        let Some(mut events) = self.next_batch().await? else {
            return Ok(None);
        };
        let until = tokio::time::Instant::now() + linger;
        while events.len() < PAGE {
            // Cancelling `next_batch` loses nothing: the cursor moves only together with the
            // events it returns.
            match tokio::time::timeout_at(until, self.next_batch()).await {
                Ok(Ok(Some(more))) => events.extend(more),
                // An error, or the end, is met again on the next call; what was taken so far
                // must still be sent.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(Some(events))
    }

    /// The position of the last event read (sent or left out).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Waits for the next events the scope admits, in position order. `None` once the service
    /// shuts down.
    pub async fn next_batch(&mut self) -> Result<Option<Batch>> {
        loop {
            if self.cursor < *self.hub.cursor.borrow() {
                // Behind the hub: read the log directly.
                let page = self
                    .hub
                    .journeys
                    .scoped_feed(&self.scope, self.cursor, PAGE)
                    .await?;
                if page.next_after == self.cursor {
                    // Nothing readable yet (the hub is ahead of what this reader sees).
                    tokio::task::yield_now().await;
                    continue;
                }
                self.cursor = page.next_after;
                if !page.batch.events.is_empty() {
                    return Ok(Some(page.batch));
                }
                continue;
            }
            match self.pages.recv().await {
                Ok(page) => {
                    let mut events = Batch::default();
                    // A page the hub has let go of counts as missed.
                    let taken = page
                        .upgrade()
                        .is_some_and(|page| self.take(&page, &mut events));
                    if !taken {
                        // A page was missed, or this one is stale; the hub's cursor is past it,
                        // so the next turn reads the range from the log.
                        continue;
                    }
                    // Whatever else the hub has already sent goes in the same batch: a
                    // subscriber that was busy sends (and logs) one batch, not one per page.
                    while events.len() < PAGE {
                        match self.pages.try_recv() {
                            // A page it cannot use is covered by reading the log next time.
                            Ok(page)
                                if page
                                    .upgrade()
                                    .is_some_and(|page| self.take(&page, &mut events)) => {}
                            _ => break,
                        }
                    }
                    if !events.events.is_empty() {
                        return Ok(Some(events));
                    }
                }
                // Fell behind the backlog: catch up from the log.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(types: &[&str]) -> Scope {
        Scope {
            agency: Some("probation-opava".into()),
            purpose: Purpose::CaseManagement,
            types: types.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn an_empty_type_list_wants_every_type() {
        assert!(scope(&[]).wants_type("client.released"));
    }

    #[test]
    fn types_match_exactly_or_by_family() {
        let scope = scope(&["client.released", "job.*"]);
        assert!(scope.wants_type("client.released"));
        assert!(scope.wants_type("job.lost"));
        assert!(scope.wants_type("job.placed"));
        assert!(!scope.wants_type("client.registered"));
        assert!(!scope.wants_type("housing.lost"));
    }

    fn recorded(event_type: &str, data: serde_json::Value) -> RecordedEvent {
        use travelmap_domain::{EventDraft, EventId, JourneyEvent, Provenance, RecordMeta};
        let at = "2026-01-05T09:00:00+01:00";
        RecordedEvent {
            draft: EventDraft {
                id: EventId(uuid::Uuid::from_u128(1)),
                client_id: ClientId(uuid::Uuid::from_u128(2)),
                occurred_at: at.parse().unwrap(),
                actor: None,
                event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
            },
            provenance: Provenance {
                agency: "bureau-opava".into(),
                credential: "bureau".into(),
            },
            meta: RecordMeta {
                version: 1,
                position: 1,
                recorded_at: at.parse().unwrap(),
            },
            personal: Default::default(),
        }
    }

    #[test]
    fn a_feed_for_statistics_admits_nothing_whatever_the_access() {
        let event = recorded(
            "job.placed",
            serde_json::json!({"kind": "full_time", "sector": "construction"}),
        );
        let access = Access {
            involved: ["probation-opava".to_owned()].into(),
            ..Access::default()
        };
        let mut feed = scope(&[]);
        assert_eq!(
            feed.admission(&event, Some(&access)),
            Some(Admission::Whole)
        );
        feed.purpose = Purpose::Statistics;
        assert_eq!(feed.admission(&event, Some(&access)), None);
    }

    /// A restriction and its lifting reach readers of every client, never an agency, which
    /// no type pattern can ask for.
    #[test]
    fn restriction_decisions_never_reach_an_agency() {
        let access = Access {
            involved: ["probation-opava".to_owned()].into(),
            ..Access::default()
        };
        let every_client = Scope {
            agency: None,
            ..scope(&[])
        };
        for event_type in ["processing.restricted", "restriction.lifted"] {
            let event = recorded(event_type, serde_json::json!({"reason": "contested"}));
            assert_eq!(scope(&[]).admission(&event, Some(&access)), None);
            assert_eq!(
                every_client.admission(&event, Some(&access)),
                Some(Admission::Whole)
            );
        }
        for pattern in ["processing.restricted", "processing.*", "restriction.*"] {
            assert!(is_known_type_pattern(pattern));
            assert!(!reaches_agencies_pattern(pattern), "{pattern}");
        }
        assert!(reaches_agencies_pattern("personal_data.*"));
        assert!(reaches_agencies_pattern("client.released"));
        assert!(!reaches_agencies_pattern("job.stolen"));
    }

    /// A subscriber that stops reading while a bulk load goes by pins none of the pages the hub
    /// has let go of, and still gets every event once, in order, when it reads again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_stops_reading_holds_only_what_the_hub_keeps() {
        use travelmap_domain::{EventDraft, EventId, JourneyEvent, Provenance};

        let dir = tempfile::tempdir().unwrap();
        let store = travelmap_store::sqlite::SqliteStore::open(dir.path()).unwrap();
        let journeys = Arc::new(
            Journeys::new(store.log.clone(), store.views.clone(), None)
                .await
                .unwrap(),
        );
        let hub = Arc::new(FeedHub::new(journeys.clone()));
        let (stop, stopped) = watch::channel(false);
        let (reporter, _) = travelmap_projections::health::task("live_feed", false);
        let running = tokio::spawn(hub.clone().run(stopped, reporter));
        let mut stalled = hub.subscribe(
            Scope {
                agency: None,
                ..scope(&[])
            },
            0,
        );

        // Commits of a page each, more events in all than the hub keeps.
        let per_batch = PAGE as u64;
        let batches = (HUB_KEPT_EVENTS as u64).div_ceil(per_batch) + 6;
        let provenance = Provenance {
            agency: "prison-opava".into(),
            credential: "test".into(),
        };
        for batch in 0..batches {
            let submissions: Vec<crate::Submission> = (0..per_batch)
                .map(|n| crate::Submission {
                    draft: EventDraft {
                        id: EventId(uuid::Uuid::new_v4()),
                        client_id: ClientId(uuid::Uuid::from_u128(u128::from(
                            (batch * per_batch + n) % 97 + 1,
                        ))),
                        occurred_at: Utc::now().fixed_offset(),
                        actor: None,
                        event: JourneyEvent::decode("job.placed", 1, &serde_json::json!({}))
                            .unwrap(),
                    },
                    expected_version: None,
                })
                .collect();
            journeys.record(&provenance, &submissions).await.unwrap();
        }
        let total = batches * per_batch;
        let mut cursor = hub.cursor.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            cursor.wait_for(|at| *at >= total),
        )
        .await
        .expect("the hub reads every page")
        .unwrap();

        let kept: Vec<Arc<HubPage>> = hub.kept.lock().unwrap().pages.iter().cloned().collect();
        let kept_events: usize = kept.iter().map(|page| page.events.len()).sum();
        assert!(kept_events <= HUB_KEPT_EVENTS, "{kept_events}");
        // What the stalled subscriber was announced: the pages let go of are gone.
        let (mut alive, mut gone) = (0, 0);
        while let Ok(page) = stalled.pages.try_recv() {
            match page.upgrade() {
                Some(_) => alive += 1,
                None => gone += 1,
            }
        }
        assert!(
            alive <= kept.len(),
            "{alive} pages alive, {} kept",
            kept.len()
        );
        assert!(gone > 0, "the hub let go of no page: {alive} alive");
        drop(kept);

        // Announcements taken above are covered by the log: nothing is lost.
        let mut positions = Vec::new();
        while positions.len() < total as usize {
            let batch =
                tokio::time::timeout(std::time::Duration::from_secs(10), stalled.next_batch())
                    .await
                    .expect("the subscriber catches up")
                    .unwrap()
                    .expect("the hub runs");
            positions.extend(batch.events.iter().map(|event| event.meta.position));
        }
        assert_eq!(positions, (1..=total).collect::<Vec<_>>());
        stop.send(true).unwrap();
        running.await.unwrap();
        drop(store);
    }

    #[test]
    fn type_patterns_are_checked_against_the_catalogue() {
        assert!(is_known_type_pattern("job.lost"));
        assert!(is_known_type_pattern("job.*"));
        assert!(!is_known_type_pattern("job.stolen"));
        assert!(!is_known_type_pattern("jo*"));
        assert!(!is_known_type_pattern("nothing.*"));
    }
}
