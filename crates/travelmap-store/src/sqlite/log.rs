//! The SQLite event log: a single writer thread with group commit, and pooled readers.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, Transaction, params};
use tokio::sync::{mpsc, oneshot, watch};
use travelmap_domain::{ClientId, EventId, Provenance, RecordedEvent, Text};
use uuid::Uuid;

use super::audit::TrailWatch;
use super::pool::ReadPool;
use super::{configure, schema};
use crate::handshake::{ENTRIES_PATIENCE, EntriesWritten};
use crate::{
    Announcement, Error, EventLog, Existing, Outline, Receipt, Result, StoredEvent, StreamAppend,
};

/// How many clients one outline query covers (well under SQLite's limit on parameters).
const OUTLINE_CHUNK: usize = 256;

/// How many queued appends may share one transaction. Large enough to absorb a burst from many
/// concurrent senders, small enough that one group's commit stays short.
const MAX_GROUP: usize = 512;

/// How many appends may wait for the writer before senders are made to wait (back-pressure).
const QUEUE_DEPTH: usize = 4096;

/// How often, at most, the log records the audit trail's last entry (see [`TrailRecord`]), in
/// a group's commit or, while no events come, in a commit of its own: once a second costs a
/// commit one more page now and then, and leaves the record about a second behind the trail.
const RECORD_TRAIL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the log's writer is given to do.
enum Work {
    /// An append, committed with the others queued beside it.
    Append(Job),
    /// Record the audit trail's last entry if it moved (see [`TrailRecord`]): sent
    /// every [`RECORD_TRAIL_EVERY`], so that the record follows entries of reads too, and once
    /// when the store is opened.
    RecordTrail,
}

struct Job {
    provenance: Provenance,
    streams: Vec<StreamAppend>,
    /// Told once the append has passed its checks, before the commit (see
    /// [`EventLog::append_announced`]).
    accepted: Option<oneshot::Sender<()>>,
    /// Whether the entries written beside the commit were written (see
    /// [`crate::handshake`]).
    entries: Option<EntriesWritten>,
    /// Set once the entries are known not to have been written: the job is then left out of
    /// the group's commit.
    unlogged: bool,
    reply: oneshot::Sender<Result<Vec<Receipt>>>,
}

/// The embedded event log.
pub struct SqliteEventLog {
    jobs: Mutex<Option<mpsc::Sender<Work>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReadPool>,
    head: watch::Receiver<u64>,
    /// The audit trail's last entry as recorded beside the events when the log was opened.
    trail_recorded: Option<(u64, [u8; 32])>,
    /// The log's file and the trail it records, for [`Self::record_trail_after_close`]; `None`
    /// for a log opened read-only.
    recording: Option<(std::path::PathBuf, Arc<TrailWatch>)>,
}

impl SqliteEventLog {
    /// Opens (creating if needed) the log; it takes no appends once `trail` is lost (see
    /// [`Error::TrailReplaced`]).
    pub(crate) fn open(path: &Path, trail: Arc<TrailWatch>) -> Result<Self> {
        let mut connection = Connection::open(path)?;
        configure(&connection)?;
        schema::migrate(&mut connection, path, schema::EVENTS)?;
        let (last_position, last_recorded_micros): (u64, i64) = connection.query_row(
            "SELECT COALESCE(MAX(position), 0), COALESCE(MAX(recorded_at), 0) FROM events",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let trail_recorded = read_trail_recorded(&connection)?;
        let recording = Some((path.to_owned(), trail.clone()));
        let (head_sender, head) = watch::channel(last_position);
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            connection,
            next_position: last_position + 1,
            last_recorded_micros,
            head: head_sender,
            trail,
            record: TrailRecord {
                recorded: trail_recorded,
                at: None,
            },
        };
        let handle = std::thread::Builder::new()
            .name("travelmap-log-writer".into())
            .spawn(move || writer.run(queue))?;
        // Asks the writer to record the trail's last entry now and then. It holds the queue only
        // weakly, so that closing the log ends the writer, and then itself at its next tick.
        let recorder = jobs.downgrade();
        std::thread::Builder::new()
            .name("travelmap-trail-recorder".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RECORD_TRAIL_EVERY);
                    let Some(jobs) = recorder.upgrade() else {
                        return;
                    };
                    // A full queue will commit soon, recording it then.
                    let _ = jobs.try_send(Work::RecordTrail);
                }
            })?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(handle)),
            readers: Arc::new(ReadPool::new(path.to_owned())),
            head,
            trail_recorded,
            recording,
        })
    }

    /// Opens an existing log for reading only, without the data directory's lock, so that an
    /// auditor can replay histories beside a running server. Appends fail with
    /// [`Error::Closed`].
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no event log at {}", path.display()),
            )));
        }
        let readers = Arc::new(ReadPool::for_copy(path.to_owned()));
        let connection = super::open_copy_read_only(path)?;
        schema::require_at_least(
            &connection,
            path,
            schema::EVENTS,
            schema::EVENTS_READABLE_FROM,
        )?;
        let last_position: u64 =
            connection.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| {
                row.get(0)
            })?;
        Ok(Self {
            jobs: Mutex::new(None),
            writer: Mutex::new(None),
            readers,
            head: watch::channel(last_position).1,
            trail_recorded: read_trail_recorded(&connection)?,
            recording: None,
        })
    }

    /// The audit trail's last entry (number and hash) as the log last recorded it beside its
    /// events, read when the log was opened: the trail must still hold it.
    pub fn trail_recorded(&self) -> Option<(u64, [u8; 32])> {
        self.trail_recorded
    }

    /// Asks the writer to record the trail's last entry (see [`TrailRecord`]) once it can:
    /// the store's open does, so that a trail begun anew there is not found so again at the
    /// next open for want of a record.
    pub(crate) fn record_trail_soon(&self) {
        if let Some(jobs) = self.jobs.lock().expect("jobs lock").as_ref() {
            let _ = jobs.try_send(Work::RecordTrail);
        }
    }

    /// Stops accepting appends, lets the writer finish what is queued, and waits for it.
    pub fn close(&self) {
        self.jobs.lock().expect("jobs lock").take();
        if let Some(handle) = self.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
    }

    /// Records the trail's last entry on disk once the trail, closed after the log, has told
    /// its last one (its writer's closing checkpoint): the log closes first, so that nothing is
    /// appended while the trail can no longer log it, and its writer has ended, so this takes
    /// a connection of its own.
    pub(crate) fn record_trail_after_close(&self) -> Result<()> {
        let Some((path, trail)) = &self.recording else {
            return Ok(());
        };
        let Some((seq, hash)) = trail.durable() else {
            return Ok(());
        };
        let mut connection = Connection::open(path)?;
        configure(&connection)?;
        {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if read_trail_recorded(&transaction)? != Some((seq, hash)) {
                write_trail_recorded(&transaction, (seq, hash))?;
                transaction.commit()?;
            }
        }
        // Folded into the main file, as the writer's own close does, so that a copy of
        // `events.sqlite` alone holds it.
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

impl Drop for SqliteEventLog {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn append_announced(
        &self,
        provenance: &Provenance,
        streams: Vec<StreamAppend>,
        announcement: Announcement,
    ) -> Result<Vec<Receipt>> {
        let jobs = self.jobs.lock().expect("jobs lock").clone();
        let jobs = jobs.ok_or(Error::Closed)?;
        let (reply, receipts) = oneshot::channel();
        let job = Job {
            provenance: provenance.clone(),
            streams,
            accepted: Some(announcement.accepted),
            entries: announcement.entries,
            unlogged: false,
            reply,
        };
        jobs.send(Work::Append(job))
            .await
            .map_err(|_| Error::Closed)?;
        receipts.await.map_err(|_| Error::Closed)?
    }

    async fn lookup(&self, ids: Vec<EventId>) -> Result<Vec<Existing>> {
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT event_id, client_id, version, position, recorded_at, digest,
                            substr(sealed, 2, 16)
                     FROM events WHERE event_id = ?1",
                )?;
                let mut found = Vec::new();
                for id in &ids {
                    let existing = statement
                        .query_row(params![id.0], |row| {
                            Ok(Existing {
                                receipt: Receipt {
                                    id: EventId(row.get(0)?),
                                    client_id: ClientId(row.get(1)?),
                                    version: row.get(2)?,
                                    position: row.get(3)?,
                                    recorded_at: from_micros(row.get(4)?),
                                },
                                digest: row.get(5)?,
                                sealed_key: crate::sealed_key(row.get(6)?),
                                shredded: false,
                            })
                        })
                        .optional()?;
                    found.extend(existing);
                }
                Ok(found)
            })
            .await
    }

    async fn outlines(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, Vec<Outline>>> {
        self.readers
            .read(move |connection| {
                let mut outlines: HashMap<ClientId, Vec<Outline>> =
                    HashMap::with_capacity(clients.len());
                // One statement per chunk of clients rather than per client; the target is pulled
                // out of the JSON by SQLite, so no event data is decoded.
                for chunk in clients.chunks(OUTLINE_CHUNK) {
                    let placeholders = vec!["?"; chunk.len()].join(", ");
                    let mut statement = connection.prepare_cached(&format!(
                        "SELECT client_id, event_id, event_type,
                                        CASE WHEN event_type = 'event.retracted'
                                     THEN json_extract(data, '$.event_id') END,
                                substr(occurred_at, 1, 10)
                         FROM events WHERE client_id IN ({placeholders})
                         ORDER BY client_id, version"
                    ))?;
                    let ids = chunk.iter().map(|client| client.0);
                    let mut rows = statement.query(rusqlite::params_from_iter(ids))?;
                    while let Some(row) = rows.next()? {
                        let target: Option<String> = row.get(3)?;
                        outlines
                            .entry(ClientId(row.get(0)?))
                            .or_default()
                            .push(Outline {
                                id: EventId(row.get(1)?),
                                event_type: row.get(2)?,
                                target: target
                                    .and_then(|text| Uuid::parse_str(&text).ok())
                                    .map(EventId),
                                occurred_on: row.get_ref(4)?.as_str().ok().and_then(crate::day_of),
                            });
                    }
                }
                Ok(outlines)
            })
            .await
    }

    async fn stream_versions(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, u64>> {
        self.readers
            .read_points(clients.len(), move |connection| {
                let mut statement = connection
                    .prepare_cached("SELECT MAX(version) FROM events WHERE client_id = ?1")?;
                let mut versions = HashMap::with_capacity(clients.len());
                for client in &clients {
                    let version: Option<u64> =
                        statement.query_row(params![client.0], |row| row.get(0))?;
                    if let Some(version) = version {
                        versions.insert(*client, version);
                    }
                }
                Ok(versions)
            })
            .await
    }

    async fn read_stream(
        &self,
        client_id: ClientId,
        recorded_until: Option<DateTime<Utc>>,
    ) -> Result<Vec<RecordedEvent>> {
        let until = recorded_until.map_or(i64::MAX, |at| at.timestamp_micros());
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM events
                     WHERE client_id = ?1 AND recorded_at <= ?2 ORDER BY version"
                ))?;
                decode_rows(statement.query(params![client_id.0, until])?, 0)
            })
            .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
                ))?;
                // Grown as rows come: a feed read near the head, as followers make, returns few
                // events or none, whatever its limit.
                decode_rows(statement.query(params![after, limit as i64])?, 0)
            })
            .await
    }

    async fn read_range(&self, after: u64, up_to: u64) -> Result<Vec<RecordedEvent>> {
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM events WHERE position > ?1 AND position <= ?2
                     ORDER BY position"
                ))?;
                // Sized up front: a rebuild's page holds 10,000 events of a few hundred bytes
                // each, and growing the vector by doubling (copying it, and faulting in fresh
                // pages each time) was a tenth of a rebuild's fold.
                decode_rows(
                    statement.query(params![after, up_to])?,
                    expected_events(after, up_to),
                )
            })
            .await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }
}

/// How many events a read of the positions after `after` up to `up_to` returns at most, bounded
/// so that a read of a wide range does not reserve memory for events that may not exist.
fn expected_events(after: u64, up_to: u64) -> usize {
    const MOST: u64 = 16_384;
    up_to.saturating_sub(after).min(MOST) as usize
}

const COLUMNS: &str = "position, event_id, client_id, version, event_type, schema_version, \
                       occurred_at, recorded_at, agency, credential, actor, data, sealed";

/// Decodes every row of a query of [`COLUMNS`], into a vector with room for `expected` events.
fn decode_rows(mut rows: rusqlite::Rows<'_>, expected: usize) -> Result<Vec<RecordedEvent>> {
    let mut events = Vec::with_capacity(expected);
    while let Some(row) = rows.next()? {
        events.push(decode_row(row)?);
    }
    Ok(events)
}

/// Decodes one row of [`COLUMNS`]. The type, the time and the data are read in place, as
/// SQLite holds them, rather than copied out first.
fn decode_row(row: &Row<'_>) -> Result<RecordedEvent> {
    StoredEvent {
        position: row.get(0)?,
        event_id: row.get(1)?,
        client_id: row.get(2)?,
        version: row.get(3)?,
        event_type: text(row, 4)?,
        schema_version: row.get(5)?,
        occurred_at: text(row, 6)?,
        recorded_at: from_micros(row.get(7)?),
        agency: row.get(8)?,
        credential: row.get(9)?,
        actor: row.get(10)?,
        data: text(row, 11)?,
        sealed: row.get(12)?,
    }
    .decode()
}

/// A text column, borrowed from the row.
fn text<'row>(row: &'row Row<'_>, index: usize) -> Result<&'row str> {
    row.get_ref(index)?.as_str().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error)).into()
    })
}

fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// The writer thread's state. Only this thread writes to `events.sqlite`.
struct Writer {
    connection: Connection,
    next_position: u64,
    last_recorded_micros: i64,
    head: watch::Sender<u64>,
    /// Whether the audit trail's files were removed or replaced: events recorded then could
    /// not be logged.
    trail: Arc<TrailWatch>,
    /// The trail's last entry as last recorded beside the events, and when.
    record: TrailRecord,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Work>) {
        while let Some(first) = queue.blocking_recv() {
            let mut group = Vec::new();
            let mut record_trail = false;
            let mut work = Some(first);
            while let Some(next) = work.take() {
                match next {
                    Work::Append(job) => group.push(job),
                    Work::RecordTrail => record_trail = true,
                }
                if group.len() < MAX_GROUP {
                    work = queue.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            // The recorder's tick is the pace: due now.
            if record_trail && let Err(error) = self.record_trail_alone() {
                tracing::warn!(%error, "could not record the audit trail's last entry");
            }
        }
        // The trail's last entry, once no more events come: what a later open checks the trail
        // against, whatever the last group left behind.
        if let Err(error) = self.record_trail_alone() {
            tracing::warn!(%error, "could not record the audit trail's last entry on close");
        }
        // Fold the WAL back into the main file before closing. SQLite does that only when the
        // last connection closes, and pooled readers may outlive this one, which would leave
        // recent commits only in `events.sqlite-wal`: easy to miss when copying the file.
        if let Err(error) = self
            .connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(%error, "could not checkpoint the event log on close");
        }
    }

    /// Commits a group of appends in one transaction. Each append runs in its own savepoint, so a
    /// conflict in one rolls back only that append; the transaction then commits once, and only
    /// after the commit is durable are the senders answered. An append whose entries were not
    /// written is left out: the group is rolled back and done again without it.
    fn commit_group(&mut self, mut group: Vec<Job>) {
        let mut next_position;
        let mut recorded_micros;
        let outcome = loop {
            // recorded_at never goes backwards, even if the wall clock does, so that "recorded
            // by time T" is always a prefix of the global feed. Stamped again for an attempt
            // made after waiting for entries.
            recorded_micros = Utc::now().timestamp_micros().max(self.last_recorded_micros);
            next_position = self.next_position;
            match self.try_group(&mut group, &mut next_position, recorded_micros) {
                Err(Error::Unlogged) => continue,
                outcome => break outcome,
            }
        };
        match outcome {
            Ok(results) => {
                if next_position != self.next_position {
                    self.next_position = next_position;
                    self.last_recorded_micros = recorded_micros;
                    self.head.send_replace(next_position - 1);
                }
                for (job, result) in group.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(error) => {
                // Nothing of the group was committed; every sender learns so and may retry.
                tracing::error!(%error, "event log commit failed");
                let failure = error.for_each_waiter("committing to the event log");
                for job in group {
                    let _ = job.reply.send(Err(failure()));
                }
            }
        }
    }

    /// One attempt at a group: [`Error::Unlogged`] if some append's entries turned out not to
    /// be written, after marking it so and rolling everything back.
    fn try_group(
        &mut self,
        group: &mut [Job],
        next_position: &mut u64,
        recorded_micros: i64,
    ) -> Result<Vec<Result<Vec<Receipt>>>> {
        // Looked at before each commit, not only as the trail's writer finds it: an append
        // without entries beside it (a decision's own records) commits before its entry.
        if self.trail.is_lost() {
            return Err(Error::TrailReplaced);
        }
        // IMMEDIATE takes the write lock up front. A deferred transaction would start as a
        // read and upgrade at its first insert, and SQLite refuses such an upgrade at once
        // (without waiting) if the file changed under it.
        let mut transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Every job's checks first, each job announced as soon as its own pass, so that the
        // entries of the whole group are written while its rows are inserted.
        let mut claimed = Claimed::default();
        let mut results: Vec<Result<Vec<Receipt>>> = Vec::with_capacity(group.len());
        for job in group.iter_mut() {
            let checked = if job.unlogged {
                Err(Error::Unlogged)
            } else {
                check_job(&transaction, job, &mut claimed)
            };
            if checked.is_ok()
                && let Some(accepted) = job.accepted.take()
            {
                let _ = accepted.send(());
            }
            results.push(checked.map(|()| Vec::new()));
        }
        for (job, result) in group.iter().zip(results.iter_mut()) {
            if result.is_ok() {
                // A job that fails here after its checks passed (which the service's own checks
                // rule out: one append per client at a time, no id twice in a batch) keeps its
                // claims, so later jobs were checked against rows that are not written.
                *result = append_job(&mut transaction, job, next_position, recorded_micros);
            }
        }
        // The entries of the accepted appends are being written meanwhile; none commits before
        // its own are durable.
        let deadline = std::time::Instant::now() + ENTRIES_PATIENCE;
        let mut unlogged = false;
        for (job, appended) in group.iter_mut().zip(&results) {
            if appended.is_ok()
                && let Some(entries) = &job.entries
                && !entries.wait_blocking(deadline)
            {
                job.unlogged = true;
                unlogged = true;
            }
        }
        if unlogged {
            // Dropping the transaction rolls it back.
            return Err(Error::Unlogged);
        }
        // Entries told written may have gone into a trail file removed meanwhile.
        if self.trail.is_lost() {
            return Err(Error::TrailReplaced);
        }
        let recorded = self.record.due(&self.trail, false);
        if let Some(head) = recorded {
            write_trail_recorded(&transaction, head)?;
        }
        transaction.commit()?;
        if let Some(head) = recorded {
            self.record.made(head);
        }
        Ok(results)
    }

    /// Records the trail's last entry (see [`TrailRecord`]) in a transaction of its own, if
    /// it moved: on the recorder's tick while no events come, and when the log closes.
    fn record_trail_alone(&mut self) -> Result<()> {
        // Nothing to record, most ticks: no transaction then. (No look at the trail's files:
        // what it tells as on disk was told before any loss was found, and once its writer has
        // closed, its write-ahead log is gone as it should be.)
        let Some(head) = self.record.due(&self.trail, true) else {
            return Ok(());
        };
        let transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        write_trail_recorded(&transaction, head)?;
        transaction.commit()?;
        self.record.made(head);
        Ok(())
    }
}

/// The audit trail's last entry on disk as the log's writer last recorded it beside the events,
/// and when. The trail tells only entries on disk, and a group's entries are committed before
/// the group, so the trail holds what is recorded; a trail found without it at a later open has
/// lost entries (see `SqliteAuditLog::open`).
struct TrailRecord {
    recorded: Option<(u64, [u8; 32])>,
    at: Option<std::time::Instant>,
}

impl TrailRecord {
    /// The trail's last entry on disk, if it moved since it was recorded and a record is due:
    /// [`RECORD_TRAIL_EVERY`] after the last one, or `now`.
    fn due(&self, trail: &TrailWatch, now: bool) -> Option<(u64, [u8; 32])> {
        let durable = trail.durable()?;
        let due = now || self.at.is_none_or(|at| at.elapsed() >= RECORD_TRAIL_EVERY);
        (due && self.recorded != Some(durable)).then_some(durable)
    }

    /// `head` was recorded, now.
    fn made(&mut self, head: (u64, [u8; 32])) {
        self.recorded = Some(head);
        self.at = Some(std::time::Instant::now());
    }
}

/// Writes `head` as the trail's last entry recorded beside the events.
fn write_trail_recorded(connection: &Connection, (seq, hash): (u64, [u8; 32])) -> Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO trail_recorded (id, seq, hash) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )?
        .execute(params![seq, hash.to_vec()])?;
    Ok(())
}

/// The audit trail's last entry as recorded beside the events, if ever.
fn read_trail_recorded(connection: &Connection) -> Result<Option<(u64, [u8; 32])>> {
    // A log read as it is, from before it kept the record (see `schema::EVENTS_READABLE_FROM`).
    let kept: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'trail_recorded')",
        [],
        |row| row.get(0),
    )?;
    if !kept {
        return Ok(None);
    }
    let recorded: Option<(u64, Vec<u8>)> = connection
        .query_row(
            "SELECT seq, hash FROM trail_recorded WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    // A hash of another length than the trail's was not written here: as if none were.
    Ok(recorded.and_then(|(seq, hash)| Some((seq, hash.try_into().ok()?))))
}

/// What the jobs checked so far in a group will have written: their ids and their streams'
/// versions after them.
#[derive(Default)]
struct Claimed {
    ids: HashSet<EventId>,
    versions: HashMap<ClientId, u64>,
}

/// Checks one job against the log and the jobs before it in its group: each stream at its
/// expected version, no id taken. Nothing is written.
fn check_job(transaction: &Transaction<'_>, job: &Job, claimed: &mut Claimed) -> Result<()> {
    for stream in &job.streams {
        let actual = match claimed.versions.get(&stream.client_id) {
            Some(&version) => version,
            None => transaction
                .prepare_cached(
                    "SELECT COALESCE(MAX(version), 0) FROM events WHERE client_id = ?1",
                )?
                .query_row(params![stream.client_id.0], |row| row.get(0))?,
        };
        if actual != stream.expected_version {
            return Err(Error::StreamConflict {
                client_id: stream.client_id,
                expected: stream.expected_version,
                actual,
            });
        }
        let mut taken = transaction.prepare_cached("SELECT 1 FROM events WHERE event_id = ?1")?;
        for new in &stream.events {
            // The probe reads the index page the insert then writes to.
            if claimed.ids.contains(&new.draft.id) || taken.exists(params![new.draft.id.0])? {
                return Err(Error::DuplicateEvent(new.draft.id));
            }
        }
    }
    for stream in &job.streams {
        claimed
            .ids
            .extend(stream.events.iter().map(|new| new.draft.id));
        claimed.versions.insert(
            stream.client_id,
            stream.expected_version + stream.events.len() as u64,
        );
    }
    Ok(())
}

/// Inserts one job, checked by [`check_job`], in a savepoint of its own.
fn append_job(
    transaction: &mut Transaction<'_>,
    job: &Job,
    next_position: &mut u64,
    recorded_micros: i64,
) -> Result<Vec<Receipt>> {
    let savepoint = transaction.savepoint()?;
    let mut position = *next_position;
    let mut receipts = Vec::new();
    for stream in &job.streams {
        let mut insert = savepoint.prepare_cached(
            "INSERT INTO events (position, event_id, client_id, version, event_type,
                 schema_version, occurred_at, recorded_at, agency, credential, actor, data, digest,
                 sealed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for (offset, new) in stream.events.iter().enumerate() {
            let draft = &new.draft;
            let version = stream.expected_version + offset as u64 + 1;
            let inserted = insert.execute(params![
                position,
                draft.id.0,
                draft.client_id.0,
                version,
                draft.event.event_type(),
                draft.event.schema_version(),
                draft.occurred_at.to_rfc3339(),
                recorded_micros,
                job.provenance.agency,
                job.provenance.credential,
                draft.actor.as_ref().map(Text::as_str),
                new.sealed
                    .as_ref()
                    .map_or_else(|| draft.event.data_json(), |sealed| sealed.public.clone()),
                new.digest,
                new.sealed.as_ref().map(|sealed| &sealed.ciphertext),
            ]);
            match inserted {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(failure, _))
                    if failure.code == ErrorCode::ConstraintViolation =>
                {
                    return Err(Error::DuplicateEvent(draft.id));
                }
                Err(error) => return Err(error.into()),
            }
            receipts.push(Receipt {
                id: draft.id,
                client_id: draft.client_id,
                version,
                position,
                recorded_at: from_micros(recorded_micros),
            });
            position += 1;
        }
    }
    savepoint.commit()?;
    *next_position = position;
    Ok(receipts)
}
