//! The PostgreSQL event log: a writer task per process that commits appends in groups, under the
//! `log_head` row lock that orders appends across processes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use travelmap_domain::{ClientId, EventId, Provenance, RecordedEvent};
use uuid::Uuid;

use super::LOG_CHANNEL;
use super::Patiently;
use crate::handshake::{ENTRIES_PATIENCE, EntriesWritten};
use crate::{
    Announcement, Error, EventLog, Existing, Outline, Receipt, Result, StoredEvent, StreamAppend,
    sealed_key,
};

/// How many queued appends may share one transaction.
const MAX_GROUP: usize = 512;

/// How many appends may wait for the writer before senders are made to wait (back-pressure).
const QUEUE_DEPTH: usize = 4096;

struct Job {
    provenance: Provenance,
    streams: Vec<StreamAppend>,
    /// Told once the append is accepted, before the commit (see
    /// [`EventLog::append_announced`]).
    accepted: Option<oneshot::Sender<()>>,
    /// Whether the entries written beside the commit were written (see
    /// [`crate::handshake`]).
    entries: Option<EntriesWritten>,
    /// Set once the entries are known not to have been written: the job is then left out of
    /// the group's commit.
    unlogged: AtomicBool,
    reply: oneshot::Sender<Result<Vec<Receipt>>>,
}

impl Job {
    fn unlogged(&self) -> bool {
        self.unlogged.load(Ordering::Relaxed)
    }
}

/// Waits, before a group's commit, for the entries of its accepted appends (at `accepted`),
/// and marks those whose entries were not written. Returns whether there were any: the group
/// must then be rolled back and committed again without them.
async fn any_unlogged(jobs: &[Job], accepted: impl IntoIterator<Item = usize>) -> bool {
    let deadline = tokio::time::Instant::now() + ENTRIES_PATIENCE;
    let mut any = false;
    for index in accepted {
        let job = &jobs[index];
        if let Some(entries) = &job.entries
            && !entries.wait(deadline).await
        {
            job.unlogged.store(true, Ordering::Relaxed);
            any = true;
        }
    }
    any
}

/// The acceptance senders of a group's jobs, by job.
type Announcements = Vec<Option<oneshot::Sender<()>>>;

/// Tells the jobs at `accepted` that their appends passed the checks (and are about to commit).
fn announce(announcements: &mut Announcements, accepted: impl IntoIterator<Item = usize>) {
    for index in accepted {
        if let Some(sender) = announcements.get_mut(index).and_then(Option::take) {
            let _ = sender.send(());
        }
    }
}

/// The PostgreSQL event log.
pub struct PgEventLog {
    pool: PgPool,
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    head: watch::Receiver<u64>,
    /// Set once this process has seen the log's head go back (see `super::Rewound`).
    rewound: Arc<super::Rewound>,
}

impl PgEventLog {
    pub(super) fn new(
        pool: PgPool,
        head: watch::Sender<u64>,
        receiver: watch::Receiver<u64>,
        rewound: Arc<super::Rewound>,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let writer = tokio::spawn(write_groups(pool.clone(), head, queue));
        Self {
            pool,
            jobs: std::sync::Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(writer)),
            head: receiver,
            rewound,
        }
    }

    /// Stops accepting appends and waits until those already queued are answered.
    pub async fn close(&self) {
        self.jobs.lock().expect("jobs lock").take();
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.await;
        }
    }
}

#[async_trait]
impl EventLog for PgEventLog {
    async fn append_announced(
        &self,
        provenance: &Provenance,
        streams: Vec<StreamAppend>,
        announcement: Announcement,
    ) -> Result<Vec<Receipt>> {
        if let Some(refusal) = self.rewound.refusal() {
            return Err(refusal);
        }
        let jobs = self.jobs.lock().expect("jobs lock").clone();
        let jobs = jobs.ok_or(Error::Closed)?;
        let (reply, receipts) = oneshot::channel();
        let job = Job {
            provenance: provenance.clone(),
            streams,
            accepted: Some(announcement.accepted),
            entries: announcement.entries,
            unlogged: AtomicBool::new(false),
            reply,
        };
        jobs.send(job).await.map_err(|_| Error::Closed)?;
        receipts.await.map_err(|_| Error::Closed)?
    }

    async fn lookup(&self, ids: Vec<EventId>) -> Result<Vec<Existing>> {
        let ids: Vec<Uuid> = ids.into_iter().map(|id| id.0).collect();
        let rows = sqlx::query(
            "SELECT event_id, client_id, version, position, recorded_at, digest,
                    substring(sealed from 2 for 16)
             FROM events WHERE event_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.iter()
            .map(|row| {
                let digest: Vec<u8> = row.try_get(5)?;
                Ok(Existing {
                    receipt: Receipt {
                        id: EventId(row.try_get(0)?),
                        client_id: ClientId(row.try_get(1)?),
                        version: row.try_get::<i64, _>(2)? as u64,
                        position: row.try_get::<i64, _>(3)? as u64,
                        recorded_at: row.try_get(4)?,
                    },
                    digest: digest.try_into().map_err(|_| {
                        Error::Io(std::io::Error::other("a stored digest is not 32 bytes"))
                    })?,
                    sealed_key: sealed_key(row.try_get::<Option<Vec<u8>>, _>(6)?),
                    shredded: false,
                })
            })
            .collect()
    }

    async fn outlines(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, Vec<Outline>>> {
        let clients: Vec<Uuid> = clients.into_iter().map(|client| client.0).collect();
        let rows = sqlx::query(
            "SELECT client_id, event_id, event_type, retracts, left(occurred_at, 10) FROM events
             WHERE client_id = ANY($1) ORDER BY client_id, version",
        )
        .bind(&clients)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        let mut outlines: HashMap<ClientId, Vec<Outline>> = HashMap::with_capacity(clients.len());
        for row in rows {
            outlines
                .entry(ClientId(row.try_get(0)?))
                .or_default()
                .push(Outline {
                    id: EventId(row.try_get(1)?),
                    event_type: row.try_get(2)?,
                    target: row.try_get::<Option<Uuid>, _>(3)?.map(EventId),
                    occurred_on: crate::day_of(row.try_get(4)?),
                });
        }
        Ok(outlines)
    }

    async fn stream_versions(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, u64>> {
        let clients: Vec<Uuid> = clients.into_iter().map(|client| client.0).collect();
        let rows = sqlx::query(
            "SELECT client_id, MAX(version) FROM events WHERE client_id = ANY($1) GROUP BY client_id",
        )
        .bind(&clients)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.iter()
            .map(|row| Ok((ClientId(row.try_get(0)?), row.try_get::<i64, _>(1)? as u64)))
            .collect()
    }

    async fn read_stream(
        &self,
        client_id: ClientId,
        recorded_until: Option<DateTime<Utc>>,
    ) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events
             WHERE client_id = $1 AND ($2::timestamptz IS NULL OR recorded_at <= $2)
             ORDER BY version"
        ))
        .bind(client_id.0)
        .bind(recorded_until)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        decode_all(&rows)
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        decode_all(&rows)
    }

    async fn read_range(&self, after: u64, up_to: u64) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE position > $1 AND position <= $2
             ORDER BY position"
        ))
        .bind(after as i64)
        .bind(up_to as i64)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        decode_all(&rows)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }
}

// `data` is read as text: the JSON exactly as stored, which the domain decodes itself.
const COLUMNS: &str = "position, event_id, client_id, version, event_type, schema_version, \
                       occurred_at, recorded_at, agency, credential, actor, data::text, sealed";

/// Decodes rows into a vector sized up front (collecting `Result`s grows it by doubling, which
/// copies a rebuild's page of 10,000 events several times).
fn decode_all(rows: &[PgRow]) -> Result<Vec<RecordedEvent>> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        events.push(decode(row)?);
    }
    Ok(events)
}

/// Decodes one row of [`COLUMNS`].
///
/// Columns are taken without sqlx's check of their declared types against the Rust types: the
/// column list and the schema are this module's own (the conformance suite reads every column
/// back), and the check (a copy and a comparison of the column's type for each of the 13
/// values) took about 6 % of the client's CPU in a rebuild. The data is borrowed from the row, not
/// copied: it is decoded at once and kept only as a sealed event's public part.
fn decode(row: &PgRow) -> Result<RecordedEvent> {
    StoredEvent {
        position: row.try_get_unchecked::<i64, _>(0)? as u64,
        event_id: row.try_get_unchecked(1)?,
        client_id: row.try_get_unchecked(2)?,
        version: row.try_get_unchecked::<i64, _>(3)? as u64,
        event_type: row.try_get_unchecked(4)?,
        schema_version: row.try_get_unchecked::<i32, _>(5)? as u32,
        occurred_at: row.try_get_unchecked(6)?,
        recorded_at: row.try_get_unchecked(7)?,
        agency: row.try_get_unchecked(8)?,
        credential: row.try_get_unchecked(9)?,
        actor: row.try_get_unchecked(10)?,
        data: row.try_get_unchecked(11)?,
        sealed: row.try_get_unchecked(12)?,
    }
    .decode()
}

/// The log sizes at which the writer has PostgreSQL analyse the tables while the log is young:
/// each time it doubles from 1,024 events to about a million. Beyond that, autovacuum's own
/// schedule (every 10 % of growth) is close enough.
const YOUNG_LOG_ANALYSES: std::ops::RangeInclusive<u32> = 10..=20;

/// The first size in [`YOUNG_LOG_ANALYSES`] past `position`, if any.
fn next_analysis(position: u64) -> Option<u64> {
    YOUNG_LOG_ANALYSES
        .map(|power| 1u64 << power)
        .find(|&size| size > position)
}

/// Refreshes the planner's statistics of the tables that start empty and grow with the log.
///
/// Connections keep their prepared statements with one plan each, made from the statistics
/// PostgreSQL has then. Autovacuum analyses a table at most once a minute, so a young log can
/// grow a hundredfold under a plan made for a few hundred rows: the group append's duplicate
/// check scanned the whole events table until then. Analysing invalidates those plans, and they
/// are made again for the tables as they are.
async fn analyse(pool: PgPool) {
    let analysed = sqlx::raw_sql("ANALYZE events, client_views, client_identifiers, data_keys")
        .execute(&pool)
        .await;
    if let Err(error) = analysed {
        tracing::warn!(%error, "analysing the young log's tables failed");
    }
}

/// The writer task: takes queued appends in groups and commits each group. One writer per
/// process keeps each group as large as the requests waiting for it (a second writer was
/// measured: it split the same requests into smaller groups that queued for the same lock).
async fn write_groups(pool: PgPool, head: watch::Sender<u64>, mut queue: mpsc::Receiver<Job>) {
    let mut analysis_at = next_analysis(*head.borrow());
    loop {
        let mut jobs = Vec::with_capacity(MAX_GROUP);
        if queue.recv_many(&mut jobs, MAX_GROUP).await == 0 {
            return;
        }
        let started = std::time::Instant::now();
        let mut announcements: Announcements =
            jobs.iter_mut().map(|job| job.accepted.take()).collect();
        let committed = super::within_patience(
            "committing to the event log",
            commit_group(&pool, &jobs, &mut announcements),
        )
        .await;
        tracing::trace!(jobs = jobs.len(), elapsed = ?started.elapsed(), "committed a group");
        match committed {
            Ok((results, last_position)) => {
                if let Some(position) = last_position {
                    super::advance(&head, position);
                    if analysis_at.is_some_and(|size| position >= size) {
                        analysis_at = next_analysis(position);
                        tokio::spawn(analyse(pool.clone()));
                    }
                }
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(error) => {
                // Nothing of the group was committed (or, if the connection broke during COMMIT,
                // the outcome is unknown): every sender learns so and may retry, and a retry is
                // answered from the log if the commit did happen.
                tracing::error!(%error, "event log commit failed");
                let failure = error.for_each_waiter("committing to the event log");
                for job in jobs {
                    let _ = job.reply.send(Err(failure()));
                }
            }
        }
    }
}

/// The rows of a group's accepted appends, column by column, for one `INSERT ... UNNEST`.
#[derive(Default)]
struct Rows {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    client_id: Vec<Uuid>,
    version: Vec<i64>,
    event_type: Vec<&'static str>,
    schema_version: Vec<i32>,
    occurred_at: Vec<String>,
    agency: Vec<String>,
    credential: Vec<String>,
    actor: Vec<Option<String>>,
    data: Vec<String>,
    retracts: Vec<Option<Uuid>>,
    digest: Vec<Vec<u8>>,
    sealed: Vec<Option<Vec<u8>>>,
}

/// What committing a group gives back: each job's receipts or refusal, and the last position
/// written (if anything was).
type GroupOutcome = (Vec<Result<Vec<Receipt>>>, Option<u64>);

/// Commits one group: in one statement if every append in it is accepted (the usual case),
/// otherwise append by append. An append whose entries were not written is left out: the
/// group is rolled back and committed again without it.
async fn commit_group(
    pool: &PgPool,
    jobs: &[Job],
    announcements: &mut Announcements,
) -> Result<GroupOutcome> {
    loop {
        let outcome = match commit_whole_group(pool, jobs, announcements).await {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => commit_job_by_job(pool, jobs, announcements).await,
            Err(error) => Err(error),
        };
        match outcome {
            Err(Error::Unlogged) => continue,
            outcome => return outcome,
        }
    }
}

/// The fast path: one statement, in a transaction of its own, that locks the log head, checks
/// every id and stream version of the group, and inserts all of it or nothing; the jobs are told
/// they are accepted between that statement and the commit. Returns `None` when some append must be refused, or the statement
/// lost a race it cannot see (below), and the group is committed job by job instead.
///
/// The statement's snapshot is taken before it waits for the lock, so its checks may miss what
/// the previous holder committed meanwhile. That can only hide a conflict, never invent one, and
/// a hidden conflict still ends at a unique constraint (the event id, or the client's version),
/// which fails the statement before anything is committed. Positions are not at risk: they come
/// from the locked head row, which PostgreSQL re-reads after the wait. Sealing keys are locked
/// (`FOR KEY SHARE`), which also re-reads them after any wait: a key whose destruction committed
/// meanwhile is found missing, and a destruction still to come waits for this commit (see
/// [`sealing_keys`]).
async fn commit_whole_group(
    pool: &PgPool,
    jobs: &[Job],
    announcements: &mut Announcements,
) -> Result<Option<GroupOutcome>> {
    let mut ids = HashSet::new();
    let mut clients = HashSet::new();
    let mut rows = Rows::default();
    let (mut stream_clients, mut expected) = (Vec::new(), Vec::new());
    for job in jobs {
        if job.unlogged() {
            return Ok(None);
        }
        for stream in &job.streams {
            if !clients.insert(stream.client_id.0) {
                // Two appends to one stream in a group: the second depends on the first.
                return Ok(None);
            }
            stream_clients.push(stream.client_id.0);
            expected.push(stream.expected_version as i64);
            for (offset, new) in stream.events.iter().enumerate() {
                if !ids.insert(new.draft.id.0) {
                    return Ok(None);
                }
                // Positions are given by the statement, from the locked head.
                let version = stream.expected_version + offset as u64 + 1;
                push_row(&mut rows, job, new, version, 0);
            }
        }
    }
    let count = rows.event_id.len() as i64;
    if count == 0 {
        return Ok(None);
    }
    let mut transaction = pool.begin().await?;
    // The time recorded is read once the head's lock is held (the database's clock, or this
    // process's or the head's if later: it never goes back): taken before the wait for the lock,
    // an event could commit seconds after the moment it claims, and a replay "as of" a moment
    // just past would not show what a later replay of the same moment shows. It is read in a
    // CTE of its own over the locked row: in the locking one, PostgreSQL computes its columns
    // before the wait, and again after it only if the row was changed meanwhile.
    let written: std::result::Result<(i64, DateTime<Utc>, i64), sqlx::Error> = sqlx::query_as(
        "WITH locked AS (
             SELECT position AS last, GREATEST($13, recorded_at) AS at
             FROM log_head FOR UPDATE
         ),
         head AS MATERIALIZED (
             SELECT last, GREATEST(at, clock_timestamp()) AS at FROM locked
         ),
         new AS (
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::text[],
                                  $5::integer[], $6::text[], $7::text[], $8::text[],
                                  $9::text[], $10::text[], $11::uuid[], $12::bytea[],
                                  $18::bytea[])
                  WITH ORDINALITY AS n (event_id, client_id, version, event_type,
                                        schema_version, occurred_at, agency, credential,
                                        actor, data, retracts, digest, sealed, ordinal)
         ),
         conflicts AS (
             SELECT 1 FROM new JOIN events taken ON taken.event_id = new.event_id
             UNION ALL
             SELECT 1 FROM UNNEST($14::uuid[], $15::bigint[]) AS stream (client_id, expected)
             WHERE stream.expected <> COALESCE((
                 SELECT version FROM events WHERE client_id = stream.client_id
                 ORDER BY version DESC LIMIT 1), 0)
             UNION ALL
             SELECT 1 FROM UNNEST($19::uuid[]) AS used (key_id)
             WHERE NOT EXISTS (SELECT 1 FROM data_keys WHERE data_keys.key_id = used.key_id
                               FOR KEY SHARE)
         ),
         inserted AS (
             INSERT INTO events (position, event_id, client_id, version, event_type,
                 schema_version, occurred_at, recorded_at, agency, credential, actor, data,
                 retracts, digest, sealed)
             SELECT head.last + new.ordinal, new.event_id, new.client_id, new.version,
                    new.event_type, new.schema_version, new.occurred_at, head.at, new.agency,
                    new.credential, new.actor, new.data::json, new.retracts, new.digest,
                    new.sealed
             FROM new CROSS JOIN head
             WHERE NOT EXISTS (SELECT 1 FROM conflicts)
             RETURNING 1
         ),
         moved AS (
             UPDATE log_head SET position = head.last + $16, recorded_at = head.at
             FROM head
             WHERE NOT EXISTS (SELECT 1 FROM conflicts)
             RETURNING pg_notify($17, log_head.position::text)
         )
         SELECT head.last, head.at,
                (SELECT COUNT(*) FROM inserted) + (SELECT COUNT(*) FROM moved) * 0
         FROM head",
    )
    .bind(rows.event_id)
    .bind(rows.client_id)
    .bind(rows.version)
    .bind(rows.event_type)
    .bind(rows.schema_version)
    .bind(rows.occurred_at)
    .bind(rows.agency)
    .bind(rows.credential)
    .bind(rows.actor)
    .bind(rows.data)
    .bind(rows.retracts)
    .bind(rows.digest)
    .bind(now_micros())
    .bind(stream_clients)
    .bind(expected)
    .bind(count)
    .bind(LOG_CHANNEL)
    .bind(rows.sealed)
    .bind(in_lock_order(jobs.iter().flat_map(keys_used).collect()))
    .fetch_one(&mut *transaction)
    .await;
    let (last, recorded_at, inserted) = match written {
        Ok(written) => written,
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            transaction.rollback().await?;
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    if inserted != count {
        transaction.rollback().await?;
        return Ok(None);
    }
    announce(announcements, 0..jobs.len());
    if any_unlogged(jobs, 0..jobs.len()).await {
        transaction.rollback().await?;
        return Err(Error::Unlogged);
    }
    transaction.commit().await?;
    let mut position = last as u64;
    let results = jobs
        .iter()
        .map(|job| {
            Ok(job
                .streams
                .iter()
                .flat_map(|stream| {
                    stream
                        .events
                        .iter()
                        .enumerate()
                        .map(move |(offset, new)| (stream, offset, new))
                })
                .map(|(stream, offset, new)| {
                    position += 1;
                    Receipt {
                        id: new.draft.id,
                        client_id: stream.client_id,
                        version: stream.expected_version + offset as u64 + 1,
                        position,
                        recorded_at,
                    }
                })
                .collect())
        })
        .collect();
    Ok(Some((results, Some(position))))
}

/// The server's clock, truncated to the microseconds PostgreSQL keeps.
fn now_micros() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap_or_else(|_| Utc::now())
}

/// The careful path. Under the `log_head` lock nothing else can append, so the checks for taken
/// ids and stream versions made here still hold at commit: each append is accepted or refused
/// on its own, and only the accepted ones are written, with no savepoints needed.
async fn commit_job_by_job(
    pool: &PgPool,
    jobs: &[Job],
    announcements: &mut Announcements,
) -> Result<GroupOutcome> {
    let mut transaction = pool.begin().await?;
    let (last_position, last_recorded_at): (i64, DateTime<Utc>) =
        sqlx::query_as("SELECT position, recorded_at FROM log_head FOR UPDATE")
            .fetch_one(&mut *transaction)
            .await?;
    // recorded_at never goes backwards, even if clocks differ between processes, so that
    // "recorded by time T" is always a prefix of the global feed. PostgreSQL keeps microseconds.
    let recorded_at = now_micros().max(last_recorded_at);

    let (mut taken, mut versions) = current_state(&mut transaction, jobs).await?;
    let in_force = sealing_keys(&mut transaction, jobs).await?;
    let mut rows = Rows::default();
    let mut next_position = last_position as u64 + 1;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        if job.unlogged() {
            results.push(Err(Error::Unlogged));
            continue;
        }
        let accepted = match withdrawn_key(job, &in_force) {
            Some(client) => Err(Error::KeyWithdrawn(client)),
            None => accept(job, &taken, &versions, next_position, recorded_at),
        };
        if let Ok(receipts) = &accepted {
            for (receipt, new) in receipts
                .iter()
                .zip(job.streams.iter().flat_map(|s| &s.events))
            {
                taken.insert(receipt.id.0);
                versions.insert(receipt.client_id.0, receipt.version);
                push_row(&mut rows, job, new, receipt.version, receipt.position);
            }
            next_position += receipts.len() as u64;
        }
        results.push(accepted);
    }
    if rows.position.is_empty() {
        transaction.rollback().await?;
        return Ok((results, None));
    }
    let last = next_position - 1;
    insert(&mut transaction, rows, recorded_at, last).await?;
    let accepted: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, result)| result.is_ok())
        .map(|(index, _)| index)
        .collect();
    announce(announcements, accepted.iter().copied());
    if any_unlogged(jobs, accepted).await {
        transaction.rollback().await?;
        return Err(Error::Unlogged);
    }
    transaction.commit().await?;
    Ok((results, Some(last)))
}

/// Which of the keys the group's events were sealed under are still in force, locked until the
/// group commits.
///
/// The keyring keeps keys for sealing, and another process may destroy one (erasure, retention)
/// after it was read: an event sealed under it would be unreadable from the moment it is stored.
/// Locking the key rows settles the order: a destruction that committed first leaves its key
/// missing here, and the append is refused with [`Error::KeyWithdrawn`] so that it is sealed
/// again under the key in force; a destruction that comes later waits for this commit and then
/// erases these events' fields like every other event's.
async fn sealing_keys(
    transaction: &mut Transaction<'_, Postgres>,
    jobs: &[Job],
) -> Result<HashSet<Uuid>> {
    let keys: Vec<Uuid> = jobs.iter().flat_map(keys_used).collect();
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let in_force: Vec<Uuid> = sqlx::query_scalar(
        "SELECT key_id FROM data_keys WHERE key_id = ANY($1) ORDER BY key_id FOR KEY SHARE",
    )
    .bind(&keys)
    .fetch_all(&mut **transaction)
    .await?;
    Ok(in_force.into_iter().collect())
}

/// Key ids sorted and without repeats: rows are locked in key order everywhere (here, in
/// [`sealing_keys`], and by the key store's destruction), so that an append and an erasure of the
/// same client can never each hold a key the other waits for.
fn in_lock_order(mut keys: Vec<Uuid>) -> Vec<Uuid> {
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn keys_used(job: &Job) -> impl Iterator<Item = Uuid> + '_ {
    job.streams
        .iter()
        .flat_map(|stream| &stream.events)
        .filter_map(|new| new.sealed.as_ref().map(|sealed| sealed.key_id))
}

/// The client of the first event in `job` sealed under a key no longer in force.
fn withdrawn_key(job: &Job, in_force: &HashSet<Uuid>) -> Option<ClientId> {
    job.streams.iter().find_map(|stream| {
        stream
            .events
            .iter()
            .filter_map(|new| new.sealed.as_ref())
            .any(|sealed| !in_force.contains(&sealed.key_id))
            .then_some(stream.client_id)
    })
}

/// Which of the group's event ids are already taken, and the current version of each stream the
/// group appends to, in one round trip.
async fn current_state(
    transaction: &mut Transaction<'_, Postgres>,
    jobs: &[Job],
) -> Result<(HashSet<Uuid>, HashMap<Uuid, u64>)> {
    let streams = jobs.iter().flat_map(|job| &job.streams);
    let ids: Vec<Uuid> = streams
        .clone()
        .flat_map(|stream| &stream.events)
        .map(|new| new.draft.id.0)
        .collect();
    let mut clients: Vec<Uuid> = streams.map(|stream| stream.client_id.0).collect();
    clients.sort_unstable();
    clients.dedup();
    // A taken id comes back with a null version; a stream with its current version.
    let rows: Vec<(Uuid, Option<i64>)> = sqlx::query_as(
        // Written as one index probe per id and per client: with `= ANY($1)` and a generic
        // plan, PostgreSQL may choose to scan far more of the table than the few rows wanted.
        "SELECT e.event_id, NULL::bigint
         FROM UNNEST($1::uuid[]) AS wanted (id) JOIN events e ON e.event_id = wanted.id
         UNION ALL
         SELECT stream.id, last.version
         FROM UNNEST($2::uuid[]) AS stream (id)
         CROSS JOIN LATERAL (
             SELECT version FROM events WHERE client_id = stream.id
             ORDER BY version DESC LIMIT 1
         ) AS last",
    )
    .bind(&ids)
    .bind(&clients)
    .fetch_all(&mut **transaction)
    .await?;
    let mut taken = HashSet::new();
    let mut versions = HashMap::new();
    for (id, version) in rows {
        match version {
            None => {
                taken.insert(id);
            }
            Some(version) => {
                versions.insert(id, version as u64);
            }
        }
    }
    Ok((taken, versions))
}

/// Decides one append against the log as it stands (including the group's earlier appends).
fn accept(
    job: &Job,
    taken: &HashSet<Uuid>,
    versions: &HashMap<Uuid, u64>,
    first_position: u64,
    recorded_at: DateTime<Utc>,
) -> Result<Vec<Receipt>> {
    let mut position = first_position;
    let mut receipts = Vec::new();
    let mut in_job: HashSet<Uuid> = HashSet::new();
    for stream in &job.streams {
        let actual = versions.get(&stream.client_id.0).copied().unwrap_or(0);
        if actual != stream.expected_version {
            return Err(Error::StreamConflict {
                client_id: stream.client_id,
                expected: stream.expected_version,
                actual,
            });
        }
        for (offset, new) in stream.events.iter().enumerate() {
            let id = new.draft.id;
            if taken.contains(&id.0) || !in_job.insert(id.0) {
                return Err(Error::DuplicateEvent(id));
            }
            receipts.push(Receipt {
                id,
                client_id: stream.client_id,
                version: stream.expected_version + offset as u64 + 1,
                position,
                recorded_at,
            });
            position += 1;
        }
    }
    Ok(receipts)
}

fn push_row(rows: &mut Rows, job: &Job, new: &crate::NewEvent, version: u64, position: u64) {
    let draft = &new.draft;
    rows.position.push(position as i64);
    rows.event_id.push(draft.id.0);
    rows.client_id.push(draft.client_id.0);
    rows.version.push(version as i64);
    rows.event_type.push(draft.event.event_type());
    rows.schema_version
        .push(draft.event.schema_version() as i32);
    rows.occurred_at.push(draft.occurred_at.to_rfc3339());
    rows.agency.push(job.provenance.agency.clone());
    rows.credential.push(job.provenance.credential.clone());
    rows.actor
        .push(draft.actor.as_ref().map(|actor| actor.as_str().to_owned()));
    match &new.sealed {
        Some(sealed) => {
            rows.data.push(sealed.public.clone());
            rows.sealed.push(Some(sealed.ciphertext.clone()));
        }
        None => {
            rows.data.push(draft.event.data_json());
            rows.sealed.push(None);
        }
    }
    rows.retracts.push(draft.event.retracts().map(|id| id.0));
    rows.digest.push(new.digest.to_vec());
}

/// Inserts the group's rows and moves the head past them, in one statement (one round trip).
async fn insert(
    transaction: &mut Transaction<'_, Postgres>,
    rows: Rows,
    recorded_at: DateTime<Utc>,
    last_position: u64,
) -> Result<()> {
    sqlx::query(
        "WITH inserted AS (
         INSERT INTO events (position, event_id, client_id, version, event_type, schema_version,
             occurred_at, recorded_at, agency, credential, actor, data, retracts, digest, sealed)
         SELECT position, event_id, client_id, version, event_type, schema_version, occurred_at,
                $14, agency, credential, actor, data::json,
                retracts, digest, sealed
         FROM UNNEST($1::bigint[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[],
                     $6::integer[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::uuid[], $13::bytea[], $17::bytea[])
              AS new (position, event_id, client_id, version, event_type, schema_version,
                      occurred_at, agency, credential, actor, data, retracts, digest, sealed)
         RETURNING 1)
         UPDATE log_head SET position = $15, recorded_at = $14
         WHERE (SELECT COUNT(*) FROM inserted) > 0
         RETURNING pg_notify($16, $15::text)",
    )
    .bind(rows.position)
    .bind(rows.event_id)
    .bind(rows.client_id)
    .bind(rows.version)
    .bind(rows.event_type)
    .bind(rows.schema_version)
    .bind(rows.occurred_at)
    .bind(rows.agency)
    .bind(rows.credential)
    .bind(rows.actor)
    .bind(rows.data)
    .bind(rows.retracts)
    .bind(rows.digest)
    .bind(recorded_at)
    .bind(last_position as i64)
    .bind(LOG_CHANNEL)
    .bind(rows.sealed)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::next_analysis;

    #[test]
    fn a_young_log_is_analysed_each_time_it_doubles_up_to_a_million_events() {
        assert_eq!(next_analysis(0), Some(1024));
        assert_eq!(next_analysis(1023), Some(1024));
        assert_eq!(next_analysis(1024), Some(2048));
        assert_eq!(next_analysis(600_000), Some(1 << 20));
        assert_eq!(next_analysis(1 << 20), None);
    }
}
