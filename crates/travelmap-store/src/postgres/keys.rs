//! The PostgreSQL key store: the `data_keys`, `erased_clients` and `system_keys` tables, apart
//! from `events` so that a dump of the log table alone holds ciphertext only.
//!
//! A destroyed key's row is deleted at once; PostgreSQL keeps the dead row version in the table
//! file until vacuum reclaims it and in the write-ahead log until it is recycled, so a `VACUUM`
//! of the table follows each destruction straight away (see docs/data-protection.md for what
//! remains, and why rotating the master key is what makes old copies useless). It runs beside
//! the erasure rather than in it, one at a time: a `VACUUM` can wait minutes on others' locks
//! and on truncating the table, and an erasure that waited for it was given up after its keys
//! were gone but before its event was recorded and the travel maps purged; many erasures at
//! once queued as many `VACUUM`s, each holding a pooled connection, until the pool ran dry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use travelmap_domain::ClientId;
use travelmap_domain::personal::Category;
use uuid::Uuid;

use super::Patiently;
use crate::keys::{DestroyedKey, KeyStore, StoredKey};
use crate::{Error, Result};

pub struct PgKeyStore {
    pool: PgPool,
    /// Asks the vacuumer (see [`vacuum_when_asked`]) for a `VACUUM` of `data_keys`.
    vacuum: Arc<tokio::sync::Notify>,
    /// Whether keys were destroyed or rewrapped since the last `VACUUM` began.
    unvacuumed: Arc<AtomicBool>,
}

impl PgKeyStore {
    /// Destroys keys (see [`KeyStore::destroy`]); with `unless_moved_past`, only while the
    /// client's stream is still at that version (see [`KeyStore::destroy_at`]), `None` otherwise.
    async fn destroy_unless_moved(
        &self,
        client: ClientId,
        categories: Option<Vec<Category>>,
        unless_moved_past: Option<u64>,
    ) -> Result<Option<usize>> {
        super::within_patience("destroying data keys", async move {
            let mut transaction = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(client_lock(client.0))
                .execute(&mut *transaction)
                .await?;
            if unless_moved_past.is_some() {
                // Every append takes the log's head row before the keys it seals under, and
                // events without personal fields take no key at all: taking the head row as an
                // append does waits for the appends under way and keeps new ones out until this
                // commits, so the version read below is the stream's last. Taken before the key
                // rows, in the order appends take them; exclusively, so that destructions queue
                // with appends instead of sharing the row among themselves while appends wait.
                sqlx::query("SELECT 1 FROM log_head FOR UPDATE")
                    .execute(&mut *transaction)
                    .await?;
            }
            // The rows are locked in key order first, as appends lock the keys they sealed under
            // (see the event log): locked in whatever order the deletes meet them, an erasure and an
            // append sealing under two of the client's keys could each wait for the other.
            sqlx::query(
                "SELECT key_id FROM data_keys WHERE client_id = $1 ORDER BY key_id FOR UPDATE",
            )
            .bind(client.0)
            .execute(&mut *transaction)
            .await?;
            let names: Option<Vec<&str>> = categories.as_ref().map(|categories| {
                categories
                    .iter()
                    .map(|category| category.as_str())
                    .collect()
            });
            sqlx::query(
                "INSERT INTO destroyed_keys (key_id, client_id, category, destroyed_at)
                 SELECT key_id, client_id, category, now() FROM data_keys
                 WHERE client_id = $1 AND ($2::text[] IS NULL OR category = ANY($2))
                 ON CONFLICT DO NOTHING",
            )
            .bind(client.0)
            .bind(&names)
            .execute(&mut *transaction)
            .await?;
            if let Some(version) = unless_moved_past {
                // Read after the head row was taken, which waited for every append under way:
                // what they committed is seen here, and nothing is appended until this commits.
                let current: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(version), 0)::bigint FROM events WHERE client_id = $1",
                )
                .bind(client.0)
                .fetch_one(&mut *transaction)
                .await?;
                if current as u64 != version {
                    transaction.rollback().await?;
                    return Ok(None);
                }
            }
            let destroyed = match categories {
                None => {
                    sqlx::query(
                        "INSERT INTO erased_clients (client_id, erased_at) VALUES ($1, now())
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(client.0)
                    .execute(&mut *transaction)
                    .await?;
                    sqlx::query("DELETE FROM data_keys WHERE client_id = $1")
                        .bind(client.0)
                        .execute(&mut *transaction)
                        .await?
                        .rows_affected()
                }
                Some(categories) => {
                    let names: Vec<&str> = categories
                        .iter()
                        .map(|category| category.as_str())
                        .collect();
                    sqlx::query("DELETE FROM data_keys WHERE client_id = $1 AND category = ANY($2)")
                        .bind(client.0)
                        .bind(names)
                        .execute(&mut *transaction)
                        .await?
                        .rows_affected()
                }
            };
            transaction.commit().await?;
            // Reclaims the dead row versions so that the destroyed keys do not wait in the table
            // file for the next autovacuum. (VACUUM cannot run inside a transaction.)
            self.vacuum_soon();
            Ok(Some(destroyed as usize))
        })
        .await
    }

    pub(crate) fn new(pool: PgPool) -> Self {
        let vacuum = Arc::new(tokio::sync::Notify::new());
        let unvacuumed = Arc::new(AtomicBool::new(false));
        tokio::spawn(vacuum_when_asked(
            pool.clone(),
            Arc::downgrade(&vacuum),
            unvacuumed.clone(),
        ));
        Self {
            pool,
            vacuum,
            unvacuumed,
        }
    }

    /// Asks for a `VACUUM` of `data_keys` soon; requests made while one runs are served by one
    /// more run after it.
    fn vacuum_soon(&self) {
        self.unvacuumed.store(true, Ordering::SeqCst);
        self.vacuum.notify_one();
    }

    /// Runs the `VACUUM` still owed, before the pool closes: an offline command (a retention
    /// run, a key rotation) ends right after destroying or rewrapping keys, before the
    /// vacuumer's turn would come.
    pub(crate) async fn close(&self) {
        if self.unvacuumed.swap(false, Ordering::SeqCst)
            && let Err(error) = sqlx::raw_sql("VACUUM data_keys")
                .execute(&self.pool)
                .patiently()
                .await
        {
            tracing::warn!(%error, "could not vacuum the destroyed data keys' rows");
        }
    }
}

/// Runs `VACUUM data_keys` each time it is asked, one at a time, until the store is dropped or
/// its pool closed. Failures are logged: the dead rows then wait for the next run or the
/// table's autovacuum.
async fn vacuum_when_asked(
    pool: PgPool,
    asked: std::sync::Weak<tokio::sync::Notify>,
    unvacuumed: Arc<AtomicBool>,
) {
    loop {
        let Some(notify) = asked.upgrade() else {
            return;
        };
        // Woken at least once a minute to notice a store dropped meanwhile.
        let asked_for =
            tokio::time::timeout(std::time::Duration::from_secs(60), notify.notified()).await;
        drop(notify);
        if asked_for.is_err() {
            continue;
        }
        if pool.is_closed() {
            return;
        }
        // Owed no more when `close` ran it meanwhile.
        if !unvacuumed.swap(false, Ordering::SeqCst) {
            continue;
        }
        if let Err(error) = sqlx::raw_sql("VACUUM data_keys").execute(&pool).await {
            tracing::warn!(%error, "could not vacuum the destroyed data keys' rows");
        }
    }
}

const KEY_COLUMNS: &str = "client_id, category, key_id, master_id, wrapped, created_at";

fn read_key(row: &PgRow) -> Result<StoredKey> {
    let category: &str = row.try_get(1)?;
    Ok(StoredKey {
        client_id: ClientId(row.try_get(0)?),
        category: Category::parse(category).unwrap_or(Category::Support),
        key_id: row.try_get(2)?,
        master_id: row.try_get(3)?,
        wrapped: row.try_get(4)?,
        created_at: row.try_get::<DateTime<Utc>, _>(5)?,
    })
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn keys(&self, clients: Vec<ClientId>) -> Result<Vec<StoredKey>> {
        let ids: Vec<Uuid> = clients.iter().map(|client| client.0).collect();
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM data_keys WHERE client_id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        rows.iter().map(read_key).collect()
    }

    async fn create(&self, keys: Vec<StoredKey>) -> Result<Vec<StoredKey>> {
        super::within_patience("creating data keys", async move {
            let clients: Vec<Uuid> = keys.iter().map(|key| key.client_id.0).collect();
            let mut transaction = self.pool.begin().await?;
            // Creating takes each client's lock shared, erasing takes it exclusively, so that no key
            // is created for a client between its erasure being checked here and committed there.
            // The erasure check is a statement of its own, after the locks, so that it reads what
            // an erasure that held the lock committed.
            let mut locks: Vec<i64> = clients.iter().map(|client| client_lock(*client)).collect();
            locks.sort_unstable();
            locks.dedup();
            sqlx::query(
                "SELECT pg_advisory_xact_lock_shared(lock) FROM UNNEST($1::bigint[]) AS lock
                 ORDER BY lock",
            )
            .bind(&locks)
            .execute(&mut *transaction)
            .await?;
            // The commit need not wait for its flush: a key matters only once an event sealed under
            // it is committed, and that commit is synchronous and comes later in the write-ahead
            // log, so flushing it flushes the key too. A crash before then loses only keys no stored
            // event uses (a process that still has one cached is refused at its next append, which
            // locks the key's row). The erased client, if any, is returned instead of inserting
            // anything.
            let (erased, inserted): (Option<Uuid>, i64) = sqlx::query_as(
                "WITH asynchronous AS (SELECT set_config('synchronous_commit', 'off', true)),
                 erased AS (
                     SELECT client_id FROM erased_clients WHERE client_id = ANY($1) LIMIT 1
                 ),
                 inserted AS (
                     INSERT INTO data_keys (client_id, category, key_id, master_id, wrapped,
                                            created_at)
                     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[],
                                          $5::bytea[], $6::timestamptz[])
                     WHERE NOT EXISTS (SELECT 1 FROM erased)
                     ON CONFLICT (client_id, category) DO NOTHING
                     RETURNING 1
                 )
                 SELECT (SELECT client_id FROM erased),
                        (SELECT COUNT(*) FROM inserted) + (SELECT COUNT(*) FROM asynchronous) * 0",
            )
            .bind(&clients)
            .bind(
                keys.iter()
                    .map(|key| key.category.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(keys.iter().map(|key| key.key_id).collect::<Vec<_>>())
            .bind(
                keys.iter()
                    .map(|key| key.master_id.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                keys.iter()
                    .map(|key| key.wrapped.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(keys.iter().map(|key| key.created_at).collect::<Vec<_>>())
            .fetch_one(&mut *transaction)
            .await?;
            if let Some(client) = erased {
                return Err(Error::ClientErased(ClientId(client)));
            }
            if inserted == keys.len() as i64 {
                transaction.commit().await?;
                return Ok(keys);
            }
            // Another process made some of these keys first: those are the ones in force. (Read in
            // a statement of its own, which sees what committed while the insert waited for it.)
            let rows = sqlx::query(&format!(
                "SELECT {KEY_COLUMNS} FROM data_keys WHERE client_id = ANY($1)"
            ))
            .bind(&clients)
            .fetch_all(&mut *transaction)
            .await?;
            transaction.commit().await?;
            let in_force: Vec<StoredKey> = rows.iter().map(read_key).collect::<Result<_>>()?;
            Ok(keys
                .iter()
                .filter_map(|wanted| {
                    in_force
                        .iter()
                        .find(|key| {
                            key.client_id == wanted.client_id && key.category == wanted.category
                        })
                        .cloned()
                })
                .collect())
        })
        .await
    }

    async fn destroy(&self, client: ClientId, categories: Option<Vec<Category>>) -> Result<usize> {
        Ok(self
            .destroy_unless_moved(client, categories, None)
            .await?
            .expect("a destruction bound to no version always happens"))
    }

    async fn destroy_at(
        &self,
        client: ClientId,
        categories: Vec<Category>,
        version: u64,
    ) -> Result<Option<usize>> {
        self.destroy_unless_moved(client, Some(categories), Some(version))
            .await
    }

    async fn destroyed(&self, clients: Vec<ClientId>) -> Result<Vec<DestroyedKey>> {
        let ids: Vec<Uuid> = clients.iter().map(|client| client.0).collect();
        let rows: Vec<(Uuid, String, Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT client_id, category, key_id, destroyed_at FROM destroyed_keys
             WHERE client_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .patiently()
        .await?;
        Ok(rows
            .into_iter()
            .map(|(client, category, key_id, destroyed_at)| DestroyedKey {
                client_id: ClientId(client),
                category: Category::parse(&category).unwrap_or(Category::Support),
                key_id,
                destroyed_at,
            })
            .collect())
    }

    async fn is_erased(&self, client: ClientId) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM erased_clients WHERE client_id = $1)",
        )
        .bind(client.0)
        .fetch_one(&self.pool)
        .patiently()
        .await?)
    }

    async fn erased(&self) -> Result<Vec<ClientId>> {
        let clients = sqlx::query_scalar::<_, Uuid>("SELECT client_id FROM erased_clients")
            .fetch_all(&self.pool)
            .patiently()
            .await?;
        Ok(clients.into_iter().map(ClientId).collect())
    }

    async fn all(&self) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM data_keys"))
            .fetch_all(&self.pool)
            .patiently()
            .await?;
        rows.iter().map(read_key).collect()
    }

    async fn masters_in_use(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT master_id FROM data_keys UNION SELECT master_id FROM system_keys",
        )
        .fetch_all(&self.pool)
        .patiently()
        .await?)
    }

    async fn rewrap(&self, keys: Vec<StoredKey>) -> Result<()> {
        sqlx::query(
            "UPDATE data_keys SET master_id = new.master_id, wrapped = new.wrapped
             FROM UNNEST($1::uuid[], $2::text[], $3::bytea[]) AS new (key_id, master_id, wrapped)
             WHERE data_keys.key_id = new.key_id",
        )
        .bind(keys.iter().map(|key| key.key_id).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|key| key.master_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            keys.iter()
                .map(|key| key.wrapped.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&self.pool)
        .patiently()
        .await?;
        self.vacuum_soon();
        Ok(())
    }

    async fn system_key(&self, name: &str) -> Result<Option<(String, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT master_id, wrapped FROM system_keys WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .patiently()
                .await?,
        )
    }

    async fn create_system_key(
        &self,
        name: &str,
        master_id: &str,
        wrapped: Vec<u8>,
    ) -> Result<(String, Vec<u8>)> {
        sqlx::query(
            "INSERT INTO system_keys (name, master_id, wrapped) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(master_id)
        .bind(wrapped)
        .execute(&self.pool)
        .patiently()
        .await?;
        Ok(
            sqlx::query_as("SELECT master_id, wrapped FROM system_keys WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .patiently()
                .await?,
        )
    }

    async fn rewrap_system_key(&self, name: &str, master_id: &str, wrapped: Vec<u8>) -> Result<()> {
        sqlx::query("UPDATE system_keys SET master_id = $1, wrapped = $2 WHERE name = $3")
            .bind(master_id)
            .bind(wrapped)
            .bind(name)
            .execute(&self.pool)
            .patiently()
            .await?;
        Ok(())
    }
}

/// The advisory lock key that serialises key creation with erasure for one client: the first
/// eight bytes of its id. It shares PostgreSQL's single-key space with the leases and the
/// migration lock (small constants spelling words); a client id chosen to spell one would wait
/// on that lock's holder. Moving to the two-key space would need every process upgraded at
/// once (an older one's lock would not exclude a newer one's), so it is left for a release
/// that says so.
fn client_lock(client: Uuid) -> i64 {
    let bytes = client.as_bytes();
    i64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"))
}
