//! The SQLite view store (`projections.sqlite`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;
use travelmap_domain::ClientId;
use uuid::Uuid;

use super::pool::ReadPool;
use super::{Checkpointer, configure, schema};
use crate::packed::unpack;
use crate::{ClientView, Error, Result, StoredState, ViewStore};

/// The name under which the client-view projection keeps its checkpoint.
const CLIENT_VIEWS: &str = "client_views";

/// Whether a save may replace stored views (and so must first forget their identifiers) or
/// writes only views the store does not hold (see [`ViewStore::save_new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Replacing,
    New,
}

/// The embedded view store. Writes come from the projector alone, through one connection.
pub struct SqliteViewStore {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<ReadPool>,
    saved: watch::Sender<u64>,
    checkpointer: Checkpointer,
}

impl SqliteViewStore {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut connection = Connection::open(path)?;
        configure(&connection)?;
        // Views can always be rebuilt from the log, and a view and its checkpoint are committed
        // together, so a power cut can at worst lose the last few commits of views, which the
        // projector then redoes from the older checkpoint. That does not need an fsync per commit.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        // Views hold personal data in plaintext; when a client's view is purged after erasure,
        // SQLite must overwrite the old content rather than leave it in free pages.
        connection.pragma_update(None, "secure_delete", "ON")?;
        // Checkpoints run on a thread of their own (see `Checkpointer`): run by the writer, they
        // were a third of the time a rebuild spent saving views.
        super::checkpointed_elsewhere(&connection)?;
        schema::migrate(&mut connection, path, schema::VIEWS)?;
        let checkpoint: u64 = connection
            .query_row(
                "SELECT position FROM checkpoints WHERE projection = ?1",
                params![CLIENT_VIEWS],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        Ok(Self {
            writer: Arc::new(Mutex::new(connection)),
            readers: Arc::new(ReadPool::new(path.to_owned())),
            saved: watch::channel(checkpoint).0,
            checkpointer: Checkpointer::start(path, "views", None)?,
        })
    }

    /// Stops checkpointing in the background and folds the write-ahead log into the main file,
    /// so that `projections.sqlite` alone holds every saved view.
    pub fn close(&self) {
        self.checkpointer.stop();
        let writer = self.writer.lock().expect("view writer lock");
        if let Err(error) = super::keys::truncate_wal(&writer) {
            tracing::warn!(%error, "could not fold the views' write-ahead log in on close");
        }
    }

    /// Writes views and their identifiers and moves the checkpoint, in one transaction.
    async fn write_views(
        &self,
        checkpoint: u64,
        views: Vec<ClientView>,
        written: Written,
    ) -> Result<()> {
        self.write(move |connection| {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut upsert = transaction.prepare_cached(
                    "INSERT INTO client_views (client_id, state) VALUES (?1, ?2)
                     ON CONFLICT (client_id) DO UPDATE SET state = excluded.state",
                )?;
                let mut forget = transaction
                    .prepare_cached("DELETE FROM client_identifiers WHERE client_id = ?1")?;
                let mut index = transaction.prepare_cached(
                    "INSERT OR IGNORE INTO client_identifiers (kind, value, client_id)
                     VALUES (?1, ?2, ?3)",
                )?;
                for view in &views {
                    upsert.execute(params![view.client_id.0, view.packed_state()])?;
                    if written == Written::Replacing {
                        forget.execute(params![view.client_id.0])?;
                    }
                    for (kind, value) in &view.identifiers {
                        index.execute(params![kind, value, view.client_id.0])?;
                    }
                }
                transaction.execute(
                    "INSERT INTO checkpoints (projection, position) VALUES (?1, ?2)
                     ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
                    params![CLIENT_VIEWS, checkpoint],
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await?;
        self.saved.send_replace(checkpoint);
        Ok(())
    }

    async fn write<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || write(&mut writer.lock().expect("view writer lock")))
            .await
            .map_err(|_| Error::Closed)?
    }
}

#[async_trait]
impl ViewStore for SqliteViewStore {
    async fn checkpoint(&self) -> Result<u64> {
        self.readers
            .read(|connection| {
                Ok(connection
                    .query_row(
                        "SELECT position FROM checkpoints WHERE projection = ?1",
                        params![CLIENT_VIEWS],
                        |row| row.get(0),
                    )
                    .optional()?
                    .unwrap_or(0))
            })
            .await
    }

    async fn load(&self, clients: Vec<ClientId>) -> Result<HashMap<ClientId, StoredState>> {
        self.readers
            .read_points(clients.len(), move |connection| {
                let mut statement = connection
                    .prepare_cached("SELECT state FROM client_views WHERE client_id = ?1")?;
                let mut states = HashMap::with_capacity(clients.len());
                for &client in &clients {
                    let state: Option<Vec<u8>> = statement
                        .query_row(params![client.0], |row| row.get(0))
                        .optional()?;
                    if let Some(state) = state {
                        states.insert(client, unpack(client, &state));
                    }
                }
                Ok(states)
            })
            .await
    }

    async fn get(&self, client: ClientId) -> Result<Option<StoredState>> {
        self.readers
            .read_now(move |connection| {
                let state: Option<Vec<u8>> = connection
                    .prepare_cached("SELECT state FROM client_views WHERE client_id = ?1")?
                    .query_row(params![client.0], |row| row.get(0))
                    .optional()?;
                Ok(state.map(|state| unpack(client, &state)))
            })
            .await
    }

    async fn scan(
        &self,
        after: Option<ClientId>,
        limit: usize,
    ) -> Result<Vec<(ClientId, StoredState)>> {
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT client_id, state FROM client_views WHERE client_id > ?1
                     ORDER BY client_id LIMIT ?2",
                )?;
                let after = after.map_or(uuid::Uuid::nil(), |client| client.0);
                let rows = statement.query_map(params![after, limit as i64], |row| {
                    Ok((ClientId(row.get(0)?), row.get::<_, Vec<u8>>(1)?))
                })?;
                rows.map(|row| {
                    let (client, state) = row?;
                    Ok((client, unpack(client, &state)))
                })
                .collect()
            })
            .await
    }

    async fn save(&self, checkpoint: u64, views: Vec<ClientView>) -> Result<()> {
        self.write_views(checkpoint, views, Written::Replacing)
            .await
    }

    async fn save_new(&self, checkpoint: u64, views: Vec<ClientView>) -> Result<()> {
        self.write_views(checkpoint, views, Written::New).await
    }

    async fn count(&self) -> Result<usize> {
        self.readers
            .read(|connection| {
                let count: i64 =
                    connection
                        .query_row("SELECT COUNT(*) FROM client_views", [], |row| row.get(0))?;
                Ok(count as usize)
            })
            .await
    }

    async fn reset(&self) -> Result<()> {
        self.write(|connection| {
            let transaction = connection.transaction()?;
            transaction.execute_batch(
                "DELETE FROM client_views; DELETE FROM client_identifiers; DELETE FROM checkpoints;",
            )?;
            transaction.commit()?;
            Ok(())
        })
        .await?;
        self.saved.send_replace(0);
        Ok(())
    }

    async fn find_by_identifier(&self, kind: &str, value: &str) -> Result<Vec<ClientId>> {
        let (kind, value) = (kind.to_owned(), value.to_owned());
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT client_id FROM client_identifiers WHERE kind = ?1 AND value = ?2
                     ORDER BY client_id",
                )?;
                statement
                    .query_map(params![kind, value], |row| row.get::<_, Uuid>(0))?
                    .map(|client| client.map(ClientId).map_err(Error::from))
                    .collect()
            })
            .await
    }

    /// The data directory's lock already keeps every other process out.
    async fn lead(&self) -> Result<()> {
        Ok(())
    }

    fn saved(&self) -> watch::Receiver<u64> {
        self.saved.subscribe()
    }

    async fn scrub(&self) -> Result<()> {
        // `secure_delete` zeroed the old rows in the database file; the WAL still holds copies
        // of those pages until it is checkpointed and truncated.
        let turn = self.checkpointer.turn();
        self.write(move |connection| {
            let _turn = turn.lock().expect("checkpoint turn lock");
            super::keys::truncate_wal(connection)
        })
        .await
    }
}
