//! The client-view projector: a catch-up consumer of the global feed.
//!
//! It reads the feed from its checkpoint in pages, folds each page into the affected clients'
//! states, and saves the changed states together with the new checkpoint in one transaction.
//! A crash between pages loses nothing (the next run starts from the saved checkpoint) and
//! re-applies nothing twice (each state remembers the last position it folded).
//!
//! States are cached in memory between pages, up to [`CACHE_CLIENTS`], so a busy client is not
//! re-read for every page; the cache is bounded so memory does not grow with the size of the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use travelmap_domain::ClientId;
use travelmap_store::{ClientView, EventLog, ViewStore};

use crate::travel_map::ClientState;
use crate::{Error, Result};

/// How many clients' states to keep in memory between pages.
pub const CACHE_CLIENTS: usize = 20_000;
/// Events per page while following the live feed.
const LIVE_PAGE: usize = 1_000;
/// Events per page during a rebuild, and how many events may be folded before states are saved.
const REBUILD_PAGE: usize = 10_000;
const REBUILD_FLUSH_EVENTS: usize = 200_000;

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
        self.fold_until_head(LIVE_PAGE, 0).await
    }

    /// Deletes every view and folds the whole log again from position 0.
    pub async fn rebuild(&self) -> Result<RebuildReport> {
        let started = Instant::now();
        let mut cache = self.cache.lock().await;
        *cache = None;
        self.views.reset().await?;
        self.progress.send_replace(0);
        drop(cache);
        let events = self
            .fold_until_head(REBUILD_PAGE, REBUILD_FLUSH_EVENTS)
            .await?;
        let clients = self
            .cache
            .lock()
            .await
            .as_ref()
            .map_or(0, |cache| cache.states.len());
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
    async fn fold_until_head(&self, page: usize, flush_after: usize) -> Result<u64> {
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
        let folded = self.fold_pages(cache, page, flush_after).await;
        if folded.is_err() {
            // The cache may now be ahead of what was saved; drop it so that the next attempt
            // starts again from the stored checkpoint instead of skipping unsaved events.
            *guard = None;
        }
        folded
    }

    async fn fold_pages(&self, cache: &mut Cache, page: usize, flush_after: usize) -> Result<u64> {
        let mut folded = 0u64;
        loop {
            let events = self.log.read_all(cache.checkpoint, page).await?;
            let Some(last) = events.last() else { break };
            let last_position = last.meta.position;
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
            for event in &events {
                let client_id = event.draft.client_id;
                let state = cache
                    .states
                    .entry(client_id)
                    .or_insert_with(|| ClientState::new(client_id));
                if state.apply(event) {
                    cache.dirty.insert(client_id);
                }
            }
            folded += events.len() as u64;
            cache.pending_events += events.len();
            cache.checkpoint = last_position;
            if cache.pending_events > flush_after {
                self.flush(cache).await?;
            }
        }
        if cache.pending_events > 0 {
            self.flush(cache).await?;
        }
        Ok(folded)
    }

    async fn flush(&self, cache: &mut Cache) -> Result<()> {
        let views = cache
            .dirty
            .drain()
            .filter_map(|client_id| cache.states.get(&client_id))
            .map(|state| ClientView {
                client_id: state.client_id,
                state: serde_json::to_string(state).expect("client state serialises"),
                identifiers: state.identifiers(),
            })
            .collect();
        self.views.save(cache.checkpoint, views).await?;
        cache.pending_events = 0;
        if cache.states.len() > CACHE_CLIENTS {
            cache.states.clear();
        }
        self.progress.send_replace(cache.checkpoint);
        Ok(())
    }
}
