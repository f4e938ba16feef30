//! The webhook store on both backends: registrations round-trip, cursors never move back, the
//! attempt log keeps the newest attempts only, the deliverer learns before each attempt that a
//! webhook was deleted or paused, and (PostgreSQL) a process that lost the delivery lease can no
//! longer move cursors and learns it was deposed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use travelmap_domain::EventId;
use travelmap_domain::payloads::Purpose;
use travelmap_store::postgres::{Migrations, PgStore, ScratchDatabase, server_from_env};
use travelmap_store::sqlite::SqliteStore;
use travelmap_store::webhooks::{
    ATTEMPTS_KEPT, Attempt, AttemptOutcome, NewWebhook, Standing, State,
};
use travelmap_store::{Error, WebhookStore};
use uuid::Uuid;

fn now() -> chrono::DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap()
}

fn new_webhook(agency: &str) -> NewWebhook {
    NewWebhook {
        id: Uuid::new_v4(),
        agency: agency.into(),
        credential: format!("{agency}-desk"),
        url: "https://receiver.example/hook".into(),
        types: vec!["job.*".into(), "need.assessed".into()],
        purpose: Purpose::ServiceDelivery,
        secret: "whsec_test".into(),
        created_at: now(),
        cursor: 7,
    }
}

fn attempt(webhook: Uuid, number: u32) -> Attempt {
    Attempt {
        id: Uuid::new_v4(),
        webhook_id: webhook,
        event_id: EventId(Uuid::new_v4()),
        position: 10,
        attempt: number,
        at: now(),
        status: number.is_multiple_of(2).then_some(500),
        error: (!number.is_multiple_of(2)).then(|| "could not connect".to_owned()),
        duration_ms: 12,
        outcome: AttemptOutcome::Retrying,
    }
}

async fn behaves(store: Arc<dyn WebhookStore>) {
    let mut changes = store.changes();
    let registered = store.register(new_webhook("ngo-opava")).await.unwrap();
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    assert_eq!(registered.state, State::Active);
    assert_eq!(registered.cursor, 7);
    assert_eq!(registered.purpose, Purpose::ServiceDelivery);
    assert_eq!(
        store.get(registered.id).await.unwrap(),
        Some(registered.clone())
    );
    let other = store
        .register(new_webhook("probation-opava"))
        .await
        .unwrap();
    assert_eq!(
        store.list(Some("ngo-opava".into())).await.unwrap(),
        vec![registered.clone()]
    );
    assert_eq!(store.list(None).await.unwrap().len(), 2);

    store.lead().await.unwrap();
    assert_eq!(
        store.standing(registered.id).await.unwrap(),
        Standing::Deliver
    );
    store.advance(registered.id, 20).await.unwrap();
    store.advance(registered.id, 15).await.unwrap();
    assert_eq!(store.get(registered.id).await.unwrap().unwrap().cursor, 20);

    assert!(store.set_state(registered.id, State::Paused).await.unwrap());
    assert!(changes.has_changed().unwrap());
    assert_eq!(
        store.get(registered.id).await.unwrap().unwrap().state,
        State::Paused
    );
    assert_eq!(
        store.standing(registered.id).await.unwrap(),
        Standing::Stopped
    );

    let attempts: Vec<Attempt> = (1..=ATTEMPTS_KEPT as u32 + 5)
        .map(|number| attempt(registered.id, number))
        .collect();
    for attempt in &attempts {
        store.log_attempt(attempt.clone()).await.unwrap();
    }
    store.log_attempt(attempt(other.id, 1)).await.unwrap();
    let kept = store.attempts(registered.id, 10_000).await.unwrap();
    assert_eq!(kept.len(), ATTEMPTS_KEPT);
    assert_eq!(kept[0], *attempts.last().unwrap());
    assert_eq!(kept.last().unwrap(), &attempts[5]);
    assert_eq!(store.attempts(registered.id, 3).await.unwrap(), kept[..3]);
    assert_eq!(store.attempts(other.id, 10).await.unwrap().len(), 1);

    assert!(store.remove(registered.id).await.unwrap());
    assert!(!store.remove(registered.id).await.unwrap());
    assert_eq!(store.get(registered.id).await.unwrap(), None);
    assert!(store.attempts(registered.id, 10).await.unwrap().is_empty());
    // A cursor move or an attempt for a webhook deleted meanwhile is no error, and leaves
    // nothing behind.
    store.advance(registered.id, 30).await.unwrap();
    store.log_attempt(attempt(registered.id, 1)).await.unwrap();
    assert!(store.attempts(registered.id, 10).await.unwrap().is_empty());
    assert!(!store.set_state(registered.id, State::Active).await.unwrap());
    assert_eq!(
        store.standing(registered.id).await.unwrap(),
        Standing::Stopped
    );
}

#[tokio::test]
async fn the_embedded_webhook_store_behaves() {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(directory.path()).unwrap();
    behaves(store.webhooks.clone()).await;
}

#[tokio::test]
async fn cursors_past_the_head_of_a_restored_log_move_back_to_it() {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(directory.path()).unwrap();
    // Registered at position 7 of a log that was then replaced by an empty backup.
    let registered = store
        .webhooks
        .register(new_webhook("ngo-opava"))
        .await
        .unwrap();
    drop(store);
    let store = SqliteStore::open(directory.path()).unwrap();
    assert_eq!(
        store
            .webhooks
            .get(registered.id)
            .await
            .unwrap()
            .unwrap()
            .cursor,
        0,
        "the next event the log records (position 1) must be delivered"
    );
}

async fn scratch() -> ScratchDatabase {
    let server = server_from_env();
    ScratchDatabase::create(&server, "travelmap_test")
        .await
        .unwrap_or_else(|error| {
            panic!("these tests need PostgreSQL at {server} ({error}); see docs/operations.md")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_webhook_store_behaves() {
    let database = scratch().await;
    let store = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    behaves(store.webhooks.clone()).await;
    store.close().await;
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_delivers_and_a_deposed_one_cannot_move_cursors() {
    let database = scratch().await;
    let first = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    let second = PgStore::connect(database.url(), Migrations::Apply)
        .await
        .unwrap();
    let webhook = first
        .webhooks
        .register(new_webhook("ngo-opava"))
        .await
        .unwrap();
    let deleted = first
        .webhooks
        .register(new_webhook("ngo-opava"))
        .await
        .unwrap();
    first.webhooks.lead().await.unwrap();
    first.webhooks.advance(webhook.id, 10).await.unwrap();
    // A webhook deleted through another process is not delivered once more: the deliverer
    // asks before each attempt, rather than waiting for its next look at the registrations.
    assert!(second.webhooks.remove(deleted.id).await.unwrap());
    assert_eq!(
        first.webhooks.standing(deleted.id).await.unwrap(),
        Standing::Stopped
    );

    // While the first holds the lease, the second waits.
    let waiting = tokio::time::timeout(Duration::from_secs(1), second.webhooks.lead()).await;
    assert!(waiting.is_err(), "two processes delivered at once");

    // The first process's lease connection dies (as when its host does); the second takes
    // over, and the first's cursor moves are refused from then on.
    let mut admin: sqlx::PgConnection = sqlx::Connection::connect(database.url()).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::Connection::close(admin).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), second.webhooks.lead())
        .await
        .expect("the second process takes over")
        .unwrap();
    // The deposed process learns so before its next attempt, even at an event it keeps
    // retrying (which never reaches a cursor move).
    assert_eq!(
        first.webhooks.standing(webhook.id).await.unwrap(),
        Standing::Deposed
    );
    assert_eq!(
        second.webhooks.standing(webhook.id).await.unwrap(),
        Standing::Deliver
    );
    assert!(matches!(
        first.webhooks.advance(webhook.id, 20).await,
        Err(Error::NotLeader)
    ));
    second.webhooks.advance(webhook.id, 20).await.unwrap();
    assert_eq!(
        second
            .webhooks
            .get(webhook.id)
            .await
            .unwrap()
            .unwrap()
            .cursor,
        20
    );

    first.close().await;
    second.close().await;
    database.drop_database().await.unwrap();
}
