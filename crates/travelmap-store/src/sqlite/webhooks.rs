//! The embedded webhook store: `webhooks.sqlite` in the data directory.
//!
//! A file of its own rather than a table in another: the log and the audit trail are append-only
//! and written by their own threads, and `projections.sqlite` may be deleted to force a rebuild,
//! whereas registrations, cursors and the attempt log are none of these. Apart, the deliverer's
//! frequent small commits (a cursor move per delivered event) never wait for the log's writer.
//! Traffic is light (one writer, the deliverer, plus the odd registration), so one connection
//! serves reads and writes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;
use travelmap_domain::EventId;
use uuid::Uuid;

use super::{configure, schema};
use crate::webhooks::{
    ATTEMPTS_KEPT, Attempt, AttemptOutcome, NewWebhook, Standing, State, Webhook, WebhookStore,
    corrupt, parse_purpose, purpose_name,
};
use crate::{Error, Result};

pub struct SqliteWebhookStore {
    connection: Arc<Mutex<Connection>>,
    changes: watch::Sender<u64>,
}

impl SqliteWebhookStore {
    /// Opens (creating if needed) the webhook store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut connection = Connection::open(path)?;
        configure(&connection)?;
        // A lost cursor move only means an event is delivered again, which receivers expect;
        // registrations are rare enough that their fsync does not matter either way.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        schema::migrate(&mut connection, path, schema::WEBHOOKS)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            changes: watch::channel(0).0,
        })
    }

    /// Moves back every delivery cursor that is past `head`, the log's last position, and
    /// says how many. A cursor can only be there when an older log was restored beside newer
    /// webhook registrations; the log then gives the positions after `head` to new events,
    /// which a cursor left ahead would skip without a word.
    pub(crate) fn rewind_past(&self, head: u64) -> Result<usize> {
        let connection = self.connection.lock().expect("webhook store lock");
        let head = i64::try_from(head).map_err(|_| crate::webhooks::corrupt("head"))?;
        Ok(connection.execute(
            "UPDATE webhooks SET cursor = ?1 WHERE cursor > ?1",
            rusqlite::params![head],
        )?)
    }

    async fn with<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            work(&mut connection.lock().expect("webhook store lock"))
        })
        .await
        .map_err(|_| Error::Closed)?
    }

    fn changed(&self) {
        self.changes.send_modify(|count| *count += 1);
    }
}

const COLUMNS: &str =
    "id, agency, credential, url, types, purpose, secret, created_at, state, cursor";

fn read_webhook(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Webhook, String, String, String)> {
    Ok((
        Webhook {
            id: row.get(0)?,
            agency: row.get(1)?,
            credential: row.get(2)?,
            url: row.get(3)?,
            types: Vec::new(),
            purpose: travelmap_domain::payloads::Purpose::CaseManagement,
            secret: row.get(6)?,
            created_at: DateTime::<Utc>::from_timestamp_micros(row.get(7)?).unwrap_or_default(),
            state: State::Active,
            cursor: row.get(9)?,
        },
        row.get(4)?,
        row.get(5)?,
        row.get(8)?,
    ))
}

/// Finishes a row read by [`read_webhook`]: the columns that need parsing.
fn parsed(
    (mut webhook, types, purpose, state): (Webhook, String, String, String),
) -> Result<Webhook> {
    webhook.types = serde_json::from_str(&types).map_err(|_| corrupt("type list"))?;
    webhook.purpose = parse_purpose(&purpose)?;
    webhook.state = State::parse(&state).ok_or_else(|| corrupt("state"))?;
    Ok(webhook)
}

fn select_one(connection: &Connection, id: Uuid) -> Result<Option<Webhook>> {
    connection
        .prepare_cached(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = ?1"))?
        .query_row(params![id], read_webhook)
        .optional()?
        .map(parsed)
        .transpose()
}

#[async_trait]
impl WebhookStore for SqliteWebhookStore {
    async fn register(&self, webhook: NewWebhook) -> Result<Webhook> {
        let id = webhook.id;
        let stored = self
            .with(move |connection| {
                connection.execute(
                    &format!("INSERT INTO webhooks ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                    params![
                        webhook.id,
                        webhook.agency,
                        webhook.credential,
                        webhook.url,
                        serde_json::to_string(&webhook.types).expect("strings serialise"),
                        purpose_name(webhook.purpose),
                        webhook.secret,
                        webhook.created_at.timestamp_micros(),
                        State::Active.as_str(),
                        webhook.cursor,
                    ],
                )?;
                select_one(connection, id)
            })
            .await?
            .ok_or_else(|| corrupt("registration"))?;
        self.changed();
        Ok(stored)
    }

    async fn get(&self, id: Uuid) -> Result<Option<Webhook>> {
        self.with(move |connection| select_one(connection, id))
            .await
    }

    async fn list(&self, agency: Option<String>) -> Result<Vec<Webhook>> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM webhooks WHERE ?1 IS NULL OR agency = ?1
                 ORDER BY created_at, id"
            ))?;
            let rows = statement.query_map(params![agency], read_webhook)?;
            rows.map(|row| parsed(row?)).collect()
        })
        .await
    }

    async fn remove(&self, id: Uuid) -> Result<bool> {
        let removed = self
            .with(move |connection| {
                let transaction = connection.transaction()?;
                transaction.execute(
                    "DELETE FROM webhook_attempts WHERE webhook_id = ?1",
                    params![id],
                )?;
                let removed =
                    transaction.execute("DELETE FROM webhooks WHERE id = ?1", params![id])?;
                transaction.commit()?;
                Ok(removed > 0)
            })
            .await?;
        if removed {
            self.changed();
        }
        Ok(removed)
    }

    async fn set_state(&self, id: Uuid, state: State) -> Result<bool> {
        let found = self
            .with(move |connection| {
                Ok(connection.execute(
                    "UPDATE webhooks SET state = ?2 WHERE id = ?1",
                    params![id, state.as_str()],
                )? > 0)
            })
            .await?;
        if found {
            self.changed();
        }
        Ok(found)
    }

    async fn standing(&self, id: Uuid) -> Result<Standing> {
        let state: Option<String> = self
            .with(move |connection| {
                Ok(connection
                    .query_row(
                        "SELECT state FROM webhooks WHERE id = ?1",
                        params![id],
                        |row| row.get(0),
                    )
                    .optional()?)
            })
            .await?;
        // One process opens the store, so nobody else can have taken delivery over.
        Ok(match state.as_deref().and_then(State::parse) {
            Some(State::Active) => Standing::Deliver,
            _ => Standing::Stopped,
        })
    }

    async fn advance(&self, id: Uuid, position: u64) -> Result<()> {
        self.with(move |connection| {
            connection.execute(
                "UPDATE webhooks SET cursor = MAX(cursor, ?2) WHERE id = ?1",
                params![id, position],
            )?;
            Ok(())
        })
        .await
    }

    async fn log_attempt(&self, attempt: Attempt) -> Result<()> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            // The entry logged when the attempt began, replaced by this one.
            transaction.execute(
                "DELETE FROM webhook_attempts WHERE webhook_id = ?1 AND id = ?2",
                params![attempt.webhook_id, attempt.id],
            )?;
            // An attempt that ends after its webhook was deleted is not logged: nothing would
            // ever read or prune it.
            transaction.execute(
                "INSERT INTO webhook_attempts
                    (id, webhook_id, event_id, position, attempt, at, status, error, duration_ms, outcome)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
                 WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?2)",
                params![
                    attempt.id,
                    attempt.webhook_id,
                    attempt.event_id.0,
                    attempt.position,
                    attempt.attempt,
                    attempt.at.timestamp_micros(),
                    attempt.status,
                    attempt.error,
                    attempt.duration_ms,
                    attempt.outcome.as_str(),
                ],
            )?;
            // Only the webhook's newest attempts are kept; seq grows with every insert.
            transaction.execute(
                "DELETE FROM webhook_attempts WHERE webhook_id = ?1 AND seq <= (
                    SELECT seq FROM webhook_attempts WHERE webhook_id = ?1
                    ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![attempt.webhook_id, ATTEMPTS_KEPT as i64],
            )?;
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    async fn attempts(&self, id: Uuid, limit: usize) -> Result<Vec<Attempt>> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, webhook_id, event_id, position, attempt, at, status, error,
                        duration_ms, outcome
                 FROM webhook_attempts WHERE webhook_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![id, limit as i64], |row| {
                Ok((
                    Attempt {
                        id: row.get(0)?,
                        webhook_id: row.get(1)?,
                        event_id: EventId(row.get(2)?),
                        position: row.get(3)?,
                        attempt: row.get(4)?,
                        at: DateTime::<Utc>::from_timestamp_micros(row.get(5)?).unwrap_or_default(),
                        status: row.get(6)?,
                        error: row.get(7)?,
                        duration_ms: row.get(8)?,
                        outcome: AttemptOutcome::Delivered,
                    },
                    row.get::<_, String>(9)?,
                ))
            })?;
            rows.map(|row| {
                let (mut attempt, outcome) = row?;
                attempt.outcome =
                    AttemptOutcome::parse(&outcome).ok_or_else(|| corrupt("attempt outcome"))?;
                Ok(attempt)
            })
            .collect()
        })
        .await
    }

    /// The data directory's lock already keeps every other server out.
    async fn lead(&self) -> Result<()> {
        Ok(())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
