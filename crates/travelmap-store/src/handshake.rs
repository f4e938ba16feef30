//! How an append meets the audit entries written beside it.
//!
//! A write's entries are written while its events are being committed, so that a request waits
//! for the slower of the two rather than their sum. The log announces when the events have
//! passed its checks ([`Announcement::accepted`]), the caller then writes the entries, and the
//! log commits the events only once it is told that the entries are durable
//! ([`EntriesWritten`]). So no event posted or imported is ever stored without its entries, even
//! when the process is killed between the two or the trail refuses the entries: the worst a
//! failure leaves is an entry naming events that were then not stored, an attempt logged like
//! any other. (A data-protection decision is carried out first and logged after it: its append
//! comes without entries to wait for.)

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The longest an append waits to hear whether its entries were written; past it the entries
/// count as not written and the append is refused ([`crate::Error::Unlogged`]). Writing them
/// usually ends far sooner (a request makes a single attempt, given up after this long too, and
/// a dropped request reports at once), so this bounds how long a trail that stopped answering
/// holds up the log, whose writer waits meanwhile with the rest of the group (on PostgreSQL
/// holding the log head's lock, which every process's appends wait for: well under the 20 s
/// after which the server ends a session idle in its transaction, and under the 30 s a group
/// commit is given).
pub const ENTRIES_PATIENCE: Duration = Duration::from_secs(5);

/// What an append tells its caller and waits for (see [`crate::EventLog::append_announced`]).
pub struct Announcement {
    /// Sent once the events have passed the log's checks, before their commit.
    pub accepted: tokio::sync::oneshot::Sender<()>,
    /// Whether the entries the caller writes beside the commit were written: the log commits
    /// the events only once they were. `None` for an append that writes no entries beside it.
    pub entries: Option<EntriesWritten>,
}

impl Announcement {
    /// An announcement nobody listens to, for an append without entries beside it.
    pub fn unheard() -> Self {
        Self {
            accepted: tokio::sync::oneshot::channel().0,
            entries: None,
        }
    }
}

/// A new handshake: the caller keeps the [`EntriesReport`] and gives the log the
/// [`EntriesWritten`].
pub fn entries_handshake() -> (EntriesReport, EntriesWritten) {
    let told = Arc::new(Told::default());
    (EntriesReport(Some(told.clone())), EntriesWritten(told))
}

#[derive(Default)]
struct Told {
    written: Mutex<Option<bool>>,
    /// Wakes a log writer waiting on its own thread (the embedded store's).
    changed: Condvar,
    /// Wakes a log writer waiting as a task (PostgreSQL's).
    notify: tokio::sync::Notify,
}

impl Told {
    fn tell(&self, written: bool) {
        let mut told = self.written.lock().expect("entries handshake lock");
        told.get_or_insert(written);
        drop(told);
        self.changed.notify_all();
        // A permit is stored if no task waits yet, so a report made before the wait is heard.
        self.notify.notify_one();
    }

    fn told(&self) -> Option<bool> {
        *self.written.lock().expect("entries handshake lock")
    }
}

/// The caller's side: reports whether the entries were written. Dropped unreported, it
/// reports that they were not, so that an abandoned write never commits.
pub struct EntriesReport(Option<Arc<Told>>);

impl EntriesReport {
    /// A handle the trail's writer can tell at once that the entries are written, as soon as
    /// they are committed, rather than through the request that asked for them (one wake-up
    /// fewer on the way to the log's commit; see [`crate::AuditLog::append_signalling`]).
    /// What it tells stands: a later report cannot take it back.
    pub fn signal(&self) -> Option<EntriesSignal> {
        self.0.clone().map(EntriesSignal)
    }

    pub fn report(mut self, written: bool) {
        if let Some(told) = self.0.take() {
            told.tell(written);
        }
    }
}

impl Drop for EntriesReport {
    fn drop(&mut self) {
        if let Some(told) = self.0.take() {
            told.tell(false);
        }
    }
}

/// Tells that entries were written (see [`EntriesReport::signal`]).
#[derive(Clone)]
pub struct EntriesSignal(Arc<Told>);

impl EntriesSignal {
    pub fn written(&self) {
        self.0.tell(true);
    }

    /// Tells that the entries were not written, unless told otherwise already, and returns
    /// what stands: a caller that gave up on its entries learns whether the trail's writer had
    /// told them written meanwhile (and the log commits the events).
    pub fn give_up(&self) -> bool {
        self.0.tell(false);
        self.0.told().unwrap_or(false)
    }
}

/// The log's side: waits for the report.
pub struct EntriesWritten(Arc<Told>);

impl EntriesWritten {
    /// Whether the entries were written, waiting on this thread until told or until
    /// `deadline` (then: not written).
    pub fn wait_blocking(&self, deadline: std::time::Instant) -> bool {
        let mut told = self.0.written.lock().expect("entries handshake lock");
        loop {
            if let Some(written) = *told {
                return written;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            told = self
                .0
                .changed
                .wait_timeout(told, left)
                .expect("entries handshake lock")
                .0;
        }
    }

    /// [`Self::wait_blocking`] for a task.
    pub async fn wait(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            if let Some(written) = self.0.told() {
                return written;
            }
            if tokio::time::timeout_at(deadline, self.0.notify.notified())
                .await
                .is_err()
            {
                return self.0.told().unwrap_or(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_made_before_the_wait_is_heard() {
        let (report, written) = entries_handshake();
        report.report(true);
        assert!(written.wait_blocking(std::time::Instant::now()));
    }

    #[test]
    fn a_signal_stands_against_a_later_report() {
        let (report, written) = entries_handshake();
        report.signal().unwrap().written();
        report.report(false);
        assert!(written.wait_blocking(std::time::Instant::now()));
    }

    #[test]
    fn giving_up_tells_what_stands() {
        let (report, written) = entries_handshake();
        let signal = report.signal().unwrap();
        signal.written();
        assert!(signal.give_up());
        let (report, written_too) = entries_handshake();
        assert!(!report.signal().unwrap().give_up());
        assert!(written.wait_blocking(std::time::Instant::now()));
        assert!(!written_too.wait_blocking(std::time::Instant::now()));
    }

    #[test]
    fn a_report_dropped_unmade_says_not_written() {
        let (report, written) = entries_handshake();
        drop(report);
        assert!(!written.wait_blocking(std::time::Instant::now() + Duration::from_secs(5)));
    }

    #[test]
    fn a_wait_past_its_deadline_says_not_written() {
        let (report, written) = entries_handshake();
        let deadline = std::time::Instant::now() + Duration::from_millis(20);
        assert!(!written.wait_blocking(deadline));
        report.report(true);
        // Told after the deadline: the report is kept, but the log has already decided.
        assert!(written.wait_blocking(std::time::Instant::now()));
    }

    #[test]
    fn a_thread_waiting_is_woken_by_the_report() {
        let (report, written) = entries_handshake();
        let waiter = std::thread::spawn(move || {
            written.wait_blocking(std::time::Instant::now() + Duration::from_secs(30))
        });
        std::thread::sleep(Duration::from_millis(20));
        report.report(true);
        assert!(waiter.join().unwrap());
    }

    #[tokio::test]
    async fn a_task_waiting_is_woken_by_the_report() {
        let (report, written) = entries_handshake();
        let waiter = tokio::spawn(async move {
            written
                .wait(tokio::time::Instant::now() + Duration::from_secs(30))
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        report.report(false);
        assert!(!waiter.await.unwrap());
        let (report, written) = entries_handshake();
        report.report(true);
        assert!(
            written
                .wait(tokio::time::Instant::now() + Duration::from_secs(30))
                .await
        );
    }
}
