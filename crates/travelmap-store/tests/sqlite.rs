//! What only the embedded store has to show: its data directory lock and its files. The
//! behaviour every backend shares is checked by the conformance suite
//! (`crates/travelmap-service/tests/conformance.rs`).

use serde_json::json;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance, content_digest};
use travelmap_store::sqlite::{SqliteAuditLog, SqliteEventLog, SqliteStore};
use travelmap_store::{Error, EventLog, NewEvent, StreamAppend};
use uuid::Uuid;

fn provenance() -> Provenance {
    Provenance {
        agency: "prison-opava".into(),
        credential: "test".into(),
    }
}

fn new_event(client: ClientId) -> NewEvent {
    let draft = EventDraft {
        id: EventId(Uuid::new_v4()),
        client_id: client,
        occurred_at: "2026-01-01T09:00:00+01:00".parse().unwrap(),
        actor: None,
        event: JourneyEvent::decode("contact.made", 1, &json!({"kind": "meeting"})).unwrap(),
    };
    let digest = content_digest(&draft, "prison-opava");
    NewEvent {
        draft,
        digest,
        sealed: None,
    }
}

fn stream(client: ClientId, expected_version: u64, count: usize) -> StreamAppend {
    StreamAppend {
        client_id: client,
        expected_version,
        events: (0..count).map(|_| new_event(client)).collect(),
    }
}

fn client() -> ClientId {
    ClientId(Uuid::new_v4())
}

#[tokio::test]
async fn a_data_directory_is_held_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(matches!(
        SqliteStore::open(dir.path()),
        Err(Error::Locked(_))
    ));
    // Readers may look in while it is held.
    let reader = SqliteEventLog::open_read_only(&dir.path().join("events.sqlite")).unwrap();
    assert!(matches!(
        reader
            .append(&provenance(), vec![stream(client(), 0, 1)])
            .await,
        Err(Error::Closed)
    ));
    drop(store);
    SqliteStore::open(dir.path()).unwrap();
}

/// Readers and offline writers beside a server do not migrate, so they refuse a store whose
/// schema they do not know rather than misread it (or extend a newer trail's chain).
#[tokio::test]
async fn readers_beside_a_server_refuse_a_schema_they_do_not_know() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let events = dir.path().join("events.sqlite");
    let audit = dir.path().join("audit.sqlite");
    SqliteEventLog::open_read_only(&events).unwrap();
    SqliteAuditLog::open_read_only(&audit).unwrap();
    let set_version = |path: &std::path::Path, version: i64| {
        rusqlite::Connection::open(path)
            .unwrap()
            .pragma_update(None, "user_version", version)
            .unwrap();
    };
    for version in [9, 0] {
        set_version(&events, version);
        set_version(&audit, version);
        let expected = |result: Result<(), Error>| match result {
            Err(Error::SchemaTooNew { found, .. }) => assert_eq!((found, version), (9, 9)),
            Err(Error::SchemaOutdated { found, .. }) => assert_eq!((found, version), (0, 0)),
            other => panic!("schema version {version} was not refused: {other:?}"),
        };
        expected(SqliteEventLog::open_read_only(&events).map(drop));
        expected(SqliteAuditLog::open_read_only(&audit).map(drop));
        expected(SqliteAuditLog::append_beside(&audit, &[]).map(drop));
    }
}

#[tokio::test]
async fn closing_the_log_leaves_every_commit_in_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = client();
    let store = SqliteStore::open(dir.path()).unwrap();
    store
        .log
        .append(&provenance(), vec![stream(a, 0, 3)])
        .await
        .unwrap();
    // A read keeps a pooled reader connection open past the writer's close.
    assert_eq!(store.log.read_all(0, 10).await.unwrap().len(), 3);
    store.log.close();

    // A copy of the main file alone, as a careless backup would take, holds every event.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("events.sqlite"),
        copy.path().join("events.sqlite"),
    )
    .unwrap();
    drop(store);
    let restored = SqliteStore::open(copy.path()).unwrap();
    assert_eq!(restored.log.read_stream(a, None).await.unwrap().len(), 3);
}

#[tokio::test]
async fn closing_the_key_store_leaves_every_key_in_the_main_file() {
    use travelmap_store::KeyStore;
    use travelmap_store::keys::StoredKey;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let keys: Vec<StoredKey> = (0..50)
        .map(|_| StoredKey {
            client_id: client(),
            category: travelmap_domain::personal::Category::Identity,
            key_id: Uuid::new_v4(),
            master_id: "test".into(),
            wrapped: vec![7; 60],
            created_at: chrono::Utc::now(),
        })
        .collect();
    store.keys.create(keys).await.unwrap();
    // Closed while the store (and the key writer's connection) is still alive, as a process
    // that ends before dropping it does.
    store.keys.close();
    let wal = std::fs::metadata(dir.path().join("keys.sqlite-wal")).map_or(0, |wal| wal.len());
    assert_eq!(wal, 0, "the write-ahead log still holds keys");

    // A copy of the main file alone holds every key.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("keys.sqlite"),
        copy.path().join("keys.sqlite"),
    )
    .unwrap();
    drop(store);
    let count: i64 = rusqlite::Connection::open(copy.path().join("keys.sqlite"))
        .unwrap()
        .query_row("SELECT count(*) FROM data_keys", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 50);
}

/// Once the audit trail's write-ahead log (or file) is gone from under the store, the event log
/// records nothing more: those events' entries could not be written. It looks for itself, before
/// the trail's writer has had to.
#[cfg(unix)]
#[tokio::test]
async fn the_log_takes_no_events_once_the_trail_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let a = client();
    store
        .log
        .append(&provenance(), vec![stream(a, 0, 1)])
        .await
        .unwrap();
    std::fs::remove_file(dir.path().join("audit.sqlite-wal")).unwrap();
    let refused = store.log.append(&provenance(), vec![stream(a, 1, 1)]).await;
    assert!(matches!(refused, Err(Error::TrailReplaced)), "{refused:?}");
    assert_eq!(*store.log.head().borrow(), 1);
    assert_eq!(store.log.read_all(0, 10).await.unwrap().len(), 1);
}

fn entry(action: &str) -> travelmap_domain::audit::AuditRecord {
    travelmap_domain::audit::AuditRecord {
        at: chrono::Utc::now(),
        credential: "reader".to_owned(),
        agency: "probation-opava".to_owned(),
        actor: None,
        operation: travelmap_domain::audit::Operation::Consultation,
        client_id: None,
        purpose: None,
        justification: None,
        request_id: None,
        outcome: travelmap_domain::audit::Outcome::Allowed,
        action: action.to_owned(),
        returned: None,
    }
}

/// The trail's last entry as the log recorded it beside its events.
fn recorded_in(events: &std::path::Path) -> Option<(u64, Vec<u8>)> {
    use rusqlite::OptionalExtension;
    rusqlite::Connection::open(events)
        .unwrap()
        .query_row(
            "SELECT seq, hash FROM trail_recorded WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .unwrap()
}

/// The log records the trail's last entry on disk beside its events, in a group's commit or,
/// while only reads are logged, on its own, within a second or two; so a later open finds the
/// trail as recorded and has nothing to say of it.
#[tokio::test]
async fn the_log_records_the_trails_last_entry_even_while_no_events_come() {
    use travelmap_store::AuditLog;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.sqlite");
    let store = SqliteStore::open(dir.path()).unwrap();
    store.audit.append(vec![entry("write")]).await.unwrap();
    store
        .log
        .append(&provenance(), vec![stream(client(), 0, 1)])
        .await
        .unwrap();
    let (seq, hash) = store.audit.head().await.unwrap();
    recorded_within(&events, seq, hash).await;

    store.audit.append(vec![entry("read 1")]).await.unwrap();
    store.audit.append(vec![entry("read 2")]).await.unwrap();
    let (seq, hash) = store.audit.head().await.unwrap();
    recorded_within(&events, seq, hash).await;
    drop(store);
    let reopened = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        reopened.audit.head().await.unwrap(),
        (seq, hash),
        "no entry added"
    );
    assert_eq!(reopened.log.trail_recorded(), Some((seq, hash)));
}

/// Waits until the log records entry `seq` (once a checkpoint has put it on disk, and the
/// log's next record is due).
async fn recorded_within(events: &std::path::Path, seq: u64, hash: [u8; 32]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while recorded_in(events) != Some((seq, hash.to_vec())) {
        assert!(
            std::time::Instant::now() < deadline,
            "entry {seq} was not recorded: {:?}",
            recorded_in(events)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An entry is recorded only once a checkpoint has folded it into the trail's main file, which
/// SQLite flushes first: while a reader holds an older snapshot, checkpoints cannot fold the
/// commits after it, and the record stays at the last entry that is on disk.
#[tokio::test]
async fn an_entry_is_recorded_only_once_a_checkpoint_has_folded_it() {
    use travelmap_store::AuditLog;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.sqlite");
    let store = SqliteStore::open(dir.path()).unwrap();
    store.audit.append(vec![entry("read 1")]).await.unwrap();
    let (folded, folded_hash) = store.audit.head().await.unwrap();
    recorded_within(&events, folded, folded_hash).await;

    let reader = rusqlite::Connection::open(dir.path().join("audit.sqlite")).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: u64 = reader
        .query_row("SELECT COUNT(*) FROM audit", [], |row| row.get(0))
        .unwrap();
    assert!(seen >= 1, "the reader's snapshot holds the first entry");
    store.audit.append(vec![entry("read 2")]).await.unwrap();
    store.audit.append(vec![entry("read 3")]).await.unwrap();
    let (seq, hash) = store.audit.head().await.unwrap();
    assert!(seq > folded);
    // Several of the checkpointer's turns (every 500 ms) and of the log's records (every second).
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    assert_eq!(
        recorded_in(&events),
        Some((folded, folded_hash.to_vec())),
        "committed, but not yet folded into the main file"
    );

    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    recorded_within(&events, seq, hash).await;
}

/// A log from before it recorded the trail's last entry is still read as it is by readers
/// that do not migrate (a backup kept unmigrated), with nothing recorded.
#[test]
fn readers_take_a_log_from_before_the_trail_was_recorded_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let events = dir.path().join("events.sqlite");
    rusqlite::Connection::open(&events)
        .unwrap()
        .execute_batch("DROP TABLE trail_recorded; PRAGMA user_version = 2;")
        .unwrap();
    let log = SqliteEventLog::open_read_only(&events).unwrap();
    assert_eq!(log.trail_recorded(), None);
}
