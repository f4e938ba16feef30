//! The PostgreSQL webhook store, with the lease that lets one process at a time deliver.
//!
//! Delivering is leased the way writing views is (see `lease.rs`): the epoch in
//! `webhook_dispatch`, bumped by each new holder, fences off the previous one, whose cursor
//! moves then fail. Two processes delivering the
//! same webhook would not lose events (cursors only move forward, after an acknowledgement) but
//! would send each one twice and out of order; the lease keeps that to the moment of a hand-over.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::watch;
use travelmap_domain::EventId;
use uuid::Uuid;

use super::Patiently;
use super::lease::Lease;
use crate::webhooks::{
    ATTEMPTS_KEPT, Attempt, AttemptOutcome, NewWebhook, Standing, State, Webhook, WebhookStore,
    corrupt, parse_purpose, purpose_name,
};
use crate::{Error, Result};

/// The advisory lock whose holder delivers webhooks (an arbitrary constant: "travhook").
const DISPATCH_LEASE: i64 = 0x7472_6176_686f_6f6b;

const COLUMNS: &str =
    "id, agency, credential, url, types, purpose, secret, created_at, state, cursor";

pub struct PgWebhookStore {
    pool: PgPool,
    lease: Lease,
    changes: watch::Sender<u64>,
}

impl PgWebhookStore {
    pub(super) fn new(pool: PgPool, connector: super::Connector) -> Self {
        Self {
            lease: Lease::new(
                "deliver webhooks",
                DISPATCH_LEASE,
                "UPDATE webhook_dispatch SET epoch = epoch + 1 RETURNING epoch",
                "UPDATE webhook_dispatch SET epoch = GREATEST(epoch, $1) + 1 WHERE epoch <> $1
                 RETURNING epoch",
                connector,
            ),
            pool,
            changes: watch::channel(0).0,
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|count| *count += 1);
    }
}

fn decode(row: &PgRow) -> Result<Webhook> {
    let purpose: String = row.try_get("purpose")?;
    let state: String = row.try_get("state")?;
    let cursor: i64 = row.try_get("cursor")?;
    Ok(Webhook {
        id: row.try_get("id")?,
        agency: row.try_get("agency")?,
        credential: row.try_get("credential")?,
        url: row.try_get("url")?,
        types: row.try_get("types")?,
        purpose: parse_purpose(&purpose)?,
        secret: row.try_get("secret")?,
        created_at: row.try_get::<DateTime<Utc>, _>("created_at")?,
        state: State::parse(&state).ok_or_else(|| corrupt("state"))?,
        cursor: cursor as u64,
    })
}

fn decode_attempt(row: &PgRow) -> Result<Attempt> {
    let outcome: String = row.try_get("outcome")?;
    let position: i64 = row.try_get("position")?;
    let attempt: i32 = row.try_get("attempt")?;
    let status: Option<i32> = row.try_get("status")?;
    let duration_ms: i64 = row.try_get("duration_ms")?;
    Ok(Attempt {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_id: EventId(row.try_get("event_id")?),
        position: position as u64,
        attempt: attempt as u32,
        at: row.try_get("at")?,
        status: status.map(|status| status as u16),
        error: row.try_get("error")?,
        duration_ms: duration_ms as u64,
        outcome: AttemptOutcome::parse(&outcome).ok_or_else(|| corrupt("attempt outcome"))?,
    })
}

#[async_trait]
impl WebhookStore for PgWebhookStore {
    async fn register(&self, webhook: NewWebhook) -> Result<Webhook> {
        let row = sqlx::query(&format!(
            "INSERT INTO webhooks ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING {COLUMNS}"
        ))
        .bind(webhook.id)
        .bind(&webhook.agency)
        .bind(&webhook.credential)
        .bind(&webhook.url)
        .bind(&webhook.types)
        .bind(purpose_name(webhook.purpose))
        .bind(&webhook.secret)
        .bind(webhook.created_at)
        .bind(State::Active.as_str())
        .bind(webhook.cursor as i64)
        .fetch_one(&self.pool)
        .patiently()
        .await?;
        self.changed();
        decode(&row)
    }

    async fn get(&self, id: Uuid) -> Result<Option<Webhook>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .patiently()
            .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self, agency: Option<String>) -> Result<Vec<Webhook>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM webhooks WHERE $1::text IS NULL OR agency = $1
             ORDER BY created_at, id"
        ))
        .bind(agency)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn remove(&self, id: Uuid) -> Result<bool> {
        // The attempts go with it (ON DELETE CASCADE).
        let removed = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .patiently()
            .await?
            .rows_affected()
            > 0;
        if removed {
            self.changed();
        }
        Ok(removed)
    }

    async fn set_state(&self, id: Uuid, state: State) -> Result<bool> {
        let found = sqlx::query("UPDATE webhooks SET state = $2 WHERE id = $1")
            .bind(id)
            .bind(state.as_str())
            .execute(&self.pool)
            .patiently()
            .await?
            .rows_affected()
            > 0;
        if found {
            self.changed();
        }
        Ok(found)
    }

    async fn standing(&self, id: Uuid) -> Result<Standing> {
        let (state, current): (Option<String>, bool) = sqlx::query_as(
            "SELECT (SELECT state FROM webhooks WHERE id = $1), epoch = $2 FROM webhook_dispatch",
        )
        .bind(id)
        .bind(self.lease.epoch())
        .fetch_one(&self.pool)
        .patiently()
        .await?;
        if !current {
            self.lease.doubt();
            return Ok(Standing::Deposed);
        }
        Ok(match state.as_deref().and_then(State::parse) {
            Some(State::Active) => Standing::Deliver,
            _ => Standing::Stopped,
        })
    }

    async fn advance(&self, id: Uuid, position: u64) -> Result<()> {
        let epoch = self.lease.epoch();
        // The epoch is checked in the same statement that moves the cursor, so a process that
        // lost the lease without noticing cannot move it after its successor started.
        let fenced: Option<bool> = sqlx::query_scalar(
            "WITH lease AS (SELECT epoch = $3 AS current FROM webhook_dispatch),
                  moved AS (UPDATE webhooks SET cursor = GREATEST(cursor, $2)
                            WHERE id = $1 AND (SELECT current FROM lease))
             SELECT NOT current FROM lease",
        )
        .bind(id)
        .bind(position as i64)
        .bind(epoch)
        .fetch_optional(&self.pool)
        .patiently()
        .await?;
        if fenced.unwrap_or(true) {
            self.lease.doubt();
            return Err(Error::NotLeader);
        }
        Ok(())
    }

    async fn log_attempt(&self, attempt: Attempt) -> Result<()> {
        super::within_patience("logging a delivery attempt", async move {
            let mut transaction = self.pool.begin().await?;
            // The entry logged when the attempt began, replaced by this one.
            sqlx::query(
                "DELETE FROM webhook_attempts WHERE webhook_id = $1 AND id = $2",
            )
            .bind(attempt.webhook_id)
            .bind(attempt.id)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "INSERT INTO webhook_attempts
                    (id, webhook_id, event_id, position, attempt, at, status, error, duration_ms, outcome)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
                 WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = $2)",
            )
            .bind(attempt.id)
            .bind(attempt.webhook_id)
            .bind(attempt.event_id.0)
            .bind(attempt.position as i64)
            .bind(attempt.attempt as i32)
            .bind(attempt.at)
            .bind(attempt.status.map(i32::from))
            .bind(&attempt.error)
            .bind(attempt.duration_ms as i64)
            .bind(attempt.outcome.as_str())
            .execute(&mut *transaction)
            .await?;
            // Only the webhook's newest attempts are kept.
            sqlx::query(
                "DELETE FROM webhook_attempts WHERE webhook_id = $1 AND seq <= (
                    SELECT seq FROM webhook_attempts WHERE webhook_id = $1
                    ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            )
            .bind(attempt.webhook_id)
            .bind(ATTEMPTS_KEPT as i64)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            Ok(())
        })
        .await
    }

    async fn attempts(&self, id: Uuid, limit: usize) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT id, webhook_id, event_id, position, attempt, at, status, error, duration_ms,
                    outcome
             FROM webhook_attempts WHERE webhook_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.iter().map(decode_attempt).collect()
    }

    async fn lead(&self) -> Result<()> {
        self.lease.lead().await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
