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
//!
//! The files hold criminal-justice and health data, so a directory the store makes is open to
//! its owner only, and so is every file it makes in it (SQLite gives a database's write-ahead
//! and shared-memory files the database's permissions).

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
        create_private_dir(data_dir).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("data directory {}: {error}", data_dir.display()),
            )
        })?;
        warn_if_shared(data_dir);
        let lock_path = data_dir.join("travelmap.lock");
        let lock = private_file(&lock_path).map_err(|error| lock_error(&lock_path, error))?;
        // An offline command holds the lock for a moment while it judges an emptied trail (see
        // `SqliteAuditLog::append_beside`): waited for, briefly; another server holds it for
        // good.
        let until = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => return Err(Error::Locked(data_dir.to_owned())),
                Err(TryLockError::Error(error)) => {
                    return Err(lock_error(&lock_path, error.into()));
                }
            }
        }
        for file in DATABASES {
            private_file(&data_dir.join(file)).map_err(opening(file))?;
        }
        // Whether the trail's files were removed or replaced under the process (looked at by the
        // trail's writer, by the log before each commit, and by readiness probes): the log then
        // takes no more events, whose entries could not be written.
        let trail_watch = Arc::new(audit::TrailWatch::default());
        let log = SqliteEventLog::open(&data_dir.join("events.sqlite"), trail_watch.clone())
            .map_err(opening("events.sqlite"))?;
        let views = SqliteViewStore::open(&data_dir.join("projections.sqlite"))
            .map_err(opening("projections.sqlite"))?;
        let head = *crate::EventLog::head(&log).borrow();
        // Every recorded event was logged, so a log with events beside an empty trail means the
        // trail was removed or replaced (or not restored with the log): the trail's open says
        // so, loudly, on this and every later open until the trail is restored, since nothing
        // else would, and begins it with an entry saying so (see `TRAIL_BEGUN_ANEW`), so that
        // `audit verify` keeps reporting it once new entries follow.
        // So does a trail without the entry the log recorded it held (see
        // `SqliteEventLog::trail_recorded`).
        let audit = SqliteAuditLog::open(
            &data_dir.join("audit.sqlite"),
            head,
            log.trail_recorded(),
            trail_watch,
        )
        .map_err(opening("audit.sqlite"))?;
        log.record_trail_soon();
        let keys =
            SqliteKeyStore::open(&data_dir.join("keys.sqlite")).map_err(opening("keys.sqlite"))?;
        let webhooks = SqliteWebhookStore::open(&data_dir.join("webhooks.sqlite"))
            .map_err(opening("webhooks.sqlite"))?;
        let rewound = webhooks.rewind_past(head)?;
        if rewound > 0 {
            tracing::warn!(
                webhooks = rewound,
                head,
                "webhook cursors were ahead of the event log (an older log restored?); \
                 moved back to its head, so that no new event is skipped"
            );
        }
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

/// How long opening the store waits for the data directory's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// The database files of a data directory.
const DATABASES: [&str; 5] = [
    "events.sqlite",
    "projections.sqlite",
    "audit.sqlite",
    "keys.sqlite",
    "webhooks.sqlite",
];

/// Creates `dir` and any missing parents, open to the owner only (on Unix; elsewhere with the
/// platform's defaults). A directory that exists is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Opens `path` for writing, creating it empty and open to the owner only if it does not exist
/// (SQLite takes an empty file for a new database). An existing file keeps its permissions, but
/// one that other users may read is reported: an operator may have chosen that, and changing it
/// silently could break their backups.
fn private_file(path: &Path) -> Result<File> {
    let mut options = File::options();
    options.create_new(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(file) => Ok(file),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_shared(path);
            Ok(File::options().write(true).open(path)?)
        }
        Err(error) => Err(error.into()),
    }
}

/// The permission bits of `path` if users other than its owner may read, write or enter it.
pub fn shared_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Logs a warning if users other than the owner may read or enter `path`.
fn warn_if_shared(path: &Path) {
    if let Some(mode) = shared_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "other users of this machine may read this part of the store; restrict it to \
             the service's user (chmod 700 for the directory, 600 for its files)"
        );
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
    /// in warnings. For the audit trail, `trail` hears which entry each checkpoint that folds
    /// the whole write-ahead log (and so flushes the main file) has put on disk.
    pub(crate) fn start(
        path: &Path,
        what: &'static str,
        trail: Option<Arc<audit::TrailWatch>>,
    ) -> Result<Self> {
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
                    // Read before the checkpoint: committed, so in the log it folds.
                    let committed = trail.as_ref().and_then(|trail| trail.committed());
                    match fold_whole_log(&connection) {
                        Ok(true) => {
                            if let Some(trail) = &trail {
                                trail.made_durable(committed);
                            }
                        }
                        Ok(false) => {}
                        Err(error) => tracing::warn!(%error, "could not checkpoint the {what}"),
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

/// Runs a passive checkpoint of `connection`'s database: whether it folded every frame of the
/// write-ahead log into the main file (not busy; -1 frames: not in write-ahead mode at all).
/// SQLite flushes the log before it folds it, so every commit made before such a checkpoint
/// began is on disk.
pub(crate) fn fold_whole_log(connection: &rusqlite::Connection) -> Result<bool> {
    Ok(
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            let (busy, frames, folded): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            Ok(busy == 0 && frames >= 0 && frames == folded)
        })?,
    )
}

/// Opens the database at `path` for reading only.
fn open_read_only(path: &Path) -> Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(10))?;
    Ok(connection)
}

/// [`open_read_only`] for a command that only reads, and may be reading a copy of the store it
/// cannot write (an auditor checking a backup on read-only media). SQLite reads a database in
/// write-ahead-log mode through a shared-memory file beside it, which it makes on first read;
/// in a directory the reader may not write it cannot. Where there is no shared-memory file
/// (no process has the database open) and no log beside the file holds anything, the file alone
/// is the whole database and nothing is changing it: it is opened as immutable instead, which
/// needs no shared memory. Anything else is refused as SQLite refuses it.
fn open_copy_read_only(path: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::{ErrorCode, OpenFlags};
    let connection = open_read_only(path)?;
    // The shared memory is opened by the first read, not by the open.
    match connection.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        Ok(()) => Ok(connection),
        Err(rusqlite::Error::SqliteFailure(error, _))
            if matches!(error.code, ErrorCode::ReadOnly | ErrorCode::CannotOpen)
                && !beside(path, "-shm").exists()
                && nothing_in_the_log_beside(path) =>
        {
            drop(connection);
            Ok(rusqlite::Connection::open_with_flags(
                immutable_uri(path)?,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?)
        }
        Err(error) => Err(error.into()),
    }
}

/// The file named as `path` with `suffix` appended (SQLite's `-wal` and `-shm`).
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Whether the write-ahead log beside `path` is missing or empty, so that the file alone holds
/// every commit.
fn nothing_in_the_log_beside(path: &Path) -> bool {
    std::fs::metadata(beside(path, "-wal")).map_or(true, |metadata| metadata.len() == 0)
}

/// `path` as an SQLite URI that opens it as immutable (no locks, no shared memory).
fn immutable_uri(path: &Path) -> Result<String> {
    let Some(text) = path.to_str() else {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a UTF-8 path", path.display()),
        )));
    };
    // A URI's path ends at `?` or `#`, and `%` starts an escape: those three are escaped.
    let mut uri = String::from("file:");
    for character in text.chars() {
        match character {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            other => uri.push(other),
        }
    }
    uri.push_str("?immutable=1");
    Ok(uri)
}

/// Names the file an error opening the store is about.
fn opening(file: &'static str) -> impl Fn(Error) -> Error {
    move |source| Error::Opening {
        file,
        source: Box::new(source),
    }
}

/// Logs that the trail holds no entries beside a log of `events` events, as the entry saying so
/// is written.
fn report_empty_trail(events: u64) {
    tracing::error!(
        events,
        "the audit trail (audit.sqlite) holds no entries while the event log holds events: it \
         was removed, emptied, or not restored with the log. Restore it from the backup taken \
         with the log; the trail now begins with an entry saying so"
    );
}

/// Logs that entries were removed from the trail, or replaced, as `what` tells.
fn report_lost_entries(what: &str) {
    tracing::error!(
        "entries were removed from the audit trail (audit.sqlite), or replaced: {what}. Restore \
         it from the backup taken with the log; the trail goes on with an entry saying it was \
         begun anew"
    );
}

/// The data directory's lock at `path`, taken, if no process holds it: opened as the store
/// opens it (made if missing: a restored directory comes without one). An error is one of the
/// file, not a holder (a lock file this user may not open, a file system without locks).
fn unheld_lock(path: &Path) -> Result<Option<File>> {
    let lock = private_file(path).map_err(|error| lock_error(path, error))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(error)) => Err(lock_error(path, error.into())),
    }
}

/// `error`, met opening or taking the data directory's lock at `path`, naming the file.
fn lock_error(path: &Path, error: Error) -> Error {
    match error {
        Error::Io(error) => Error::Io(std::io::Error::new(
            error.kind(),
            format!("the data directory's lock {}: {error}", path.display()),
        )),
        other => other,
    }
}

/// How many events the event log at `path` holds (its head position); none if it is missing.
fn events_recorded(path: &Path) -> Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    use rusqlite::OptionalExtension;
    let connection = open_copy_read_only(path)?;
    // A file made by hand, or emptied, holds no log at all.
    let has_log = connection
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'events'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_log {
        return Ok(0);
    }
    Ok(
        connection.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| {
            row.get::<_, i64>(0)
        })? as u64,
    )
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_store_is_open_to_its_owner_only() {
        let parent = tempfile::tempdir().unwrap();
        let data_dir = parent.path().join("data");
        let store = SqliteStore::open(&data_dir).unwrap();
        assert_eq!(mode(&data_dir), 0o700);
        let mut checked = 0;
        for entry in std::fs::read_dir(&data_dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            checked += 1;
        }
        // The five databases, the lock, and the write-ahead files SQLite made beside them.
        assert!(checked >= 6, "only {checked} files");
        drop(store);
    }

    #[test]
    fn an_existing_store_keeps_the_permissions_its_operator_chose() {
        let data_dir = tempfile::tempdir().unwrap();
        let events = data_dir.path().join("events.sqlite");
        std::fs::write(&events, b"").unwrap();
        std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o640)).unwrap();
        let _store = SqliteStore::open(data_dir.path()).unwrap();
        assert_eq!(mode(&events), 0o640);
    }
}
