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
use travelmap_store::{ClientView, Error, EventLog, ViewStore, postgres::server_from_env};
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

/// `store` takes the view lease and saves one view with `checkpoint`.
async fn leads_and_saves(store: &PgStore, checkpoint: u64) {
    store.views.lead().await.unwrap();
    store
        .views
        .save(checkpoint, vec![view(ClientId(Uuid::new_v4()))])
        .await
        .unwrap();
}

/// The view lease's epoch as stored.
async fn view_epoch(connection: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT epoch FROM projection_checkpoints WHERE projection = 'client_views'")
        .fetch_one(connection)
        .await
        .unwrap()
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
    leads_and_saves(&first, 5).await;
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
    let mut admin = sqlx::PgConnection::connect(database.url()).await.unwrap();
    end_lease_holders(&mut admin).await;
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

/// Moves the view lease's epoch by hand (`SET epoch = ...`, as a restore of the database would
/// move it) under `store`, which holds the lease: its next save is fenced off, and once it has
/// asked for the lease again, the save after is not. Returns the epoch it then writes under.
async fn epoch_moved_under(
    store: &PgStore,
    admin: &mut sqlx::PgConnection,
    moved: &str,
    checkpoint: u64,
) -> i64 {
    sqlx::query(&format!(
        "UPDATE projection_checkpoints SET epoch = {moved}"
    ))
    .execute(&mut *admin)
    .await
    .unwrap();
    let fenced = store
        .views
        .save(checkpoint, vec![view(ClientId(Uuid::new_v4()))])
        .await;
    assert!(matches!(fenced, Err(Error::NotLeader)), "{fenced:?}");
    store.views.lead().await.unwrap();
    store
        .views
        .save(checkpoint + 1, vec![view(ClientId(Uuid::new_v4()))])
        .await
        .unwrap();
    assert_eq!(store.views.checkpoint().await.unwrap(), checkpoint + 1);
    view_epoch(admin).await
}

#[tokio::test]
async fn a_holder_whose_epoch_was_moved_without_its_lease_takes_a_new_one() {
    let database = scratch().await;
    let store = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    leads_and_saves(&store, 5).await;
    let mut admin = sqlx::PgConnection::connect(database.url()).await.unwrap();
    let forward = epoch_moved_under(&store, &mut admin, "epoch + 7", 6).await;
    // Set back, as a restore of an older dump would: the epoch taken again is past every one
    // used before, so no earlier holder's is ever current again.
    let back = epoch_moved_under(&store, &mut admin, "0", 8).await;
    assert!(back > forward, "{back} after {forward}");
    admin.close().await.unwrap();
    store.close().await;
    database.drop_database().await.unwrap();
}

/// Ends the sessions holding advisory locks in this test's database (only there: tests running
/// beside it hold advisory locks of their own), as when a network partition or a DBA ends them.
async fn end_lease_holders(admin: &mut sqlx::PgConnection) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .execute(admin)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leaders_reset_fences_off_the_old_leaders_save_in_flight() {
    let database = scratch().await;
    let (first, second) = two_processes(&database).await;
    leads_and_saves(&first, 5).await;
    let mut admin = sqlx::PgConnection::connect(database.url()).await.unwrap();
    let first_epoch = view_epoch(&mut admin).await;
    // The first leader's next save, caught in flight as a save runs: its views written, the
    // checkpoint (moved last, under the first's epoch) not yet.
    let mut in_flight = sqlx::PgConnection::connect(database.url()).await.unwrap();
    let mut save = in_flight.begin().await.unwrap();
    sqlx::query("INSERT INTO client_views (client_id, state) VALUES ($1, $2)")
        .bind(Uuid::new_v4())
        .bind(vec![0u8; 16])
        .execute(&mut *save)
        .await
        .unwrap();
    // Meanwhile the lease passes to the second process, which starts over from zero.
    end_lease_holders(&mut admin).await;
    tokio::time::timeout(Duration::from_secs(5), second.views.lead())
        .await
        .expect("the lease is taken over")
        .unwrap();
    let (reset, fenced) = tokio::join!(second.views.reset(), async {
        // Let the reset reach the rows the save holds before the save moves on.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let moved = sqlx::query(
            "UPDATE projection_checkpoints SET position = GREATEST(position, 9)
             WHERE projection = 'client_views' AND epoch = $1",
        )
        .bind(first_epoch)
        .execute(&mut *save)
        .await;
        save.rollback().await.unwrap();
        moved
    });
    // The old save finds itself fenced off (no row moved) and gives up, without failing either
    // side as a deadlock, and the reset goes on once the save has let go of its rows.
    assert_eq!(fenced.unwrap().rows_affected(), 0);
    reset.unwrap();
    assert_eq!(second.views.checkpoint().await.unwrap(), 0);
    assert_eq!(second.views.count().await.unwrap(), 0);
    in_flight.close().await.unwrap();
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

/// Destroying keys does not wait for the `VACUUM` that reclaims their rows: one held up by
/// others' locks on the table (as many erasures at once hold each other up) would otherwise
/// give the erasure up after its keys were gone, and each waiting one holds a connection.
#[tokio::test]
async fn destroying_keys_does_not_wait_for_their_vacuum() {
    let database = scratch().await;
    let store = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    let client = ClientId(Uuid::new_v4());
    store
        .keys
        .create(vec![stored_key(client, Category::Identity)])
        .await
        .unwrap();
    // A lock VACUUM waits for, held meanwhile by another session.
    let mut blocker = sqlx::postgres::PgConnection::connect(database.url())
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE data_keys IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let destroyed = tokio::time::timeout(Duration::from_secs(10), store.keys.destroy(client, None))
        .await
        .expect("the keys are destroyed without waiting for the vacuum")
        .unwrap();
    assert_eq!(destroyed, 1);
    assert!(store.keys.keys(vec![client]).await.unwrap().is_empty());
    sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
    blocker.close().await.unwrap();
    store.close().await;
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
    let name = database.name().to_owned();
    database.drop_database().await.unwrap();
    let feed = store.log.read_all(0, 10).await.unwrap_err();
    assert!(feed.is_transient(), "the feed's read: {feed}");
    let views = store.views.checkpoint().await.unwrap_err();
    assert!(views.is_transient(), "the views' checkpoint: {views}");
    let audit = store.audit.head().await.unwrap_err();
    assert!(audit.is_transient(), "the audit trail's head: {audit}");

    // Created again, empty, before the backup's tables are restored into it: still unavailable.
    let admin = ScratchDatabase::create(&server_from_env(), "travelmap_test_admin")
        .await
        .unwrap();
    let mut connection = sqlx::postgres::PgConnection::connect(admin.url())
        .await
        .unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut connection)
        .await
        .unwrap();
    let feed = store.log.read_all(0, 10).await.unwrap_err();
    assert!(
        feed.is_transient(),
        "the feed's read, before the restore: {feed}"
    );
    store.close().await;
    sqlx::raw_sql(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut connection)
        .await
        .unwrap();
    drop(connection);
    admin.drop_database().await.unwrap();
}

/// A TCP relay to the PostgreSQL server that can be frozen: it then keeps every connection open
/// and passes nothing either way, as a network partition or a stopped proxy does (no error, no
/// answer).
struct FreezableRelay {
    address: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl FreezableRelay {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let watcher = frozen.clone();
        tokio::spawn(async move {
            while let Ok((incoming, _)) = listener.accept().await {
                let Ok(outgoing) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (from_client, to_client) = incoming.into_split();
                let (from_server, to_server) = outgoing.into_split();
                tokio::spawn(Self::pass(from_client, to_server, watcher.subscribe()));
                tokio::spawn(Self::pass(from_server, to_client, watcher.subscribe()));
            }
        });
        Self { address, frozen }
    }

    async fn pass(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let Ok(read) = from.read(&mut buffer).await else {
                return;
            };
            if read == 0 || *frozen.borrow_and_update() {
                // Frozen: hold both ends open and pass nothing, for good.
                let _ = frozen.wait_for(|frozen| !*frozen).await;
                return std::future::pending().await;
            }
            if to.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// A store connected to `database` through a [`FreezableRelay`], and the relay.
async fn relayed_store(database: &ScratchDatabase) -> (FreezableRelay, PgStore) {
    use std::str::FromStr;
    let direct = sqlx::postgres::PgConnectOptions::from_str(database.url()).unwrap();
    let target = format!("{}:{}", direct.get_host(), direct.get_port());
    let relay = FreezableRelay::start(target.clone()).await;
    let relayed_url = database
        .url()
        .replacen(&target, &relay.address.to_string(), 1);
    assert_ne!(relayed_url, database.url(), "the URL names {target}");
    let relayed = PgStore::connect(&relayed_url, Migrations::Apply)
        .await
        .unwrap();
    (relay, relayed)
}

/// A database that stops answering without an error gives the writers an answer all the same:
/// an append waits for its commit at most a bounded time and is then told the database is
/// unavailable (its outcome unknown, which a retry settles), closing the store does not hang,
/// and another process, connected directly, goes on appending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_through_a_connection_that_stops_answering_give_up_in_bounded_time() {
    use travelmap_store::EventLog;
    let database = scratch().await;
    let (relay, relayed) = relayed_store(&database).await;
    let client = ClientId(Uuid::new_v4());
    relayed
        .log
        .append(&provenance(), vec![stream(client, 0)])
        .await
        .unwrap();

    relay.freeze();
    let started = std::time::Instant::now();
    let hung = tokio::time::timeout(
        Duration::from_secs(90),
        relayed.log.append(&provenance(), vec![stream(client, 1)]),
    )
    .await
    .expect("the append is answered")
    .unwrap_err();
    assert!(hung.is_transient(), "{hung}");
    assert!(started.elapsed() < Duration::from_secs(60));
    tokio::time::timeout(Duration::from_secs(10), relayed.close())
        .await
        .expect("closing does not wait for the dead connection");

    // Whatever the frozen transaction held, the server ended it before the append gave up, so
    // another process writes at once rather than after the writers' patience.
    let other = PgStore::connect(database.url(), Migrations::Require)
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        other
            .log
            .append(&provenance(), vec![stream(ClientId(Uuid::new_v4()), 0)]),
    )
    .await
    .expect("the other process is not held up for good")
    .unwrap();
    other.close().await;
    database.drop_database().await.unwrap();
}

/// Reads through a connection that stops answering are given up in bounded time too, and
/// answered as the database being unavailable: a request waiting on one would otherwise hold
/// its client's turn, and the shutdown waiting for it, for as long as the kernel keeps the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_a_connection_that_stops_answering_give_up_in_bounded_time() {
    use travelmap_store::EventLog;
    let database = scratch().await;
    let (relay, relayed) = relayed_store(&database).await;
    let client = ClientId(Uuid::new_v4());
    relayed
        .log
        .append(&provenance(), vec![stream(client, 0)])
        .await
        .unwrap();

    relay.freeze();
    let started = std::time::Instant::now();
    let (outlines, history, feed, views, keys) =
        tokio::time::timeout(Duration::from_secs(90), async {
            tokio::join!(
                relayed.log.outlines(vec![client]),
                relayed.log.read_stream(client, None),
                relayed.log.read_all(0, 10),
                relayed.views.checkpoint(),
                relayed.keys.keys(vec![client]),
            )
        })
        .await
        .expect("every read is answered");
    assert!(started.elapsed() < Duration::from_secs(60));
    for error in [
        outlines.map(drop).unwrap_err(),
        history.map(drop).unwrap_err(),
        feed.map(drop).unwrap_err(),
        views.map(drop).unwrap_err(),
        keys.map(drop).unwrap_err(),
    ] {
        assert!(error.is_transient(), "{error}");
    }
    tokio::time::timeout(Duration::from_secs(10), relayed.close())
        .await
        .expect("closing does not wait for the dead connection");
    database.drop_database().await.unwrap();
}

/// A process whose lease connections stall (no error, no answer) does not keep the views and
/// webhook delivery from every other process for good: once its sessions have been silent long
/// enough, another process ends them and takes both leases over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_lease_holder_is_ended_and_its_leases_taken_over() {
    use travelmap_store::WebhookStore;
    let database = scratch().await;
    let (relay, relayed) = relayed_store(&database).await;
    relayed.views.lead().await.unwrap();
    relayed.webhooks.lead().await.unwrap();
    let other = PgStore::connect(database.url(), Migrations::Require)
        .await
        .unwrap();
    // While the holder answers, its leases stay its own, heartbeats and all.
    assert!(
        tokio::time::timeout(Duration::from_secs(8), other.views.lead())
            .await
            .is_err(),
        "a live holder keeps the view lease"
    );

    relay.freeze();
    let started = std::time::Instant::now();
    let (views, webhooks) = tokio::time::timeout(Duration::from_secs(90), async {
        tokio::join!(other.views.lead(), other.webhooks.lead())
    })
    .await
    .expect("a silent holder's leases are taken over");
    views.unwrap();
    webhooks.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(25),
        "taken over after {:?}, before the holder had been silent long",
        started.elapsed()
    );
    other
        .views
        .save(3, vec![view(ClientId(Uuid::new_v4()))])
        .await
        .unwrap();
    assert_eq!(other.views.checkpoint().await.unwrap(), 3);
    tokio::time::timeout(Duration::from_secs(10), relayed.close())
        .await
        .expect("closing does not wait for the stalled connections");
    other.close().await;
    database.drop_database().await.unwrap();
}

fn provenance() -> travelmap_domain::Provenance {
    travelmap_domain::Provenance {
        agency: "prison-opava".into(),
        credential: "test".into(),
    }
}

fn stream(client: ClientId, expected_version: u64) -> travelmap_store::StreamAppend {
    let draft = travelmap_domain::EventDraft {
        id: travelmap_domain::EventId(Uuid::new_v4()),
        client_id: client,
        occurred_at: "2026-01-01T09:00:00+01:00".parse().unwrap(),
        actor: None,
        event: travelmap_domain::JourneyEvent::decode(
            "contact.made",
            1,
            &serde_json::json!({"kind": "meeting"}),
        )
        .unwrap(),
    };
    let digest = travelmap_domain::content_digest(&draft, "prison-opava");
    travelmap_store::StreamAppend {
        client_id: client,
        expected_version,
        events: vec![travelmap_store::NewEvent {
            draft,
            digest,
            sealed: None,
        }],
    }
}

/// An older dump restored under a running server sets the log's head back, and the next events
/// take positions that server has already passed: it would never fold them. It sees the head go
/// back and records no more events, saying why, until it is restarted; a server started on the
/// restored database records as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_sees_the_log_go_back_records_no_more_events() {
    let database = scratch().await;
    let running = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    for _ in 0..3 {
        running
            .log
            .append(&provenance(), vec![stream(ClientId(Uuid::new_v4()), 0)])
            .await
            .unwrap();
    }
    let mut head = running.log.head();
    tokio::time::timeout(Duration::from_secs(5), head.wait_for(|head| *head == 3))
        .await
        .expect("the running server hears its own commits")
        .unwrap();
    // The restore, as its effect on the log: the events after the first gone, the head back.
    let mut admin = sqlx::PgConnection::connect(database.url()).await.unwrap();
    sqlx::query("DELETE FROM events WHERE position > 1")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("UPDATE log_head SET position = 1")
        .execute(&mut admin)
        .await
        .unwrap();
    let restarted = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    let receipts = restarted
        .log
        .append(&provenance(), vec![stream(ClientId(Uuid::new_v4()), 0)])
        .await
        .unwrap();
    assert_eq!(receipts[0].position, 2);
    // The running server heard position 2 announced after 3.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match running
                .log
                .append(&provenance(), vec![stream(ClientId(Uuid::new_v4()), 0)])
                .await
            {
                Err(Error::Unavailable(message)) => return message,
                Ok(receipts) => assert!(
                    receipts[0].position >= 3,
                    "recorded at a position it had passed: {receipts:?}"
                ),
                Err(other) => panic!("{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the running server stops recording");
    assert!(refused.contains("went back"), "{refused}");
    admin.close().await.unwrap();
    running.close().await;
    restarted.close().await;
    database.drop_database().await.unwrap();
}
