//! The embedded backend: SQLite files in the data directory.
//!
//! - `events.sqlite` is the log. One writer thread owns the only write connection and commits
//!   appends in groups: while one transaction is being made durable, further appends queue up and
//!   go into the next transaction together, so a burst of concurrent requests costs one fsync per
//!   group rather than one per request. Because there is a single writer, positions are assigned
//!   and committed in the same order, so the global feed never has a gap that fills in later.
//! - `audit.sqlite` is the audit trail, with a writer of its own.
//! - `keys.sqlite` holds the data keys that seal personal fields (see `crate::keys`), apart from
//!   the log so that a copy of the log alone holds no key.
//! - `webhooks.sqlite` holds webhook registrations, their delivery cursors and the delivery
//!   attempts (see `crate::webhooks`).
//! - `projections.sqlite` holds the views and their checkpoints, apart from the log so that the
//!   projector never competes with appends for SQLite's write lock, and so that deleting it is a
//!   safe way to force a rebuild.
//!
//! A lock file keeps a second process from opening the same directory: SQLite would allow it,
//! but the single-writer design (and the position counter kept in the writer) would not hold.

mod audit;
mod keys;
mod log;
mod pool;
mod schema;
mod views;
mod webhooks;

use std::fs::{File, TryLockError};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

pub use audit::SqliteAuditLog;
pub use keys::SqliteKeyStore;
pub use log::SqliteEventLog;
pub use views::SqliteViewStore;
pub use webhooks::SqliteWebhookStore;

use crate::{Error, Result};

/// The embedded store: event log and view store over one data directory.
pub struct SqliteStore {
    pub log: Arc<SqliteEventLog>,
    pub views: Arc<SqliteViewStore>,
    pub audit: Arc<SqliteAuditLog>,
    pub keys: Arc<SqliteKeyStore>,
    pub webhooks: Arc<SqliteWebhookStore>,
    // Held for the store's lifetime: the OS releases the lock when the file is closed.
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`, applying schema migrations.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("travelmap.lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked(data_dir.to_owned())),
            Err(TryLockError::Error(error)) => return Err(error.into()),
        }
        let log = SqliteEventLog::open(&data_dir.join("events.sqlite"))?;
        let views = SqliteViewStore::open(&data_dir.join("projections.sqlite"))?;
        let audit = SqliteAuditLog::open(&data_dir.join("audit.sqlite"))?;
        let keys = SqliteKeyStore::open(&data_dir.join("keys.sqlite"))?;
        let webhooks = SqliteWebhookStore::open(&data_dir.join("webhooks.sqlite"))?;
        Ok(Self {
            log: Arc::new(log),
            views: Arc::new(views),
            audit: Arc::new(audit),
            keys: Arc::new(keys),
            webhooks: Arc::new(webhooks),
            _lock: lock,
        })
    }
}

/// Settings every connection gets. WAL lets readers run beside the writer; `synchronous = FULL`
/// makes each commit durable before it is acknowledged (NORMAL could lose the last commits on
/// power loss, which would break "an acknowledged event is never lost").
fn configure(connection: &rusqlite::Connection) -> Result<()> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.busy_timeout(Duration::from_secs(10))?;
    mapped(connection)
}

/// Reads through a memory map instead of read() calls: after every commit, other connections
/// must re-read changed pages, and mapping saves a copy and a system call per page.
fn mapped(connection: &rusqlite::Connection) -> Result<()> {
    connection.pragma_update(None, "mmap_size", 1i64 << 30)?;
    Ok(())
}

/// Settings of the pooled read-only connections. Mapped pages need no copies in SQLite's page
/// cache, so a reader's cache is kept small (256 KiB rather than the default 2 MiB): five pools
/// keep up to eight idle readers each, and their default caches filled as the database grew and
/// were most of how the service's memory grew with it (docs/adr/0009). Writers keep the default:
/// a group commit dirties index pages all over the file, and with their caches this small too,
/// single-event ingest fell by about a fifth.
fn reader(connection: &rusqlite::Connection) -> Result<()> {
    mapped(connection)?;
    connection.pragma_update(None, "cache_size", -256i64)?;
    Ok(())
}

/// How often a [`Checkpointer`] folds the write-ahead log into the main file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Pages (about 200 MiB) a write-ahead log may reach before its writer checkpoints it itself,
/// though a [`Checkpointer`] looks after it. SQLite starts a log over only after a checkpoint
/// that caught up with every commit, which the checkpointer cannot do while commits follow each
/// other without a pause (a rebuild's chunked save): this bounds the log then. At 10,000 pages a
/// rebuild of 100,000 events already crossed it, and ran a quarter slower.
const WRITER_CHECKPOINT_PAGES: i64 = 50_000;

/// Bytes a write-ahead log file is cut back to when it starts over, so that one long burst does
/// not leave a large file behind.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Settings of the writer of a database that a [`Checkpointer`] looks after: its automatic
/// checkpoints only as a backstop, and a bounded log file.
fn checkpointed_elsewhere(connection: &rusqlite::Connection) -> Result<()> {
    connection.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(())
}

/// Folds a database's write-ahead log into its main file every [`CHECKPOINT_EVERY`], on a
/// thread and a connection of its own. Its writer keeps SQLite's automatic checkpoints only as
/// a backstop (see [`checkpointed_elsewhere`]): those run inside the commit that crosses the
/// threshold, flush the main file to disk, and make everything queued behind that commit wait
/// (seconds at a time for the audit trail under many subscribers; a third of each commit while
/// a rebuild saves views). Checkpoints here are passive: they never block the writer, and copy
/// what no reader still needs.
pub(crate) struct Checkpointer {
    /// Dropped to stop the thread.
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Held by the thread for each checkpoint, and by whoever must truncate the log (SQLite
    /// runs one checkpoint at a time and answers a second one "busy" at once).
    turn: Arc<Mutex<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`; `what` names it in the thread's name and
    /// in warnings.
    pub(crate) fn start(path: &Path, what: &'static str) -> Result<Self> {
        let connection = rusqlite::Connection::open(path)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let turn = Arc::new(Mutex::new(()));
        let thread_turn = turn.clone();
        let thread = std::thread::Builder::new()
            .name(format!("travelmap-{what}-checkpointer"))
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    let _turn = thread_turn.lock().expect("checkpoint turn lock");
                    if let Err(error) =
                        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(%error, "could not checkpoint the {what}");
                    }
                }
            })?;
        Ok(Self {
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
            turn,
        })
    }

    /// The lock to hold while truncating the log, so that no checkpoint of this thread's
    /// is under way meanwhile.
    pub(crate) fn turn(&self) -> Arc<Mutex<()>> {
        self.turn.clone()
    }

    /// Stops the thread and waits for it (a checkpoint under way finishes first).
    pub(crate) fn stop(&self) {
        self.stop.lock().expect("checkpointer lock").take();
        if let Some(thread) = self.thread.lock().expect("checkpointer lock").take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}
