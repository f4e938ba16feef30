//! Reads that must tell "never recorded" from "recorded, not yet projected".

use serde_json::json;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance};
use travelmap_service::{Error, Journeys, Submission};
use travelmap_store::sqlite::SqliteStore;
use uuid::Uuid;

#[tokio::test]
async fn a_recorded_client_the_projection_has_not_reached_is_not_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    // No projector is running: nothing is projected.
    let journeys = Journeys::new(store.log.clone(), store.views.clone(), None)
        .await
        .unwrap();
    let client = ClientId(Uuid::new_v4());
    let submission = Submission {
        draft: EventDraft {
            id: EventId(Uuid::new_v4()),
            client_id: client,
            occurred_at: "2026-01-01T09:00:00Z".parse().unwrap(),
            actor: None,
            event: JourneyEvent::decode("job.placed", 1, &json!({})).unwrap(),
        },
        expected_version: None,
    };
    let provenance = Provenance {
        agency: "employment-bureau".into(),
        credential: "test".into(),
    };
    journeys.record(&provenance, &[submission]).await.unwrap();

    let pending = journeys.travel_map(client, None, None).await;
    assert!(
        matches!(pending, Err(Error::NotYetProjected(_))),
        "{pending:?}"
    );
    let unknown = journeys
        .travel_map(ClientId(Uuid::new_v4()), None, None)
        .await;
    assert!(
        matches!(unknown, Err(Error::UnknownClient(_))),
        "{unknown:?}"
    );

    journeys.projector().catch_up().await.unwrap();
    assert_eq!(
        journeys
            .travel_map(client, None, None)
            .await
            .unwrap()
            .version,
        1
    );
}
