//! What only the PostgreSQL store has to show: migrations that are versioned and idempotent, and
//! the view lease that keeps two processes from writing views at once, and key creation shared by
//! processes. The behaviour every
//! backend shares is checked by the conformance suite
//! (`crates/travelmap-service/tests/conformance.rs`).

use std::time::Duration;

use sqlx::Connection;
use travelmap_domain::ClientId;
use travelmap_domain::personal::Category;
use travelmap_store::KeyStore;
use travelmap_store::keys::StoredKey;
use travelmap_store::postgres::{MIGRATIONS, Migrations, PgStore, ScratchDatabase, migrate};
use travelmap_store::{ClientView, Error, ViewStore, postgres::server_from_env};
use uuid::Uuid;

async fn scratch() -> ScratchDatabase {
    let server = server_from_env();
    ScratchDatabase::create(&server, "travelmap_test")
        .await
        .unwrap_or_else(|error| {
            panic!(
                "these tests need PostgreSQL at {server} ({error}); start it, or set \
                 TRAVELMAP_TEST_POSTGRES (see docs/operations.md)"
            )
        })
}

/// Two stores on one database, as two processes of the service would have.
async fn two_processes(database: &ScratchDatabase) -> (PgStore, PgStore) {
    let first = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    let second = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    (first, second)
}

fn view(client: ClientId) -> ClientView {
    ClientView::new(
        client,
        &serde_json::json!({"client": client.to_string()}),
        vec![("prison_number".into(), format!("OP-{client}"))],
    )
}

#[tokio::test]
async fn migrations_apply_once_and_are_required_before_use() {
    let database = scratch().await;
    // A read-only tool refuses a database that was never migrated, and changes nothing.
    let refused = PgStore::connect(database.url(), Migrations::Require).await;
    assert!(
        matches!(refused, Err(Error::SchemaOutdated { found: 0, .. })),
        "{:?}",
        refused.err()
    );
    let current = MIGRATIONS.len() as i64;
    assert_eq!(migrate(database.url()).await.unwrap(), current);
    // Again, and from two processes at once: nothing is applied twice.
    let (one, two) = tokio::join!(migrate(database.url()), migrate(database.url()));
    assert_eq!((one.unwrap(), two.unwrap()), (current, current));
    let store = PgStore::connect(database.url(), Migrations::Require)
        .await
        .unwrap();
    store.close().await;
    let mut connection = sqlx::PgConnection::connect(database.url()).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM travelmap_schema")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(applied, current);
    connection.close().await.unwrap();
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_fences_the_old_writer_off() {
    let database = scratch().await;
    let (first, second) = two_processes(&database).await;
    first.views.lead().await.unwrap();
    first
        .views
        .save(5, vec![view(ClientId(Uuid::new_v4()))])
        .await
        .unwrap();
    // The second process announces nothing it does not see: it follows the saved checkpoint.
    let mut saved = second.views.saved();
    tokio::time::timeout(Duration::from_secs(5), saved.wait_for(|at| *at == 5))
        .await
        .expect("the checkpoint reaches the other process")
        .unwrap();
    // While the first holds the lease, the second waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), second.views.lead())
            .await
            .is_err()
    );
    // The first loses its lease connection (as when a network partition or a DBA ends it);
    // the second takes over, and the first's next save is refused.
    // Only this test's database: tests running beside it hold advisory locks of their own.
    let mut admin = sqlx::PgConnection::connect(database.url()).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), second.views.lead())
        .await
        .expect("the lease is taken over")
        .unwrap();
    let late = first
        .views
        .save(9, vec![view(ClientId(Uuid::new_v4()))])
        .await;
    assert!(matches!(late, Err(Error::NotLeader)), "{late:?}");
    assert_eq!(second.views.checkpoint().await.unwrap(), 5);
    assert_eq!(second.views.count().await.unwrap(), 1);
    second
        .views
        .save(7, vec![view(ClientId(Uuid::new_v4()))])
        .await
        .unwrap();
    assert_eq!(first.views.checkpoint().await.unwrap(), 7);
    admin.close().await.unwrap();
    first.close().await;
    second.close().await;
    database.drop_database().await.unwrap();
}

fn stored_key(client: ClientId, category: Category) -> StoredKey {
    StoredKey {
        client_id: client,
        category,
        key_id: Uuid::new_v4(),
        master_id: "test".into(),
        wrapped: vec![7; 60],
        created_at: chrono::Utc::now(),
    }
}

/// Two processes making the same client's key at once agree on one key, the one that was stored
/// first; and no key is made for an erased client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_making_one_key_at_once_agree_on_it() {
    let database = scratch().await;
    let (first, second) = two_processes(&database).await;
    for _ in 0..20 {
        let client = ClientId(Uuid::new_v4());
        let (one, two) = (
            vec![
                stored_key(client, Category::DataProtection),
                stored_key(client, Category::Identity),
            ],
            vec![stored_key(client, Category::Identity)],
        );
        let (one, two) = tokio::join!(first.keys.create(one), second.keys.create(two));
        let (one, two) = (one.unwrap(), two.unwrap());
        let stored = first.keys.keys(vec![client]).await.unwrap();
        assert_eq!(stored.len(), 2);
        let identity = stored
            .iter()
            .find(|key| key.category == Category::Identity)
            .unwrap();
        assert_eq!(one[1].key_id, identity.key_id);
        assert_eq!(two[0].key_id, identity.key_id);
        assert_eq!(one[0].category, Category::DataProtection);
    }

    let erased = ClientId(Uuid::new_v4());
    first
        .keys
        .create(vec![stored_key(erased, Category::Identity)])
        .await
        .unwrap();
    second.keys.destroy(erased, None).await.unwrap();
    let refused = first
        .keys
        .create(vec![stored_key(erased, Category::Identity)])
        .await;
    assert!(
        matches!(refused, Err(Error::ClientErased(client)) if client == erased),
        "{refused:?}"
    );
    assert!(first.keys.keys(vec![erased]).await.unwrap().is_empty());
    first.close().await;
    second.close().await;
    database.drop_database().await.unwrap();
}

/// A database dropped under a running store (as when it is restored from a backup) makes the
/// store unreachable, not broken: every part answers with a transient error, which the service
/// turns into `503` and a retry, and nothing tells the caller it sent something wrong.
#[tokio::test]
async fn a_database_dropped_under_the_store_is_unavailable_not_broken() {
    use travelmap_store::{AuditLog, EventLog};
    let database = scratch().await;
    let store = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    database.drop_database().await.unwrap();
    let feed = store.log.read_all(0, 10).await.unwrap_err();
    assert!(feed.is_transient(), "the feed's read: {feed}");
    let views = store.views.checkpoint().await.unwrap_err();
    assert!(views.is_transient(), "the views' checkpoint: {views}");
    let audit = store.audit.head().await.unwrap_err();
    assert!(audit.is_transient(), "the audit trail's head: {audit}");
    store.close().await;
}
