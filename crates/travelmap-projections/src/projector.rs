//! The client-view projector: a catch-up consumer of the global feed.
//!
//! It reads the feed from its checkpoint in pages, folds each page into the affected clients'
//! states, and saves the changed states together with the new checkpoint in one transaction.
//! A crash between pages loses nothing (the next run starts from the saved checkpoint) and
//! re-applies nothing twice (each state remembers the last position it folded).
//!
//! States are cached in memory between pages, so a busy client is not re-read for every page; the
//! cache is bounded (and dropped after a rebuild) so memory does not grow with the size of the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use travelmap_domain::ClientId;
use travelmap_store::{ClientView, EventLog, ViewStore};

use crate::travel_map::ClientState;
use crate::{Error, Result};

/// How the projector pages through the feed and how much it keeps in memory.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Events per page read from the feed.
    page: usize,
    /// Save states once more than this many events are folded but unsaved.
    flush_after: usize,
    /// Keep at most this many clients' states cached after a save.
    cache_clients: usize,
}

/// Following the live feed: small pages, saved at once, a modest cache.
const LIVE: Pace = Pace {
    page: 1_000,
    flush_after: 0,
    cache_clients: 4_096,
};
/// A rebuild: large pages, saved rarely (a client touched by many pages is written once), a large
/// cache that is dropped when the rebuild ends.
const REBUILD: Pace = Pace {
    page: 10_000,
    flush_after: 250_000,
    cache_clients: 50_000,
};
/// Dirty states above this count are serialised on two threads.
const PARALLEL_SERIALISE: usize = 2_000;

/// How far the projection has got: the position of the last event folded into stored views.
pub type Progress = watch::Receiver<u64>;

/// Figures from a rebuild.
#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    pub events: u64,
    pub clients: usize,
    pub elapsed: Duration,
}

struct Cache {
    states: HashMap<ClientId, ClientState>,
    dirty: HashSet<ClientId>,
    checkpoint: u64,
    pending_events: usize,
}

/// Keeps the client views (travel maps, identifier index) up to date with the log.
pub struct Projector {
    log: Arc<dyn EventLog>,
    views: Arc<dyn ViewStore>,
    progress: watch::Sender<u64>,
    cache: Mutex<Option<Cache>>,
}

impl Projector {
    pub async fn new(log: Arc<dyn EventLog>, views: Arc<dyn ViewStore>) -> Result<Self> {
        let checkpoint = views.checkpoint().await?;
        Ok(Self {
            log,
            views,
            progress: watch::channel(checkpoint).0,
            cache: Mutex::new(None),
        })
    }

    /// Watches the projection's progress (the last position folded into stored views).
    pub fn progress(&self) -> Progress {
        self.progress.subscribe()
    }

    /// Folds everything in the log past the checkpoint, saving after every page. Returns the
    /// number of events folded.
    pub async fn catch_up(&self) -> Result<u64> {
        self.fold_until_head(LIVE).await
    }

    /// Deletes every view and folds the whole log again from position 0.
    pub async fn rebuild(&self) -> Result<RebuildReport> {
        let started = Instant::now();
        let mut cache = self.cache.lock().await;
        *cache = None;
        self.views.reset().await?;
        self.progress.send_replace(0);
        drop(cache);
        let events = self.fold_until_head(REBUILD).await?;
        let clients = self.views.count().await?;
        // The rebuild's large cache is not needed for following the live feed.
        *self.cache.lock().await = None;
        Ok(RebuildReport {
            events,
            clients,
            elapsed: started.elapsed(),
        })
    }

    /// Follows the log until `shutdown` turns true: catch up, then sleep until the log's head
    /// moves. Errors are logged and retried after a pause, since a projection that stops
    /// silently is worse than one that keeps trying.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut head = self.log.head();
        loop {
            if let Err(error) = self.catch_up().await {
                tracing::error!(%error, "projection failed; retrying in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
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

    /// Folds pages until the feed is exhausted. States are saved (with the checkpoint) whenever
    /// more than `flush_after` events are pending, and at the end.
    async fn fold_until_head(&self, pace: Pace) -> Result<u64> {
        let mut guard = self.cache.lock().await;
        if guard.is_none() {
            *guard = Some(Cache {
                states: HashMap::new(),
                dirty: HashSet::new(),
                checkpoint: self.views.checkpoint().await?,
                pending_events: 0,
            });
        }
        let cache = guard.as_mut().expect("cache initialised above");
        let folded = self.fold_pages(cache, pace).await;
        if folded.is_err() {
            // The cache may now be ahead of what was saved; drop it so that the next attempt
            // starts again from the stored checkpoint instead of skipping unsaved events.
            *guard = None;
        }
        folded
    }

    async fn fold_pages(&self, cache: &mut Cache, pace: Pace) -> Result<u64> {
        let read_page = |after: u64| {
            let log = self.log.clone();
            tokio::spawn(async move { log.read_all(after, pace.page).await })
        };
        let mut folded = 0u64;
        let mut next_page = read_page(cache.checkpoint);
        loop {
            let events = next_page
                .await
                .map_err(|_| travelmap_store::Error::Closed)??;
            let Some(last) = events.last() else { break };
            let last_position = last.meta.position;
            // Read the next page while this one is folded: reading and decoding is the larger
            // half of the work, and it runs on another core.
            next_page = read_page(last_position);
            let missing: Vec<ClientId> = events
                .iter()
                .map(|event| event.draft.client_id)
                .filter(|client| !cache.states.contains_key(client))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if !missing.is_empty() {
                for (client_id, json) in self.views.load(missing).await? {
                    let state: ClientState = serde_json::from_str(&json)
                        .map_err(|source| Error::View { client_id, source })?;
                    cache.states.insert(client_id, state);
                }
            }
            let count = events.len();
            for event in events {
                let client_id = event.draft.client_id;
                let state = cache
                    .states
                    .entry(client_id)
                    .or_insert_with(|| ClientState::new(client_id));
                if state.apply(event) {
                    cache.dirty.insert(client_id);
                }
            }
            folded += count as u64;
            cache.pending_events += count;
            cache.checkpoint = last_position;
            if cache.pending_events > pace.flush_after {
                self.flush(cache, pace).await?;
            }
        }
        if cache.pending_events > 0 {
            self.flush(cache, pace).await?;
        }
        Ok(folded)
    }

    async fn flush(&self, cache: &mut Cache, pace: Pace) -> Result<()> {
        // In key order, so that the view table is written front to back rather than at random
        // places (during a rebuild, writing is most of the time spent).
        let mut dirty: Vec<&ClientState> = cache
            .dirty
            .iter()
            .filter_map(|client_id| cache.states.get(client_id))
            .collect();
        dirty.sort_unstable_by_key(|state| state.client_id);
        let views = if dirty.len() > PARALLEL_SERIALISE {
            // Serialising thousands of states takes tens of milliseconds; two cores halve it.
            let (first, second) = dirty.split_at(dirty.len() / 2);
            std::thread::scope(|scope| {
                let first =
                    scope.spawn(|| first.iter().map(|state| view(state)).collect::<Vec<_>>());
                let mut views: Vec<ClientView> =
                    first.join().expect("serialising a view does not panic");
                views.extend(second.iter().map(|state| view(state)));
                views
            })
        } else {
            dirty.iter().map(|state| view(state)).collect()
        };
        self.views.save(cache.checkpoint, views).await?;
        cache.dirty.clear();
        cache.pending_events = 0;
        if cache.states.len() > pace.cache_clients {
            cache.states.clear();
        }
        self.progress.send_replace(cache.checkpoint);
        Ok(())
    }
}

fn view(state: &ClientState) -> ClientView {
    ClientView {
        client_id: state.client_id,
        state: serde_json::to_string(state).expect("client state serialises"),
        identifiers: state.identifiers(),
    }
}
