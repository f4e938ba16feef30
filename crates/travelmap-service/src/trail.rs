//! Whether the audit trail takes entries, for the readiness check.
//!
//! Every request that must be logged, and every write, waits for its entries: a trail that
//! refuses them (a full disk, a file made read-only, a database that rejects the inserts)
//! leaves the service answering `503` to nearly everything while the event log itself is fine.
//! The server's log says so once, and [`WatchedTrail`] makes it visible in `GET /readyz` as
//! well, as a task named `audit_trail` that reports `failing` from the first refused attempt
//! until an attempt succeeds again, in the same way the `store` probe reports writes the event
//! log refuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;
use travelmap_domain::ClientId;
use travelmap_domain::audit::{AuditEntry, AuditRecord};
use travelmap_store::{AuditLog, EntriesSignal, Error, Result};

use crate::health::Reporter;

/// How long an attempt may go unanswered before one given up counts as refused. A request
/// that gives up on the trail (after [`travelmap_store::handshake::ENTRIES_PATIENCE`]) drops
/// its attempt without an answer; one whose caller merely went away in the trail's ordinary
/// few milliseconds does not count.
const UNANSWERED_AFTER: Duration = Duration::from_secs(1);

/// An audit trail whose appends are watched: it passes everything to the trail it wraps, and
/// notes whether the last append that ended was written.
pub struct WatchedTrail {
    trail: Arc<dyn AuditLog>,
    /// `true` while the last attempt that ended was refused or went unanswered.
    refusing: watch::Sender<bool>,
}

impl WatchedTrail {
    /// Watches `trail`; [`TrailHealth::report`] tells the readiness check what it sees.
    pub fn new(trail: Arc<dyn AuditLog>) -> (Arc<Self>, TrailHealth) {
        let (refusing, seen) = watch::channel(false);
        (Arc::new(Self { trail, refusing }), TrailHealth(seen))
    }

    fn note(&self, refused: bool) {
        // A read first: appends are many, changes rare.
        if *self.refusing.borrow() != refused {
            self.refusing.send_replace(refused);
        }
    }

    /// Runs one append, noting how it ended; one dropped after [`UNANSWERED_AFTER`] without an
    /// answer counts as refused.
    async fn watched<T>(&self, append: impl Future<Output = Result<T>>) -> Result<T> {
        let mut attempt = Attempt {
            trail: self,
            began: Instant::now(),
            ended: false,
        };
        let outcome = append.await;
        attempt.ended = true;
        match &outcome {
            Ok(_) => self.note(false),
            // The service is stopping: the trail did not refuse anything.
            Err(Error::Closed) => {}
            Err(_) => self.note(true),
        }
        outcome
    }
}

/// An append in progress, noted as refused if it is dropped unanswered for too long.
struct Attempt<'a> {
    trail: &'a WatchedTrail,
    began: Instant,
    ended: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended && self.began.elapsed() >= UNANSWERED_AFTER {
            self.trail.note(true);
        }
    }
}

#[async_trait]
impl AuditLog for WatchedTrail {
    async fn append(&self, records: Vec<AuditRecord>) -> Result<Vec<u64>> {
        self.watched(self.trail.append(records)).await
    }

    async fn append_signalling(
        &self,
        records: Vec<AuditRecord>,
        written: EntriesSignal,
    ) -> Result<Vec<u64>> {
        self.watched(self.trail.append_signalling(records, written))
            .await
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.trail.read_after(after, limit).await
    }

    async fn read_client(&self, client: ClientId) -> Result<Vec<AuditEntry>> {
        self.trail.read_client(client).await
    }

    async fn head(&self) -> Result<(u64, [u8; 32])> {
        self.trail.head().await
    }

    async fn read_action(&self, action: &str) -> Result<Vec<AuditEntry>> {
        self.trail.read_action(action).await
    }

    async fn before_the_first(&self) -> Result<u64> {
        self.trail.before_the_first().await
    }

    async fn any_action_outside(&self, prefix: &str) -> Result<bool> {
        self.trail.any_action_outside(prefix).await
    }

    fn out_of_service(&self) -> bool {
        self.trail.out_of_service()
    }
}

/// What a [`WatchedTrail`] has seen, for the readiness check.
pub struct TrailHealth(watch::Receiver<bool>);

impl TrailHealth {
    /// Tells `health` whether the trail takes entries, each time that changes, until `stopped`;
    /// the server's log says so too, once per change.
    pub async fn report(mut self, mut stopped: watch::Receiver<bool>, health: Reporter) {
        loop {
            let refusing = *self.0.borrow_and_update();
            if refusing {
                tracing::warn!(
                    "the audit trail refuses entries: requests that must be logged, and every \
                     write, are answered 503 until it takes them again"
                );
                health.failing();
            } else {
                health.running();
            }
            tokio::select! {
                changed = self.0.wait_for(|now| *now != refusing) => {
                    if changed.is_err() {
                        return;
                    }
                    if refusing {
                        tracing::info!("the audit trail takes entries again");
                    }
                }
                _ = stopped.wait_for(|stopped| *stopped) => return,
            }
        }
    }
}
