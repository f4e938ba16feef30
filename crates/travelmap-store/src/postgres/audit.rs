//! The PostgreSQL audit trail: `audit_entries`, chained under the `audit_head` row lock so that
//! entries from every process form one chain, written in groups by a task per process.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, mpsc, oneshot};
use travelmap_domain::ClientId;
use travelmap_domain::audit::{AuditEntry, AuditRecord, Operation, Outcome, chain_hash};
use uuid::Uuid;

use super::Patiently;
use crate::{AuditLog, Error, Result};

const MAX_GROUP: usize = 512;
const QUEUE_DEPTH: usize = 4096;

struct Job {
    records: Vec<AuditRecord>,
    reply: oneshot::Sender<Result<Vec<u64>>>,
}

/// The PostgreSQL audit log.
pub struct PgAuditLog {
    pool: PgPool,
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PgAuditLog {
    pub(super) fn new(pool: PgPool) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let writer = tokio::spawn(write_groups(pool.clone(), queue));
        Self {
            pool,
            jobs: std::sync::Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(writer)),
        }
    }

    /// Stops accepting entries and waits until those queued are written.
    pub async fn close(&self) {
        self.jobs.lock().expect("jobs lock").take();
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.await;
        }
    }
}

#[async_trait]
impl AuditLog for PgAuditLog {
    async fn append(&self, records: Vec<AuditRecord>) -> Result<Vec<u64>> {
        let jobs = self.jobs.lock().expect("jobs lock").clone();
        let jobs = jobs.ok_or(Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(Job { records, reply })
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_entries WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn head(&self) -> Result<(u64, [u8; 32])> {
        let (seq, hash): (i64, Vec<u8>) = sqlx::query_as("SELECT seq, hash FROM audit_head")
            .fetch_one(&self.pool)
            .patiently()
            .await?;
        let hash = hash
            .try_into()
            .map_err(|_| Error::Io(std::io::Error::other("audit_head.hash is not 32 bytes")))?;
        Ok((seq as u64, hash))
    }

    async fn read_action(&self, action: &str) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_entries WHERE action = $1 AND seq > 0 ORDER BY seq"
        ))
        .bind(action)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn any_action_outside(&self, prefix: &str) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_entries WHERE seq > 0 AND left(action, $2) <> $1)",
        )
        .bind(prefix)
        .bind(prefix.chars().count() as i32)
        .fetch_one(&self.pool)
        .patiently()
        .await?)
    }

    async fn before_the_first(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries WHERE seq <= 0")
            .fetch_one(&self.pool)
            .patiently()
            .await?;
        Ok(count as u64)
    }

    async fn read_client(&self, client: ClientId) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_entries WHERE client_id = $1 AND seq > 0 ORDER BY seq"
        ))
        .bind(client.0)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.iter().map(decode).collect()
    }
}

const COLUMNS: &str = "seq, at, credential, agency, actor, operation, client_id, purpose, \
                       justification, request_id, outcome, action, returned, hash";

fn decode(row: &PgRow) -> Result<AuditEntry> {
    let seq = row.try_get::<i64, _>(0)? as u64;
    let damaged = |what: &str| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("audit entry {seq} is damaged: {what}"),
        ))
    };
    let operation: &str = row.try_get(5)?;
    let outcome: &str = row.try_get(10)?;
    let hash: Vec<u8> = row.try_get(13)?;
    Ok(AuditEntry {
        seq,
        record: AuditRecord {
            at: row.try_get(1)?,
            credential: row.try_get(2)?,
            agency: row.try_get(3)?,
            actor: row.try_get(4)?,
            operation: Operation::parse(operation).ok_or_else(|| damaged("unknown operation"))?,
            client_id: row.try_get::<Option<Uuid>, _>(6)?.map(ClientId),
            purpose: row.try_get(7)?,
            justification: row.try_get(8)?,
            request_id: row.try_get(9)?,
            outcome: Outcome::parse(outcome).ok_or_else(|| damaged("unknown outcome"))?,
            action: row.try_get(11)?,
            returned: row.try_get(12)?,
        },
        hash: hash
            .try_into()
            .map_err(|_| damaged("hash is not 32 bytes"))?,
    })
}

async fn write_groups(pool: PgPool, mut queue: mpsc::Receiver<Job>) {
    loop {
        let mut jobs = Vec::with_capacity(MAX_GROUP);
        if queue.recv_many(&mut jobs, MAX_GROUP).await == 0 {
            return;
        }
        match super::within_patience("writing the audit log", commit_group(&pool, &jobs)).await {
            Ok(answers) => {
                for (job, answer) in jobs.into_iter().zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(error) => {
                tracing::error!(%error, "audit log commit failed");
                let failure = error.for_each_waiter("writing the audit log");
                for job in jobs {
                    let _ = job.reply.send(Err(failure()));
                }
            }
        }
    }
}

/// Chains and writes one group under the `audit_head` lock.
async fn commit_group(pool: &PgPool, jobs: &[Job]) -> Result<Vec<Vec<u64>>> {
    let mut transaction = pool.begin().await?;
    // As for views: an entry is committed before the operation it logs is answered, and survives
    // a crash of this process; a crash of the database server may lose the last moments'
    // entries. That spares every logged read a flush of its own (see docs/operations.md). The
    // setting is made in the statement that locks the head, sparing a round trip.
    let (last_seq, last_hash, _): (i64, Vec<u8>, String) = sqlx::query_as(
        "SELECT seq, hash, set_config('synchronous_commit', 'off', true)
         FROM audit_head FOR UPDATE",
    )
    .fetch_one(&mut *transaction)
    .await?;
    let mut hash: [u8; 32] = last_hash
        .try_into()
        .map_err(|_| Error::Io(std::io::Error::other("audit_head.hash is not 32 bytes")))?;
    let mut seq = last_seq as u64;
    let mut columns = Columns::default();
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut numbers = Vec::with_capacity(job.records.len());
        for record in &job.records {
            seq += 1;
            hash = chain_hash(&hash, seq, record);
            columns.push(seq, record, hash);
            numbers.push(seq);
        }
        answers.push(numbers);
    }
    sqlx::query(
        "WITH written AS (
             INSERT INTO audit_entries (seq, at, credential, agency, actor, operation, client_id,
                 purpose, justification, request_id, outcome, action, returned, hash)
             SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::text[], $4::text[],
                 $5::text[], $6::text[], $7::uuid[], $8::text[], $9::text[], $10::text[],
                 $11::text[], $12::text[], $13::text[], $14::bytea[])
             RETURNING 1)
         UPDATE audit_head SET seq = $15, hash = $16 WHERE (SELECT COUNT(*) FROM written) >= 0",
    )
    .bind(columns.seq)
    .bind(columns.at)
    .bind(columns.credential)
    .bind(columns.agency)
    .bind(columns.actor)
    .bind(columns.operation)
    .bind(columns.client_id)
    .bind(columns.purpose)
    .bind(columns.justification)
    .bind(columns.request_id)
    .bind(columns.outcome)
    .bind(columns.action)
    .bind(columns.returned)
    .bind(columns.hash)
    .bind(seq as i64)
    .bind(hash.to_vec())
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(answers)
}

#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    at: Vec<DateTime<Utc>>,
    credential: Vec<String>,
    agency: Vec<String>,
    actor: Vec<Option<String>>,
    operation: Vec<&'static str>,
    client_id: Vec<Option<Uuid>>,
    purpose: Vec<Option<String>>,
    justification: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    outcome: Vec<&'static str>,
    action: Vec<String>,
    returned: Vec<Option<String>>,
    hash: Vec<Vec<u8>>,
}

impl Columns {
    fn push(&mut self, seq: u64, record: &AuditRecord, hash: [u8; 32]) {
        self.seq.push(seq as i64);
        self.at.push(record.at);
        self.credential.push(record.credential.clone());
        self.agency.push(record.agency.clone());
        self.actor.push(record.actor.clone());
        self.operation.push(record.operation.as_str());
        self.client_id.push(record.client_id.map(|id| id.0));
        self.purpose.push(record.purpose.clone());
        self.justification.push(record.justification.clone());
        self.request_id.push(record.request_id.clone());
        self.outcome.push(record.outcome.as_str());
        self.action.push(record.action.clone());
        self.returned.push(record.returned.clone());
        self.hash.push(hash.to_vec());
    }
}
