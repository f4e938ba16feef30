//! Behaviour of the embedded event log. The checks are written against `&dyn EventLog` so that
//! every backend can be held to them.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance, content_digest};
use travelmap_store::sqlite::{SqliteEventLog, SqliteStore};
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
    NewEvent { draft, digest }
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

async fn appends_get_versions_and_positions(log: &dyn EventLog) {
    let (a, b) = (client(), client());
    let receipts = log
        .append(&provenance(), vec![stream(a, 0, 2), stream(b, 0, 1)])
        .await
        .unwrap();
    let versions: Vec<u64> = receipts.iter().map(|r| r.version).collect();
    assert_eq!(versions, [1, 2, 1]);
    let positions: Vec<u64> = receipts.iter().map(|r| r.position).collect();
    assert_eq!(positions, [1, 2, 3]);
    assert_eq!(*log.head().borrow(), 3);
    let history = log.read_stream(a, None).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].provenance.agency, "prison-opava");
    assert_eq!(history[1].meta.version, 2);
}

async fn a_moved_stream_refuses_the_whole_append(log: &dyn EventLog) {
    let (a, b) = (client(), client());
    log.append(&provenance(), vec![stream(a, 0, 1)])
        .await
        .unwrap();
    let refused = log
        .append(&provenance(), vec![stream(b, 0, 1), stream(a, 0, 1)])
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::StreamConflict {
                expected: 0,
                actual: 1,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(
        log.read_stream(b, None).await.unwrap().is_empty(),
        "nothing of a refused append is stored"
    );
}

async fn an_event_id_is_recorded_once(log: &dyn EventLog) {
    let a = client();
    let event = new_event(a);
    let id = event.draft.id;
    log.append(
        &provenance(),
        vec![StreamAppend {
            client_id: a,
            expected_version: 0,
            events: vec![event.clone()],
        }],
    )
    .await
    .unwrap();
    let again = log
        .append(
            &provenance(),
            vec![StreamAppend {
                client_id: a,
                expected_version: 1,
                events: vec![event],
            }],
        )
        .await;
    assert!(matches!(again, Err(Error::DuplicateEvent(duplicate)) if duplicate == id));
    let found = log.lookup(vec![id, EventId(Uuid::new_v4())]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].receipt.version, 1);
}

async fn as_of_reads_a_prefix_of_what_was_recorded(log: &dyn EventLog) {
    let a = client();
    let first = log
        .append(&provenance(), vec![stream(a, 0, 1)])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = log
        .append(&provenance(), vec![stream(a, 1, 1)])
        .await
        .unwrap();
    assert!(second[0].recorded_at > first[0].recorded_at);
    assert_eq!(
        log.read_stream(a, Some(first[0].recorded_at))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        log.read_stream(a, Some(second[0].recorded_at))
            .await
            .unwrap()
            .len(),
        2
    );
    let long_ago = Utc::now() - chrono::Duration::days(1);
    assert!(log.read_stream(a, Some(long_ago)).await.unwrap().is_empty());
}

/// Many concurrent appends: every acknowledged event appears exactly once in the feed, positions
/// are 1..=N without gaps, and recorded_at never decreases along the feed.
async fn concurrent_appends_form_a_gap_free_feed(log: Arc<dyn EventLog>) {
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let a = client();
            let mut ids = Vec::new();
            for version in 0..10 {
                let receipts = log
                    .append(&provenance(), vec![stream(a, version, 1)])
                    .await
                    .unwrap();
                ids.push(receipts[0].id);
            }
            ids
        }));
    }
    let mut acknowledged = HashSet::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let mut feed = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read_all(after, 64).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.meta.position;
        feed.extend(page);
    }
    assert_eq!(feed.len(), 320);
    let positions: Vec<u64> = feed.iter().map(|event| event.meta.position).collect();
    assert_eq!(positions, (1..=320).collect::<Vec<_>>());
    let seen: HashSet<EventId> = feed.iter().map(|event| event.draft.id).collect();
    assert_eq!(seen, acknowledged);
    assert!(
        feed.windows(2)
            .all(|pair| pair[0].meta.recorded_at <= pair[1].meta.recorded_at)
    );
}

#[tokio::test]
async fn the_embedded_log_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    appends_get_versions_and_positions(store.log.as_ref()).await;
    a_moved_stream_refuses_the_whole_append(store.log.as_ref()).await;
    an_event_id_is_recorded_once(store.log.as_ref()).await;
    as_of_reads_a_prefix_of_what_was_recorded(store.log.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_log_keeps_a_gap_free_feed_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    concurrent_appends_form_a_gap_free_feed(store.log.clone()).await;
}

#[tokio::test]
async fn a_reopened_store_has_everything_and_continues_the_positions() {
    let dir = tempfile::tempdir().unwrap();
    let a = client();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .log
            .append(&provenance(), vec![stream(a, 0, 3)])
            .await
            .unwrap();
        store.log.close();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.log.read_stream(a, None).await.unwrap().len(), 3);
    assert_eq!(*store.log.head().borrow(), 3);
    let receipts = store
        .log
        .append(&provenance(), vec![stream(a, 3, 1)])
        .await
        .unwrap();
    assert_eq!((receipts[0].version, receipts[0].position), (4, 4));
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
