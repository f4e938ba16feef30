//! The embedded key store: `keys.sqlite` in the data directory, apart from the log so that a copy
//! of `events.sqlite` holds ciphertext only.
//!
//! Keys are written with `synchronous = FULL` (a key must be durable before an event sealed under
//! it is acknowledged) and `secure_delete` (SQLite overwrites deleted content with zeros), and
//! the write-ahead log is truncated after keys are destroyed, so that a destroyed key does not
//! linger in the file's free pages or in the WAL.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use travelmap_domain::ClientId;
use travelmap_domain::personal::Category;

use super::{configure, mapped, schema};
use crate::keys::{DestroyedKey, KeyStore, StoredKey};
use crate::{Error, Result};

pub struct SqliteKeyStore {
    connection: Arc<Mutex<Connection>>,
    /// Key creations go to one thread that commits all those waiting together: each commit
    /// waits for the disk (a key must be durable before anything sealed under it is
    /// acknowledged), and a burst of new clients would otherwise queue one flush each.
    creations: std::sync::mpsc::Sender<Creation>,
}

/// Keys to create, and where to send the keys in force.
struct Creation {
    keys: Vec<StoredKey>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<StoredKey>>>,
}

impl SqliteKeyStore {
    /// Whether the key store at `path` holds any key wrapped under a master key (a data key or
    /// the identifier look-up key). `false` for no file, or one created but never given a key
    /// (`travelmap migrate` on a new directory makes such a file).
    pub fn holds_wrapped_keys(path: &Path) -> Result<bool> {
        if !path.exists() {
            return Ok(false);
        }
        let connection = super::open_copy_read_only(path)?;
        // Both tables come with the first migration; before it the file holds nothing.
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == 0 {
            return Ok(false);
        }
        Ok(connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM data_keys) OR EXISTS (SELECT 1 FROM system_keys)",
            [],
            |row| row.get(0),
        )?)
    }

    /// Opens (creating if needed) the key store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut connection = Connection::open(path)?;
        configure(&connection)?;
        // One connection reads and writes keys. Its reads go through the memory map, and its
        // cache is held to 1 MiB instead of the default 2 MiB: it filled as the store grew,
        // a page copy for every key looked up, and that was memory growing with the clients.
        mapped(&connection)?;
        connection.pragma_update(None, "cache_size", -1024i64)?;
        connection.pragma_update(None, "secure_delete", "ON")?;
        schema::migrate(&mut connection, path, schema::KEYS)?;
        let connection = Arc::new(Mutex::new(connection));
        let (creations, queue) = std::sync::mpsc::channel::<Creation>();
        let writer = connection.clone();
        std::thread::Builder::new()
            .name("travelmap-keys".into())
            .spawn(move || {
                // Ends when the store is dropped (the sender with it).
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    group.extend(queue.try_iter());
                    let mut connection = writer.lock().expect("key store lock");
                    match create_group(&mut connection, &group) {
                        Ok(answers) => {
                            for (creation, answer) in group.into_iter().zip(answers) {
                                let _ = creation.reply.send(answer);
                            }
                        }
                        Err(error) => {
                            let failure = error.for_each_waiter("making data keys");
                            for creation in group {
                                let _ = creation.reply.send(Err(failure()));
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            connection,
            creations,
        })
    }

    /// Opens an existing key store for reading only, for a command that only opens sealed
    /// fields (`replay`), beside a running server or on a copy it may not write. Making keys
    /// fails with [`Error::Closed`].
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no key store at {}", path.display()),
            )));
        }
        let connection = super::open_copy_read_only(path)?;
        schema::require_current(&connection, path, schema::KEYS)?;
        // No writer: a creation finds its queue closed.
        let (creations, _) = std::sync::mpsc::channel::<Creation>();
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            creations,
        })
    }

    /// Folds the write-ahead log back into the key store's file, so that the file alone holds
    /// every key: a process may end before its last connection is dropped (the key writer's
    /// thread holds one), which would leave the keys of a whole import in `keys.sqlite-wal`
    /// only, and a copy of the file taken as a backup without them.
    pub fn close(&self) {
        let connection = self.connection.lock().expect("key store lock");
        if let Err(error) = truncate_wal(&connection) {
            tracing::warn!(%error, "could not fold the key store's write-ahead log into its file");
        }
    }

    async fn with<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || work(&mut connection.lock().expect("key store lock")))
            .await
            .map_err(|_| Error::Closed)?
    }
}

const KEY_COLUMNS: &str = "client_id, category, key_id, master_id, wrapped, created_at";

fn read_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    let category: String = row.get(1)?;
    Ok(StoredKey {
        client_id: ClientId(row.get(0)?),
        category: Category::parse(&category).unwrap_or(Category::Support),
        key_id: row.get(2)?,
        master_id: row.get(3)?,
        wrapped: row.get(4)?,
        created_at: DateTime::<Utc>::from_timestamp_micros(row.get(5)?).unwrap_or_default(),
    })
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    /// The data directory's lock keeps every other server out. (Read-only commands such as
    /// `replay` open it beside a server, but they only read.)
    fn exclusive(&self) -> bool {
        true
    }

    async fn keys(&self, clients: Vec<ClientId>) -> Result<Vec<StoredKey>> {
        self.with(move |connection| {
            let mut keys = Vec::new();
            for chunk in clients.chunks(500) {
                let placeholders = vec!["?"; chunk.len()].join(", ");
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM data_keys WHERE client_id IN ({placeholders})"
                ))?;
                let rows = statement.query_map(
                    rusqlite::params_from_iter(chunk.iter().map(|c| c.0)),
                    read_key,
                )?;
                for row in rows {
                    keys.push(row?);
                }
            }
            Ok(keys)
        })
        .await
    }

    async fn create(&self, keys: Vec<StoredKey>) -> Result<Vec<StoredKey>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.creations
            .send(Creation { keys, reply })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn destroy(&self, client: ClientId, categories: Option<Vec<Category>>) -> Result<usize> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let now = Utc::now().timestamp_micros();
            match &categories {
                None => transaction.execute(
                    "INSERT OR IGNORE INTO destroyed_keys (key_id, client_id, category, destroyed_at)
                     SELECT key_id, client_id, category, ?2 FROM data_keys WHERE client_id = ?1",
                    params![client.0, now],
                )?,
                Some(categories) => {
                    let mut recorded = 0;
                    for category in categories {
                        recorded += transaction.execute(
                            "INSERT OR IGNORE INTO destroyed_keys (key_id, client_id, category, destroyed_at)
                             SELECT key_id, client_id, category, ?3 FROM data_keys
                             WHERE client_id = ?1 AND category = ?2",
                            params![client.0, category.as_str(), now],
                        )?;
                    }
                    recorded
                }
            };
            let destroyed = match &categories {
                None => {
                    transaction.execute(
                        "INSERT INTO erased_clients (client_id, erased_at) VALUES (?1, ?2)
                         ON CONFLICT DO NOTHING",
                        params![client.0, Utc::now().timestamp_micros()],
                    )?;
                    transaction.execute(
                        "DELETE FROM data_keys WHERE client_id = ?1",
                        params![client.0],
                    )?
                }
                Some(categories) => {
                    let mut destroyed = 0;
                    for category in categories {
                        destroyed += transaction.execute(
                            "DELETE FROM data_keys WHERE client_id = ?1 AND category = ?2",
                            params![client.0, category.as_str()],
                        )?;
                    }
                    destroyed
                }
            };
            transaction.commit()?;
            // The deleted rows were zeroed in the database pages (secure_delete), but the WAL
            // still holds copies of those pages until it is checkpointed and truncated.
            truncate_wal(connection)?;
            Ok(destroyed)
        })
        .await
    }

    async fn is_erased(&self, client: ClientId) -> Result<bool> {
        self.with(move |connection| {
            Ok(connection
                .prepare_cached("SELECT 1 FROM erased_clients WHERE client_id = ?1")?
                .query_row(params![client.0], |row| row.get::<_, i64>(0))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn erased(&self) -> Result<Vec<ClientId>> {
        self.with(|connection| {
            let mut statement = connection.prepare("SELECT client_id FROM erased_clients")?;
            let clients = statement
                .query_map([], |row| Ok(ClientId(row.get(0)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(clients)
        })
        .await
    }

    async fn all(&self) -> Result<Vec<StoredKey>> {
        self.with(|connection| {
            let mut statement =
                connection.prepare(&format!("SELECT {KEY_COLUMNS} FROM data_keys"))?;
            let keys = statement
                .query_map([], read_key)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(keys)
        })
        .await
    }

    async fn masters_in_use(&self) -> Result<Vec<String>> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT master_id FROM data_keys UNION SELECT master_id FROM system_keys",
            )?;
            let ids = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
        .await
    }

    async fn rewrap(&self, keys: Vec<StoredKey>) -> Result<()> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            for key in keys {
                transaction
                    .prepare_cached(
                        "UPDATE data_keys SET master_id = ?1, wrapped = ?2 WHERE key_id = ?3",
                    )?
                    .execute(params![key.master_id, key.wrapped, key.key_id])?;
            }
            transaction.commit()?;
            truncate_wal(connection)?;
            Ok(())
        })
        .await
    }

    async fn system_key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>> {
        let name = name.to_owned();
        self.with(move |connection| {
            Ok(connection
                .query_row(
                    "SELECT master_id, wrapped FROM system_keys WHERE name = ?1",
                    params![name],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })
        .await
    }

    async fn create_system_key(
        &self,
        name: &str,
        master_id: &str,
        wrapped: Vec<u8>,
    ) -> Result<(String, Vec<u8>)> {
        let (name, master_id) = (name.to_owned(), master_id.to_owned());
        self.with(move |connection| {
            connection.execute(
                "INSERT INTO system_keys (name, master_id, wrapped) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![name, master_id, wrapped],
            )?;
            Ok(connection.query_row(
                "SELECT master_id, wrapped FROM system_keys WHERE name = ?1",
                params![name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?)
        })
        .await
    }

    async fn rewrap_system_key(&self, name: &str, master_id: &str, wrapped: Vec<u8>) -> Result<()> {
        let (name, master_id) = (name.to_owned(), master_id.to_owned());
        self.with(move |connection| {
            connection.execute(
                "UPDATE system_keys SET master_id = ?1, wrapped = ?2 WHERE name = ?3",
                params![master_id, wrapped, name],
            )?;
            truncate_wal(connection)?;
            Ok(())
        })
        .await
    }

    async fn destroyed(&self, clients: Vec<ClientId>) -> Result<Vec<DestroyedKey>> {
        self.with(move |connection| {
            let mut destroyed = Vec::new();
            for chunk in clients.chunks(500) {
                let placeholders = vec!["?"; chunk.len()].join(", ");
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT client_id, category, key_id, destroyed_at FROM destroyed_keys
                     WHERE client_id IN ({placeholders})"
                ))?;
                let rows = statement.query_map(
                    rusqlite::params_from_iter(chunk.iter().map(|client| client.0)),
                    |row| {
                        let category: String = row.get(1)?;
                        Ok(DestroyedKey {
                            client_id: ClientId(row.get(0)?),
                            category: Category::parse(&category).unwrap_or(Category::Support),
                            key_id: row.get(2)?,
                            destroyed_at: DateTime::<Utc>::from_timestamp_micros(row.get(3)?)
                                .unwrap_or_default(),
                        })
                    },
                )?;
                for row in rows {
                    destroyed.push(row?);
                }
            }
            Ok(destroyed)
        })
        .await
    }
}

/// Creates the keys of every waiting request in one transaction. A request for an erased client
/// is refused on its own; the others go ahead.
fn create_group(
    connection: &mut Connection,
    group: &[Creation],
) -> Result<Vec<Result<Vec<StoredKey>>>> {
    let transaction = connection.transaction()?;
    let mut answers = Vec::with_capacity(group.len());
    for creation in group {
        let mut erased = None;
        for key in &creation.keys {
            let found: Option<i64> = transaction
                .prepare_cached("SELECT 1 FROM erased_clients WHERE client_id = ?1")?
                .query_row(params![key.client_id.0], |row| row.get(0))
                .optional()?;
            if found.is_some() {
                erased = Some(key.client_id);
                break;
            }
        }
        if let Some(client) = erased {
            answers.push(Err(Error::ClientErased(client)));
            continue;
        }
        let mut in_force = Vec::with_capacity(creation.keys.len());
        for key in &creation.keys {
            transaction
                .prepare_cached(
                    "INSERT INTO data_keys (client_id, category, key_id, master_id, wrapped, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (client_id, category) DO NOTHING",
                )?
                .execute(params![
                    key.client_id.0,
                    key.category.as_str(),
                    key.key_id,
                    key.master_id,
                    key.wrapped,
                    key.created_at.timestamp_micros(),
                ])?;
            let stored = transaction
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM data_keys WHERE client_id = ?1 AND category = ?2"
                ))?
                .query_row(params![key.client_id.0, key.category.as_str()], read_key)?;
            in_force.push(stored);
        }
        answers.push(Ok(in_force));
    }
    transaction.commit()?;
    Ok(answers)
}

/// Checkpoints the WAL into the database and truncates it, so that no copy of a deleted page is
/// left in it. A checkpoint cannot complete while a reader still uses an older snapshot; it is
/// tried again for a while before the failure is reported.
pub(crate) fn truncate_wal(connection: &Connection) -> Result<()> {
    for attempt in 0..50u64 {
        let busy: i64 =
            connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(2 + attempt));
    }
    Err(Error::Io(std::io::Error::other(
        "the write-ahead log could not be truncated: readers kept it busy",
    )))
}
