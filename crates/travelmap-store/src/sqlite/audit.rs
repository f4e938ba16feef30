//! The embedded audit trail: `audit.sqlite` in the data directory, with a writer thread of its
//! own. Apart from `events.sqlite` so that logging every read does not queue behind event
//! appends for SQLite's single write lock; in the same directory, so that it is backed up and
//! moved with the log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::DateTime;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};
use travelmap_domain::ClientId;
use travelmap_domain::audit::{AuditEntry, AuditRecord, GENESIS, Operation, Outcome, chain_hash};
use uuid::Uuid;

use super::pool::ReadPool;
use super::{Checkpointer, configure, schema};
use crate::{AuditLog, Error, Result};

const MAX_GROUP: usize = 512;
/// Bytes per page of a new trail's file.
const AUDIT_PAGE_SIZE: i64 = 2048;
const QUEUE_DEPTH: usize = 4096;
/// How long an offline command waits for the process holding the data directory to begin an
/// emptied trail anew (see [`SqliteAuditLog::append_beside`]).
const PATIENCE_WITH_THE_HOLDER: Duration = Duration::from_secs(3);
/// The head of the trail: its last entry numbered as the service numbers them (rows numbered 0
/// or below were added by hand; `audit verify` reports them).
const HEAD: &str = "SELECT seq, hash FROM audit WHERE seq > 0 ORDER BY seq DESC LIMIT 1";
/// The head as the trail records it apart from its entries (see `schema::AUDIT`).
const STORED_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";

struct Job {
    records: Vec<AuditRecord>,
    /// Told as soon as the records are committed (see [`AuditLog::append_signalling`]).
    written: Option<crate::EntriesSignal>,
    reply: oneshot::Sender<Result<Vec<u64>>>,
}

/// The embedded audit log.
pub struct SqliteAuditLog {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// `None` for a trail opened read-only.
    checkpointer: Option<Checkpointer>,
    readers: Arc<ReadPool>,
    /// Whether the trail's files were found removed or replaced (see [`Error::TrailReplaced`]).
    watch: Arc<TrailWatch>,
}

/// Whether the serving process's trail can take entries: once its file or write-ahead log is
/// found removed or replaced, it cannot until the process is restarted. Shared with the event
/// log, which then records nothing whose entries could not be written.
#[derive(Debug, Default)]
pub(crate) struct TrailWatch {
    lost: AtomicBool,
    /// The last entry the serving writer committed into the file it opened (or found there at
    /// open), number and hash. Committed, not yet on disk: the trail's commits do not wait for
    /// a flush, so a power cut can lose it.
    committed: Mutex<Option<(u64, [u8; 32])>>,
    /// The last entry known to be on disk: committed before a checkpoint that then folded the
    /// whole write-ahead log into the main file (SQLite flushes the log before it folds it), at
    /// open, by the checkpointer, or by the writer's last one at close. The event log keeps it beside its events, for the next open to check the trail
    /// against: one that lacks it lost entries a power cut could not have taken.
    durable: Mutex<Option<(u64, [u8; 32])>>,
    /// The files as the trail's writer opened them: unset for a trail opened read-only, or
    /// before the trail is opened.
    files: OnceLock<OpenedFiles>,
}

impl TrailWatch {
    /// Whether the trail is lost; looks at its files (two `stat`s) until it is.
    pub(crate) fn is_lost(&self) -> bool {
        if !self.lost.load(Ordering::Relaxed)
            && let Some(files) = self.files.get()
            && let Ok(false) = files.still_there()
        {
            self.mark_lost();
        }
        self.lost.load(Ordering::Relaxed)
    }

    fn mark_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    /// The last entry the serving writer committed, or found at open.
    pub(crate) fn committed(&self) -> Option<(u64, [u8; 32])> {
        *self.committed.lock().expect("trail head lock")
    }

    fn wrote(&self, head: (u64, [u8; 32])) {
        *self.committed.lock().expect("trail head lock") = Some(head);
    }

    /// The last entry known to be on disk (see the field).
    pub(crate) fn durable(&self) -> Option<(u64, [u8; 32])> {
        *self.durable.lock().expect("trail head lock")
    }

    /// `head`, committed before a checkpoint that folded every commit into the main file and
    /// flushed it, is on disk; unless the file is no longer the one the writer opened.
    pub(crate) fn made_durable(&self, head: Option<(u64, [u8; 32])>) {
        if let Some(head) = head
            && !self.is_lost()
        {
            *self.durable.lock().expect("trail head lock") = Some(head);
        }
    }
}

impl SqliteAuditLog {
    /// Opens (creating if needed) the trail beside an event log of `events` events, which
    /// recorded that the trail held entry `recorded` on disk, for the
    /// process that holds the data directory; `watch` tells if its file is later removed or
    /// replaced. A trail found empty beside events, or without that entry, is begun anew,
    /// saying so (see [`Writer::write`]), by the writer that goes on writing it, so that the
    /// entry saying so is what it remembers as written.
    pub(crate) fn open(
        path: &Path,
        events: u64,
        recorded: Option<(u64, [u8; 32])>,
        watch: Arc<TrailWatch>,
    ) -> Result<Self> {
        let mut connection = Connection::open(path)?;
        // Entries are small and each lands on a page of its client in `audit_by_client`, which a
        // commit writes whole to the write-ahead log, so smaller pages write less: while serving
        // reads, about 6.8 KB per read with 1 KiB pages, 9.1 KB with 2 KiB, 14.4 KB with 4 KiB.
        // But each index page split that reorders pages leaves SQLite's page cache believing it
        // holds a page far past the end of the file, and the next commit then scans the cache's
        // whole hash table (with 1 KiB pages, 4 % of all CPU in a profile of reads at
        // concurrency 8). 2 KiB pages split half as often into a hash table half the size:
        // reads about 12 % faster than with 1 KiB (medians of alternating runs), for a third
        // more bytes written (see docs/performance.md). Takes effect only when the file is
        // created.
        connection.pragma_update(None, "page_size", AUDIT_PAGE_SIZE)?;
        configure(&connection)?;
        // An entry is committed before the operation it logs is answered. NORMAL keeps it through
        // a crash of the process; a power cut can lose the last moments' entries (see
        // docs/operations.md), which spares every logged read an fsync of its own.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints run on a thread of their own (see `Checkpointer`).
        super::checkpointed_elsewhere(&connection)?;
        schema::migrate(&mut connection, path, schema::AUDIT)?;
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        // A trail already begun anew is said to be so at every open, until it is restored.
        let marked: bool = connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM audit WHERE action = ?1 AND seq > 0)",
            [travelmap_domain::audit::TRAIL_BEGUN_ANEW],
            |row| row.get(0),
        )?;
        if marked {
            tracing::error!(
                "the audit trail (audit.sqlite) was begun anew beside an event log that held \
                 events: entries before it were removed or emptied. Restore it from the backup \
                 taken with the log"
            );
        }
        let seen = head(&connection)?;
        // The write-ahead log exists from the connection's first read (above).
        if let Some(files) = OpenedFiles::now(path)? {
            // Set once: the store opens its trail once.
            let _ = watch.files.set(files);
        }
        let mut writer = Writer {
            connection,
            trail: path.to_owned(),
            seen,
            seen_by: Memory::Writer,
            watch: watch.clone(),
        };
        // Judged now, not at the first write, so that the entry saying what was lost comes
        // before anything this process logs: a trail empty beside events, or one whose entries
        // end before (or elsewhere than) its stored head; or one without the entry the event
        // log recorded it had, which its own file cannot show: an older copy of the whole file
        // put in its place after a stop, or entries a power cut lost after their events were
        // recorded.
        let found = writer.seen;
        if (writer.seen.is_none() && events > 0) || stored_head(&writer.connection)? != writer.seen
        {
            writer.write(&[&[]], EmptyTrail::BesideEvents(events))?;
        }
        // Unless that wrote an entry saying entries were lost already.
        if writer.seen == found
            && let Some(recorded) = recorded
            && !holds_entry(&writer.connection, recorded)?
        {
            writer.seen = Some(recorded);
            writer.seen_by = Memory::EventLog;
            writer.write(&[&[]], EmptyTrail::Continue)?;
        }
        if let Some(head) = writer.seen {
            watch.wrote(head);
        }
        // Folded and flushed now, what the trail holds is on disk, for the log to record at once
        // (see `SqliteEventLog::record_trail_soon`): an entry this open wrote saying the trail
        // was begun anew would otherwise be missed again by an open after a crash.
        if super::fold_whole_log(&writer.connection)? {
            watch.made_durable(writer.seen);
        }
        let handle = std::thread::Builder::new()
            .name("travelmap-audit-writer".into())
            .spawn(move || writer.run(queue))?;
        let checkpointer = Checkpointer::start(path, "audit trail", Some(watch.clone()))?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(handle)),
            checkpointer: Some(checkpointer),
            readers: Arc::new(ReadPool::new(path.to_owned())),
            watch,
        })
    }

    /// Opens an existing trail for reading only, without the data directory's lock, so that an
    /// auditor can verify it beside a running server. Appends fail with [`Error::Closed`].
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no audit trail at {}", path.display()),
            )));
        }
        schema::require_current(&super::open_copy_read_only(path)?, path, schema::AUDIT)?;
        Ok(Self {
            jobs: Mutex::new(None),
            writer: Mutex::new(None),
            checkpointer: None,
            readers: Arc::new(ReadPool::for_copy(path.to_owned())),
            watch: Arc::default(),
        })
    }

    /// Whether the file at `path` holds the trail's tables, read without writing to it: a file
    /// without them (emptied to nothing, or made anew) holds no trail, whatever its schema
    /// version says.
    pub fn holds_trail(path: &Path) -> Result<bool> {
        has_trail_tables(&super::open_copy_read_only(path)?)
    }

    /// Appends `records` to an existing trail from outside the process that serves it (an
    /// offline command beside a running server): SQLite's write lock orders the two writers,
    /// and each continues the chain from the head it reads inside its own transaction.
    ///
    /// With no process holding the data directory, a trail found empty beside a log with
    /// events is begun with the entry that says so (see [`Writer::write`]). A process that
    /// holds it judges the trail itself, when it opens the store. So an empty trail beside
    /// events and a holder is waited on, for a few seconds, until the holder has written to it
    /// (its open begins an emptied trail anew); then the append fails
    /// with [`Error::TrailUnjudged`], and nothing is written. Writing first would begin the
    /// trail without the entry that says it was emptied, and it would verify as intact.
    pub fn append_beside(path: &Path, records: &[AuditRecord]) -> Result<Vec<u64>> {
        Self::append_waiting(path, records, PATIENCE_WITH_THE_HOLDER)
    }

    fn append_waiting(
        path: &Path,
        records: &[AuditRecord],
        patience: Duration,
    ) -> Result<Vec<u64>> {
        let events = path.with_file_name("events.sqlite");
        let until = Instant::now() + patience;
        loop {
            match Self::append_with(path, records, EmptyTrail::JudgeIfUnheld(&events)) {
                Err(Error::TrailUnjudged(_)) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                outcome => return outcome,
            }
        }
    }

    fn append_with(
        path: &Path,
        records: &[AuditRecord],
        on_empty: EmptyTrail<'_>,
    ) -> Result<Vec<u64>> {
        // A file of no bytes, or one without the trail's tables, is no trail yet: what a
        // process opening the store makes before it makes the tables. Written to here, it would
        // be given a header without them; told to migrate, the operator would be misled.
        let no_trail = |what: &str| -> Result<Vec<u64>> {
            if let EmptyTrail::JudgeIfUnheld(events) = on_empty
                && events.exists()
                && super::unheld_lock(&events.with_file_name("travelmap.lock"))?.is_none()
            {
                return Err(Error::TrailUnjudged(super::events_recorded(events)?));
            }
            Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no audit trail at {} ({what})", path.display()),
            )))
        };
        match std::fs::metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no audit trail at {} (the file is missing)", path.display()),
                )));
            }
            Ok(metadata) if metadata.len() == 0 => return no_trail("the file is empty"),
            _ => {}
        }
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        if !has_trail_tables(&connection)? {
            return no_trail("the file holds no trail's tables");
        }
        configure(&connection)?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        schema::require_current(&connection, path, schema::AUDIT)?;
        let mut writer = Writer {
            connection,
            trail: path.to_owned(),
            // Judged by `on_empty`, not by what this writer saw before.
            seen: None,
            seen_by: Memory::Writer,
            // No files to watch: a command's connection lives for this one append.
            watch: Arc::default(),
        };
        writer
            .write(std::slice::from_ref(&records), on_empty)?
            .pop()
            .ok_or(Error::Closed)
    }

    /// Stops accepting entries and waits until those queued are written.
    pub fn close(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.stop();
        }
        self.jobs.lock().expect("jobs lock").take();
        if let Some(handle) = self.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
    }
}

impl Drop for SqliteAuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl SqliteAuditLog {
    async fn send(
        &self,
        records: Vec<AuditRecord>,
        written: Option<crate::EntriesSignal>,
    ) -> Result<Vec<u64>> {
        let jobs = self.jobs.lock().expect("jobs lock").clone();
        let jobs = jobs.ok_or(Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(Job {
            records,
            written,
            reply,
        })
        .await
        .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

#[async_trait]
impl AuditLog for SqliteAuditLog {
    async fn append(&self, records: Vec<AuditRecord>) -> Result<Vec<u64>> {
        self.send(records, None).await
    }

    async fn append_signalling(
        &self,
        records: Vec<AuditRecord>,
        written: crate::EntriesSignal,
    ) -> Result<Vec<u64>> {
        self.send(records, Some(written)).await
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                ))?;
                let rows = statement.query_map(params![after, limit as i64], read_entry)?;
                rows.map(|row| row?).collect()
            })
            .await
    }

    async fn head(&self) -> Result<(u64, [u8; 32])> {
        self.last().await
    }

    async fn read_action(&self, action: &str) -> Result<Vec<AuditEntry>> {
        let action = action.to_owned();
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM audit WHERE action = ?1 AND seq > 0 ORDER BY seq"
                ))?;
                let rows = statement.query_map(params![action], read_entry)?;
                rows.map(|row| row?).collect()
            })
            .await
    }

    async fn any_action_outside(&self, prefix: &str) -> Result<bool> {
        let prefix = prefix.to_owned();
        self.readers
            .read(move |connection| {
                Ok(connection.query_row(
                    "SELECT EXISTS (SELECT 1 FROM audit WHERE seq > 0 AND substr(action, 1, ?2) <> ?1)",
                    params![prefix, prefix.chars().count() as i64],
                    |row| row.get(0),
                )?)
            })
            .await
    }

    fn out_of_service(&self) -> bool {
        // Looked at here too, so that a readiness probe sees the loss before a write would.
        self.watch.is_lost()
    }

    async fn before_the_first(&self) -> Result<u64> {
        self.readers
            .read(|connection| {
                Ok(connection.query_row(
                    "SELECT COUNT(*) FROM audit WHERE seq <= 0",
                    [],
                    |row| row.get(0),
                )?)
            })
            .await
    }

    async fn read_client(&self, client: ClientId) -> Result<Vec<AuditEntry>> {
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM audit WHERE client_id = ?1 AND seq > 0 ORDER BY seq"
                ))?;
                let rows = statement.query_map(params![client.0], read_entry)?;
                rows.map(|row| row?).collect()
            })
            .await
    }
}

impl SqliteAuditLog {
    /// The stored head (see `schema::AUDIT`), which `audit verify` compares with the entries.
    async fn last(&self) -> Result<(u64, [u8; 32])> {
        self.readers
            .read(|connection| Ok(stored_head(connection)?.unwrap_or((0, GENESIS))))
            .await
    }
}

const COLUMNS: &str = "seq, at, credential, agency, actor, operation, client_id, purpose, \
                       justification, request_id, outcome, action, returned, hash";

fn read_entry(row: &Row<'_>) -> rusqlite::Result<Result<AuditEntry>> {
    let seq: u64 = row.get(0)?;
    let hash: Vec<u8> = row.get(13)?;
    let operation: String = row.get(5)?;
    let outcome: String = row.get(10)?;
    let record = AuditRecord {
        at: DateTime::from_timestamp_micros(row.get(1)?).unwrap_or_default(),
        credential: row.get(2)?,
        agency: row.get(3)?,
        actor: row.get(4)?,
        operation: match Operation::parse(&operation) {
            Some(operation) => operation,
            None => return Ok(Err(damaged(seq, "unknown operation"))),
        },
        client_id: row.get::<_, Option<Uuid>>(6)?.map(ClientId),
        purpose: row.get(7)?,
        justification: row.get(8)?,
        request_id: row.get(9)?,
        outcome: match Outcome::parse(&outcome) {
            Some(outcome) => outcome,
            None => return Ok(Err(damaged(seq, "unknown outcome"))),
        },
        action: row.get(11)?,
        returned: row.get(12)?,
    };
    Ok(to_hash(seq, &hash).map(|hash| AuditEntry { seq, record, hash }))
}

fn to_hash(seq: u64, bytes: &[u8]) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| damaged(seq, "hash is not 32 bytes"))
}

fn damaged(seq: u64, what: &str) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("audit entry {seq} is damaged: {what}"),
    ))
}

/// Who remembered the entry a trail must still hold.
#[derive(Debug, Clone, Copy)]
enum Memory {
    /// The writer, which found or wrote it.
    Writer,
    /// The event log, which recorded it beside its events (see [`SqliteAuditLog::open`]).
    EventLog,
}

struct Writer {
    connection: Connection,
    trail: PathBuf,
    /// The last entry this writer found or wrote, number and hash: if the trail no longer
    /// holds it, entries were removed or replaced under the process.
    seen: Option<(u64, [u8; 32])>,
    /// Who remembered `seen`, for the entry that says it is missing.
    seen_by: Memory,
    /// The serving writer's files as it opened them: entries written to a file removed or
    /// replaced since would be lost with the process.
    watch: Arc<TrailWatch>,
}

/// Which file a path names (device and inode), where the platform tells.
type FileIdentity = (u64, u64);

/// The trail's file and its write-ahead log as a process opened them. SQLite goes on writing
/// to the files it opened whatever their names come to mean: entries written to a removed
/// `audit.sqlite`, or committed into a removed `-wal` and not yet folded back, would be lost with
/// the process (a crash loses the second kind).
#[derive(Debug, Clone)]
pub(crate) struct OpenedFiles {
    trail: PathBuf,
    main: FileIdentity,
    wal: Option<FileIdentity>,
}

impl OpenedFiles {
    /// The files `trail` names now: `None` where the platform does not tell.
    fn now(trail: &Path) -> Result<Option<Self>> {
        let Some(main) = file_identity(trail)? else {
            return Ok(None);
        };
        let wal = match file_identity(&super::beside(trail, "-wal")) {
            Ok(wal) => wal,
            Err(Error::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        Ok(Some(Self {
            trail: trail.to_owned(),
            main,
            wal,
        }))
    }

    /// Whether the names still name the files opened; an error is one of looking (not a file
    /// gone).
    fn still_there(&self) -> Result<bool> {
        let same = |path: &Path, opened: FileIdentity| match file_identity(path) {
            Ok(now) => Ok(now == Some(opened)),
            Err(Error::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        };
        Ok(same(&self.trail, self.main)?
            && match self.wal {
                Some(wal) => same(&super::beside(&self.trail, "-wal"), wal)?,
                None => true,
            })
    }
}

fn file_identity(path: &Path) -> Result<Option<FileIdentity>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path)?;
        Ok(Some((metadata.dev(), metadata.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

fn has_trail_tables(connection: &Connection) -> Result<bool> {
    Ok(connection
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'audit'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The trail's last entry, number and hash, if it has one.
fn head(connection: &Connection) -> Result<Option<(u64, [u8; 32])>> {
    read_head(connection, HEAD)
}

/// The head the trail records apart from its entries, if it records one.
fn stored_head(connection: &Connection) -> Result<Option<(u64, [u8; 32])>> {
    read_head(connection, STORED_HEAD)
}

fn read_head(connection: &Connection, query: &str) -> Result<Option<(u64, [u8; 32])>> {
    let last: Option<(u64, Vec<u8>)> = connection
        .prepare_cached(query)?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    last.map(|(seq, hash)| Ok((seq, to_hash(seq, &hash)?)))
        .transpose()
}

/// How a write treats a trail it finds with no entries.
#[derive(Debug, Clone, Copy)]
enum EmptyTrail<'a> {
    /// Continued from entry 1: the serving process's writer (the store was checked at open).
    Continue,
    /// Judged against this many events: the store's open, holding the directory.
    BesideEvents(u64),
    /// Judged so if no process holds the data directory: an offline command.
    JudgeIfUnheld(&'a Path),
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let outcome = self.commit(&group);
            for (job, result) in group.into_iter().zip(outcome) {
                if result.is_ok()
                    && let Some(written) = &job.written
                {
                    written.written();
                }
                let _ = job.reply.send(result);
            }
        }
        // Fold the WAL back into the main file, so that a copy of `audit.sqlite` alone holds
        // every entry (as for the event log).
        match self
            .connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                Ok(row.get::<_, i64>(0)? == 0)
            }) {
            Ok(true) => self.watch.made_durable(self.seen),
            Ok(false) => tracing::warn!("could not checkpoint the audit trail on close: busy"),
            Err(error) => tracing::warn!(%error, "could not checkpoint the audit trail on close"),
        }
    }

    /// Writes a group in one transaction; every job gets its sequence numbers, or the error.
    fn commit(&mut self, group: &[Job]) -> Vec<Result<Vec<u64>>> {
        let records: Vec<&[AuditRecord]> = group.iter().map(|job| job.records.as_slice()).collect();
        match self.write(&records, EmptyTrail::Continue) {
            // Committed into a file removed or replaced meanwhile: lost with the process, so
            // not to be told written.
            Ok(_) if self.watch.is_lost() => {
                tracing::error!("the audit trail's file was removed or replaced under its writer");
                group.iter().map(|_| Err(Error::TrailReplaced)).collect()
            }
            Ok(answers) => {
                // Told only once the file is known to be the one opened: the log records it
                // as what the trail holds.
                if let Some(head) = self.seen {
                    self.watch.wrote(head);
                }
                answers.into_iter().map(Ok).collect()
            }
            Err(error) => {
                tracing::error!(%error, "audit log commit failed");
                let failure = error.for_each_waiter("writing the audit log");
                group.iter().map(|_| Err(failure())).collect()
            }
        }
    }

    /// Writes groups of records in one transaction, continuing the chain from the head as the
    /// transaction finds it (read under the write lock, so an offline command's entries, see
    /// [`SqliteAuditLog::append_beside`], are continued too). Returns each group's numbers.
    ///
    /// Given the event log beside the trail, a trail found empty while that log holds events
    /// is begun with an entry saying so (see [`travelmap_domain::audit::TRAIL_BEGUN_ANEW`]),
    /// decided under the same write lock. The serving process's own writer is not given it: it
    /// judged the trail when the store was opened, and a decision's events (logged after them)
    /// could make a new store look emptied. What
    /// that writer judges is its own memory: if the trail no longer holds the last entry it
    /// found or wrote (as it was), entries were removed or replaced under it, and the same
    /// entry is written then.
    fn write(
        &mut self,
        group: &[&[AuditRecord]],
        on_empty: EmptyTrail<'_>,
    ) -> Result<Vec<Vec<u64>>> {
        if self.watch.is_lost() {
            return Err(Error::TrailReplaced);
        }
        let transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // An offline writer checked the schema before it waited for the write lock: a newer
        // binary may have migrated the trail meanwhile.
        if matches!(on_empty, EmptyTrail::JudgeIfUnheld(_)) {
            schema::require_current(&transaction, &self.trail, schema::AUDIT)?;
        }
        let last = head(&transaction)?;
        let recorded_head = stored_head(&transaction)?;
        let empty = last.is_none();
        let (mut seq, mut hash) = last.unwrap_or((0, GENESIS));
        // Held until the transaction ends, so that no process opens the store meanwhile and
        // records events whose entries this write would take for lost ones.
        let mut _directory = None;
        let recorded = match (empty, on_empty) {
            (true, EmptyTrail::BesideEvents(events)) => events,
            (true, EmptyTrail::JudgeIfUnheld(events)) if events.exists() => {
                _directory = super::unheld_lock(&events.with_file_name("travelmap.lock"))?;
                let recorded = super::events_recorded(events)?;
                if _directory.is_none() && recorded > 0 {
                    // The holder judges it (see `SqliteAuditLog::append_beside`).
                    return Err(Error::TrailUnjudged(recorded));
                }
                recorded
            }
            _ => 0,
        };
        let begun_anew = if recorded > 0 {
            super::report_empty_trail(recorded);
            Some(travelmap_domain::audit::begun_anew(
                recorded,
                chrono::Utc::now(),
            ))
        } else if let Some(what) = if head_disagrees(&transaction, recorded_head, last)? {
            Some(match recorded_head {
                Some((named, _)) if named == seq => format!(
                    "the trail's recorded head (audit_head) named entry {named} with another \
                     hash than the entry has"
                ),
                recorded_head => format!(
                    "the trail's recorded head (audit_head) named entry {}, but its entries \
                     end at entry {seq}",
                    recorded_head.map_or(0, |(seq, _)| seq)
                ),
            })
        } else if lost_since(self.seen, &transaction, (seq, hash))? {
            // Entries after the one it remembers may be another process's, and genuine.
            let remembered = self.seen.map_or(0, |(seq, _)| seq);
            Some(match self.seen_by {
                Memory::Writer => format!(
                    "the process writing it had last found or written entry {remembered}, and \
                     found the trail without it, ending at entry {seq}"
                ),
                Memory::EventLog => format!(
                    "the event log recorded that the trail held entry {remembered} on disk, and \
                     the trail was found without it, ending at entry {seq}"
                ),
            })
        } else {
            None
        } {
            let recorded = super::events_recorded(&self.trail.with_file_name("events.sqlite"))?;
            super::report_lost_entries(&what);
            let mut entry = travelmap_domain::audit::begun_anew(recorded, chrono::Utc::now());
            entry.returned = Some(format!(
                "an event log of {recorded} recorded events; {what}"
            ));
            Some(entry)
        } else {
            None
        };
        let begun_anew = begun_anew.as_slice();
        let mut answers = Vec::with_capacity(group.len());
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO audit (seq, at, credential, agency, actor, operation, client_id,
                     purpose, justification, request_id, outcome, action, returned, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for (index, records) in group.iter().enumerate() {
                let mut numbers = Vec::with_capacity(records.len());
                let marker = if index == 0 { begun_anew } else { &[] };
                for (record, numbered) in marker
                    .iter()
                    .map(|record| (record, false))
                    .chain(records.iter().map(|record| (record, true)))
                {
                    seq += 1;
                    hash = chain_hash(&hash, seq, record);
                    insert.execute(params![
                        seq,
                        record.at.timestamp_micros(),
                        record.credential,
                        record.agency,
                        record.actor,
                        record.operation.as_str(),
                        record.client_id.map(|id| id.0),
                        record.purpose,
                        record.justification,
                        record.request_id,
                        record.outcome.as_str(),
                        record.action,
                        record.returned,
                        hash.to_vec(),
                    ])?;
                    if numbered {
                        numbers.push(seq);
                    }
                }
                answers.push(numbers);
            }
        }
        if seq > 0 && recorded_head != Some((seq, hash)) {
            transaction
                .prepare_cached(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                )?
                .execute(params![seq, hash.to_vec()])?;
        }
        transaction.commit()?;
        if seq > 0 {
            self.seen = Some((seq, hash));
            self.seen_by = Memory::Writer;
        }
        Ok(answers)
    }
}

/// Whether the head the trail records apart from its entries disagrees with its `last` entry as
/// only a removal or replacement of entries makes it: a head behind the entries whose own entry
/// is still there as it was is what a writer that did not move it leaves (an earlier version's
/// offline command, beside an upgrade), and is moved on by this write.
fn head_disagrees(
    transaction: &rusqlite::Transaction<'_>,
    recorded: Option<(u64, [u8; 32])>,
    last: Option<(u64, [u8; 32])>,
) -> Result<bool> {
    match (recorded, last) {
        (recorded, last) if recorded == last => Ok(false),
        (Some((named, named_hash)), Some((seq, _))) if named < seq => {
            let appended = holds_entry(transaction, (named, named_hash))?;
            if appended {
                tracing::warn!(
                    recorded = named,
                    last = seq,
                    "the audit trail's entries go on past its recorded head (written by an \
                     earlier version's command?); the head is moved on"
                );
            }
            Ok(!appended)
        }
        _ => Ok(true),
    }
}

/// Whether the trail, whose head is now `head`, no longer holds the entry `seen` (the last one
/// a writer found or wrote) as it was. Looked up only when another process wrote after it.
fn lost_since(
    seen: Option<(u64, [u8; 32])>,
    transaction: &rusqlite::Transaction<'_>,
    head: (u64, [u8; 32]),
) -> Result<bool> {
    let Some((seen, seen_hash)) = seen else {
        return Ok(false);
    };
    if head.0 <= seen {
        return Ok(head != (seen, seen_hash));
    }
    Ok(!holds_entry(transaction, (seen, seen_hash))?)
}

/// Whether the trail holds entry `seq` with this `hash`.
fn holds_entry(connection: &Connection, (seq, hash): (u64, [u8; 32])) -> Result<bool> {
    let found: Option<Vec<u8>> = connection
        .prepare_cached("SELECT hash FROM audit WHERE seq = ?1")?
        .query_row([seq], |row| row.get(0))
        .optional()?;
    Ok(found.as_deref() == Some(hash.as_slice()))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use travelmap_domain::audit::verify;

    use super::*;

    fn actions_of(entries: &[AuditEntry]) -> Vec<&str> {
        entries
            .iter()
            .map(|entry| entry.record.action.as_str())
            .collect()
    }

    fn record(action: &str) -> AuditRecord {
        AuditRecord {
            at: Utc::now(),
            credential: "dpo-office".into(),
            agency: "audit-office".into(),
            actor: None,
            operation: Operation::Consultation,
            client_id: Some(ClientId(Uuid::from_u128(7))),
            purpose: Some("audit".into()),
            justification: None,
            request_id: None,
            outcome: Outcome::Allowed,
            action: action.into(),
            returned: None,
        }
    }

    #[tokio::test]
    async fn an_offline_append_beside_the_server_continues_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let served = SqliteAuditLog::open(&path, 0, None, Arc::default()).unwrap();
        assert_eq!(served.append(vec![record("served 1")]).await.unwrap(), [1]);
        // Another process's entry, between two of the server's.
        assert_eq!(
            SqliteAuditLog::append_beside(&path, &[record("offline")]).unwrap(),
            [2]
        );
        assert_eq!(
            served
                .append(vec![record("served 2"), record("served 3")])
                .await
                .unwrap(),
            [3, 4]
        );
        let entries = served.read_after(0, 10).await.unwrap();
        let actions = actions_of(&entries);
        assert_eq!(actions, ["served 1", "offline", "served 2", "served 3"]);
        assert_eq!(verify(entries).unwrap().0, 4);
    }

    /// A trail found empty beside a log with events is begun with the entry that says so, once,
    /// and the numbers handed back are those of the records given; not where the log is empty,
    /// nor while another process holds the data directory (it checked the trail at its open).
    #[tokio::test]
    async fn an_offline_append_to_an_emptied_trail_begins_it_anew_once() {
        use travelmap_domain::audit::TRAIL_BEGUN_ANEW;
        let trail_beside = |events: u64| {
            let dir = tempfile::tempdir().unwrap();
            let log = Connection::open(dir.path().join("events.sqlite")).unwrap();
            log.execute("CREATE TABLE events (position INTEGER PRIMARY KEY)", [])
                .unwrap();
            for position in 1..=events {
                log.execute("INSERT INTO events (position) VALUES (?1)", [position])
                    .unwrap();
            }
            let path = dir.path().join("audit.sqlite");
            SqliteAuditLog::open(&path, 0, None, Arc::default())
                .unwrap()
                .close();
            std::fs::write(dir.path().join("travelmap.lock"), "").unwrap();
            (dir, path)
        };
        let (dir, path) = trail_beside(3);
        assert_eq!(
            SqliteAuditLog::append_beside(&path, &[record("offline")]).unwrap(),
            [2]
        );
        assert_eq!(
            SqliteAuditLog::append_beside(&path, &[record("again")]).unwrap(),
            [3]
        );
        assert!(
            SqliteAuditLog::append_beside(&path, &[])
                .unwrap()
                .is_empty()
        );
        let entries = SqliteAuditLog::open_read_only(&path)
            .unwrap()
            .read_after(0, 10)
            .await
            .unwrap();
        let actions = actions_of(&entries);
        assert_eq!(actions, [TRAIL_BEGUN_ANEW, "offline", "again"]);
        assert_eq!(
            entries[0].record.returned.as_deref(),
            Some("an event log of 3 recorded events")
        );
        assert_eq!(verify(entries).unwrap().0, 3);
        drop(dir);

        let (_empty_log, path) = trail_beside(0);
        assert_eq!(
            SqliteAuditLog::append_beside(&path, &[record("first")]).unwrap(),
            [1]
        );

        // A restored directory comes without its lock file: made, and taken.
        let (restored, path) = trail_beside(3);
        std::fs::remove_file(restored.path().join("travelmap.lock")).unwrap();
        assert_eq!(
            SqliteAuditLog::append_beside(&path, &[record("restored")]).unwrap(),
            [2]
        );

        // Beside a process holding the directory that never begins the trail: nothing written.
        let (held, path) = trail_beside(3);
        let lock = std::fs::File::open(held.path().join("travelmap.lock")).unwrap();
        lock.try_lock().unwrap();
        let refused = SqliteAuditLog::append_waiting(
            &path,
            &[record("beside a server")],
            Duration::from_millis(200),
        );
        assert!(
            matches!(refused, Err(Error::TrailUnjudged(3))),
            "{refused:?}"
        );
        assert!(
            SqliteAuditLog::open_read_only(&path)
                .unwrap()
                .read_after(0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Beside one that begins it while the command waits (as a server's open does): the
        // command's entry follows the one saying so.
        let opening = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                SqliteAuditLog::open(&path, 3, None, Arc::default())
                    .unwrap()
                    .close();
            })
        };
        assert_eq!(
            SqliteAuditLog::append_beside(&path, &[record("beside a server")]).unwrap(),
            [2]
        );
        opening.join().unwrap();
        drop(lock);
        let entries = SqliteAuditLog::open_read_only(&path)
            .unwrap()
            .read_after(0, 10)
            .await
            .unwrap();
        let actions = actions_of(&entries);
        assert_eq!(actions, [TRAIL_BEGUN_ANEW, "beside a server"]);
        drop(held);
    }

    /// Entries removed under the serving writer, whole or at the end, are followed by the entry
    /// saying the trail was begun anew, whichever process writes next: found by the head the
    /// trail records apart from its entries, and where that was moved back too, by what the
    /// serving writer remembers.
    #[tokio::test]
    async fn entries_removed_under_the_server_are_marked_where_it_goes_on() {
        use travelmap_domain::audit::TRAIL_BEGUN_ANEW;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let served = SqliteAuditLog::open(&path, 0, None, Arc::default()).unwrap();
        served
            .append(vec![record("1"), record("2"), record("3")])
            .await
            .unwrap();
        let outside = Connection::open(&path).unwrap();
        outside.execute("DELETE FROM audit", []).unwrap();
        assert_eq!(served.append(vec![record("4")]).await.unwrap(), [2]);
        // Cut short at the end, then continued by an offline command first: it finds the
        // recorded head past the last entry.
        outside
            .execute("DELETE FROM audit WHERE seq > 1", [])
            .unwrap();
        assert_eq!(
            SqliteAuditLog::append_beside(&path, &[record("offline")]).unwrap(),
            [3]
        );
        // The server no longer finds its own last entry (2 is now the offline marker).
        assert_eq!(served.append(vec![record("5")]).await.unwrap(), [5]);
        // Nothing removed: no entry of the kind.
        assert_eq!(served.append(vec![record("6")]).await.unwrap(), [6]);
        // Cut short with the recorded head moved back to match: the server remembers.
        outside
            .execute_batch(
                "DELETE FROM audit WHERE seq > 5;
                 UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit WHERE seq = 5);",
            )
            .unwrap();
        assert_eq!(served.append(vec![record("7")]).await.unwrap(), [7]);
        let entries = served.read_after(0, 10).await.unwrap();
        let actions = actions_of(&entries);
        assert_eq!(
            actions,
            [
                TRAIL_BEGUN_ANEW,
                TRAIL_BEGUN_ANEW,
                "offline",
                TRAIL_BEGUN_ANEW,
                "5",
                TRAIL_BEGUN_ANEW,
                "7"
            ]
        );
        let said = |seq: usize| entries[seq - 1].record.returned.clone().unwrap();
        assert!(
            said(1).contains("(audit_head) named entry 3, but its entries end at entry 0"),
            "{}",
            said(1)
        );
        assert!(
            said(2).contains("(audit_head) named entry 2, but its entries end at entry 1"),
            "{}",
            said(2)
        );
        assert!(
            said(4).contains("last found or written entry 2"),
            "{}",
            said(4)
        );
        assert!(
            said(6).contains("last found or written entry 6"),
            "{}",
            said(6)
        );
        assert_eq!(verify(entries).unwrap().0, 7);
        assert_eq!(served.head().await.unwrap().0, 7);
    }

    /// A trail file removed, or replaced by another, under the serving writer takes no more
    /// entries: they would go to the file the process holds, and be lost with it.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_trail_file_removed_under_the_server_takes_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let watch = Arc::new(TrailWatch::default());
        let served = SqliteAuditLog::open(&path, 0, None, watch.clone()).unwrap();
        assert_eq!(served.append(vec![record("1")]).await.unwrap(), [1]);
        assert!(!watch.is_lost());
        let aside = dir.path().join("aside.sqlite");
        std::fs::rename(&path, &aside).unwrap();
        let refused = served.append(vec![record("2")]).await;
        assert!(
            matches!(&refused, Err(error) if error.is_out_of_service()),
            "{refused:?}"
        );
        assert!(watch.is_lost());
        // Told apart from a trail that may come back: not retried.
        let started = Instant::now();
        let given_up =
            crate::append_patiently(&served, vec![record("2")], Duration::from_secs(5)).await;
        assert!(
            matches!(given_up, Err((Error::TrailReplaced, _))),
            "{given_up:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // Another file put in its place is not the one the process holds either.
        std::fs::copy(&aside, &path).unwrap();
        assert!(served.append(vec![record("3")]).await.is_err());
        // What was written before is all there is.
        drop(served);
        let entries = SqliteAuditLog::open_read_only(&aside)
            .unwrap()
            .read_after(0, 10)
            .await
            .unwrap();
        assert_eq!(entries.len(), 1);
    }

    /// So does one whose write-ahead log was removed: what it commits there would be lost on a
    /// crash, and never folded back into the file.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_write_ahead_log_removed_under_the_server_takes_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let watch = Arc::new(TrailWatch::default());
        let served = SqliteAuditLog::open(&path, 0, None, watch.clone()).unwrap();
        assert_eq!(served.append(vec![record("1")]).await.unwrap(), [1]);
        assert!(!served.out_of_service());
        std::fs::remove_file(dir.path().join("audit.sqlite-wal")).unwrap();
        // Seen by a readiness probe before any write.
        assert!(served.out_of_service());
        let refused = served.append(vec![record("2")]).await;
        assert!(matches!(refused, Err(Error::TrailReplaced)), "{refused:?}");
    }

    /// A trail the server's open began anew, whose entry saying so is removed before the server
    /// writes again, is begun anew again: the open's entry is what its writer remembers.
    #[tokio::test]
    async fn the_entry_of_a_trail_begun_anew_at_open_is_not_lost_quietly() {
        use travelmap_domain::audit::TRAIL_BEGUN_ANEW;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let served = SqliteAuditLog::open(&path, 5, None, Arc::default()).unwrap();
        Connection::open(&path)
            .unwrap()
            // With the recorded head too: what the writer remembers tells.
            .execute_batch("DELETE FROM audit; DELETE FROM audit_head;")
            .unwrap();
        assert_eq!(served.append(vec![record("read")]).await.unwrap(), [2]);
        let entries = served.read_after(0, 10).await.unwrap();
        assert_eq!(entries[0].record.action, TRAIL_BEGUN_ANEW);
        assert!(
            entries[0]
                .record
                .returned
                .as_deref()
                .unwrap()
                .contains("had last found or written entry 1"),
            "{:?}",
            entries[0].record.returned
        );
        // Opened again beside the same log: not begun anew a second time.
        served.close();
        drop(served);
        let again = SqliteAuditLog::open(&path, 5, None, Arc::default()).unwrap();
        assert_eq!(again.head().await.unwrap().0, 2);
    }

    /// A trail without the entry the event log recorded it held (here an older copy of the
    /// whole file put back after a stop: its own recorded head agrees with its entries) is
    /// begun anew at open, saying what the log recorded; one that holds it is left as it is.
    #[tokio::test]
    async fn a_trail_without_the_entry_the_log_recorded_is_begun_anew() {
        use travelmap_domain::audit::TRAIL_BEGUN_ANEW;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let served = SqliteAuditLog::open(&path, 0, None, Arc::default()).unwrap();
        served.append(vec![record("1"), record("2")]).await.unwrap();
        served.close();
        drop(served);
        let older = dir.path().join("older.sqlite");
        std::fs::copy(&path, &older).unwrap();
        let watch = Arc::new(TrailWatch::default());
        let served = SqliteAuditLog::open(&path, 2, None, watch.clone()).unwrap();
        assert_eq!(
            watch.durable().map(|(seq, _)| seq),
            Some(2),
            "on disk at open"
        );
        served.append(vec![record("3")]).await.unwrap();
        assert_eq!(
            watch.committed().map(|(seq, _)| seq),
            Some(3),
            "told once committed"
        );
        served.close();
        drop(served);
        // On disk once the close's checkpoint folded everything into the main file.
        let recorded = watch.durable().unwrap();
        assert_eq!(recorded.0, 3);

        let holding = SqliteAuditLog::open(&path, 3, Some(recorded), Arc::default()).unwrap();
        assert_eq!(holding.head().await.unwrap().0, 3, "nothing to say");
        holding.close();
        drop(holding);
        for stale in ["audit.sqlite-wal", "audit.sqlite-shm"] {
            let _ = std::fs::remove_file(dir.path().join(stale));
        }
        std::fs::copy(&older, &path).unwrap();
        let restored = SqliteAuditLog::open(&path, 3, Some(recorded), Arc::default()).unwrap();
        let entries = restored.read_after(0, 10).await.unwrap();
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(entries[2].record.action, TRAIL_BEGUN_ANEW);
        let said = entries[2].record.returned.as_deref().unwrap();
        assert!(
            said.contains("the event log recorded that the trail held entry 3")
                && said.contains("ending at entry 2"),
            "{said}"
        );
        assert!(verify(entries.clone()).is_ok(), "the chain itself is whole");
        // Its writer goes on from the entry saying so; an open beside a log that recorded the
        // new chain is content.
        restored.append(vec![record("4")]).await.unwrap();
        let now_recorded = restored.head().await.unwrap();
        restored.close();
        drop(restored);
        let head = SqliteAuditLog::open(&path, 3, Some(now_recorded), Arc::default()).unwrap();
        assert_eq!(head.head().await.unwrap().0, 4);
    }

    /// A trail of the version before the recorded head is given one from its last entry, with
    /// nothing taken for lost; and entries appended past the head by a writer that does not
    /// move it (that version's offline command) are not taken for a removal either.
    #[tokio::test]
    async fn a_trail_from_before_the_recorded_head_is_not_taken_for_a_damaged_one() {
        use travelmap_domain::audit::TRAIL_BEGUN_ANEW;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let served = SqliteAuditLog::open(&path, 3, None, Arc::default()).unwrap();
        served.append(vec![record("1"), record("2")]).await.unwrap();
        served.close();
        drop(served);
        let older = Connection::open(&path).unwrap();
        older
            .execute_batch(
                "DROP TABLE audit_head; PRAGMA user_version = 1;
                 INSERT INTO audit (seq, at, credential, agency, operation, outcome, action, hash)
                 VALUES (-1, 0, 'x', 'x', 'consultation', 'allowed', 'x', zeroblob(32));",
            )
            .unwrap();
        drop(older);
        let served = SqliteAuditLog::open(&path, 3, None, Arc::default()).unwrap();
        let (head, _) = served.head().await.unwrap();
        assert_eq!(head, 3);
        // An entry appended as that version's command would: the head is left behind.
        let chained = served.read_after(0, 10).await.unwrap();
        let last = chained.last().unwrap();
        let appended = record("older replay");
        let hash = chain_hash(&last.hash, 4, &appended);
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO audit (seq, at, credential, agency, operation, outcome, action, hash)
                 VALUES (4, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    appended.at.timestamp_micros(),
                    appended.credential,
                    appended.agency,
                    appended.operation.as_str(),
                    appended.outcome.as_str(),
                    appended.action,
                    hash.to_vec()
                ],
            )
            .unwrap();
        assert_eq!(served.append(vec![record("3")]).await.unwrap(), [5]);
        let entries = served.read_after(0, 10).await.unwrap();
        assert!(
            entries
                .iter()
                .all(|entry| entry.record.action != TRAIL_BEGUN_ANEW || entry.seq == 1),
            "{entries:?}"
        );
        assert_eq!(served.head().await.unwrap().0, 5);
    }

    /// A row numbered below 1, which no service writes, is not taken for the head.
    #[tokio::test]
    async fn a_row_numbered_below_the_first_is_not_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        SqliteAuditLog::open(&path, 0, None, Arc::default())
            .unwrap()
            .close();
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO audit (seq, at, credential, agency, operation, outcome, action, hash)
                 VALUES (-5, 0, 'x', 'x', 'consultation', 'allowed', 'x', zeroblob(32))",
                [],
            )
            .unwrap();
        let served = SqliteAuditLog::open(&path, 0, None, Arc::default()).unwrap();
        assert_eq!(served.head().await.unwrap(), (0, GENESIS));
        assert_eq!(served.append(vec![record("first")]).await.unwrap(), [1]);
        assert_eq!(served.before_the_first().await.unwrap(), 1);
    }
}
