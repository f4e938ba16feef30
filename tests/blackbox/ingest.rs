//! Posting single events: acceptance and rejection of every type, idempotency, conflicts,
//! authentication and the one error format.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::samples::{sample_event, valid_data};
use crate::support::*;

const AT: &str = "2026-03-01T09:00:00+01:00";

async fn catalogue(app: &TestApp) -> Vec<Value> {
    let body = app.get_ok("/v1/event-types", COORDINATOR).await;
    body["event_types"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_event_type_is_accepted_with_valid_data() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let mut target = None;
    let types = catalogue(&app).await;
    assert_eq!(types.len(), 37);
    for entry in &types {
        let event_type = entry["type"].as_str().unwrap();
        if event_type.starts_with("event.") {
            continue; // corrections need a target; posted below
        }
        if entry["posted_by"] == json!([]) {
            // Data-protection decisions go through their own endpoints, never POST /v1/events.
            let body = sample_event(client, event_type, AT);
            expect_problem(
                app.post_event(PRISON_WRITER, &body).await,
                StatusCode::FORBIDDEN,
                "forbidden",
            )
            .await;
            continue;
        }
        let body = sample_event(client, event_type, AT);
        let response = app.post_event(writer_for(event_type), &body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{event_type}: {}",
            response.text().await.unwrap()
        );
        if event_type == "client.released" {
            target = Some(body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
        }
    }
    let target = target.unwrap();
    for event_type in ["event.corrected", "event.retracted"] {
        let body = event(client, event_type, AT, valid_data(event_type, target));
        let response = app.post_event(PRISON_WRITER, &body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{event_type}: {}",
            response.text().await.unwrap()
        );
    }
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    assert_eq!(history["events"].as_array().unwrap().len(), 33);
}

#[tokio::test]
async fn every_event_type_rejects_unknown_and_missing_fields_and_stores_nothing() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    for entry in catalogue(&app).await {
        let event_type = entry["type"].as_str().unwrap();
        if entry["posted_by"].as_array().is_some_and(Vec::is_empty) {
            // The service's own data-protection events: no agency may post them, so every
            // attempt is refused for that (403) before its data is read.
            continue;
        }
        let writer = writer_for(event_type);

        // An unknown field is named, whatever the type.
        let mut data = valid_data(event_type, Uuid::new_v4());
        data["surprise"] = json!(1);
        let response = app
            .post_event(writer, &event(client, event_type, AT, data))
            .await;
        let problem = expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], "data.surprise", "{event_type}");

        // Each field the published schema calls required is enforced, and named when missing.
        for required in entry["data"]["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap();
            let mut data = valid_data(event_type, Uuid::new_v4());
            data.as_object_mut().unwrap().remove(required);
            let response = app
                .post_event(writer, &event(client, event_type, AT, data))
                .await;
            let problem = expect_problem(
                response,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            )
            .await;
            assert_eq!(problem["field"], format!("data.{required}"), "{event_type}");
        }

        // `data` must be an object.
        let response = app
            .post_event(writer, &event(client, event_type, AT, json!([1])))
            .await;
        expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    assert!(
        app.feed().await.is_empty(),
        "a rejected event must not be stored"
    );
}

#[tokio::test]
async fn wrong_types_and_enum_values_name_the_field() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let cases = [
        (
            "client.released",
            json!({"release_kind": "escaped", "supervision": true}),
            "data.release_kind",
        ),
        (
            "client.released",
            json!({"release_kind": "parole", "supervision": "yes"}),
            "data.supervision",
        ),
        (
            "sentence.started",
            json!({"prison": "Opava", "start_date": "1st of May"}),
            "data.start_date",
        ),
        (
            "sentence.started",
            json!({"prison": "Opava", "start_date": "2026-02-01", "expected_release_date": "2025-01-01"}),
            "data.expected_release_date",
        ),
        (
            "client.registered",
            json!({"identifiers": [{"type": "Prison Number", "value": "1"}]}),
            "data.identifiers[0].type",
        ),
        ("plan.agreed", json!({"areas": []}), "data.areas"),
        (
            "need.assessed",
            json!({"area": "housing", "status": "fine"}),
            "data.status",
        ),
        (
            "programme.dropped_out",
            json!({"programme": "x", "reason": "   "}),
            "data.reason",
        ),
        // Break-glass and oversight are not for a consent to grant.
        (
            "consent.recorded",
            json!({"agency": "health-opava", "legal_basis": "vital_interests",
                   "purposes": ["case_management", "emergency"]}),
            "data.purposes[1]",
        ),
        (
            "consent.recorded",
            json!({"agency": "health-opava", "legal_basis": "consent", "purposes": ["audit"]}),
            "data.purposes[0]",
        ),
    ];
    for (event_type, data, field) in cases {
        let response = app
            .post_event(PRISON_WRITER, &event(client, event_type, AT, data))
            .await;
        let problem = expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], field);
    }
    assert!(app.feed().await.is_empty());
}

#[tokio::test]
async fn envelope_errors_are_precise() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let valid = || event(client, "job.placed", AT, json!({}));

    let mut unknown_type = valid();
    unknown_type["type"] = json!("client.teleported");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &unknown_type).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_event_type",
    )
    .await;
    assert_eq!(problem["field"], "type");

    let mut missing = valid();
    missing.as_object_mut().unwrap().remove("client_id");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &missing).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "client_id");

    let mut wrong_type = valid();
    wrong_type["schema_version"] = json!("1");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &wrong_type).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "schema_version");

    let mut future_version = valid();
    future_version["schema_version"] = json!(2);
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &future_version).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "schema_version");

    let mut agency = valid();
    agency["agency"] = json!("someone-else");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &agency).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "agency");

    let mut future = valid();
    future["occurred_at"] = json!("2999-01-01T00:00:00Z");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &future).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "occurred_at");

    let mut placeholder = valid();
    placeholder["occurred_at"] = json!("0000-01-01T00:00:00Z");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &placeholder).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "occurred_at");

    // Dates and times in their strict forms only: chrono alone takes these, and a release in the
    // year -262143 once overflowed the alerts' date arithmetic for every client.
    for loose in [
        "+2026-01-01T00:00:00Z",
        " 2026-01-01T00:00:00Z",
        "2026-01-01T00:00:60Z",
    ] {
        let mut event = valid();
        event["occurred_at"] = json!(loose);
        let problem = expect_problem(
            app.post_event(BUREAU_WRITER, &event).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], "occurred_at", "{loose}");
    }
    for loose in ["-262143-01-01", "+2026-05-01", "2026-5-1"] {
        let event = event(
            Uuid::new_v4(),
            "release.scheduled",
            "2026-01-01T00:00:00Z",
            json!({"release_date": loose}),
        );
        let problem = expect_problem(
            app.post_event(PRISON_WRITER, &event).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], "data.release_date", "{loose}");
    }

    let mut bad_id = valid();
    bad_id["id"] = json!("not-a-uuid");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &bad_id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "id");

    let mut blank_actor = valid();
    blank_actor["actor"] = json!("");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &blank_actor).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "actor");

    assert!(app.feed().await.is_empty());
}

#[tokio::test]
async fn malformed_bodies_are_400_415_and_413() {
    let app = spawn_app().await;
    let send = |body: Vec<u8>, content_type: &'static str| {
        app.http
            .post(app.url("/v1/events"))
            .bearer_auth(PRISON_WRITER)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let response = send(b"{\"id\": ".to_vec(), "application/json")
        .await
        .unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "malformed_json").await;

    // JSON's suffix counts only after a name: `application/+json` names no type.
    for content_type in [
        "application/x-www-form-urlencoded",
        "application/+json",
        "application/ +json",
        "application/*+json",
        "text/plain+json",
    ] {
        let response = send(b"{}".to_vec(), content_type).await.unwrap();
        expect_problem(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    let response = send(b"{}".to_vec(), "application/vnd.travelmap+json")
        .await
        .unwrap();
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    let mut huge = br#"{"id": ""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 1));
    huge.extend(br#""}"#);
    let response = send(huge, "application/json").await.unwrap();
    expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // A sender that asks before sending (`Expect: 100-continue`) is refused on the declared
    // length, not invited to send a body that would be refused.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = app.address.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {PRISON_WRITER}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            2 * 1024 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 512];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
                .await
                .expect("an answer without the body")
                .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    let response = send(b"[1, 2]".to_vec(), "application/json").await.unwrap();
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    // Two media types: whichever comes first, the body is not taken.
    let valid = serde_json::to_vec(&sample_event(
        Uuid::new_v4(),
        "client.registered",
        "2026-01-05T09:00:00+01:00",
    ))
    .unwrap();
    for (first, second) in [
        ("application/json", "text/plain"),
        ("text/plain", "application/json"),
    ] {
        let response = app
            .http
            .post(app.url("/v1/events"))
            .bearer_auth(PRISON_WRITER)
            .header("content-type", first)
            .header("content-type", second)
            .body(valid.clone())
            .send()
            .await
            .unwrap();
        expect_problem(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }

    assert!(app.feed().await.is_empty());
}

#[tokio::test]
async fn retry_with_the_same_content_returns_the_original_receipt() {
    let app = spawn_app().await;
    let body = event(
        Uuid::new_v4(),
        "client.released",
        AT,
        valid_data("client.released", Uuid::nil()),
    );
    let first = app.post_event(PRISON_WRITER, &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    // Key order does not matter; the content does.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"data": {}, "occurred_at": "{AT}", "client_id": "{}", "schema_version": 1, "type": "client.released", "id": "{}"}}"#,
        json!({"municipality": "Opava", "supervision": true, "release_kind": "conditional"}),
        body["client_id"].as_str().unwrap(),
        body["id"].as_str().unwrap(),
    ))
    .unwrap();
    for retry in [&body, &reordered] {
        let again = app.post_event(PRISON_WRITER, retry).await;
        assert_eq!(again.status(), StatusCode::OK);
        let again: Value = again.json().await.unwrap();
        assert_eq!(again, first);
    }
    assert_eq!(app.feed().await.len(), 1);
    for field in ["id", "client_id", "version", "position", "recorded_at"] {
        assert!(!first[field].is_null(), "receipt lacks {field}");
    }
}

/// A retry is compared as its data is read. A correction's replacement and a time inside an
/// event's data are stored in the form their type reads them (texts trimmed, defaults filled
/// in, times to the microsecond), like the rest of an event: another spelling of the same
/// content is a retry, not a conflict, and the history shows what the travel map applies.
#[tokio::test]
async fn a_retry_spelled_differently_is_still_a_retry() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let contact = event(client, "contact.made", AT, json!({"kind": "meeting"}));
    assert_eq!(
        app.post_event(NGO_WRITER, &contact).await.status(),
        StatusCode::CREATED
    );
    let mut correction = event(
        client,
        "event.corrected",
        AT,
        json!({"event_id": contact["id"], "reason": "it was a call",
               "data": {"kind": "phone", "appointment_id": " A-7 "}}),
    );
    assert_eq!(
        app.post_event(NGO_WRITER, &correction).await.status(),
        StatusCode::CREATED
    );
    correction["data"]["data"] =
        json!({"kind": "phone", "attended": true, "appointment_id": "A-7"});
    assert_eq!(
        app.post_event(NGO_WRITER, &correction).await.status(),
        StatusCode::OK
    );

    let scheduled = |at: &str| {
        json!({"id": "8f1f5d7e-2b61-4bd4-9a7e-3c5a4f7e9b21", "type": "appointment.scheduled",
               "schema_version": 1, "client_id": client, "occurred_at": AT,
               "data": {"appointment_id": "A-8", "at": at}})
    };
    assert_eq!(
        app.post_event(NGO_WRITER, &scheduled("2026-03-05T10:00:00.000001Z"))
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.post_event(NGO_WRITER, &scheduled("2026-03-05T10:00:00.0000019+00:00"))
            .await
            .status(),
        StatusCode::OK
    );

    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[1]["data"]["data"],
        json!({"kind": "phone", "attended": true, "appointment_id": "A-7"})
    );
    assert_eq!(events[2]["data"]["at"], "2026-03-05T10:00:00.000001Z");
}

#[tokio::test]
async fn the_same_id_with_other_content_is_a_conflict() {
    let app = spawn_app().await;
    let body = event(
        Uuid::new_v4(),
        "contact.made",
        AT,
        valid_data("contact.made", Uuid::nil()),
    );
    assert_eq!(
        app.post_event(PRISON_WRITER, &body).await.status(),
        StatusCode::CREATED
    );

    let mut changed = body.clone();
    changed["data"]["kind"] = json!("meeting");
    expect_problem(
        app.post_event(PRISON_WRITER, &changed).await,
        StatusCode::CONFLICT,
        "duplicate_conflict",
    )
    .await;

    // The same content from another agency is not the same event either.
    expect_problem(
        app.post_event(PROBATION_WRITER, &body).await,
        StatusCode::CONFLICT,
        "duplicate_conflict",
    )
    .await;

    let feed = app.feed().await;
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0]["data"]["kind"], "first_day");
    assert_eq!(feed[0]["agency"], "prison-opava");
}

#[tokio::test]
async fn expected_version_guards_against_lost_updates() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let mut first = sample_event(client, "sentence.started", AT);
    first["expected_version"] = json!(0);
    assert_eq!(
        app.post_event(PRISON_WRITER, &first).await.status(),
        StatusCode::CREATED
    );

    let mut stale = sample_event(client, "release.scheduled", AT);
    stale["expected_version"] = json!(0);
    let problem = expect_problem(
        app.post_event(PRISON_WRITER, &stale).await,
        StatusCode::CONFLICT,
        "version_conflict",
    )
    .await;
    assert_eq!(problem["current_version"], 1);

    stale["expected_version"] = json!(1);
    let receipt: Value = app
        .post_event(PRISON_WRITER, &stale)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(receipt["version"], 2);

    // A retry of an accepted event is a retry, even though its expected_version is stale now.
    let retried = app.post_event(PRISON_WRITER, &first).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["version"], 1);
    assert_eq!(app.feed().await.len(), 2);

    // Beyond what a version can be (64-bit signed, as the OpenAPI document says): invalid, not
    // a conflict.
    let mut beyond = sample_event(client, "contact.made", AT);
    beyond["expected_version"] = json!(u64::MAX);
    let problem = expect_problem(
        app.post_event(PRISON_WRITER, &beyond).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "expected_version");
    assert_eq!(app.feed().await.len(), 2);
}

#[tokio::test]
async fn the_recorded_agency_is_the_credentials() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let mut body = sample_event(client, "contact.made", AT);
    body["actor"] = json!("PO-4");
    assert_eq!(
        app.post_event(PROBATION_WRITER, &body).await.status(),
        StatusCode::CREATED
    );
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let recorded = &history["events"][0];
    assert_eq!(recorded["agency"], "probation-opava");
    assert_eq!(recorded["credential"], "probation-system");
    assert_eq!(recorded["actor"], "PO-4");
    assert_eq!(recorded["version"], 1);
    assert_eq!(recorded["occurred_at"], AT);
}

#[tokio::test]
async fn credentials_and_roles_are_enforced() {
    let app = spawn_app().await;
    let body = event(Uuid::new_v4(), "job.placed", AT, json!({}));

    let missing = app
        .http
        .post(app.url("/v1/events"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer realm=\"travelmap\""
    );
    expect_problem(missing, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_problem(
        app.post_event("not-a-key", &body).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let basic = app
        .http
        .post(app.url("/v1/events"))
        .basic_auth("user", Some(PRISON_WRITER))
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(basic, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Valid credentials without the role for the operation.
    expect_problem(
        app.post_event(COORDINATOR, &body).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get("/v1/events", COORDINATOR).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get("/v1/events", PRISON_WRITER).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let client = body["client_id"].as_str().unwrap();
    expect_problem(
        app.get(&format!("/v1/clients/{client}/travel-map"), PRISON_WRITER)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert!(app.feed().await.is_empty());
    // The feed is open to admins as well as auditors.
    app.get_ok("/v1/events", ADMIN).await;
}

#[tokio::test]
async fn corrections_must_target_an_earlier_event_of_the_client() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let other_client = Uuid::new_v4();
    let released = sample_event(other_client, "client.released", AT);
    assert_eq!(
        app.post_event(PRISON_WRITER, &released).await.status(),
        StatusCode::CREATED
    );
    let target: Uuid = released["id"].as_str().unwrap().parse().unwrap();

    let elsewhere = event(
        client,
        "event.corrected",
        AT,
        valid_data("event.corrected", target),
    );
    let problem = expect_problem(
        app.post_event(PRISON_WRITER, &elsewhere).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.event_id");

    let mut bad_replacement = event(
        other_client,
        "event.corrected",
        AT,
        valid_data("event.corrected", target),
    );
    bad_replacement["data"]["data"]["release_kind"] = json!("escaped");
    let problem = expect_problem(
        app.post_event(PRISON_WRITER, &bad_replacement).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.data.release_kind");
    assert_eq!(app.feed().await.len(), 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_problem_format() {
    let app = spawn_app().await;
    expect_problem(
        app.get("/v1/nothing-here", ADMIN).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let delete = app
        .http
        .delete(app.url("/v1/events"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let allow = delete.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("POST") && allow.contains("GET"), "{allow}");
    expect_problem(delete, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    // No operation exists to list that answer on: the document's description states it.
    let document = app.get_ok("/openapi.json", ADMIN).await;
    let description = document["info"]["description"].as_str().unwrap();
    assert!(
        description.contains("405 method_not_allowed") && description.contains("404 not_found"),
        "{description}"
    );
    let bad_client = app.get("/v1/clients/not-a-uuid/events", AUDITOR).await;
    let problem = expect_problem(bad_client, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "client_id");
    let problem_page = app.get_ok("/problems/version_conflict", ADMIN).await;
    assert_eq!(problem_page["status"], 409);
    // Each type is described for what it is.
    let other_page = app.get_ok("/problems/duplicate_conflict", ADMIN).await;
    assert!(
        problem_page["detail"]
            .as_str()
            .unwrap()
            .contains("expected_version")
    );
    assert_ne!(problem_page["detail"], other_page["detail"]);
}

/// Every event type from every kind of agency: accepted exactly where the catalogue's
/// `posted_by` says, refused with 403 elsewhere, and nothing stored when refused.
#[tokio::test]
async fn each_agency_kind_posts_only_the_event_types_in_its_remit() {
    let app = spawn_app().await;
    let types = catalogue(&app).await;
    let mut accepted = 0;
    for entry in &types {
        let event_type = entry["type"].as_str().unwrap();
        if event_type.starts_with("event.") {
            continue; // posted by any agency; they need a target and are covered elsewhere
        }
        let posted_by: Vec<&str> = entry["posted_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kind| kind.as_str().unwrap())
            .collect();
        for (key, kind) in WRITERS {
            let body = sample_event(Uuid::new_v4(), event_type, AT);
            let response = app.post_event(key, &body).await;
            if posted_by.contains(&kind.as_str()) {
                assert_eq!(
                    response.status(),
                    StatusCode::CREATED,
                    "{kind} {event_type}"
                );
                accepted += 1;
            } else {
                let problem = expect_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
                let detail = problem["detail"].as_str().unwrap();
                assert!(detail.contains(event_type), "{detail}");
            }
        }
    }
    assert_eq!(app.feed().await.len(), accepted);
    // Custody events come from prisons only.
    let released = types
        .iter()
        .find(|t| t["type"] == "client.released")
        .unwrap();
    assert_eq!(released["posted_by"], json!(["prison"]));

    // In a batch, the first event outside the remit is named and nothing is stored.
    let client = Uuid::new_v4();
    let batch = json!({"events": [
        sample_event(client, "contact.made", AT),
        sample_event(client, "client.released", AT),
    ]});
    let problem = expect_problem(
        app.post("/v1/events/batch", PROBATION_WRITER, &batch).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(problem["index"], 1);
    assert_eq!(app.feed().await.len(), accepted);

    // The remit is judged before the data: an agency that may not post a type is told so, not
    // what the event's data lacks, alone or in a batch whose other events are invalid too.
    let mut incomplete = sample_event(client, "client.released", AT);
    incomplete["data"] = json!({});
    let problem = expect_problem(
        app.post_event(PROBATION_WRITER, &incomplete).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(problem["field"], "type");
    let mut invalid = sample_event(client, "contact.made", AT);
    invalid["data"] = json!({"kind": "telepathy"});
    let batch = json!({"events": [invalid, incomplete]});
    let problem = expect_problem(
        app.post("/v1/events/batch", PROBATION_WRITER, &batch).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(problem["index"], 1);
    // The service's own data-protection events, whatever their data.
    for lifecycle in [
        "personal_data.erased",
        "processing.restricted",
        "retention.applied",
    ] {
        let mut event = sample_event(client, "client.registered", AT);
        event["type"] = json!(lifecycle);
        event["data"] = json!({});
        expect_problem(
            app.post_event(PROBATION_WRITER, &event).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    // A type outside the catalogue is still a validation matter.
    let mut unknown = sample_event(client, "contact.made", AT);
    unknown["type"] = json!("client.teleported");
    expect_problem(
        app.post_event(PROBATION_WRITER, &unknown).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_event_type",
    )
    .await;
    assert_eq!(app.feed().await.len(), accepted);
}

/// Corrections and retractions are open to every agency, but only for events of a type its
/// kind may post: otherwise any agency could rewrite a prison's release.
#[tokio::test]
async fn only_an_agency_that_may_post_a_type_may_correct_or_retract_it() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let released = sample_event(client, "client.released", AT);
    assert_eq!(
        app.post_event(PRISON_WRITER, &released).await.status(),
        StatusCode::CREATED
    );
    let correction = event(
        client,
        "event.corrected",
        AT,
        json!({"event_id": released["id"], "reason": "wrong kind",
               "data": {"release_kind": "other", "supervision": true}}),
    );
    let retraction = event(
        client,
        "event.retracted",
        AT,
        json!({"event_id": released["id"], "reason": "wrong client"}),
    );
    for rectification in [&correction, &retraction] {
        let problem = expect_problem(
            app.post_event(NGO_WRITER, rectification).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_eq!(problem["field"], "data.event_id");
        let batch = json!({"events": [sample_event(client, "contact.made", AT), rectification]});
        let problem = expect_problem(
            app.post("/v1/events/batch", NGO_WRITER, &batch).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_eq!(problem["index"], 1);
    }
    assert_eq!(app.feed().await.len(), 1);
    // Each refused attempt is in the client's trail as a denied alteration.
    let denied: Vec<Value> = app
        .trail_of(client)
        .await
        .into_iter()
        .filter(|entry| entry["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 4, "{denied:?}");
    assert!(
        denied
            .iter()
            .all(|entry| entry["operation"] == "alteration" && entry["agency"] == "ngo-opava"),
        "{denied:?}"
    );
    assert_eq!(
        app.post_event(PRISON_WRITER, &correction).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.post_event(PRISON_WRITER, &retraction).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn ambiguous_or_invisible_input_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let send = |body: String| {
        app.http
            .post(app.url("/v1/events"))
            .bearer_auth(BUREAU_WRITER)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // A member named twice: serde_json keeps the last, another reader may keep the first.
    let first = Uuid::new_v4();
    let twice = format!(
        r#"{{"id":"{first}","id":"{}","type":"job.placed","schema_version":1,"client_id":"{client}","occurred_at":"{AT}","data":{{}}}}"#,
        Uuid::new_v4()
    );
    let problem = expect_problem(
        send(twice).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("`id` appears twice"),
        "{problem}"
    );
    let nested = format!(
        r#"{{"id":"{first}","type":"client.released","schema_version":1,"client_id":"{client}","occurred_at":"{AT}","data":{{"release_kind":"parole","supervision":true,"release_kind":"transfer"}}}}"#
    );
    expect_problem(
        send(nested).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;

    // Control characters: invisible where the record is read, and refused by PostgreSQL.
    let mut nul_actor = event(client, "job.placed", AT, json!({}));
    nul_actor["actor"] = json!("PO\u{0}4");
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &nul_actor).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "actor");
    let hidden = event(
        client,
        "client.registered",
        AT,
        json!({"identifiers": [{"type": "prison_number", "value": "OP-\u{1b}[2J17"}]}),
    );
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &hidden).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.identifiers[0].value");

    // A data-protection decision's reason is stored and audited like an event's text.
    let problem = expect_problem(
        app.post(
            &format!("/v1/clients/{client}/restriction"),
            DPO,
            &json!({"reason": "contested\u{0}"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "reason");

    // The nil UUID names no one.
    let nobody = event(Uuid::nil(), "job.placed", AT, json!({}));
    let problem = expect_problem(
        app.post_event(BUREAU_WRITER, &nobody).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "client_id");

    // A batch sent as a bare array is told what shape a batch has.
    let response = app
        .post(
            "/v1/events/batch",
            BUREAU_WRITER,
            &json!([event(client, "job.placed", AT, json!({}))]),
        )
        .await;
    let problem = expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("\"events\""),
        "{problem}"
    );
    // So is a webhook registration or a data-protection decision.
    for (path, key, shape) in [
        ("/v1/subscriptions/webhooks", PROBATION_WRITER, "\"url\""),
        (
            &*format!("/v1/clients/{client}/restriction"),
            DPO,
            "\"reason\"",
        ),
    ] {
        let problem = expect_problem(
            app.post(path, key, &json!(["https://example.org/hook"]))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(problem["field"].is_null(), "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(shape),
            "{path}: {problem}"
        );
    }

    assert!(app.feed().await.is_empty());

    // Line breaks and tabs are text, not control: a multi-line reason is accepted.
    let mut noted = event(
        client,
        "programme.dropped_out",
        AT,
        valid_data("programme.dropped_out", client),
    );
    noted["actor"] = json!("PO-4");
    if let Some(reason) = noted["data"].get_mut("reason") {
        *reason = json!("moved away\n\tnew address unknown");
    }
    let response = app
        .post_event(writer_for("programme.dropped_out"), &noted)
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
}

#[tokio::test]
async fn a_fact_dated_after_the_event_that_reports_it_is_refused() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let born_later = event(
        client,
        "client.registered",
        AT,
        json!({"personal": {"given_name": "Jan", "birth_date": "2026-03-02"}}),
    );
    let problem = expect_problem(
        app.post_event(PRISON_WRITER, &born_later).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.personal.birth_date");
    // The day itself is not after it, in the event's own offset.
    let registered = event(
        client,
        "client.registered",
        AT,
        json!({"personal": {"given_name": "Jan", "birth_date": "2026-03-01"}}),
    );
    let response = app.post_event(PRISON_WRITER, &registered).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let offence_later = event(
        client,
        "reoffence.recorded",
        AT,
        json!({"offence_date": "2026-04-01"}),
    );
    let problem = expect_problem(
        app.post_event(PROBATION_WRITER, &offence_later).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.offence_date");

    // A correction states facts known when it is made.
    let correction = event(
        client,
        "event.corrected",
        AT,
        json!({"event_id": registered["id"], "reason": "birth date mistyped",
               "data": {"personal": {"given_name": "Jan", "birth_date": "2027-01-01"}}}),
    );
    let problem = expect_problem(
        app.post_event(PRISON_WRITER, &correction).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.data.personal.birth_date");
    assert_eq!(app.feed().await.len(), 1);
    app.stop().await;
}

/// A sender retrying an event the store took before dated facts were checked gets its receipt,
/// not a refusal of content that was accepted once: the check is made only for new events.
#[tokio::test]
async fn a_retry_of_an_event_stored_before_dates_were_checked_keeps_its_receipt() {
    let app = spawn_app().await;
    let data_dir = app.stop().await;
    let client = Uuid::new_v4();
    let body = event(
        client,
        "reoffence.recorded",
        AT,
        json!({"offence_date": "2026-04-01"}),
    );
    // Stored as the probation service's system would have stored it then.
    let submission = travelmap_api::wire::parse_event(&body).unwrap();
    let store = travelmap_store::Store::open(&travelmap_store::Location::Embedded(
        data_dir.path().to_owned(),
    ))
    .await
    .unwrap();
    let digest = travelmap_domain::content_digest(&submission.draft, "probation-opava");
    let digest = store
        .log()
        .fingerprints(vec![(&submission.draft, digest)])
        .await
        .unwrap()[0];
    let provenance = travelmap_domain::Provenance {
        agency: "probation-opava".into(),
        credential: "probation-system".into(),
    };
    let receipts = store
        .log()
        .append(
            &provenance,
            vec![travelmap_store::StreamAppend {
                client_id: submission.draft.client_id,
                expected_version: 0,
                events: vec![travelmap_store::NewEvent {
                    sealed: None,
                    draft: submission.draft.clone(),
                    digest,
                }],
            }],
        )
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let app = spawn_app_in(data_dir).await;
    let response = app.post_event(PROBATION_WRITER, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(receipt["position"], receipts[0].position);
    assert_eq!(receipt["id"], body["id"]);
    // The same content under a new id is a new event, and refused.
    let mut fresh = body.clone();
    fresh["id"] = json!(Uuid::new_v4());
    let problem = expect_problem(
        app.post_event(PROBATION_WRITER, &fresh).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.offence_date");
    assert_eq!(app.feed().await.len(), 1);
    app.stop().await;
}

/// A correction replaces the data of the event it names, so a birth date in it may not fall after
/// the day of that event, though it falls before the day the correction was made; checked as
/// well after a restart, when the client's journey is read back from the store.
async fn a_correction_is_checked_against_the_day_of_the_event_it_corrects(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    // Just after midnight where it was sent: the day is the 1st there, the 28th of February in
    // UTC.
    let registered = event(
        client,
        "client.registered",
        "2026-03-01T00:30:00+02:00",
        json!({"personal": {"given_name": "Jan", "birth_date": "1990-04-12"}}),
    );
    let response = app.post_event(PRISON_WRITER, &registered).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let correction = |birth_date: &str| {
        event(
            client,
            "event.corrected",
            "2026-05-04T09:00:00+02:00",
            json!({"event_id": registered["id"], "reason": "birth date mistyped",
                   "data": {"personal": {"given_name": "Jan", "birth_date": birth_date}}}),
        )
    };
    let born_after_registration = correction("2026-04-01");
    let problem = expect_problem(
        app.post_event(PRISON_WRITER, &born_after_registration)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.data.personal.birth_date");
    assert!(
        problem["detail"].as_str().unwrap().contains("2026-03-01"),
        "{problem}"
    );

    let data_dir = app.stop().await;
    let app = spawn_app_on_in(&backend, data_dir).await;
    expect_problem(
        app.post_event(PRISON_WRITER, &correction("2026-03-02"))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let on_the_day = correction("2026-03-01");
    let response = app.post_event(PRISON_WRITER, &on_the_day).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(app.feed().await.len(), 2);
    app.stop().await;
}

on_both_backends!(a_correction_is_checked_against_the_day_of_the_event_it_corrects);
