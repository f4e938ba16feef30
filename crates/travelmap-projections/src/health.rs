//! How the service's background tasks are doing, for the readiness check.
//!
//! Each long-running task (the projector, the coordination index, the feed hub, webhook
//! delivery, the retention schedule) retries on its own when something fails, and logs each
//! failure. A log line is easy to miss, though, and a task that keeps failing leaves the service
//! answering from views that no longer move. So each task also holds a [`Reporter`] and says
//! whether its last attempt worked; the readiness check reads the matching [`Watched`].
//!
//! The reporter lives inside the task's future. A task that ends, by shutting down or by
//! panicking, drops it, and the check then sees the task as stopped: a panic is never mistaken
//! for health.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// What a task last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Not yet through its first attempt (the projector's first catch-up, the coordination
    /// index's load of every case file).
    Starting,
    /// Its last attempt worked.
    Running,
    /// Its attempts have failed since `since`; it goes on retrying.
    Failing { since: DateTime<Utc> },
    /// Its attempts have failed since `since` for a fault of this process's configuration (a
    /// master key it lacks), which retrying cannot mend: a restart with the right settings
    /// does. It goes on retrying all the same, in case the fault was another's.
    Misconfigured { since: DateTime<Utc> },
}

/// A task's condition as the readiness check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// As the task last reported it.
    Reported(Condition),
    /// The task has ended: the service is stopping, or the task panicked.
    Stopped,
}

/// Held by a task to report its condition.
#[derive(Debug)]
pub struct Reporter(watch::Sender<Condition>);

impl Reporter {
    /// The last attempt worked.
    pub fn running(&self) {
        self.0.send_if_modified(|condition| {
            let changed = *condition != Condition::Running;
            *condition = Condition::Running;
            changed
        });
    }

    /// The last attempt failed. A task already failing keeps the time its failures began.
    pub fn failing(&self) {
        self.0.send_if_modified(|condition| {
            if matches!(condition, Condition::Failing { .. }) {
                return false;
            }
            *condition = Condition::Failing { since: Utc::now() };
            true
        });
    }

    /// The last attempt failed for a fault of this process's configuration. Failures that
    /// began earlier keep their time.
    pub fn misconfigured(&self) {
        self.0.send_if_modified(|condition| {
            let since = match condition {
                Condition::Misconfigured { .. } => return false,
                Condition::Failing { since } => *since,
                _ => Utc::now(),
            };
            *condition = Condition::Misconfigured { since };
            true
        });
    }

    /// The last attempt failed: [`Self::misconfigured`] when `misconfiguration` (the error's
    /// `is_misconfiguration`), else [`Self::failing`].
    pub fn failed(&self, misconfiguration: bool) {
        if misconfiguration {
            self.misconfigured();
        } else {
            self.failing();
        }
    }
}

/// How long a wait for a lease must have gone on without an error to count as working.
pub const WAITING_IS_WORKING_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Awaits `lease`, a wait for a lease that another process may hold for as long as it lives.
/// Waiting is what a standby does, not a failure: once it has gone on for
/// [`WAITING_IS_WORKING_AFTER`] without an error, `health` hears that the task works (an
/// earlier failure, such as a lost connection or a lease taken over, is over).
pub async fn waiting_for_lease<F: std::future::Future>(lease: F, health: &Reporter) -> F::Output {
    waiting_for_lease_once(lease, async {}, health).await
}

/// [`waiting_for_lease`], where the wait counts as working only once `ready` has also completed:
/// a process that follows the projection another one writes is not ready before that
/// projection has caught up with the log (it may be a rebuild from zero).
pub async fn waiting_for_lease_once<F: std::future::Future>(
    lease: F,
    ready: impl std::future::Future<Output = ()>,
    health: &Reporter,
) -> F::Output {
    tokio::pin!(lease);
    let working = async {
        tokio::time::sleep(WAITING_IS_WORKING_AFTER).await;
        ready.await;
    };
    tokio::select! {
        outcome = &mut lease => outcome,
        () = working => {
            health.running();
            lease.await
        }
    }
}

/// What the readiness check holds of one task.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The task's name in the readiness report.
    pub name: &'static str,
    /// Whether the process is out of rotation while this task is starting or has stopped: it
    /// cannot answer travel maps and caseloads without the projection and the coordination
    /// index, while late webhook deliveries or a retention run retried tomorrow leave it
    /// degraded but serving. A task that fails and retries leaves any process degraded.
    pub essential: bool,
    condition: watch::Receiver<Condition>,
}

impl Watched {
    /// Completes once the task reports a fault of this process's configuration; never if the
    /// task ends first.
    pub async fn misconfigured(&self) {
        let mut condition = self.condition.clone();
        if condition
            .wait_for(|condition| matches!(condition, Condition::Misconfigured { .. }))
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }

    /// The task's condition now.
    pub fn seen(&self) -> Seen {
        if self.condition.has_changed().is_err() {
            return Seen::Stopped;
        }
        Seen::Reported(*self.condition.borrow())
    }
}

/// A reporter for a task, and what the readiness check watches of it. Starts as
/// [`Condition::Starting`].
pub fn task(name: &'static str, essential: bool) -> (Reporter, Watched) {
    let (sender, receiver) = watch::channel(Condition::Starting);
    (
        Reporter(sender),
        Watched {
            name,
            essential,
            condition: receiver,
        },
    )
}

/// How long a task may stay behind the head without moving before the readiness check calls it
/// stalled. Long enough for a slow page of a catch-up, short enough that monitoring hears of a
/// task that hangs without an error (a read that never returns) within minutes.
pub const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Remembers, for each task that follows the log, since when the readiness check has seen it
/// behind the head at the same position.
///
/// A failing task says so itself; one that hangs (a read that never returns, a lock never
/// released) does not, and its `behind` only grows. Its position not moving is not enough to
/// tell: a quiet log leaves every task at the head, and the first event after an hour of quiet
/// puts them behind at a position an hour old. So the clock starts when a task is first seen
/// behind at a position, and stops as soon as it moves or catches up.
#[derive(Debug, Default)]
pub struct Stalls(std::sync::Mutex<std::collections::HashMap<&'static str, (u64, Instant)>>);

impl Stalls {
    /// Since when `task`, now at `position` and `behind` the head, has been seen behind at this
    /// position; `None` when it is not behind.
    pub fn behind_since(
        &self,
        task: &'static str,
        position: u64,
        behind: u64,
        now: Instant,
    ) -> Option<Instant> {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if behind == 0 {
            seen.remove(task);
            return None;
        }
        let (at, since) = seen.entry(task).or_insert((position, now));
        if *at != position {
            (*at, *since) = (position, now);
        }
        Some(*since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_starting_then_running_then_failing_since_its_first_failure() {
        let (reporter, watched) = task("projection", true);
        assert_eq!(watched.seen(), Seen::Reported(Condition::Starting));
        reporter.running();
        assert_eq!(watched.seen(), Seen::Reported(Condition::Running));
        reporter.failing();
        let Seen::Reported(Condition::Failing { since }) = watched.seen() else {
            panic!("expected failing, saw {:?}", watched.seen());
        };
        reporter.failing();
        assert_eq!(
            watched.seen(),
            Seen::Reported(Condition::Failing { since }),
            "a second failure keeps the time the failures began"
        );
        reporter.running();
        assert_eq!(watched.seen(), Seen::Reported(Condition::Running));
    }

    #[tokio::test]
    async fn a_standby_waiting_for_a_lease_is_working_after_a_while() {
        let (reporter, watched) = task("projection", true);
        reporter.failing();
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let waiting = tokio::spawn(async move {
            waiting_for_lease(held, &reporter).await.unwrap();
            reporter
        });
        tokio::time::sleep(WAITING_IS_WORKING_AFTER / 2).await;
        assert!(matches!(
            watched.seen(),
            Seen::Reported(Condition::Failing { .. })
        ));
        tokio::time::sleep(WAITING_IS_WORKING_AFTER).await;
        assert_eq!(watched.seen(), Seen::Reported(Condition::Running));
        release.send(()).unwrap();
        let _reporter = waiting.await.unwrap();
    }

    #[tokio::test]
    async fn a_standby_is_working_only_once_what_it_follows_is_ready() {
        let (reporter, watched) = task("projection", true);
        let (_release, held) = tokio::sync::oneshot::channel::<()>();
        let (caught_up, ready) = tokio::sync::oneshot::channel::<()>();
        let waiting = tokio::spawn(async move {
            let ready = async {
                let _ = ready.await;
            };
            let _ = waiting_for_lease_once(held, ready, &reporter).await;
        });
        tokio::time::sleep(WAITING_IS_WORKING_AFTER * 2).await;
        assert_eq!(
            watched.seen(),
            Seen::Reported(Condition::Starting),
            "the leader is still rebuilding"
        );
        caught_up.send(()).unwrap();
        tokio::time::sleep(WAITING_IS_WORKING_AFTER / 4).await;
        assert_eq!(watched.seen(), Seen::Reported(Condition::Running));
        waiting.abort();
    }

    #[tokio::test]
    async fn a_task_that_panics_is_seen_as_stopped() {
        let (reporter, watched) = task("coordination", true);
        reporter.running();
        let ended = tokio::spawn(async move {
            reporter.running();
            panic!("a bug in the task");
        })
        .await;
        assert!(ended.is_err());
        assert_eq!(watched.seen(), Seen::Stopped);
    }

    #[test]
    fn a_task_is_behind_since_first_seen_behind_at_its_position() {
        let stalls = Stalls::default();
        let start = Instant::now();
        let later = |seconds| start + std::time::Duration::from_secs(seconds);
        assert_eq!(stalls.behind_since("projection", 10, 0, start), None);
        // Quiet for an hour, then an event: behind from now, not from when it reached 10.
        assert_eq!(
            stalls.behind_since("projection", 10, 1, later(3600)),
            Some(later(3600))
        );
        assert_eq!(
            stalls.behind_since("projection", 10, 5, later(3700)),
            Some(later(3600)),
            "still at 10: the clock runs on"
        );
        assert_eq!(
            stalls.behind_since("projection", 12, 3, later(3701)),
            Some(later(3701)),
            "it moved: the clock starts again"
        );
        assert_eq!(
            stalls.behind_since("coordination", 12, 3, later(3702)),
            Some(later(3702)),
            "each task has its own clock"
        );
        assert_eq!(stalls.behind_since("projection", 15, 0, later(3702)), None);
        assert_eq!(
            stalls.behind_since("projection", 15, 1, later(3800)),
            Some(later(3800)),
            "caught up in between: the clock starts again"
        );
    }
}
