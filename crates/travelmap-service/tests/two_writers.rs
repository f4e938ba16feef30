//! Two `Journeys` over one log behave like two processes: each has its own journey cache and its
//! own per-client turns, so only the store's version check stands between them.

use serde_json::json;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance};
use travelmap_service::{Error, Journeys, Submission};
use travelmap_store::EventLog;
use travelmap_store::sqlite::SqliteStore;
use uuid::Uuid;

fn submission(client: ClientId, expected_version: Option<u64>) -> Submission {
    Submission {
        draft: EventDraft {
            id: EventId(Uuid::new_v4()),
            client_id: client,
            occurred_at: "2026-01-01T09:00:00Z".parse().unwrap(),
            actor: None,
            event: JourneyEvent::decode("contact.made", 1, &json!({"kind": "phone"})).unwrap(),
        },
        expected_version,
    }
}

#[tokio::test]
async fn a_stale_cached_journey_never_decides_wrongly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let one = Journeys::new(store.log.clone(), store.views.clone(), None)
        .await
        .unwrap();
    let two = Journeys::new(store.log.clone(), store.views.clone(), None)
        .await
        .unwrap();
    let provenance = Provenance {
        agency: "probation-opava".into(),
        credential: "test".into(),
    };
    let client = ClientId(Uuid::new_v4());

    let first = one
        .record(&provenance, &[submission(client, None)])
        .await
        .unwrap();
    assert_eq!(first[0].receipt.version, 1);
    // The other writer moves the stream; `one` still caches version 1.
    let second = two
        .record(&provenance, &[submission(client, Some(1))])
        .await
        .unwrap();
    assert_eq!(second[0].receipt.version, 2);

    // Without an expected version, `one` notices and appends after the other's event.
    let third = one
        .record(&provenance, &[submission(client, None)])
        .await
        .unwrap();
    assert_eq!(third[0].receipt.version, 3);

    // With an expected version that was true only in `two`'s view, `one` refuses correctly,
    // and one that is true now is accepted even though `two`'s cache is behind.
    let refused = one
        .record(&provenance, &[submission(client, Some(2))])
        .await;
    assert!(
        matches!(refused, Err(Error::VersionConflict { actual: 3, .. })),
        "{refused:?}"
    );
    let fourth = two
        .record(&provenance, &[submission(client, Some(3))])
        .await
        .unwrap();
    assert_eq!(fourth[0].receipt.version, 4);

    let history = store.log.read_stream(client, None).await.unwrap();
    let versions: Vec<u64> = history.iter().map(|event| event.meta.version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}
