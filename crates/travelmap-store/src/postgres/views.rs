//! The PostgreSQL view store, with the lease that lets one process at a time write views.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::watch;
use travelmap_domain::ClientId;
use uuid::Uuid;

use super::Patiently;
use super::VIEWS_CHANNEL;
use super::lease::Lease;
use crate::packed::unpack;
use crate::{ClientView, Error, Result, StoredState, ViewStore};

/// The name under which the client-view projection keeps its checkpoint.
const CLIENT_VIEWS: &str = "client_views";

/// The advisory lock whose holder writes the views (an arbitrary constant: "travelview").
const VIEW_LEASE: i64 = 0x7472_6176_7669_6577;

/// The PostgreSQL view store.
///
/// Writing is leased (see `lease.rs`): the epoch, bumped by each new leader in the checkpoint
/// row, is checked by every save in the same transaction that moves the checkpoint, so a leader
/// that lost its lease without noticing cannot overwrite views after its successor has started.
pub struct PgViewStore {
    pool: PgPool,
    saved: watch::Receiver<u64>,
    lease: Lease,
}

impl PgViewStore {
    pub(super) fn new(
        pool: PgPool,
        connector: super::Connector,
        saved: watch::Receiver<u64>,
    ) -> Self {
        Self {
            lease: Lease::new(
                "write the views",
                VIEW_LEASE,
                "UPDATE projection_checkpoints SET epoch = epoch + 1 WHERE projection = 'client_views'
                 RETURNING epoch",
                "UPDATE projection_checkpoints SET epoch = GREATEST(epoch, $1) + 1
                 WHERE projection = 'client_views' AND epoch <> $1 RETURNING epoch",
                connector,
            ),
            pool,
            saved,
        }
    }

    /// Marks the lease as doubtful after a failed write, so the next `lead` checks it again.
    fn doubt<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.lease.doubt();
        }
        result
    }

    async fn write_views(&self, checkpoint: u64, views: Vec<ClientView>) -> Result<()> {
        // The epoch the save was begun under: one taken again meanwhile (see `Lease::lead`) must
        // not let through views made before it.
        let epoch = self.lease.epoch();
        super::within_patience("saving views", async move {
            let mut transaction = self.pool.begin().await?;
            // Views and their checkpoint commit together and can always be rebuilt from the log, so
            // a crash that loses the last few view commits only makes the projector redo them from
            // the older checkpoint. Not waiting for the WAL flush (`synchronous_commit` off for this
            // transaction, set in the same statement) keeps view writes from competing with appends
            // (whose commits stay synchronous) for fsyncs.
            //
            // A client's identifiers rarely change while its view is saved again and again, so only
            // the difference is written: rewriting them all left a dead row and index entries per
            // identifier per save.
            let clients: Vec<Uuid> = views.iter().map(|view| view.client_id.0).collect();
            let states: Vec<&[u8]> = views.iter().map(ClientView::packed_state).collect();
            let (mut kinds, mut values, mut owners) = (Vec::new(), Vec::new(), Vec::new());
            for view in &views {
                for (kind, value) in &view.identifiers {
                    kinds.push(kind.as_str());
                    values.push(value.as_str());
                    owners.push(view.client_id.0);
                }
            }
            sqlx::query(
                "WITH asynchronous AS (SELECT set_config('synchronous_commit', 'off', true)),
                 saved AS (
                     INSERT INTO client_views (client_id, state)
                     SELECT * FROM UNNEST($1::uuid[], $2::bytea[])
                     ON CONFLICT (client_id) DO UPDATE SET state = excluded.state
                 ),
                 wanted AS (
                     SELECT * FROM UNNEST($3::text[], $4::text[], $5::uuid[])
                         AS wanted (kind, value, client_id)
                 ),
                 dropped AS (
                     DELETE FROM client_identifiers held
                     WHERE held.client_id = ANY($1)
                       AND NOT EXISTS (SELECT 1 FROM wanted
                                       WHERE wanted.kind = held.kind AND wanted.value = held.value
                                         AND wanted.client_id = held.client_id)
                 ),
                 added AS (
                     INSERT INTO client_identifiers (kind, value, client_id)
                     SELECT * FROM wanted
                     ON CONFLICT DO NOTHING
                 )
                 SELECT COUNT(*) FROM asynchronous",
            )
            .bind(&clients)
            .bind(&states)
            .bind(&kinds)
            .bind(&values)
            .bind(&owners)
            .execute(&mut *transaction)
            .await?;
            move_checkpoint(&mut transaction, checkpoint, epoch).await?;
            transaction.commit().await?;
            Ok(())
        })
        .await
    }

    /// Writes views of clients that have none stored (the first save after a reset) with `COPY`,
    /// which has no conflicts to look for and no arrays to build: a third less of the server's
    /// time than the statement of [`Self::write_views`] for the same rows.
    async fn write_new_views(&self, checkpoint: u64, views: Vec<ClientView>) -> Result<()> {
        // As in `write_views`: the epoch the save was begun under.
        let epoch = self.lease.epoch();
        super::within_patience("saving views", async move {
            let mut transaction = self.pool.begin().await?;
            // As in `write_views`: views can always be rebuilt, so their commit need not wait for
            // the WAL flush.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *transaction)
                .await?;
            let mut rows = CopyRows::new();
            for view in &views {
                rows.row(&[view.client_id.0.as_bytes(), view.packed_state()]);
            }
            let mut copy = transaction
                .copy_in_raw("COPY client_views (client_id, state) FROM STDIN (FORMAT binary)")
                .await?;
            copy.send(rows.finish()).await?;
            copy.finish().await?;
            let mut rows = CopyRows::new();
            for view in &views {
                for (kind, value) in &view.identifiers {
                    rows.row(&[
                        kind.as_bytes(),
                        value.as_bytes(),
                        view.client_id.0.as_bytes(),
                    ]);
                }
            }
            let mut copy = transaction
                .copy_in_raw(
                    "COPY client_identifiers (kind, value, client_id) FROM STDIN (FORMAT binary)",
                )
                .await?;
            copy.send(rows.finish()).await?;
            copy.finish().await?;
            move_checkpoint(&mut transaction, checkpoint, epoch).await?;
            transaction.commit().await?;
            Ok(())
        })
        .await
    }
}

/// Moves the checkpoint within a save's transaction, if `epoch` is still current.
///
/// Last in the transaction, so that concurrent saves (the projector pipelines them) hold the
/// checkpoint row only briefly. GREATEST because pipelined saves may commit out of order.
async fn move_checkpoint(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    checkpoint: u64,
    epoch: i64,
) -> Result<()> {
    let moved = sqlx::query(
        "UPDATE projection_checkpoints SET position = GREATEST(position, $2)
         WHERE projection = $1 AND epoch = $3
         RETURNING pg_notify($4, position::text)",
    )
    .bind(CLIENT_VIEWS)
    .bind(checkpoint as i64)
    .bind(epoch)
    .bind(VIEWS_CHANNEL)
    .execute(&mut **transaction)
    .await?;
    if moved.rows_affected() == 0 {
        return Err(Error::NotLeader);
    }
    Ok(())
}

/// Deletes every view and sets the checkpoint to zero, if the lease's `epoch` is still current.
///
/// The tables are emptied before the checkpoint row is touched, the order a save takes them in.
/// A previous leader's save may still be in flight: it holds the view rows it wrote and moves the
/// checkpoint last. Such a save usually reads the moved epoch and gives up at once, but one whose
/// checkpoint statement began before the epoch moved waits for the row. Had the reset taken the
/// row first, it would then wait for the save's table lock while the save waited for the row: a
/// deadlock, which PostgreSQL breaks only after `deadlock_timeout` by failing one of the two. A
/// reset by a process that is no longer the leader is rolled back whole, the emptied tables with
/// it.
async fn reset_views(pool: &PgPool, epoch: i64) -> Result<()> {
    super::within_patience("resetting the views", async move {
        let mut transaction = pool.begin().await?;
        sqlx::query("TRUNCATE client_views, client_identifiers")
            .execute(&mut *transaction)
            .await?;
        let moved = sqlx::query(
            "UPDATE projection_checkpoints SET position = 0
             WHERE projection = $1 AND epoch = $2
             RETURNING pg_notify($3, '0')",
        )
        .bind(CLIENT_VIEWS)
        .bind(epoch)
        .bind(VIEWS_CHANNEL)
        .execute(&mut *transaction)
        .await?;
        if moved.rows_affected() == 0 {
            return Err(Error::NotLeader);
        }
        transaction.commit().await?;
        Ok(())
    })
    .await
}

#[async_trait]
impl ViewStore for PgViewStore {
    async fn checkpoint(&self) -> Result<u64> {
        let position: i64 =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
                .bind(CLIENT_VIEWS)
                .fetch_one(&self.pool)
                .patiently()
                .await?;
        Ok(position as u64)
    }

    async fn load(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, StoredState>> {
        let clients: Vec<Uuid> = clients.into_iter().map(|client| client.0).collect();
        let rows: Vec<(Uuid, Vec<u8>)> =
            sqlx::query_as("SELECT client_id, state FROM client_views WHERE client_id = ANY($1)")
                .bind(&clients)
                .fetch_all(&self.pool)
                .patiently()
                .await?;
        rows.into_iter()
            .map(|(client, state)| {
                let client = ClientId(client);
                Ok((client, unpack(client, &state)))
            })
            .collect()
    }

    async fn get(&self, client: ClientId) -> Result<Option<StoredState>> {
        let state: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT state FROM client_views WHERE client_id = $1")
                .bind(client.0)
                .fetch_optional(&self.pool)
                .patiently()
                .await?;
        Ok(state.map(|state| unpack(client, &state)))
    }

    async fn scan(
        &self,
        after: Option<ClientId>,
        limit: usize,
    ) -> Result<Vec<(ClientId, StoredState)>> {
        let rows: Vec<(uuid::Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT client_id, state FROM client_views WHERE client_id > $1
             ORDER BY client_id LIMIT $2",
        )
        .bind(after.map_or(uuid::Uuid::nil(), |client| client.0))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.into_iter()
            .map(|(client, state)| {
                let client = ClientId(client);
                Ok((client, unpack(client, &state)))
            })
            .collect()
    }

    async fn scrub(&self) -> Result<()> {
        // Overwritten views stay in the table file as dead row versions until vacuumed.
        sqlx::raw_sql("VACUUM client_views, client_identifiers")
            .execute(&self.pool)
            .patiently()
            .await?;
        Ok(())
    }

    async fn save(&self, checkpoint: u64, views: Vec<ClientView>) -> Result<()> {
        let saved = self.write_views(checkpoint, views).await;
        self.doubt(saved)
    }

    async fn save_new(&self, checkpoint: u64, views: Vec<ClientView>) -> Result<()> {
        let saved = if views.is_empty() {
            self.write_views(checkpoint, views).await
        } else {
            self.write_new_views(checkpoint, views).await
        };
        self.doubt(saved)
    }

    async fn count(&self) -> Result<usize> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM client_views")
            .fetch_one(&self.pool)
            .patiently()
            .await?;
        Ok(count as usize)
    }

    async fn reset(&self) -> Result<()> {
        self.lead().await?;
        let reset = reset_views(&self.pool, self.lease.epoch()).await;
        self.doubt(reset)
    }

    async fn find_by_identifier(&self, kind: &str, value: &str) -> Result<Vec<ClientId>> {
        let clients: Vec<Uuid> = sqlx::query_scalar(
            "SELECT client_id FROM client_identifiers WHERE kind = $1 AND value = $2
             ORDER BY client_id",
        )
        .bind(kind)
        .bind(value)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        Ok(clients.into_iter().map(ClientId).collect())
    }

    async fn lead(&self) -> Result<()> {
        self.lease.lead().await
    }

    fn saved(&self) -> watch::Receiver<u64> {
        self.saved.clone()
    }
}

/// Rows in PostgreSQL's binary `COPY` format, every field given as its binary form (a uuid's 16
/// bytes, a text's UTF-8, a bytea's bytes).
struct CopyRows(Vec<u8>);

impl CopyRows {
    fn new() -> Self {
        // The signature, then flags and the length of the header extension, both zero.
        let mut bytes = b"PGCOPY\n\xff\r\n\0".to_vec();
        bytes.extend_from_slice(&0i32.to_be_bytes());
        bytes.extend_from_slice(&0i32.to_be_bytes());
        Self(bytes)
    }

    fn row(&mut self, fields: &[&[u8]]) {
        let count = i16::try_from(fields.len()).expect("a row has few fields");
        self.0.extend_from_slice(&count.to_be_bytes());
        for field in fields {
            let length = i32::try_from(field.len()).expect("a field is under 2 GiB");
            self.0.extend_from_slice(&length.to_be_bytes());
            self.0.extend_from_slice(field);
        }
    }

    /// The rows with the trailer that ends them.
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}
