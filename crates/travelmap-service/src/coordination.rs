//! The coordinators' index: every client's case file kept in memory, current with the travel-map
//! views and with the clock, and the alert notices subscribers receive as alerts are raised and
//! cleared.
//!
//! The index is a projection of the travel-map views, which are a projection of the log: it is
//! loaded from the views at start (so a restart, like a rebuild, starts from what the log says)
//! and then refreshed for exactly the clients each projector save changed. Where another process
//! writes the views, the clients are found by reading the feed's range instead.
//!
//! Time-based alerts (no contact 24 hours after release, a release 14 days away unprepared, a
//! lost job expiring) must appear without a new event. Each case file says when it next changes
//! on its own; the scheduler sleeps until the earliest of those moments on a [`Clock`], which
//! tests replace with a [`ManualClock`] to move time by hand.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, broadcast, watch};
use travelmap_domain::ClientId;
use travelmap_projections::coordination::{
    AgencyCaseload, Alert, AlertKind, CaseEntry, CaseFile, Rules, agency_caseload, caseloads,
};
use travelmap_projections::health::Reporter;
use travelmap_projections::{ClientState, Projector};
use travelmap_store::{EventLog, ViewStore};

use crate::Result;

/// Where the index reads the time. Everything time-based in coordination (alerts falling due,
/// "released < 30 days") reads it here, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Completes once this clock has reached `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // In short steps, re-reading the wall clock: a timer set for hours would not notice
            // the clock being stepped (NTP, a suspended machine).
            loop {
                let left = at - Utc::now();
                let Ok(left) = left.to_std() else { return };
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(std::time::Duration::from_secs(30))).await;
            }
        })
    }
}

/// A clock moved by hand, for tests of time-based behaviour.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: watch::channel(start).0,
        }
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.now.send_modify(|now| *now += by);
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.now.send_replace(at);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            let _ = now.wait_for(|now| *now >= at).await;
        })
    }
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Raised,
    Cleared,
    /// The event it arose from was retracted or corrected away.
    Withdrawn,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Raised => "raised",
            Change::Cleared => "cleared",
            Change::Withdrawn => "withdrawn",
        }
    }
}

/// An alert raised, cleared or withdrawn, as subscribers hear of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertNotice {
    /// Increases by one per notice within a run of the service (see [`Coordination::epoch`]).
    pub seq: u64,
    pub change: Change,
    pub alert: Alert,
    /// When the service noticed it.
    pub noticed_at: DateTime<Utc>,
    /// The client's processing was restricted when it was noticed (the `withdrawn` that a
    /// restriction causes included): such a notice is never sent, even to a subscriber that
    /// resumes after the restriction was lifted.
    pub while_restricted: bool,
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only alerts this agency is expected to act on.
    pub agency: Option<String>,
    pub kind: Option<AlertKind>,
    pub client: Option<ClientId>,
    /// Include cleared alerts (the history), not only open ones.
    pub include_cleared: bool,
}

/// How many notices are kept for subscribers resuming a stream.
const JOURNAL: usize = 10_000;
/// How many notices wait for a slow live subscriber before it is told it lagged.
const NOTICE_BACKLOG: usize = 4_096;
/// Clients reloaded per view read.
const RELOAD_CHUNK: usize = 1_000;

#[derive(Default)]
struct Index {
    files: HashMap<ClientId, CaseFile>,
    /// When each client's file next changes on its own.
    due: BTreeSet<(DateTime<Utc>, ClientId)>,
}

/// The case files of every client, the caseloads and alerts summed over them, and the alert
/// notices.
pub struct Coordination {
    log: Arc<dyn EventLog>,
    views: Arc<dyn ViewStore>,
    projector: Arc<Projector>,
    clock: Arc<dyn Clock>,
    rules: Rules,
    index: RwLock<Index>,
    /// The position of the last event reflected in the case files.
    progress: watch::Sender<u64>,
    /// Whether the files have been loaded since start.
    loaded: watch::Sender<bool>,
    notices: broadcast::Sender<AlertNotice>,
    journal: Mutex<VecDeque<AlertNotice>>,
    next_seq: Mutex<u64>,
    epoch: String,
    /// Rings when a file's next change moved earlier than the scheduler's sleep.
    rescheduled: Notify,
}

impl Coordination {
    pub fn new(
        log: Arc<dyn EventLog>,
        views: Arc<dyn ViewStore>,
        projector: Arc<Projector>,
        clock: Arc<dyn Clock>,
        rules: Rules,
    ) -> Self {
        Self {
            log,
            views,
            projector,
            clock,
            rules,
            index: RwLock::new(Index::default()),
            progress: watch::channel(0).0,
            loaded: watch::channel(false).0,
            notices: broadcast::channel(NOTICE_BACKLOG).0,
            journal: Mutex::new(VecDeque::new()),
            next_seq: Mutex::new(1),
            epoch: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            rescheduled: Notify::new(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Names this run of the service: notice sequence numbers count from 1 in each epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Watches the position of the last event reflected in the case files.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Waits until the case files are loaded and reflect `position` (at most `limit`).
    pub async fn wait_for(&self, position: u64, limit: std::time::Duration) -> bool {
        let mut loaded = self.loaded.subscribe();
        let mut progress = self.progress.subscribe();
        tokio::time::timeout(limit, async {
            let _ = loaded.wait_for(|loaded| *loaded).await;
            let _ = progress.wait_for(|at| *at >= position).await;
        })
        .await
        .is_ok()
    }

    /// Every agency's caseload now.
    pub fn caseloads(&self) -> Vec<AgencyCaseload> {
        let index = self.index.read().expect("index lock");
        caseloads(index.files.values(), self.clock.now(), &self.rules)
    }

    /// One agency's active clients now.
    pub fn agency_caseload(&self, agency: &str) -> Vec<CaseEntry> {
        let index = self.index.read().expect("index lock");
        agency_caseload(index.files.values(), agency, self.clock.now())
    }

    /// Alerts, oldest first. Restricted and erased clients' alerts are left out.
    pub fn alerts(&self, filter: &AlertFilter) -> Vec<Alert> {
        let index = self.index.read().expect("index lock");
        let files: Box<dyn Iterator<Item = &CaseFile>> = match filter.client {
            Some(client) => Box::new(index.files.get(&client).into_iter()),
            None => Box::new(index.files.values()),
        };
        let mut alerts: Vec<Alert> = files
            .filter(|file| !file.withheld())
            .flat_map(|file| file.alerts.iter())
            .filter(|alert| filter.include_cleared || alert.is_open())
            .filter(|alert| filter.kind.is_none_or(|kind| alert.kind == kind))
            .filter(|alert| {
                filter
                    .agency
                    .as_deref()
                    .is_none_or(|agency| alert.agency == agency)
            })
            .cloned()
            .collect();
        alerts.sort_by_key(|alert| (alert.since, alert.id));
        alerts
    }

    /// The notices after `seq` still kept, and a receiver for those to come; `None` if some
    /// notices after `seq` are no longer kept, or `seq` was never sent in this run (the
    /// subscriber must start from the open alerts).
    pub fn notices_after(
        &self,
        seq: u64,
    ) -> Option<(Vec<AlertNotice>, broadcast::Receiver<AlertNotice>)> {
        let journal = self.journal.lock().expect("journal lock");
        // Subscribing under the journal's lock: no notice falls between the two.
        let receiver = self.notices.subscribe();
        let oldest = journal
            .front()
            .map_or(*self.next_seq.lock().expect("seq"), |n| n.seq);
        // Too old to resume from, or never sent in this run (a made-up id): a snapshot, rather
        // than notices the subscriber would take for ones it already had.
        let next = *self.next_seq.lock().expect("seq");
        if seq.saturating_add(1) < oldest || seq >= next {
            return None;
        }
        let kept = journal
            .iter()
            .filter(|notice| notice.seq > seq)
            .cloned()
            .collect();
        Some((kept, receiver))
    }

    /// The last notice's sequence number, and a receiver for every notice after it: the point a
    /// snapshot of the open alerts is taken at.
    pub fn snapshot_point(&self) -> (u64, broadcast::Receiver<AlertNotice>) {
        let _journal = self.journal.lock().expect("journal lock");
        let receiver = self.notices.subscribe();
        (self.last_seq(), receiver)
    }

    /// Whether processing of the client is restricted now (its notices are not sent).
    pub fn is_restricted(&self, client: ClientId) -> bool {
        let index = self.index.read().expect("index lock");
        index.files.get(&client).is_some_and(|file| file.restricted)
    }

    /// The last notice's sequence number (0 before the first).
    pub fn last_seq(&self) -> u64 {
        *self.next_seq.lock().expect("seq") - 1
    }

    /// Keeps the index current until `shutdown` turns true, telling `health` whether each
    /// attempt worked (it is starting until every case file is loaded).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, health: Reporter) {
        let mut changes = self.projector.changes();
        let mut progress = self.projector.progress();
        let mut seen = loop {
            let checkpoint = *progress.borrow_and_update();
            match self.load_all(checkpoint).await {
                Ok(seen) => break seen,
                Err(error) => {
                    health.failed(error.is_misconfiguration());
                    tracing::error!(%error, "could not load the case files; retrying in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        health.running();
        loop {
            let next_due = self.next_due();
            // Followed events can keep the progress branch ready without pause; alerts that
            // have fallen due are raised first, so that a busy feed never holds them back.
            if next_due.is_some_and(|at| at <= self.clock.now()) {
                match self.fire_due().await {
                    Ok(()) => health.running(),
                    Err(error) => {
                        health.failed(error.is_misconfiguration());
                        tracing::error!(%error, "could not refresh due case files; retrying in 1s");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
            let sleep = async {
                match next_due {
                    Some(at) => self.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                moved = progress.changed() => {
                    if moved.is_err() {
                        return;
                    }
                    let position = *progress.borrow_and_update();
                    match self.follow(&mut changes, seen, position).await {
                        Ok(now_seen) => {
                            seen = now_seen;
                            health.running();
                        }
                        Err(error) => {
                            health.failed(error.is_misconfiguration());
                            tracing::error!(%error, "could not refresh the case files; retrying in 1s");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            // Read the range again on the next turn.
                            progress.mark_changed();
                        }
                    }
                }
                _ = sleep => match self.fire_due().await {
                    Ok(()) => health.running(),
                    Err(error) => {
                        health.failed(error.is_misconfiguration());
                        tracing::error!(%error, "could not refresh due case files; retrying in 1s");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                },
                _ = self.rescheduled.notified() => {}
            }
        }
    }

    /// Loads every client's file from the views. Returns the position they reflect at least.
    async fn load_all(&self, checkpoint: u64) -> Result<u64> {
        let now = self.clock.now();
        let mut index = Index::default();
        let mut after = None;
        loop {
            let page = self.views.scan(after, RELOAD_CHUNK).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (client_id, stored) in page {
                let state = self.state_of(client_id, &stored).await?;
                let file = state.case_file(now, &self.rules);
                if let Some(at) = file.next_change {
                    index.due.insert((at, client_id));
                }
                index.files.insert(client_id, file);
            }
        }
        *self.index.write().expect("index lock") = index;
        self.progress.send_replace(checkpoint);
        self.loaded.send_replace(true);
        Ok(checkpoint)
    }

    /// The client's state from its view, or from its history where the view cannot be read
    /// back (see [`crate::readable`]): one damaged view must not keep every case file out.
    async fn state_of(
        &self,
        client_id: ClientId,
        stored: &travelmap_store::StoredState,
    ) -> Result<ClientState> {
        match crate::readable(client_id, stored) {
            Some(state) => Ok(state),
            None => Ok(ClientState::from_history(
                client_id,
                self.log.read_stream(client_id, None).await?,
            )),
        }
    }

    /// Brings the files from `seen` up to `position`: from the projector's change sets where they
    /// cover the range, from the feed where they do not.
    async fn follow(
        &self,
        changes: &mut broadcast::Receiver<travelmap_projections::ChangeSet>,
        mut seen: u64,
        position: u64,
    ) -> Result<u64> {
        if position < seen {
            // The views were rebuilt from zero: start again from them.
            return self.load_all(position).await;
        }
        // Clients whose views must be read, and clients whose latest state came with a set. A
        // client moves from one to the other as later sets or ranges cover it. Both in client
        // order, so that notices come out in the same order however the states arrived.
        let mut to_load: BTreeSet<ClientId> = BTreeSet::new();
        let mut given: BTreeMap<ClientId, Arc<ClientState>> = BTreeMap::new();
        let take = |set: &travelmap_projections::ChangeSet,
                    to_load: &mut BTreeSet<ClientId>,
                    given: &mut BTreeMap<ClientId, Arc<ClientState>>| {
            let states = set.states.take();
            for client in set.clients.iter() {
                given.remove(client);
                to_load.insert(*client);
            }
            for state in states {
                to_load.remove(&state.client_id);
                given.insert(state.client_id, state);
            }
        };
        loop {
            match changes.try_recv() {
                Ok(set) if set.up_to <= seen => {}
                Ok(set) if set.after <= seen => {
                    take(&set, &mut to_load, &mut given);
                    seen = set.up_to;
                }
                Ok(set) => {
                    // A gap: the sets in between were missed.
                    for client in self.clients_in(seen, set.after).await? {
                        given.remove(&client);
                        to_load.insert(client);
                    }
                    take(&set, &mut to_load, &mut given);
                    seen = set.up_to;
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        if seen < position {
            for client in self.clients_in(seen, position).await? {
                given.remove(&client);
                to_load.insert(client);
            }
            seen = position;
        }
        if !given.is_empty() {
            let now = self.clock.now();
            let files = given
                .values()
                .map(|state| state.case_file(now, &self.rules))
                .collect();
            self.replace(&[], files, now);
        }
        self.refresh(to_load.into_iter().collect()).await?;
        self.progress.send_if_modified(|at| {
            let moved = seen > *at;
            *at = (*at).max(seen);
            moved
        });
        Ok(seen)
    }

    /// The clients with events in `(after, up_to]`.
    async fn clients_in(&self, after: u64, up_to: u64) -> Result<BTreeSet<ClientId>> {
        let mut clients = BTreeSet::new();
        let mut from = after;
        while from < up_to {
            let until = (from + 10_000).min(up_to);
            for event in self.log.read_range(from, until).await? {
                clients.insert(event.draft.client_id);
            }
            from = until;
        }
        Ok(clients)
    }

    async fn fire_due(&self) -> Result<()> {
        let now = self.clock.now();
        let due: Vec<ClientId> = {
            let index = self.index.read().expect("index lock");
            index
                .due
                .iter()
                .take_while(|(at, _)| *at <= now)
                .map(|(_, client)| *client)
                .collect()
        };
        self.refresh(due).await
    }

    fn next_due(&self) -> Option<DateTime<Utc>> {
        let index = self.index.read().expect("index lock");
        index.due.first().map(|(at, _)| *at)
    }

    /// Derives the clients' files afresh from their views, and tells subscribers what changed in
    /// their alerts.
    async fn refresh(&self, clients: Vec<ClientId>) -> Result<()> {
        for chunk in clients.chunks(RELOAD_CHUNK) {
            let stored = self.views.load(chunk.to_vec()).await?;
            let now = self.clock.now();
            let mut files = Vec::with_capacity(stored.len());
            for (client_id, stored) in &stored {
                let state = self.state_of(*client_id, stored).await?;
                files.push(state.case_file(now, &self.rules));
            }
            // A client whose view is gone (the views are being rebuilt) leaves the index until
            // its view is back, rather than be looked up again and again.
            let gone: Vec<ClientId> = chunk
                .iter()
                .filter(|client| !stored.contains_key(client))
                .copied()
                .collect();
            self.replace(&gone, files, now);
        }
        Ok(())
    }

    /// Puts fresh case files in the index (and drops those of `gone` clients), and tells
    /// subscribers what changed in their alerts.
    fn replace(&self, gone: &[ClientId], files: Vec<CaseFile>, now: DateTime<Utc>) {
        let mut notices = Vec::new();
        let mut earlier_due = false;
        {
            let mut index = self.index.write().expect("index lock");
            for client_id in gone {
                if let Some(old) = index.files.remove(client_id)
                    && let Some(at) = old.next_change
                {
                    index.due.remove(&(at, *client_id));
                }
            }
            let first_due = index.due.first().map(|(at, _)| *at);
            for file in files {
                let old = index.files.remove(&file.client_id);
                if let Some(at) = old.as_ref().and_then(|old| old.next_change) {
                    index.due.remove(&(at, file.client_id));
                }
                if let Some(at) = file.next_change {
                    index.due.insert((at, file.client_id));
                    earlier_due |= first_due.is_none_or(|first| at < first);
                }
                notices.extend(
                    changes(old.as_ref(), &file)
                        .into_iter()
                        .map(|(change, alert)| (change, alert, file.restricted)),
                );
                index.files.insert(file.client_id, file);
            }
        }
        self.publish(notices, now);
        if earlier_due {
            self.rescheduled.notify_one();
        }
    }

    fn publish(&self, changes: Vec<(Change, Alert, bool)>, now: DateTime<Utc>) {
        if changes.is_empty() {
            return;
        }
        let mut journal = self.journal.lock().expect("journal lock");
        let mut next_seq = self.next_seq.lock().expect("seq");
        for (change, alert, while_restricted) in changes {
            let notice = AlertNotice {
                seq: *next_seq,
                change,
                alert,
                noticed_at: now,
                while_restricted,
            };
            *next_seq += 1;
            if journal.len() == JOURNAL {
                journal.pop_front();
            }
            journal.push_back(notice.clone());
            let _ = self.notices.send(notice);
        }
    }
}

/// What subscribers must hear about a client's alerts going from `old` to `new`. A restricted
/// client's alerts are not processed: when a restriction begins its open alerts are withdrawn,
/// and when it is lifted those still open are raised again. An erasure withdraws them for good.
fn changes(old: Option<&CaseFile>, new: &CaseFile) -> Vec<(Change, Alert)> {
    let visible = |file: &CaseFile| -> Vec<Alert> {
        if file.withheld() {
            Vec::new()
        } else {
            file.alerts.clone()
        }
    };
    let before: HashMap<uuid::Uuid, Alert> = old
        .map(visible)
        .unwrap_or_default()
        .into_iter()
        .map(|alert| (alert.id, alert))
        .collect();
    let after = visible(new);
    let mut changes = Vec::new();
    for alert in &after {
        match before.get(&alert.id) {
            None if alert.is_open() => changes.push((Change::Raised, alert.clone())),
            // The agency expected to act changed (an involvement opened or closed): those who
            // followed it under the old agency hear it withdrawn, the new agency hears it raised.
            Some(previous) if previous.is_open() && previous.agency != alert.agency => {
                if alert.is_open() {
                    changes.push((Change::Withdrawn, previous.clone()));
                    changes.push((Change::Raised, alert.clone()));
                } else {
                    // Cleared by the same change that moved it (a mentor's involvement opened
                    // and its contact made, in one batch): those who followed it hear how it
                    // ended, not that its cause went away.
                    let ended = Alert {
                        agency: previous.agency.clone(),
                        ..alert.clone()
                    };
                    changes.push((Change::Cleared, ended));
                }
            }
            Some(previous) if previous.is_open() && !alert.is_open() => {
                changes.push((Change::Cleared, alert.clone()))
            }
            // Open again: the event that cleared it was retracted.
            Some(previous) if !previous.is_open() && alert.is_open() => {
                changes.push((Change::Raised, alert.clone()))
            }
            _ => {}
        }
    }
    let now_known: BTreeSet<uuid::Uuid> = after.iter().map(|alert| alert.id).collect();
    for (id, alert) in before {
        if !now_known.contains(&id) && alert.is_open() {
            changes.push((Change::Withdrawn, alert));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use travelmap_domain::EventId;
    use travelmap_projections::coordination::{Clearance, Resolution};
    use travelmap_projections::travel_map::Phase;

    fn alert(agency: &str, cleared: bool) -> Alert {
        Alert {
            id: uuid::Uuid::from_u128(1),
            client_id: ClientId(uuid::Uuid::from_u128(2)),
            kind: AlertKind::NoFirstDayContact,
            since: DateTime::UNIX_EPOCH,
            agency: agency.into(),
            cause: EventId(uuid::Uuid::from_u128(3)),
            detail: String::new(),
            cleared: cleared.then_some(Clearance {
                at: DateTime::UNIX_EPOCH,
                resolution: Resolution::Resolved,
                by: None,
            }),
        }
    }

    fn file(alerts: Vec<Alert>, restricted: bool) -> CaseFile {
        CaseFile {
            client_id: ClientId(uuid::Uuid::from_u128(2)),
            phase: Phase::Released,
            released_at: None,
            involvements: Vec::new(),
            appointments: Vec::new(),
            alerts,
            next_change: None,
            restricted,
            erased: false,
            as_of: DateTime::UNIX_EPOCH,
        }
    }

    fn kinds(changes: Vec<(Change, Alert)>) -> Vec<(Change, String)> {
        changes
            .into_iter()
            .map(|(change, alert)| (change, alert.agency))
            .collect()
    }

    #[test]
    fn raised_cleared_and_withdrawn() {
        let open = file(vec![alert("probation", false)], false);
        let cleared = file(vec![alert("probation", true)], false);
        let none = file(Vec::new(), false);
        assert_eq!(
            kinds(changes(None, &open)),
            [(Change::Raised, "probation".into())]
        );
        assert_eq!(
            kinds(changes(Some(&open), &cleared)),
            [(Change::Cleared, "probation".into())]
        );
        assert_eq!(
            kinds(changes(Some(&open), &none)),
            [(Change::Withdrawn, "probation".into())]
        );
        assert!(changes(Some(&open), &open).is_empty());
    }

    #[test]
    fn an_alert_open_again_is_raised_again() {
        let cleared = file(vec![alert("probation", true)], false);
        let open = file(vec![alert("probation", false)], false);
        assert_eq!(
            kinds(changes(Some(&cleared), &open)),
            [(Change::Raised, "probation".into())]
        );
    }

    #[test]
    fn a_new_agency_to_act_is_told_and_the_old_one_released() {
        let before = file(vec![alert("prison", false)], false);
        let after = file(vec![alert("mentoring", false)], false);
        assert_eq!(
            kinds(changes(Some(&before), &after)),
            [
                (Change::Withdrawn, "prison".into()),
                (Change::Raised, "mentoring".into())
            ]
        );
    }

    #[test]
    fn an_alert_cleared_as_it_moves_is_told_cleared_to_whoever_followed_it() {
        let before = file(vec![alert("prison", false)], false);
        let after = file(vec![alert("mentoring", true)], false);
        assert_eq!(
            kinds(changes(Some(&before), &after)),
            [(Change::Cleared, "prison".into())]
        );
    }

    #[test]
    fn a_restriction_withdraws_open_alerts_and_lifting_it_raises_them_again() {
        let open = file(vec![alert("probation", false)], false);
        let restricted = file(vec![alert("probation", false)], true);
        assert_eq!(
            kinds(changes(Some(&open), &restricted)),
            [(Change::Withdrawn, "probation".into())]
        );
        assert_eq!(
            kinds(changes(Some(&restricted), &open)),
            [(Change::Raised, "probation".into())]
        );
    }

    #[test]
    fn an_erasure_withdraws_open_alerts_for_good() {
        let open = file(vec![alert("probation", false)], false);
        let erased = CaseFile {
            erased: true,
            ..open.clone()
        };
        assert_eq!(
            kinds(changes(Some(&open), &erased)),
            [(Change::Withdrawn, "probation".into())]
        );
        assert!(changes(Some(&erased), &erased).is_empty());
    }
}
