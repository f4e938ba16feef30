//! Whether the audit trail takes entries, for the readiness check.
//!
//! Every request that must be logged, and every write, waits for its entries: a trail that
//! refuses them (a full disk, a file made read-only, a database that rejects the inserts)
//! leaves the service answering `503` to nearly everything while the event log itself is fine.
//! The server's log says so once, and [`WatchedTrail`] makes it visible in `GET /readyz` as
//! well, as a task named `audit_writes` that reports `failing` from the first refused attempt
//! until an attempt succeeds again, as the `store` probe reports writes the event log refuses.
//! Unlike that probe, it counts every refusal, a moment's contention included: each one had a
//! request answered `503`. Nothing probes the trail on its own, so a process that logs nothing
//! meanwhile goes on reporting the last attempt it made.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;
use travelmap_domain::ClientId;
use travelmap_domain::audit::{AuditEntry, AuditRecord};
use travelmap_store::{AuditLog, EntriesSignal, Result};

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
        self.refusing
            .send_if_modified(|refusing| std::mem::replace(refusing, refused) != refused);
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
        // `Closed` counts too: while the service runs, it says the trail's writer has died.
        self.note(outcome.is_err());
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use travelmap_domain::audit::{Operation, Outcome};
    use travelmap_store::Error;

    use super::*;

    /// How the fake trail answers its next appends.
    #[derive(Clone, Copy)]
    enum Answer {
        Written,
        Refused,
        Closed,
        Never,
    }

    struct FakeTrail(Mutex<Answer>);

    impl FakeTrail {
        fn answering(answer: Answer) -> Arc<Self> {
            Arc::new(Self(Mutex::new(answer)))
        }
        fn now_answer(&self, answer: Answer) {
            *self.0.lock().unwrap() = answer;
        }
    }

    #[async_trait]
    impl AuditLog for FakeTrail {
        async fn append(&self, records: Vec<AuditRecord>) -> Result<Vec<u64>> {
            let answer = *self.0.lock().unwrap();
            match answer {
                Answer::Written => Ok((1..=records.len() as u64).collect()),
                Answer::Refused => Err(Error::Unavailable("refused".to_owned())),
                Answer::Closed => Err(Error::Closed),
                Answer::Never => std::future::pending().await,
            }
        }
        async fn read_after(&self, _: u64, _: usize) -> Result<Vec<AuditEntry>> {
            Ok(Vec::new())
        }
        async fn read_client(&self, _: ClientId) -> Result<Vec<AuditEntry>> {
            Ok(Vec::new())
        }
        async fn head(&self) -> Result<(u64, [u8; 32])> {
            Ok((0, [0; 32]))
        }
        async fn read_action(&self, _: &str) -> Result<Vec<AuditEntry>> {
            Ok(Vec::new())
        }
        async fn before_the_first(&self) -> Result<u64> {
            Ok(0)
        }
        async fn any_action_outside(&self, _: &str) -> Result<bool> {
            Ok(false)
        }
        fn out_of_service(&self) -> bool {
            true
        }
    }

    fn record() -> AuditRecord {
        AuditRecord {
            at: chrono::Utc::now(),
            credential: "reader".to_owned(),
            agency: "probation".to_owned(),
            actor: None,
            operation: Operation::Consultation,
            client_id: None,
            purpose: None,
            justification: None,
            request_id: None,
            outcome: Outcome::Allowed,
            action: "GET /v1/clients/{client_id}/travel-map".to_owned(),
            returned: None,
        }
    }

    #[tokio::test]
    async fn refusals_and_a_dead_writer_show_until_an_entry_is_written() {
        let fake = FakeTrail::answering(Answer::Refused);
        let (trail, health) = WatchedTrail::new(fake.clone());
        assert!(!*health.0.borrow());
        assert!(trail.append(vec![record()]).await.is_err());
        assert!(*health.0.borrow(), "a refusal shows");
        fake.now_answer(Answer::Written);
        trail.append(vec![record()]).await.unwrap();
        assert!(!*health.0.borrow(), "a written entry clears it");
        fake.now_answer(Answer::Closed);
        assert!(trail.append(vec![record()]).await.is_err());
        assert!(*health.0.borrow(), "a trail whose writer has died shows");
        // What is not an append passes through untouched.
        assert!(trail.out_of_service());
    }

    #[tokio::test]
    async fn an_attempt_given_up_unanswered_shows_only_after_a_while() {
        let fake = FakeTrail::answering(Answer::Never);
        let (trail, health) = WatchedTrail::new(fake.clone());
        // A caller that left at once says nothing of the trail.
        let quick = tokio::time::timeout(Duration::from_millis(20), trail.append(vec![record()]));
        assert!(quick.await.is_err());
        assert!(!*health.0.borrow());
        let given_up = tokio::time::timeout(
            UNANSWERED_AFTER + Duration::from_millis(100),
            trail.append(vec![record()]),
        );
        assert!(given_up.await.is_err());
        assert!(*health.0.borrow(), "an attempt left unanswered shows");
    }
}
