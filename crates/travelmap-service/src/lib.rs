//! The application layer: the use cases of Travelmap, shared by the HTTP API and the CLI so that
//! `travelmap import` and `POST /v1/events` go through exactly the same checks.
//!
//! Recording follows the optimistic pattern of event sourcing: look up ids already recorded
//! (retries answer with the original receipt), load each client's journey aggregate, let it
//! decide, and append against the stream version it decided on. If another writer moved a stream
//! in between, the store refuses the append and the whole decision is made again on fresh state.
//!
//! Within one process, decisions about the same client take turns (a striped lock per client):
//! a burst of writes to one busy client would otherwise keep invalidating each other's decisions
//! and fail after the retries run out. The store's version check remains the guard across
//! processes.
//!
//! Knows the domain, the storage traits and the projections; knows nothing of HTTP or SQL.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use travelmap_domain::agency::AgencyKind;
use travelmap_domain::journey::{self, Command};
use travelmap_domain::{
    ClientId, ClientJourney, EventDraft, EventId, JourneyEvent, Provenance, RecordedEvent,
    content_digest,
};
use travelmap_projections::{Access, ClientState, Projector, TravelMap};
use travelmap_store::{
    EntriesSignal, EventLog, Keyring, NewEvent, Receipt, SealedLog, StreamAppend, ViewStore,
};
use uuid::Uuid;

pub mod coordination;
mod protection;
pub mod subscriptions;
pub mod trail;

/// How the background tasks are doing; the webhook dispatcher reports here too.
pub use travelmap_projections::health;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often a decision is retried when concurrent writers keep moving the same streams.
const MAX_ATTEMPTS: usize = 8;
/// How many clients' journey aggregates to keep in memory between decisions.
const JOURNEY_CACHE_CLIENTS: usize = 16_384;

/// The longest a write waits for its clients' earlier writes (their turns) before it is
/// answered that the clients are busy (`503`, to be retried).
pub(crate) const TURN_PATIENCE: Duration = Duration::from_secs(10);
/// Number of lock stripes for per-client turn-taking. Two clients share a stripe with
/// probability 1/1024, which only means they take turns.
const CLIENT_STRIPES: usize = 1024;
/// The longest a read waits for the projection to reach a requested position.
const MAX_PROJECTION_WAIT: Duration = Duration::from_secs(5);
/// The largest page of the global feed.
pub const MAX_FEED_PAGE: usize = 1000;

/// Work that runs beside a commit, at most once: the operation's audit entries (see
/// [`Journeys::record_logged`]). The commit waits for them: the log stores the events only once
/// told that the work succeeded (see [`travelmap_store::handshake`]). The work is made when it
/// starts, given the signal its trail's writer may tell as soon as the entries are committed
/// (`None` where no commit waits for it).
struct Alongside<F, L: Future> {
    pending: Option<F>,
    done: Option<L::Output>,
}

impl<T, E, F, L> Alongside<F, L>
where
    F: FnOnce(Option<EntriesSignal>) -> L,
    L: Future<Output = std::result::Result<T, E>>,
{
    fn new(work: F) -> Self {
        Self {
            pending: Some(work),
            done: None,
        }
    }

    /// Awaits the append that `append` makes of the announcement it is given, starting the work
    /// beside it (if it has not run yet) only once the log says it accepted the events: a
    /// refused append leaves the work pending, as if no commit had been tried. The log commits
    /// only once the work has succeeded.
    async fn beside_accepted<R, C: Future<Output = travelmap_store::Result<R>>>(
        &mut self,
        append: impl FnOnce(travelmap_store::Announcement) -> C,
    ) -> C::Output {
        let (accepted, acceptance) = tokio::sync::oneshot::channel();
        let (report, entries) = travelmap_store::entries_handshake();
        let announcement = travelmap_store::Announcement {
            accepted,
            entries: Some(entries),
        };
        match self.pending.take() {
            Some(work) => {
                let after = async move {
                    match acceptance.await {
                        Ok(()) => {
                            let done = work(report.signal()).await;
                            report.report(done.is_ok());
                            Ok(done)
                        }
                        Err(_) => Err(work),
                    }
                };
                let (committed, done) = tokio::join!(append(announcement), after);
                match done {
                    Ok(done) => self.done = Some(done),
                    Err(work) => self.pending = Some(work),
                }
                committed
            }
            None => {
                // The work ran beside an earlier attempt, whose commit then failed: what it
                // did stands for this one.
                if !self.done.as_ref().is_some_and(|done| done.is_ok()) {
                    return Err(travelmap_store::Error::Unlogged);
                }
                report.report(true);
                append(announcement).await
            }
        }
    }

    /// The work's output, running it now if no commit ran it.
    async fn finish(self) -> L::Output {
        match (self.done, self.pending) {
            (Some(done), _) => done,
            (None, Some(work)) => work(None).await,
            (None, None) => unreachable!("work is either pending or done"),
        }
    }
}

/// Why a use case failed. Variants carrying `index` refer to the position of the event in the
/// submitted batch (0 for a single event).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("event {id} appears more than once in this batch (first at index {first})")]
    RepeatedInBatch {
        index: usize,
        first: usize,
        id: EventId,
    },
    #[error("event {id} was already recorded with different content, or by another agency")]
    DuplicateConflict { index: usize, id: EventId },
    #[error(
        "event {id} was already recorded, and its personal fields were destroyed since (an \
         erasure or the retention schedule): a retry can no longer be matched against it"
    )]
    Unmatchable { index: usize, id: EventId },
    #[error("the stream of client {client_id} is at version {actual}, not the expected {expected}")]
    VersionConflict {
        index: usize,
        client_id: ClientId,
        expected: u64,
        actual: u64,
    },
    /// The journey aggregate refused the event (e.g. a correction of an unknown event).
    #[error("{source}")]
    Refused {
        index: usize,
        source: journey::Error,
    },
    #[error("no client {0} is recorded")]
    UnknownClient(ClientId),
    #[error("client {0} had no recorded events at the requested time")]
    NotYetRecorded(ClientId),
    #[error("the projection did not reach position {0} in time; retry shortly")]
    ProjectionBehind(u64),
    #[error("client {0} is recorded but not yet in the travel maps; retry shortly")]
    NotYetProjected(ClientId),
    #[error("too many concurrent writes to the same clients; retry shortly")]
    Contention,
    /// A data-protection decision submitted as an ordinary event.
    #[error(
        "`{event_type}` is recorded by the service itself, through the data-protection endpoints and the retention run"
    )]
    Reserved {
        index: usize,
        event_type: &'static str,
    },
    #[error("processing of client {0} is not restricted")]
    NotRestricted(ClientId),
    /// Personal data cannot be erased where it was never sealed (only the benchmark's
    /// unencrypted baseline runs without a keyring).
    #[error("this service runs without a keyring, so personal data cannot be erased")]
    NoKeyring,
    #[error(transparent)]
    Store(#[from] travelmap_store::Error),
    #[error(transparent)]
    Projection(#[from] travelmap_projections::Error),
}

impl Error {
    /// Whether this process's configuration is at fault (a master key it lacks; see
    /// [`travelmap_store::Error::is_misconfiguration`]).
    pub fn is_misconfiguration(&self) -> bool {
        match self {
            Error::Store(error) => error.is_misconfiguration(),
            Error::Projection(error) => error.is_misconfiguration(),
            _ => false,
        }
    }

    /// The position in the submission of the event this error is about, if it is about one.
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::RepeatedInBatch { index, .. }
            | Self::DuplicateConflict { index, .. }
            | Self::Unmatchable { index, .. }
            | Self::VersionConflict { index, .. }
            | Self::Refused { index, .. }
            | Self::Reserved { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// One submitted event and the stream version its sender last saw (if it cares).
#[derive(Debug, Clone)]
pub struct Submission {
    pub draft: EventDraft,
    pub expected_version: Option<u64>,
}

/// The answer for one submitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub receipt: Receipt,
    /// False when the event had already been recorded (an idempotent retry).
    pub created: bool,
}

/// A client's journey as deciding needs it, from the outlines of its recorded events.
fn journey_from(outlines: &[travelmap_store::Outline]) -> ClientJourney {
    let mut journey = ClientJourney::with_capacity(outlines.len());
    for outline in outlines {
        let retracts = (outline.event_type == "event.retracted")
            .then_some(outline.target)
            .flatten();
        journey.remember(
            outline.id,
            &outline.event_type,
            retracts,
            outline.occurred_on,
        );
    }
    journey
}

pub(crate) fn stripe_of(client_id: ClientId) -> usize {
    (client_id.0.as_u128() % CLIENT_STRIPES as u128) as usize
}

/// A client's stored view, if any, and how many events its stream holds.
struct Projected {
    view: Option<ClientState>,
    recorded: u64,
}

impl Projected {
    /// The view, if it has folded every recorded event.
    fn current(&self) -> Option<&ClientState> {
        self.view
            .as_ref()
            .filter(|state| state.version >= self.recorded)
    }

    fn into_current(self) -> Option<ClientState> {
        self.view.filter(|state| state.version >= self.recorded)
    }
}

/// A read of a client's current travel map: see [`Journeys::consult`].
#[derive(Debug)]
pub struct Consultation {
    pub access: Option<Access>,
    pub map: Result<TravelMap>,
}

/// The use cases, over any backend.
pub struct Journeys {
    log: Arc<dyn EventLog>,
    views: Arc<dyn ViewStore>,
    keyring: Option<Arc<Keyring>>,
    projector: Arc<Projector>,
    client_turns: Vec<tokio::sync::Mutex<()>>,
    /// Journeys as of the last append this process made for them, read and written only while
    /// the client's turn is held. An entry can still be behind the log (another process appended,
    /// or a request was abandoned after its append was queued); the store's version check then
    /// refuses the append, the entry is dropped and the journey loaded afresh.
    journeys: std::sync::Mutex<HashMap<ClientId, ClientJourney>>,
    /// Why the last attempt to record events failed in the store, if it did and none has
    /// succeeded since: a store that still answers reads may refuse every write (a full disk, a
    /// file made read-only), which the readiness check must show.
    failing_writes: std::sync::Mutex<Option<String>>,
}

impl Journeys {
    /// The use cases over `log` and `views`. With a keyring (always, except in the benchmark's
    /// unencrypted baseline), personal fields are sealed in the log and identifiers indexed by
    /// keyed hash.
    pub async fn new(
        log: Arc<dyn EventLog>,
        views: Arc<dyn ViewStore>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<Self> {
        let log: Arc<dyn EventLog> = match &keyring {
            Some(keyring) => Arc::new(SealedLog::new(log, keyring.clone())),
            None => log,
        };
        let projector =
            Arc::new(Projector::new(log.clone(), views.clone(), keyring.clone()).await?);
        Ok(Self {
            log,
            views,
            keyring,
            projector,
            client_turns: (0..CLIENT_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            journeys: std::sync::Mutex::new(HashMap::new()),
            failing_writes: std::sync::Mutex::new(None),
        })
    }

    pub fn projector(&self) -> &Arc<Projector> {
        &self.projector
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn views(&self) -> &Arc<dyn ViewStore> {
        &self.views
    }

    /// Records submitted events all-or-nothing. Events already recorded with the same content
    /// are answered with their original receipts (`created: false`) and not stored again.
    /// Data-protection decisions are refused here: they are recorded by their own use cases
    /// ([`Self::record_erasure`] and the others), which also carry them out.
    pub async fn record(
        &self,
        provenance: &Provenance,
        submissions: &[Submission],
    ) -> Result<Vec<Outcome>> {
        let (outcomes, _) = self
            .record_logged(provenance, None, submissions, |_| {
                std::future::ready(Ok::<(), std::convert::Infallible>(()))
            })
            .await?;
        Ok(outcomes)
    }

    /// [`Self::record`], with `log` (the operation's audit entries) written while the events
    /// are inserted rather than before, so that the request waits for the slower of the two and
    /// then the commit, not for all three in turn. `log` runs once the events are decided: a
    /// submission refused by its checks runs none. The events are committed only once `log` has succeeded: if it fails, nothing
    /// is stored and the answer is [`travelmap_store::Error::Unlogged`], so that no event is
    /// ever stored without its entries, even if the process dies between the two. An entry
    /// written beside a commit that then fails stays (the operation was allowed and attempted).
    /// Retries of events already recorded run it as well, with nothing to commit; its output
    /// is returned beside the outcomes, for the caller to act on. `kind` is the posting agency's
    /// kind, when it has one: corrections and retractions are then held to who may post the
    /// type they rectify (the caller has already checked the submitted types themselves).
    pub async fn record_logged<T, E, F, L>(
        &self,
        provenance: &Provenance,
        kind: Option<AgencyKind>,
        submissions: &[Submission],
        log: F,
    ) -> Result<(Vec<Outcome>, L::Output)>
    where
        F: FnOnce(Option<EntriesSignal>) -> L,
        L: Future<Output = std::result::Result<T, E>>,
    {
        if let Some((index, submission)) = submissions.iter().enumerate().find(|(_, submission)| {
            travelmap_domain::personal::is_lifecycle(submission.draft.event.event_type())
        }) {
            return Err(Error::Reserved {
                index,
                event_type: submission.draft.event.event_type(),
            });
        }
        let mut alongside = Alongside::new(log);
        let recorded = self
            .record_events(provenance, kind, submissions, &mut alongside)
            .await;
        self.note_write(&recorded);
        Ok((recorded?, alongside.finish().await))
    }

    /// Keeps [`Self::failing_writes`] up to date with an attempt to record events: a fault of
    /// the store marks writes failing, and only an append that stored something clears that (a
    /// retry answered with its receipt wrote nothing). Refusals the store makes for what is
    /// stored (a version moved on, a duplicate, an erased client) are answers, not faults; and
    /// a moment's contention (busy, a transaction the database aborted) or a database out of
    /// reach (which the store probe's read reports itself) is no refusal of writes.
    pub(crate) fn note_write(&self, recorded: &Result<Vec<Outcome>>) {
        let mut failing = self.failing_writes.lock().expect("write failure lock");
        match recorded {
            Ok(outcomes) if outcomes.iter().any(|outcome| outcome.created) => *failing = None,
            Err(Error::Store(error))
                if !error.is_transient()
                    && !matches!(
                        error,
                        travelmap_store::Error::StreamConflict { .. }
                            | travelmap_store::Error::DuplicateEvent(_)
                            | travelmap_store::Error::KeyWithdrawn(_)
                            | travelmap_store::Error::ClientErased(_)
                            // The trail refused the entries, or its file is gone: not the
                            // store's fault (readiness reports the trail apart).
                            | travelmap_store::Error::Unlogged
                            | travelmap_store::Error::TrailReplaced
                    ) =>
            {
                *failing = Some(error.to_string());
            }
            _ => {}
        }
    }

    /// Why the last attempt to record events failed in the store, if none has succeeded since.
    pub fn failing_writes(&self) -> Option<String> {
        self.failing_writes
            .lock()
            .expect("write failure lock")
            .clone()
    }

    /// [`Self::record_logged`] without the check for data-protection decisions.
    async fn record_events<T, E, F, L>(
        &self,
        provenance: &Provenance,
        kind: Option<AgencyKind>,
        submissions: &[Submission],
        alongside: &mut Alongside<F, L>,
    ) -> Result<Vec<Outcome>>
    where
        F: FnOnce(Option<EntriesSignal>) -> L,
        L: Future<Output = std::result::Result<T, E>>,
    {
        let normalised;
        let submissions = match self.normalise_corrections(submissions).await? {
            Some(copy) => {
                normalised = copy;
                &normalised[..]
            }
            None => submissions,
        };
        let mut first_index: HashMap<EventId, usize> = HashMap::with_capacity(submissions.len());
        for (index, submission) in submissions.iter().enumerate() {
            let id = submission.draft.id;
            if let Some(&first) = first_index.get(&id) {
                return Err(Error::RepeatedInBatch { index, first, id });
            }
            first_index.insert(id, index);
        }
        let fingerprints = || async {
            self.log
                .fingerprints(
                    submissions
                        .iter()
                        .map(|submission| {
                            let digest = content_digest(&submission.draft, &provenance.agency);
                            (&submission.draft, digest)
                        })
                        .collect(),
                )
                .await
        };
        let mut digests: Vec<[u8; 32]> = fingerprints().await?;

        // Take the turns of every client in the submission, in stripe order so that two batches
        // sharing clients cannot wait on each other.
        let mut stripes: Vec<usize> = submissions
            .iter()
            .map(|submission| stripe_of(submission.draft.client_id))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let take_turns = async {
            let mut turns = Vec::with_capacity(stripes.len());
            for stripe in stripes {
                turns.push(self.client_turns[stripe].lock().await);
            }
            turns
        };
        // Bounded, so that writes queued behind one that waits on an unanswering store are told
        // so in turn rather than each waiting out the ones before it. Nothing is sent before
        // the turns are taken, so giving up here leaves nothing half done.
        let Ok(_turns) = tokio::time::timeout(TURN_PATIENCE, take_turns).await else {
            return Err(Error::Contention);
        };

        // A refused duplicate must leave no audit entry, and the entries are written beside the
        // commit: they start only once the log has announced that the events passed its checks.
        // So the first attempt can assume every event is new and skip looking the ids up (a
        // taken id is caught by the log's unique index, before any entry), and trust the cached
        // journeys. A refusal or a conflict may come from a stale journey (another process moved
        // the stream), or mean the request was a retry, so every later attempt looks the ids up
        // and reads the journeys from the store.
        let mut retry = false;
        for attempt in 0..MAX_ATTEMPTS {
            match self
                .try_record(provenance, kind, submissions, &digests, retry, alongside)
                .await
            {
                // A dated fact refused on its own: a retry of a stored event is the one thing
                // that makes it acceptable, so only that id is looked up, rather than retrying
                // the whole submission against the store (and dropping its cached journeys).
                Err(
                    refused @ Error::Refused {
                        index,
                        source: journey::Error::FactAfterEvent(_),
                    },
                ) if !retry => {
                    if self
                        .log
                        .lookup(vec![submissions[index].draft.id])
                        .await?
                        .is_empty()
                    {
                        return Err(refused);
                    }
                    retry = true;
                }
                Err(Error::Refused { .. } | Error::VersionConflict { .. }) if !retry => {
                    retry = true;
                }
                // A key this process had cached for sealing is gone (destroyed by another
                // process, or lost with an unflushed commit in a database crash); nothing was
                // stored. The next attempt seals under the key in force, and the digests are
                // keyed again, since the key they were keyed with may be gone too.
                Err(Error::Store(travelmap_store::Error::KeyWithdrawn(_))) => {
                    digests = fingerprints().await?;
                }
                Err(Error::Store(
                    travelmap_store::Error::StreamConflict { .. }
                    | travelmap_store::Error::DuplicateEvent(_),
                )) => {
                    retry = true;
                    // Another writer moved the stream or took an id: back off a little, more each
                    // time, with jitter so that competing processes do not retry in lockstep.
                    let jitter = u64::from(Uuid::new_v4().as_bytes()[0]) % 5;
                    let pause = Duration::from_millis((1 << attempt.min(5)) + jitter);
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
        Err(Error::Contention)
    }

    /// The submissions with each correction's replacement data in the form its target's type
    /// reads it (see [`travelmap_domain::payloads::EventCorrected::normalised_data`]), so that
    /// a retry spelled differently compares equal and the history shows what the travel map
    /// applies; `None` where there is no correction. The target is looked for among the
    /// client's recorded events and the submission's earlier ones, as the journey looks for it.
    async fn normalise_corrections(
        &self,
        submissions: &[Submission],
    ) -> Result<Option<Vec<Submission>>> {
        let is_correction = |submission: &Submission| {
            matches!(submission.draft.event, JourneyEvent::EventCorrected(_))
        };
        let mut clients: Vec<ClientId> = submissions
            .iter()
            .filter(|submission| is_correction(submission))
            .map(|submission| submission.draft.client_id)
            .collect();
        if clients.is_empty() {
            return Ok(None);
        }
        clients.sort_unstable_by_key(|client| client.0);
        clients.dedup();
        let mut types: HashMap<(ClientId, EventId), String> = HashMap::new();
        for (client, outlines) in self.log.outlines(clients).await? {
            types.extend(
                outlines
                    .into_iter()
                    .map(|outline| ((client, outline.id), outline.event_type)),
            );
        }
        let mut normalised = submissions.to_vec();
        for submission in &mut normalised {
            let client = submission.draft.client_id;
            if let JourneyEvent::EventCorrected(correction) = &mut submission.draft.event
                && let Some(target_type) = types.get(&(client, correction.event_id))
                && let Some(data) = correction.normalised_data(target_type)
            {
                correction.data = data;
            }
            types
                .entry((client, submission.draft.id))
                .or_insert_with(|| submission.draft.event.event_type().to_owned());
        }
        Ok(Some(normalised))
    }

    async fn try_record<T, E, F, L>(
        &self,
        provenance: &Provenance,
        kind: Option<AgencyKind>,
        submissions: &[Submission],
        digests: &[[u8; 32]],
        retry: bool,
        alongside: &mut Alongside<F, L>,
    ) -> Result<Vec<Outcome>>
    where
        F: FnOnce(Option<EntriesSignal>) -> L,
        L: Future<Output = std::result::Result<T, E>>,
    {
        let existing: HashMap<EventId, _> = if retry {
            let ids = submissions.iter().map(|s| s.draft.id).collect();
            self.log
                .lookup(ids)
                .await?
                .into_iter()
                .map(|existing| (existing.receipt.id, existing))
                .collect()
        } else {
            HashMap::new()
        };

        let mut outcomes: Vec<Option<Outcome>> = vec![None; submissions.len()];
        // New events grouped by client, clients in order of first appearance (found by index:
        // a batch of 1,000 events may name as many clients).
        let mut by_client: Vec<(ClientId, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<ClientId, usize> = HashMap::new();
        for (index, submission) in submissions.iter().enumerate() {
            let id = submission.draft.id;
            if let Some(existing) = existing.get(&id) {
                if existing.shredded {
                    // Answered the same whatever was sent: a match would confirm a guess of the
                    // fields the retention schedule destroyed.
                    return Err(Error::Unmatchable { index, id });
                }
                if existing.digest != digests[index] {
                    return Err(Error::DuplicateConflict { index, id });
                }
                outcomes[index] = Some(Outcome {
                    receipt: existing.receipt,
                    created: false,
                });
                continue;
            }
            let client_id = submission.draft.client_id;
            match group_of.entry(client_id) {
                std::collections::hash_map::Entry::Occupied(group) => {
                    by_client[*group.get()].1.push(index)
                }
                std::collections::hash_map::Entry::Vacant(group) => {
                    group.insert(by_client.len());
                    by_client.push((client_id, vec![index]));
                }
            }
        }

        let mut journeys = self.cached_journeys(&by_client, retry);
        let uncached: Vec<ClientId> = by_client
            .iter()
            .map(|(client, _)| *client)
            .filter(|client| !journeys.contains_key(client))
            .collect();
        if !uncached.is_empty() {
            for (client_id, outlines) in self.log.outlines(uncached).await? {
                journeys.insert(client_id, journey_from(&outlines));
            }
        }
        let mut decided = Vec::with_capacity(by_client.len());
        let mut streams = Vec::with_capacity(by_client.len());
        for (client_id, indices) in &by_client {
            let mut journey = journeys.remove(client_id).unwrap_or_default();
            let expected_version = journey.version();
            let mut events = Vec::with_capacity(indices.len());
            for &index in indices {
                let submission = &submissions[index];
                let sink = EventSink::default();
                let command = Command::Record {
                    draft: submission.draft.clone(),
                    expected_version: submission.expected_version,
                    poster: kind,
                };
                journey
                    .handle(command, &(), &sink)
                    .await
                    .map_err(|refusal| match refusal {
                        journey::Error::VersionConflict { expected, actual } => {
                            Error::VersionConflict {
                                index,
                                client_id: *client_id,
                                expected,
                                actual,
                            }
                        }
                        source => Error::Refused { index, source },
                    })?;
                events.extend(sink.collect().await.into_iter().map(|draft| NewEvent {
                    draft,
                    digest: digests[index],
                    sealed: None,
                }));
            }
            streams.push(StreamAppend {
                client_id: *client_id,
                expected_version,
                events,
            });
            decided.push((*client_id, journey));
        }

        if !streams.is_empty() {
            let appended = alongside
                .beside_accepted(|announcement| {
                    self.log.append_announced(provenance, streams, announcement)
                })
                .await;
            self.remember_journeys(decided, appended.is_ok());
            let receipts = appended?;
            let order = by_client.iter().flat_map(|(_, indices)| indices.iter());
            for (&index, receipt) in order.zip(receipts) {
                outcomes[index] = Some(Outcome {
                    receipt,
                    created: true,
                });
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every submission is answered"))
            .collect())
    }

    /// Cached journeys of the given clients. On a retry the cache is not trusted: the first
    /// attempt failed, possibly because another process moved a stream.
    fn cached_journeys(
        &self,
        by_client: &[(ClientId, Vec<usize>)],
        retry: bool,
    ) -> HashMap<ClientId, ClientJourney> {
        let mut cache = self.journeys.lock().expect("journey cache lock");
        if retry {
            for (client, _) in by_client {
                cache.remove(client);
            }
            return HashMap::new();
        }
        by_client
            .iter()
            .filter_map(|(client, _)| Some((*client, cache.get(client)?.clone())))
            .collect()
    }

    /// Keeps the journeys just decided if their append committed, and forgets them otherwise.
    fn remember_journeys(&self, decided: Vec<(ClientId, ClientJourney)>, committed: bool) {
        let mut cache = self.journeys.lock().expect("journey cache lock");
        if !committed {
            for (client, _) in &decided {
                cache.remove(client);
            }
            return;
        }
        if cache.len() + decided.len() > JOURNEY_CACHE_CLIENTS {
            // Random eviction (a hash map iterates in no useful order): cheap, bounded, and good
            // enough, since a miss only costs one outline query.
            let excess = cache.len() + decided.len() - JOURNEY_CACHE_CLIENTS / 2;
            let evicted: Vec<ClientId> = cache.keys().take(excess).copied().collect();
            for client in evicted {
                cache.remove(&client);
            }
        }
        cache.extend(decided);
    }

    /// A client's history as recorded, in stream order; with `as_of`, what had been recorded by
    /// then.
    pub async fn history(
        &self,
        client_id: ClientId,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Vec<RecordedEvent>> {
        let events = self.log.read_stream(client_id, as_of).await?;
        if events.is_empty() && (as_of.is_none() || !self.client_exists(client_id).await?) {
            return Err(Error::UnknownClient(client_id));
        }
        Ok(events)
    }

    async fn client_exists(&self, client_id: ClientId) -> Result<bool> {
        Ok(!self.log.stream_versions(vec![client_id]).await?.is_empty())
    }

    /// The client's travel map. Without `as_of` it is read from the projection (after waiting,
    /// if asked, until the projection has reached `min_position`); with `as_of` it is folded
    /// from the history recorded by then and derived for that moment.
    pub async fn travel_map(
        &self,
        client_id: ClientId,
        as_of: Option<DateTime<Utc>>,
        min_position: Option<u64>,
    ) -> Result<TravelMap> {
        if let Some(as_of) = as_of {
            let events = self.log.read_stream(client_id, Some(as_of)).await?;
            if events.is_empty() {
                return Err(if self.client_exists(client_id).await? {
                    Error::NotYetRecorded(client_id)
                } else {
                    Error::UnknownClient(client_id)
                });
            }
            return Ok(ClientState::from_history(client_id, events).travel_map(as_of));
        }
        if let Some(position) = min_position {
            self.wait_for_projection(position).await?;
        }
        let Some(stored) = self.views.get(client_id).await? else {
            // Recorded but not yet projected is a different answer from never recorded.
            return Err(if self.client_exists(client_id).await? {
                Error::NotYetProjected(client_id)
            } else {
                Error::UnknownClient(client_id)
            });
        };
        let state = self.state_of(client_id, &stored).await?;
        Ok(state.travel_map(Utc::now()))
    }

    /// What a read of the client's current travel map needs, from one read of its view: who may
    /// see the client now (`None` for a client never recorded), decided as
    /// [`Self::access`] does, and the map itself, answered as [`Self::travel_map`] does without
    /// `as_of`. The access decision must be checked before the map is disclosed.
    pub async fn consult(
        &self,
        client_id: ClientId,
        min_position: Option<u64>,
    ) -> Result<Consultation> {
        if let Some(position) = min_position {
            self.wait_for_projection(position).await?;
        }
        let now = Utc::now();
        let Some(projected) = self.projected(vec![client_id]).await?.remove(&client_id) else {
            return Ok(Consultation {
                access: None,
                map: Err(Error::UnknownClient(client_id)),
            });
        };
        let map = projected.view.as_ref().map(|state| state.travel_map(now));
        let access = match (projected.current(), &map) {
            // The usual case: the view has folded every recorded event.
            (Some(state), Some(map)) => state.access_with(map, now),
            // The projection is behind for this client: access is decided on its whole history.
            _ => self.history_state(client_id).await?.access(now),
        };
        Ok(Consultation {
            access: Some(access),
            map: map.ok_or(Error::NotYetProjected(client_id)),
        })
    }

    /// Who may see the client now (`None` for a client never recorded).
    pub async fn access(&self, client_id: ClientId) -> Result<Option<Access>> {
        let now = Utc::now();
        Ok(self
            .current_states(vec![client_id])
            .await?
            .remove(&client_id)
            .map(|state| state.access(now)))
    }

    /// Which of `clients` are under a restriction of processing now.
    pub async fn restricted(
        &self,
        clients: Vec<ClientId>,
    ) -> Result<std::collections::HashSet<ClientId>> {
        let now = Utc::now();
        Ok(self
            .current_states(clients)
            .await?
            .into_iter()
            .filter(|(_, state)| state.access(now).restricted)
            .map(|(client_id, _)| client_id)
            .collect())
    }

    /// The clients' states as of every event recorded: the stored view where it is current,
    /// folded from the history where the projection has not reached the client yet, so that
    /// access decisions never depend on projection lag. Clients never recorded are left out.
    async fn current_states(
        &self,
        clients: Vec<ClientId>,
    ) -> Result<HashMap<ClientId, ClientState>> {
        let mut states = HashMap::with_capacity(clients.len());
        for (client_id, projected) in self.projected(clients).await? {
            let state = match projected.into_current() {
                Some(state) => state,
                None => self.history_state(client_id).await?,
            };
            states.insert(client_id, state);
        }
        Ok(states)
    }

    /// The clients' stored views (parsed) beside their streams' versions, read together. Clients
    /// never recorded are left out.
    async fn projected(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, Projected>> {
        let (mut stored, recorded) = tokio::try_join!(
            self.views.load(clients.clone()),
            self.log.stream_versions(clients),
        )?;
        let mut projected = HashMap::with_capacity(recorded.len());
        for (client_id, recorded) in recorded {
            let view = match stored.remove(&client_id) {
                Some(stored) => Some(self.state_of(client_id, &stored).await?),
                None => None,
            };
            projected.insert(client_id, Projected { view, recorded });
        }
        Ok(projected)
    }

    /// The client's state from its stored view, or, where the view cannot be read back (see
    /// [`readable`]), from its history, which holds everything the view did.
    pub async fn state_of(
        &self,
        client_id: ClientId,
        stored: &travelmap_store::StoredState,
    ) -> Result<ClientState> {
        match readable(client_id, stored) {
            Some(state) => Ok(state),
            None => self.history_state(client_id).await,
        }
    }

    /// The client's state folded from its whole history, for when its view is behind or cannot
    /// be read back.
    async fn history_state(&self, client_id: ClientId) -> Result<ClientState> {
        Ok(ClientState::from_history(
            client_id,
            self.log.read_stream(client_id, None).await?,
        ))
    }

    /// Waits until the projection has folded `position`.
    pub async fn wait_for_projection(&self, position: u64) -> Result<()> {
        let mut progress = self.projector.progress();
        tokio::time::timeout(MAX_PROJECTION_WAIT, progress.wait_for(|at| *at >= position))
            .await
            .map_err(|_| Error::ProjectionBehind(position))?
            .map_err(|_| Error::ProjectionBehind(position))?;
        Ok(())
    }

    /// Clients known under an agency identifier.
    pub async fn find_by_identifier(&self, kind: &str, value: &str) -> Result<Vec<ClientId>> {
        let indexed = match &self.keyring {
            Some(keyring) => keyring.lookup_hash(kind, value),
            None => value.to_owned(),
        };
        Ok(self.views.find_by_identifier(kind, &indexed).await?)
    }

    /// Outcome statistics over every client's travel-map state, with small counts suppressed
    /// (see `travelmap_projections::statistics`). Reads the stored views page by page.
    pub async fn outcome_statistics(
        &self,
        query: &travelmap_projections::statistics::OutcomeQuery,
    ) -> Result<travelmap_projections::statistics::OutcomeReport> {
        const PAGE: usize = 1_000;
        let mut states: Vec<ClientState> = Vec::new();
        let mut after = None;
        loop {
            let page = self.views.scan(after, PAGE).await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(*last);
            let now = Utc::now();
            for (client_id, stored) in page {
                let state = self.state_of(client_id, &stored).await?;
                // Restricted data may be stored, not processed: it stays out of statistics.
                if !state.access(now).restricted {
                    states.push(state);
                }
            }
        }
        // Suppression solves linear programs: tens of milliseconds for hundreds of groups, more
        // where cells are pinned. Off the runtime's threads, and one report at a time, so that
        // a burst of large reports queues instead of taking every core; a request dropped while
        // it waits costs nothing.
        static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
        let _turn = ONE_AT_A_TIME
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let query = query.clone();
        let report = tokio::task::spawn_blocking(move || {
            travelmap_projections::statistics::outcomes(&states, &query)
        })
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        Ok(report)
    }

    /// A page of the global feed after `after`.
    pub async fn feed(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        Ok(self
            .log
            .read_all(after, limit.clamp(1, MAX_FEED_PAGE))
            .await?)
    }
}

/// A stored view parsed, or `None` when it cannot be read back (a disk fault, a hand edit), with
/// a warning: the caller folds the client from the log instead, which holds everything a view
/// does. The projector saves the view again at the client's next event (or `travelmap rebuild`
/// makes every view again), so one damaged view never stops reads, statistics or the index.
pub fn readable(client_id: ClientId, stored: &travelmap_store::StoredState) -> Option<ClientState> {
    match stored.decode() {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::warn!(
                %client_id,
                %error,
                "a stored view cannot be read back; using the client's history instead"
            );
            None
        }
    }
}
