//! Leases: which process, of all those sharing a database, does a job only one may do at a time
//! (writing the views, delivering webhooks).
//!
//! A lease is a session-level advisory lock held on a connection of its own, and an epoch that
//! each new holder bumps in a row of the job's own table. PostgreSQL releases the lock when that
//! connection ends, however the process died; the epoch fences off a holder that lost its lock
//! without noticing, because every write of the job checks it in the same transaction.
//!
//! A connection that is **stalled** rather than closed (a partition, a frozen proxy, a process
//! stopped with SIGSTOP) does not end, so its lock would stay held until the operating system
//! gave up on the socket, which can take hours, while no process does the job. So the holder
//! proves it is alive: it runs a query on the lease's connection every [`HEARTBEAT`], and gives
//! the lease up itself if one is not answered within [`BEAT_PATIENCE`]. A process waiting for
//! the lease ends the holder's session once it has been silent for [`SILENCE`]
//! (`pg_terminate_backend`, allowed between sessions of the same role), which frees the lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use sqlx::PgConnection;
use tokio::sync::Mutex;

use crate::Result;

/// How often a holder shows its lease's session is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a holder waits for a heartbeat's answer before it gives the lease up.
const BEAT_PATIENCE: Duration = Duration::from_secs(10);

/// How long a holder's session may stay silent before a waiting process ends it. Several
/// heartbeats, so that a holder that is only slow (a busy machine) keeps its lease.
const SILENCE: Duration = Duration::from_secs(30);

/// How often a process that does not hold the lease asks whether it has become free.
const RETRY: Duration = Duration::from_millis(500);

/// Ends the session holding advisory lock `$1` in this database if it has been silent (no
/// query started or ended) for `$2` seconds. A `bigint` key is held as two 32-bit halves.
const END_SILENT_HOLDER: &str = "
    SELECT activity.pid, pg_terminate_backend(activity.pid)
    FROM pg_locks AS locks
    JOIN pg_stat_activity AS activity ON activity.pid = locks.pid
    WHERE locks.locktype = 'advisory' AND locks.granted
      AND locks.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND locks.classid = ($1 >> 32)::oid
      AND locks.objid = ($1 & 4294967295)::oid
      AND locks.objsubid = 1
      AND activity.pid <> pg_backend_pid()
      AND activity.state_change < now() - make_interval(secs => $2)";

/// One job's lease, as seen by this process.
pub(super) struct Lease {
    /// What the job is, for the log ("write the views").
    job: &'static str,
    lock: i64,
    /// Bumps the job's epoch and returns it.
    bump_epoch: &'static str,
    /// Takes a new epoch, past both the stored one and `$1` (the holder's own), unless the
    /// stored one is `$1`; returns it if it did.
    retake_epoch: &'static str,
    connector: super::Connector,
    /// The connection holding the lock, while this process holds the lease.
    held: Arc<Mutex<Option<PgConnection>>>,
    /// Whether this process may do the job without asking again: cleared by a write that
    /// failed or was fenced off, and by a heartbeat that went unanswered.
    leading: Arc<AtomicBool>,
    epoch: AtomicI64,
    /// Beats while the lease is held; started with the first lease, stopped on drop.
    keeper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Lease {
    pub(super) fn new(
        job: &'static str,
        lock: i64,
        bump_epoch: &'static str,
        retake_epoch: &'static str,
        connector: super::Connector,
    ) -> Self {
        Self {
            job,
            lock,
            bump_epoch,
            retake_epoch,
            connector,
            held: Arc::new(Mutex::new(None)),
            leading: Arc::new(AtomicBool::new(false)),
            epoch: AtomicI64::new(-1),
            keeper: std::sync::Mutex::new(None),
        }
    }

    /// The epoch this process took the lease with (-1 before it first did).
    pub(super) fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Marks the lease as doubtful (a write failed or was fenced off), so that the next
    /// [`Self::lead`] checks it again.
    pub(super) fn doubt(&self) {
        self.leading.store(false, Ordering::SeqCst);
    }

    /// Returns once this process holds the lease: at once if it does, otherwise after taking
    /// it, waiting for as long as another process holds it and is alive.
    pub(super) async fn lead(&self) -> Result<()> {
        if self.leading.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut held = self.held.lock().await;
        if let Some(connection) = held.as_mut() {
            // While the connection lives, so does its lock, and no other process can have taken
            // the lease.
            if self.confirm_epoch(connection).await {
                self.leading.store(true, Ordering::SeqCst);
                return Ok(());
            }
            tracing::warn!(
                job = self.job,
                "lost the connection that held the lease; taking it again"
            );
            *held = None;
        }
        let mut waiting_logged = false;
        // One connection for all the tries of this wait, not one per try: a process standing
        // by would otherwise log in twice a second for each lease, for as long as it waits. Each
        // try is given up after a beat's patience, so a connection that stops answering ends
        // the wait with an error (the caller asks again, on a new connection).
        let mut connection = self.connector.connect().await?;
        loop {
            let acquired: bool = within_beat(
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(self.lock)
                    .fetch_one(&mut connection),
            )
            .await?;
            if acquired {
                // On the lease's own connection, within a beat's patience: a bump that came
                // late, after a standby had ended this silent session and taken over, would make
                // this process's epoch current again without its lock.
                let epoch: i64 =
                    within_beat(sqlx::query_scalar(self.bump_epoch).fetch_one(&mut connection))
                        .await?;
                self.epoch.store(epoch, Ordering::SeqCst);
                self.leading.store(true, Ordering::SeqCst);
                *held = Some(connection);
                self.keep();
                tracing::info!(job = self.job, epoch, "this process now holds the lease");
                return Ok(());
            }
            if !waiting_logged {
                tracing::info!(
                    job = self.job,
                    "another process holds the lease; standing by"
                );
                waiting_logged = true;
            }
            let ended: Vec<(i32, bool)> = within_beat(
                sqlx::query_as(END_SILENT_HOLDER)
                    .bind(self.lock)
                    .bind(SILENCE.as_secs_f64())
                    .fetch_all(&mut connection),
            )
            .await?;
            for (pid, signalled) in ended {
                if signalled {
                    tracing::warn!(
                        job = self.job,
                        pid,
                        silent_seconds = SILENCE.as_secs(),
                        "the session holding the lease stopped answering; ended it"
                    );
                } else {
                    tracing::warn!(
                        job = self.job,
                        pid,
                        "the session holding the lease stopped answering, and this role may \
                         not end it: run every process as the same role"
                    );
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Shows the lease's session alive, as a heartbeat does, and takes a new epoch if the job's
    /// is no longer this holder's own. Only a lease moves the epoch, but a restore of the
    /// database or a hand edit can set it back or forward; every write would then be fenced off,
    /// fail, and find the lease still held, over and over. The holder of the lock is still the
    /// one process that may do the job, so it takes the epoch again: on the lease's own
    /// connection, which works only while the session (and so the lock) lives, within a beat's
    /// patience, past every epoch used before. False if the connection did not answer.
    async fn confirm_epoch(&self, connection: &mut PgConnection) -> bool {
        let own = self.epoch();
        let retake = sqlx::query_scalar::<_, i64>(self.retake_epoch)
            .bind(own)
            .fetch_optional(connection);
        match within_beat(retake).await {
            Ok(None) => true,
            Ok(Some(epoch)) => {
                self.epoch.store(epoch, Ordering::SeqCst);
                tracing::warn!(
                    job = self.job,
                    own,
                    epoch,
                    "the lease's epoch had been moved without the lease (a restore of the \
                     database?); this process, still holding the lease, took a new one"
                );
                true
            }
            Err(error) => {
                tracing::warn!(job = self.job, %error, "the lease's epoch could not be checked");
                false
            }
        }
    }

    /// Starts the heartbeat, once: it runs for as long as the lease exists and beats whenever
    /// this process holds it.
    fn keep(&self) {
        let mut keeper = self.keeper.lock().expect("lease keeper lock");
        if keeper.is_some() {
            return;
        }
        let (held, leading, job) = (self.held.clone(), self.leading.clone(), self.job);
        *keeper = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let mut held = held.lock().await;
                let Some(connection) = held.as_mut() else {
                    continue;
                };
                if !beat(connection).await {
                    // Whoever waits for the lease ends this session once it has been silent
                    // long enough; until then, the epoch fences off anything this process
                    // would still write.
                    tracing::warn!(
                        job,
                        "the connection holding the lease stopped answering; giving the lease up"
                    );
                    leading.store(false, Ordering::SeqCst);
                    *held = None;
                }
            }
        }));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.lock().expect("lease keeper lock").take() {
            keeper.abort();
        }
    }
}

/// Runs `statement` of a wait for the lease, given up after [`BEAT_PATIENCE`].
async fn within_beat<T>(
    statement: impl std::future::Future<Output = sqlx::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(BEAT_PATIENCE, statement).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(crate::Error::Unavailable(format!(
            "no answer from PostgreSQL within {} s while waiting for a lease",
            BEAT_PATIENCE.as_secs()
        ))),
    }
}

/// Runs a query on the lease's connection, which also shows other processes that its session
/// is alive. False if it failed or was not answered within [`BEAT_PATIENCE`].
async fn beat(connection: &mut PgConnection) -> bool {
    matches!(
        tokio::time::timeout(BEAT_PATIENCE, sqlx::query("SELECT 1").execute(connection)).await,
        Ok(Ok(_))
    )
}
