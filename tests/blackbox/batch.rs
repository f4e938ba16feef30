//! The batch endpoint: all-or-nothing, in order, idempotent.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::samples::sample_event;
use crate::support::*;

fn journey(client: Uuid) -> Vec<Value> {
    [
        ("client.registered", "2025-01-10T08:00:00Z"),
        ("sentence.started", "2025-01-11T08:00:00Z"),
        ("programme.enrolled", "2025-06-01T08:00:00Z"),
        ("client.released", "2026-02-01T08:00:00Z"),
    ]
    .into_iter()
    .map(|(event_type, at)| sample_event(client, event_type, at))
    .collect()
}

#[tokio::test]
async fn a_batch_is_recorded_in_order_with_consecutive_versions() {
    let app = spawn_app().await;
    let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
    let mut events = journey(one);
    events.extend(journey(two));
    let response = app
        .post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": events}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    let receipts = body["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 8);
    for (receipt, sent) in receipts.iter().zip(&events) {
        assert_eq!(receipt["id"], sent["id"]);
        assert_eq!(receipt["client_id"], sent["client_id"]);
    }
    let versions: Vec<u64> = receipts
        .iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 1, 2, 3, 4]);
    let positions: Vec<u64> = receipts
        .iter()
        .map(|r| r["position"].as_u64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "{positions:?}"
    );

    // A retried batch gets the same receipts and stores nothing new.
    let again = app
        .post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": events}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, body);
    assert_eq!(app.feed().await.len(), 8);
}

#[tokio::test]
async fn one_bad_event_rejects_the_whole_batch_and_names_its_index() {
    let app = spawn_app().await;
    let mut events = journey(Uuid::new_v4());
    events[2]["data"] = json!({"programme": ""});
    let response = app
        .post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": events}),
        )
        .await;
    let problem = expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["index"], 2);
    assert_eq!(problem["field"], "data.programme");
    assert!(app.feed().await.is_empty());

    let mut events = journey(Uuid::new_v4());
    events[3]["type"] = json!("client.vanished");
    let response = app
        .post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": events}),
        )
        .await;
    let problem = expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_event_type",
    )
    .await;
    assert_eq!(problem["index"], 3);
    assert!(app.feed().await.is_empty());
}

#[tokio::test]
async fn a_conflict_anywhere_in_the_batch_stores_nothing() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let events = journey(client);
    assert_eq!(
        app.post_event(PRISON_WRITER, &events[0]).await.status(),
        StatusCode::CREATED
    );

    // Event 0 again but with other content: a duplicate conflict at index 0.
    let mut conflicting = events.clone();
    conflicting[0]["occurred_at"] = json!("2025-01-09T08:00:00Z");
    let problem = expect_problem(
        app.post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": conflicting}),
        )
        .await,
        StatusCode::CONFLICT,
        "duplicate_conflict",
    )
    .await;
    assert_eq!(problem["index"], 0);

    // A stale expected_version at index 2.
    let mut stale = journey(client);
    stale[2]["expected_version"] = json!(0);
    let problem = expect_problem(
        app.post("/v1/events/batch", PRISON_WRITER, &json!({"events": stale}))
            .await,
        StatusCode::CONFLICT,
        "version_conflict",
    )
    .await;
    assert_eq!(problem["index"], 2);
    assert_eq!(app.feed().await.len(), 1);

    // expected_version within a batch counts the batch's own earlier events.
    let mut fresh = journey(client);
    fresh.remove(0);
    fresh[1]["expected_version"] = json!(2);
    let response = app
        .post("/v1/events/batch", PRISON_WRITER, &json!({"events": fresh}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn batch_shape_is_checked() {
    let app = spawn_app().await;
    let empty = app
        .post("/v1/events/batch", PRISON_WRITER, &json!({"events": []}))
        .await;
    let problem =
        expect_problem(empty, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(problem["field"], "events");

    let client = Uuid::new_v4();
    let many: Vec<Value> = (0..1001)
        .map(|_| {
            event(
                client,
                "family_contact.restored",
                "2026-01-01T00:00:00Z",
                json!({}),
            )
        })
        .collect();
    let too_many = app
        .post("/v1/events/batch", PRISON_WRITER, &json!({"events": many}))
        .await;
    expect_problem(
        too_many,
        StatusCode::UNPROCESSABLE_ENTITY,
        "batch_too_large",
    )
    .await;

    let repeated = journey(client);
    let repeated = vec![repeated[0].clone(), repeated[0].clone()];
    let problem = expect_problem(
        app.post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": repeated}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["index"], 1);

    let not_a_batch = app
        .post("/v1/events/batch", PRISON_WRITER, &json!({"event": []}))
        .await;
    expect_problem(
        not_a_batch,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(app.feed().await.is_empty());

    // 1000 is allowed.
    let most: Vec<Value> = (0..1000)
        .map(|_| {
            event(
                client,
                "family_contact.restored",
                "2026-01-01T00:00:00Z",
                json!({}),
            )
        })
        .collect();
    let response = app
        .post("/v1/events/batch", PRISON_WRITER, &json!({"events": most}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(app.feed().await.len(), 1000);
}
