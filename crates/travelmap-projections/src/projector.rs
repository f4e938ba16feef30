//! The client-view projector: a catch-up consumer of the global feed.
//!
//! It reads the feed from its checkpoint in pages, folds each page into the affected clients'
//! states, and saves the changed states and then the new checkpoint (with the last of them, in
//! one transaction). A crash loses nothing (the next run starts from the saved checkpoint) and
//! applies nothing twice (each state remembers the last position it folded).
//!
//! States are cached in memory between pages, so a busy client is not re-read for every page; the
//! cache is bounded (and dropped after a rebuild) so memory does not grow with the size of the log.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use travelmap_domain::{ClientId, RecordedEvent};
use travelmap_store::{ClientView, EventLog, Keyring, ViewStore};

use crate::Result;
use crate::health::{Reporter, waiting_for_lease_once};
use crate::travel_map::ClientState;

/// How the projector pages through the feed and how much it keeps in memory.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Events per page read from the feed.
    page: usize,
    /// Save states once more than this many events are folded but unsaved.
    flush_after: usize,
    /// Keep at most this many clients' states cached after a save.
    cache_clients: usize,
    /// How many pages to read ahead of the one being folded.
    read_ahead: usize,
    /// States are saved in chunks of this many clients, so that serialising some chunks
    /// overlaps writing others.
    save_chunk: usize,
    /// Pages are ranges of a full read of the log (a rebuild, between
    /// [`EventLog::prepare_full_read`] and [`EventLog::end_full_read`]).
    full_read: bool,
}

/// Following the live feed: small pages, a modest cache, saved as soon as the head is reached.
/// When the feed runs ahead (a burst of batches), a few pages are folded before saving, so that a
/// client touched by each of them is serialised and written once instead of once per page.
const LIVE: Pace = Pace {
    page: 1_000,
    flush_after: 4_000,
    cache_clients: 2_048,
    read_ahead: 1,
    save_chunk: 1_000,
    full_read: false,
};
/// A rebuild: large pages, saved rarely (a client touched by many pages is written once), a large
/// cache that is dropped when the rebuild ends.
const REBUILD: Pace = Pace {
    page: 10_000,
    flush_after: 250_000,
    cache_clients: 50_000,
    read_ahead: 2,
    save_chunk: 1_000,
    full_read: true,
};
/// How many chunks of a large save are serialised at once (on the blocking pool), ahead of the
/// one being written. Serialising and compressing took longer than writing, on one thread.
const SERIALISING_AHEAD: usize = 2;
/// How many chunks of a large save are written at once. PostgreSQL writes them on separate
/// connections; the embedded store's single writer takes them in turn.
const SAVING_AT_ONCE: usize = 2;

/// The size of the first page read by a catch-up or rebuild (see [`Projector::fold_pages`]).
const FIRST_PAGE: usize = 500;

/// How far the projection has got: the position of the last event folded into stored views.
pub type Progress = watch::Receiver<u64>;

/// Which clients' views a save changed: everything folded after `after` up to `up_to`, with the
/// states just saved. Followers of the views (the coordination index) take these states instead
/// of reading and parsing the views again, which cost as much as the save itself. Sent before the
/// progress moves, so that a reader woken by the progress finds it.
#[derive(Debug, Clone)]
pub struct ChangeSet {
    pub after: u64,
    pub up_to: u64,
    pub clients: Arc<[ClientId]>,
    /// The saved state of each client in `clients`, for the first follower that takes them.
    pub states: Handover,
}

/// States handed from the projector to a follower, taken at most once: a broadcast channel keeps
/// every value it sent until the slot is reused, and states left there would hold memory long
/// after they were used. A follower that finds them taken (or is not the first) reads the views.
/// The states are shared with the projector's cache, which copies a state only if it changes it
/// while a follower still holds it.
#[derive(Debug, Clone, Default)]
pub struct Handover(Arc<std::sync::Mutex<Vec<Arc<ClientState>>>>);

impl Handover {
    pub fn new(states: Vec<Arc<ClientState>>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(states)))
    }

    /// The states, or nothing if they were taken already.
    pub fn take(&self) -> Vec<Arc<ClientState>> {
        std::mem::take(&mut *self.0.lock().expect("handover lock"))
    }
}

/// How many change sets wait for a slow follower before it is told it lagged (it then reads the
/// feed's range and the views itself). Small, because sets not yet taken keep their states alive.
const CHANGE_BACKLOG: usize = 64;

/// Figures from a rebuild.
#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    pub events: u64,
    pub clients: usize,
    pub elapsed: Duration,
}

/// The folded states and which of them changed. Hashed with foldhash rather than the standard
/// SipHash: a rebuild hashes a client id several times per event, and SipHash here and in the
/// keyring was about 5 % of a rebuild's instructions. Client ids come from authenticated senders.
struct Cache {
    states: foldhash::HashMap<ClientId, Arc<ClientState>>,
    dirty: foldhash::HashSet<ClientId>,
    /// The position of the last event folded into `states`.
    checkpoint: u64,
    /// The checkpoint as last saved.
    saved_checkpoint: u64,
    pending_events: usize,
    /// Views holding erased data were overwritten since the last flush: the store must not keep
    /// old copies (see [`ViewStore::scrub`]).
    scrub: bool,
    /// Every stored view is also in `states` (as after a rebuild's reset, until the first
    /// eviction): a client missing from `states` has no view, and none is looked up.
    holds_every_view: bool,
    /// A rebuild's deletion of the old views, under way while the log is read and folded; it
    /// must be done before anything is saved.
    reset: Option<tokio::task::JoinHandle<travelmap_store::Result<()>>>,
    /// Nothing has been saved since the views were deleted: the next flush writes only views
    /// that the store does not hold (see [`ViewStore::save_new`]).
    nothing_saved_since_reset: bool,
}

impl Cache {
    fn new(checkpoint: u64) -> Self {
        Self {
            states: foldhash::HashMap::default(),
            dirty: foldhash::HashSet::default(),
            checkpoint,
            saved_checkpoint: checkpoint,
            pending_events: 0,
            scrub: false,
            holds_every_view: false,
            reset: None,
            nothing_saved_since_reset: false,
        }
    }

    /// Waits for a rebuild's deletion of the old views, if one is under way.
    async fn reset_done(&mut self) -> Result<()> {
        if let Some(reset) = self.reset.take() {
            joined(reset).await?;
        }
        Ok(())
    }
}

/// Keeps the client views (travel maps, identifier index) up to date with the log.
pub struct Projector {
    log: Arc<dyn EventLog>,
    views: Arc<dyn ViewStore>,
    /// Hashes identifiers for the index, so that it holds none in plaintext. `None` only where
    /// no keyring exists (the benchmark's unencrypted baseline).
    keyring: Option<Arc<Keyring>>,
    progress: watch::Sender<u64>,
    changes: tokio::sync::broadcast::Sender<ChangeSet>,
    cache: Mutex<Option<Cache>>,
}

impl Projector {
    pub async fn new(
        log: Arc<dyn EventLog>,
        views: Arc<dyn ViewStore>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<Self> {
        let mut checkpoint = views.checkpoint().await?;
        let head = *log.head().borrow();
        // Every folded event leaves its client a view, so views that are gone while their
        // checkpoint says they are current were left out of a restored backup (as the
        // documented PostgreSQL dump does) or deleted by hand.
        let views_missing = checkpoint > 0 && views.scan(None, 1).await?.is_empty();
        if checkpoint > head || views_missing {
            // Views built from a longer log than this one (an older log was restored beside
            // newer views) cannot be trusted, and events at positions the views claim to have
            // seen would never be folded: start the views again from zero.
            tracing::warn!(
                checkpoint,
                head,
                views_missing,
                "the views do not match the event log (restored from a backup?); folding them again from the log"
            );
            let mut saved = views.saved();
            // Only the wait for the lease is raced, never the reset itself: a reset given up on
            // part way (its own notification can arrive first) would be rolled back after its
            // commit, or, left to run, would empty the views under this projector's first saves.
            let leads = tokio::select! {
                led = views.lead() => {
                    led?;
                    true
                }
                // A process starting beside this one reset them first, and leads.
                Ok(_) = saved.wait_for(|saved| *saved == 0) => false,
            };
            if leads {
                views.reset().await?;
            }
            checkpoint = 0;
        }
        Ok(Self {
            log,
            views,
            keyring,
            progress: watch::channel(checkpoint).0,
            changes: tokio::sync::broadcast::channel(CHANGE_BACKLOG).0,
            cache: Mutex::new(None),
        })
    }

    /// Watches the projection's progress (the last position folded into stored views).
    pub fn progress(&self) -> Progress {
        self.progress.subscribe()
    }

    /// Hears which clients each save of this process changed (nothing is heard where another
    /// process writes the views: follow [`Self::progress`] and the feed there).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<ChangeSet> {
        self.changes.subscribe()
    }

    /// Folds everything in the log past the checkpoint, saving after every page. Returns the
    /// number of events folded.
    pub async fn catch_up(&self) -> Result<u64> {
        self.fold_until_head(LIVE).await
    }

    /// Brings the views to the log's head as this process knows it: folds them here if this
    /// process may write them (it takes the lease at once: the embedded store, or no other
    /// process leads), or else waits for the process that writes them to save past it. A
    /// command run beside servers on PostgreSQL thus neither waits for their lease nor competes
    /// for it. It waits for that process at most `patience` ([`Error::Behind`] after that): a
    /// leader that is stuck, or far behind, must not keep a command waiting without end.
    pub async fn bring_to_head(&self, patience: Duration) -> Result<()> {
        let head = *self.log.head().borrow();
        // The leader's saved checkpoint itself, not this process's progress, which only moves
        // forward: a leader that began a rebuild meanwhile has saved less than it once had.
        let mut saved = self.views.saved();
        let followed = async {
            if *saved.borrow() < head {
                tracing::info!(
                    head,
                    waiting_at_most_seconds = patience.as_secs(),
                    "another process writes the views; waiting for it to fold the log up to here"
                );
            }
            let waited =
                tokio::time::timeout(patience, saved.wait_for(|checkpoint| *checkpoint >= head))
                    .await
                    .is_ok();
            if waited {
                return Ok(());
            }
            Err(crate::Error::Behind {
                head,
                saved: *saved.borrow(),
                waited: patience,
            })
        };
        tokio::select! {
            biased;
            led = self.views.lead() => {
                led?;
                self.catch_up().await?;
            }
            followed = followed => followed?,
        }
        Ok(())
    }

    /// Deletes every view and folds the whole log again from position 0.
    pub async fn rebuild(&self) -> Result<RebuildReport> {
        self.rebuild_at(REBUILD).await
    }

    async fn rebuild_at(&self, pace: Pace) -> Result<RebuildReport> {
        let mut guard = self.cache.lock().await;
        *guard = None;
        self.views.lead().await?;
        // Timed from here: the wait for the lease (a server still running) is not the rebuild.
        let started = Instant::now();
        // The old views are deleted while the log is read and folded, which needs no view: every
        // client starts from nothing, and the first save waits for the deletion.
        let views = self.views.clone();
        let mut cache = Cache::new(0);
        cache.holds_every_view = true;
        cache.reset = Some(tokio::spawn(async move { views.reset().await }));
        cache.nothing_saved_since_reset = true;
        *guard = Some(cache);
        self.progress.send_replace(0);
        let folded = match self.log.prepare_full_read().await {
            Ok(()) => self.fold_locked(&mut guard, pace).await,
            Err(error) => Err(error.into()),
        };
        self.log.end_full_read();
        // Nothing waited for the deletion if nothing was saved (an empty log, or a failure
        // before the first save): a rebuild is done only once the old views are gone.
        let deleted = match guard.as_mut() {
            Some(cache) => cache.reset_done().await,
            None => Ok(()),
        };
        // The rebuild's large cache is not needed for following the live feed. Freeing every
        // client's state takes a while (milliseconds per thousand clients), which nothing needs
        // to wait for.
        let cache = guard.take();
        drop(guard);
        tokio::task::spawn_blocking(move || drop(cache));
        let events = folded?;
        deleted?;
        let clients = self.views.count().await?;
        Ok(RebuildReport {
            events,
            clients,
            elapsed: started.elapsed(),
        })
    }

    /// Follows the log until `shutdown` turns true: catch up, then sleep until the log's head
    /// moves. Errors are logged and retried after a pause, since a projection that stops
    /// silently is worse than one that keeps trying.
    ///
    /// Where several processes share a store, only one folds at a time (see
    /// [`ViewStore::lead`]); the others wait for the lease and meanwhile report the leader's
    /// saved checkpoint as their progress, so that reads in any process can wait for their
    /// writes to be projected.
    ///
    /// `health` hears whether each attempt worked: it is starting until the first catch-up
    /// (after a restore, a whole log's worth) is done, and a process that follows another's
    /// saves while it waits for the lease is working once those have reached the log's head
    /// (another process may be rebuilding the views from zero).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, health: Reporter) {
        let mut head = self.log.head();
        loop {
            tokio::select! {
                biased;
                led = waiting_for_lease_once(self.views.lead(), self.reached(*head.borrow()), &health) => if let Err(error) = led {
                    health.failing();
                    tracing::error!(%error, "could not take the view lease; retrying in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                },
                _ = self.follow_saved() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(error) = self.catch_up().await {
                health.failed(error.is_misconfiguration());
                tracing::error!(%error, "projection failed; retrying in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            health.running();
            if *shutdown.borrow() {
                return;
            }
            let caught_up_to = *self.progress.borrow();
            if *head.borrow_and_update() > caught_up_to {
                continue;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Completes once the projection has reached `position`, whichever process folds it.
    async fn reached(&self, position: u64) {
        let _ = self
            .progress
            .subscribe()
            .wait_for(|progress| *progress >= position)
            .await;
    }

    /// Reports the checkpoint saved by whichever process leads as this one's progress, for as
    /// long as it is awaited.
    async fn follow_saved(&self) {
        let mut saved = self.views.saved();
        loop {
            let checkpoint = *saved.borrow_and_update();
            // Forward only: the leader's own announcements can arrive after it has moved on.
            self.progress.send_if_modified(|progress| {
                let moved = checkpoint > *progress;
                *progress = (*progress).max(checkpoint);
                moved
            });
            if saved.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Folds pages until the feed is exhausted. States are saved (with the checkpoint) whenever
    /// more than `flush_after` events are pending, and at the end.
    async fn fold_until_head(&self, pace: Pace) -> Result<u64> {
        let mut guard = self.cache.lock().await;
        self.fold_locked(&mut guard, pace).await
    }

    async fn fold_locked(&self, guard: &mut Option<Cache>, pace: Pace) -> Result<u64> {
        if guard.is_none() {
            // Starting from the stored checkpoint: make sure no other process writes views.
            self.views.lead().await?;
            let checkpoint = self.views.checkpoint().await?;
            *guard = Some(Cache::new(checkpoint));
        }
        let cache = guard.as_mut().expect("cache initialised above");
        let folded = self.fold_pages(cache, pace).await;
        if folded.is_err() {
            // The cache may now be ahead of what was saved; drop it so that the next attempt
            // starts again from the stored checkpoint instead of skipping unsaved events. A
            // deletion under way must end first, or that checkpoint could be read before it.
            let _ = cache.reset_done().await;
            *guard = None;
        }
        folded
    }

    async fn fold_pages(&self, cache: &mut Cache, pace: Pace) -> Result<u64> {
        // Pages are ranges of positions up to the log's head, read ahead of the page being folded
        // (reading and decoding is the larger half of the work, and runs on other cores).
        type PageRead = tokio::task::JoinHandle<travelmap_store::Result<Vec<RecordedEvent>>>;
        let mut reading: VecDeque<(u64, PageRead)> = VecDeque::new();
        let mut next_after = cache.checkpoint;
        let mut folded = 0u64;
        // The first pages are small and each one after is twice as large, up to the pace's page:
        // nothing is folded until the first page is read, and a rebuild's first large page kept
        // the folding thread waiting for a tenth of the whole rebuild.
        let mut page_size = pace.page.min(FIRST_PAGE);
        loop {
            let head = *self.log.head().borrow();
            while reading.len() <= pace.read_ahead && next_after < head {
                let up_to = (next_after + page_size as u64).min(head);
                page_size = (page_size * 2).min(pace.page);
                let log = self.log.clone();
                let after = next_after;
                let full_read = pace.full_read;
                reading.push_back((
                    up_to,
                    tokio::spawn(async move {
                        if full_read {
                            log.read_range_of_full_read(after, up_to).await
                        } else {
                            log.read_range(after, up_to).await
                        }
                    }),
                ));
                next_after = up_to;
            }
            let Some((up_to, page)) = reading.pop_front() else {
                break;
            };
            let events = page.await.map_err(|_| travelmap_store::Error::Closed)??;
            let missing: Vec<ClientId> = if cache.holds_every_view {
                Vec::new()
            } else {
                events
                    .iter()
                    .map(|event| event.draft.client_id)
                    .filter(|client| !cache.states.contains_key(client))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect()
            };
            if !missing.is_empty() {
                for (client_id, stored) in self.views.load(missing).await? {
                    match stored.decode::<ClientState>() {
                        Ok(state) => {
                            cache.states.insert(client_id, Arc::new(state));
                        }
                        Err(error) => {
                            // A view that cannot be read back (a disk fault, a hand edit) is
                            // folded again from the log, which holds everything it did, and
                            // saved with this page: one damaged view must not stop the
                            // projection of every client.
                            tracing::warn!(
                                %client_id,
                                %error,
                                "a stored view cannot be read back; folding the client again"
                            );
                            let state = self.folded_from_log(client_id, up_to).await?;
                            cache.states.insert(client_id, Arc::new(state));
                            cache.dirty.insert(client_id);
                        }
                    }
                }
            }
            // Erasure (or retention) destroyed keys: the views folded earlier still hold the
            // client's personal data in plaintext. Such a client's state is folded again from
            // the log, which now reads the erased fields as erased, and replaces the old one.
            let mut purged = HashSet::new();
            for event in &events {
                if matches!(
                    event.draft.event,
                    travelmap_domain::JourneyEvent::PersonalDataErased(_)
                        | travelmap_domain::JourneyEvent::RetentionApplied(_)
                ) {
                    purged.insert(event.draft.client_id);
                }
            }
            for client_id in purged {
                let state = self.folded_from_log(client_id, up_to).await?;
                cache.states.insert(client_id, Arc::new(state));
                cache.dirty.insert(client_id);
                cache.scrub = true;
            }
            let count = events.len();
            for event in events {
                let client_id = event.draft.client_id;
                let state = cache
                    .states
                    .entry(client_id)
                    .or_insert_with(|| Arc::new(ClientState::new(client_id)));
                if Arc::make_mut(state).apply(event) {
                    cache.dirty.insert(client_id);
                }
            }
            folded += count as u64;
            cache.pending_events += count;
            // Everything up to the end of the range is folded, even if the range had gaps.
            cache.checkpoint = up_to;
            if cache.pending_events > pace.flush_after {
                self.flush(cache, pace).await?;
            }
        }
        if cache.pending_events > 0 {
            self.flush(cache, pace).await?;
        }
        Ok(folded)
    }

    /// The client's state folded from its history in the log, up to `up_to`: for a view that
    /// must be replaced (after erasure) or cannot be read back.
    async fn folded_from_log(&self, client_id: ClientId, up_to: u64) -> Result<ClientState> {
        let history = self.log.read_stream(client_id, None).await?;
        Ok(ClientState::from_history(
            client_id,
            history
                .into_iter()
                .filter(|event| event.meta.position <= up_to),
        ))
    }

    async fn flush(&self, cache: &mut Cache, pace: Pace) -> Result<()> {
        cache.reset_done().await?;
        // In key order, so that the view table is written front to back rather than at random
        // places.
        let mut dirty: Vec<Arc<ClientState>> = cache
            .dirty
            .iter()
            .filter_map(|client_id| cache.states.get(client_id).cloned())
            .collect();
        dirty.sort_unstable_by_key(|state| state.client_id);

        // A large flush (a rebuild, a long catch-up) is saved in chunks: while the store writes
        // some, the next ones are serialised on the blocking pool. Only the last chunk moves the
        // checkpoint, once every other is saved; the others save under the previous one, in any
        // order, which is safe because each view remembers the last position folded into it, so
        // refolding from the older checkpoint after a crash skips what a saved view already holds.
        let mut saving = VecDeque::new();
        let saved = self
            .save_in_chunks(
                &dirty,
                cache.saved_checkpoint,
                cache.checkpoint,
                cache.nothing_saved_since_reset,
                pace,
                &mut saving,
            )
            .await;
        if saved.is_err() {
            // Left running, an older save could commit after a later attempt's and set the
            // checkpoint back.
            for other in saving {
                let _ = joined(other).await;
            }
        }
        saved?;
        cache.nothing_saved_since_reset = false;
        if cache.scrub {
            self.views.scrub().await?;
            cache.scrub = false;
        }
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(ChangeSet {
                after: cache.saved_checkpoint,
                up_to: cache.checkpoint,
                clients: dirty.iter().map(|state| state.client_id).collect(),
                states: Handover::new(dirty),
            });
        }
        cache.saved_checkpoint = cache.checkpoint;
        cache.dirty.clear();
        cache.pending_events = 0;
        if cache.states.len() > pace.cache_clients {
            // Evict just the excess (arbitrary clients: a miss costs one view read), so that the
            // cache stays at its bound instead of swinging between empty and full, which made
            // the process's memory depend on when it was looked at.
            let excess = cache.states.len() - pace.cache_clients;
            let evicted: Vec<ClientId> = cache.states.keys().take(excess).copied().collect();
            for client_id in evicted {
                cache.states.remove(&client_id);
            }
            cache.holds_every_view = false;
        }
        self.progress.send_replace(cache.checkpoint);
        Ok(())
    }

    /// Saves `dirty` in chunks (see [`Self::flush`]): every chunk but the last under `previous`,
    /// the last under `checkpoint` once the others are saved. Saves still under way when it
    /// fails are left in `saving` for the caller to wait for. `all_new` says none of the clients
    /// has a stored view (see [`ViewStore::save_new`]).
    async fn save_in_chunks(
        &self,
        dirty: &[Arc<ClientState>],
        previous: u64,
        checkpoint: u64,
        all_new: bool,
        pace: Pace,
        saving: &mut VecDeque<tokio::task::JoinHandle<travelmap_store::Result<()>>>,
    ) -> Result<()> {
        let total = dirty.len().div_ceil(pace.save_chunk);
        let mut chunks = dirty.chunks(pace.save_chunk);
        let mut serialising: VecDeque<tokio::task::JoinHandle<Vec<ClientView>>> = VecDeque::new();
        for index in 0..total {
            let views = if total == 1 {
                // A single chunk (following the live feed) is serialised here, without a hop.
                views(dirty, self.keyring.as_deref())
            } else {
                while serialising.len() < SERIALISING_AHEAD {
                    let Some(chunk) = chunks.next() else { break };
                    let (chunk, keyring) = (chunk.to_vec(), self.keyring.clone());
                    serialising.push_back(tokio::task::spawn_blocking(move || {
                        views(&chunk, keyring.as_deref())
                    }));
                }
                let next = serialising.pop_front().expect("a chunk per index");
                next.await.map_err(|_| travelmap_store::Error::Closed)?
            };
            let last = index + 1 == total;
            // The last chunk moves the checkpoint, so everything before it must be saved first.
            let at_once = if last { 1 } else { SAVING_AT_ONCE };
            while saving.len() >= at_once {
                joined(saving.pop_front().expect("a save under way")).await?;
            }
            let store = self.views.clone();
            let saved_under = if last { checkpoint } else { previous };
            saving.push_back(tokio::spawn(async move {
                if all_new {
                    store.save_new(saved_under, views).await
                } else {
                    store.save(saved_under, views).await
                }
            }));
        }
        match saving.pop_front() {
            Some(last) => joined(last).await?,
            // Nothing dirty (every event was already folded): only the checkpoint moves.
            None => self.views.save(checkpoint, Vec::new()).await?,
        }
        Ok(())
    }
}

/// The result of a store task; a task that panicked or was cancelled counts as a closed store.
async fn joined<T>(
    task: tokio::task::JoinHandle<travelmap_store::Result<T>>,
) -> travelmap_store::Result<T> {
    task.await.map_err(|_| travelmap_store::Error::Closed)?
}

fn views(states: &[Arc<ClientState>], keyring: Option<&Keyring>) -> Vec<ClientView> {
    states.iter().map(|state| view(state, keyring)).collect()
}

fn view(state: &ClientState, keyring: Option<&Keyring>) -> ClientView {
    let identifiers = state.identifiers();
    ClientView::new(
        state.client_id,
        state,
        match keyring {
            Some(keyring) => identifiers
                .into_iter()
                .map(|(kind, value)| {
                    let hashed = keyring.lookup_hash(&kind, &value);
                    (kind, hashed)
                })
                .collect(),
            None => identifiers,
        },
    )
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration as Days, FixedOffset};
    use serde_json::json;
    use travelmap_domain::{EventDraft, EventId, JourneyEvent, Provenance, content_digest};
    use travelmap_store::sqlite::SqliteStore;
    use travelmap_store::{NewEvent, StoredState, StreamAppend};
    use uuid::Uuid;

    use super::*;

    const CLIENTS: u128 = 7;
    const EVENTS_PER_CLIENT: u64 = 5;

    fn client(n: u128) -> ClientId {
        ClientId(Uuid::from_u128(n + 1))
    }

    /// Appends the clients' journeys interleaved, one commit per round, so that every page of
    /// the feed touches most clients.
    async fn interleaved_journeys(store: &SqliteStore) {
        let provenance = Provenance {
            agency: "probation-opava".into(),
            credential: "test".into(),
        };
        let base: DateTime<FixedOffset> = "2025-01-01T09:00:00+01:00".parse().unwrap();
        for round in 0..EVENTS_PER_CLIENT {
            let appends = (0..CLIENTS)
                .map(|n| {
                    let (event_type, data) = match round {
                        0 => (
                            "client.registered",
                            json!({"identifiers": [{"type": "prison_number", "value": format!("P-{n}")}]}),
                        ),
                        1 => ("client.released", json!({"release_kind": "parole", "supervision": true})),
                        _ => ("contact.made", json!({"kind": "meeting"})),
                    };
                    let draft = EventDraft {
                        id: EventId(Uuid::from_u128(1_000 * (n + 1) + round as u128)),
                        client_id: client(n),
                        occurred_at: base + Days::days(round as i64),
                        actor: None,
                        event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
                    };
                    StreamAppend {
                        client_id: client(n),
                        expected_version: round,
                        events: vec![NewEvent {
                            digest: content_digest(&draft, &provenance.agency),
                            draft,
                            sealed: None,
                        }],
                    }
                })
                .collect();
            store.log.append(&provenance, appends).await.unwrap();
        }
    }

    async fn stored(views: &dyn ViewStore) -> Vec<Option<StoredState>> {
        let mut stored = Vec::new();
        for n in 0..CLIENTS {
            stored.push(views.get(client(n)).await.unwrap());
        }
        stored
    }

    /// A rebuild that outgrows its cache: it saves every few events, in chunks of two clients
    /// written two at a time, and keeps two clients after each save. An evicted client touched
    /// again must be read back from the view this rebuild saved, not started afresh, and the
    /// views that existed before (deleted while the log is read) must all be gone.
    #[tokio::test]
    async fn a_rebuild_that_outgrows_its_cache_equals_the_live_views() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        interleaved_journeys(&store).await;
        let projector = Projector::new(store.log.clone(), store.views.clone(), None)
            .await
            .unwrap();
        projector.catch_up().await.unwrap();
        let live = stored(store.views.as_ref()).await;
        assert!(live.iter().all(Option::is_some));

        // A view of a client the log does not know: a rebuild must not keep it.
        let stranger = ClientId(Uuid::from_u128(99));
        let head = *store.log.head().borrow();
        store
            .views
            .save(
                head,
                vec![ClientView::new(
                    stranger,
                    &ClientState::new(stranger),
                    Vec::new(),
                )],
            )
            .await
            .unwrap();

        let tight = Pace {
            page: 3,
            flush_after: 4,
            cache_clients: 2,
            read_ahead: 1,
            save_chunk: 2,
            full_read: true,
        };
        let report = projector.rebuild_at(tight).await.unwrap();
        assert_eq!(report.events, (CLIENTS as u64) * EVENTS_PER_CLIENT);
        assert_eq!(report.clients, CLIENTS as usize);
        assert_eq!(stored(store.views.as_ref()).await, live);
        assert_eq!(store.views.get(stranger).await.unwrap(), None);
        assert_eq!(store.views.checkpoint().await.unwrap(), head);
        for n in 0..CLIENTS {
            let history = store.log.read_stream(client(n), None).await.unwrap();
            let folded = ClientState::from_history(client(n), history);
            let view: ClientState = live[n as usize].as_ref().unwrap().decode().unwrap();
            assert_eq!(view, folded);
        }
        store.log.close();
    }
}
