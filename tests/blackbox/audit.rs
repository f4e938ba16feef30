//! The audit trail: every operation on a client's data is logged, allowed or denied, with who,
//! when, which purpose and what was returned; auditors read it; `travelmap audit verify` finds
//! any entry edited, removed or reordered in the store.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::binary::{Server, write_config};
use crate::samples::{sample_event, valid_data};
use crate::support::*;

async fn get_with(app: &TestApp, path: &str, key: &str, purpose: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(app.url(path))
        .bearer_auth(key)
        .header("x-purpose", purpose)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_operation_on_a_client_is_logged_with_who_why_and_the_outcome() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let mut registered = sample_event(client, "client.registered", "2026-01-05T09:00:00+01:00");
    registered["actor"] = json!("OP-REG-7");
    assert_eq!(
        app.post_event(PRISON_WRITER, &registered).await.status(),
        StatusCode::CREATED
    );
    let target: Uuid = registered["id"].as_str().unwrap().parse().unwrap();
    let retraction = event(
        client,
        "event.retracted",
        "2026-01-06T09:00:00+01:00",
        valid_data("event.retracted", target),
    );
    assert_eq!(
        app.post_event(PRISON_WRITER, &retraction).await.status(),
        StatusCode::CREATED
    );
    // The municipality starts working with the client, so its coordinator may read.
    let involvement = event(
        client,
        "involvement.opened",
        "2026-01-06T10:00:00+01:00",
        json!({"role": "social_worker", "worker": "SW-3"}),
    );
    assert_eq!(
        app.post_event(MUNICIPALITY_WRITER, &involvement)
            .await
            .status(),
        StatusCode::CREATED
    );
    // Consultations with a stated purpose; a denied read; a denied post.
    let history = get_with(
        &app,
        &format!("/v1/clients/{client}/events"),
        COORDINATOR,
        "case_management",
    )
    .await;
    assert_eq!(history.status(), StatusCode::OK);
    let map = get_with(
        &app,
        &format!("/v1/clients/{client}/travel-map"),
        COORDINATOR,
        "supervision",
    )
    .await;
    assert_eq!(map.status(), StatusCode::OK);
    let refused = get_with(
        &app,
        &format!("/v1/clients/{client}/events"),
        PROBATION_WRITER,
        "curiosity",
    )
    .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    // Reads that state no purpose, or one not on the list, are refused and logged too.
    let unstated = app
        .http
        .get(app.url(&format!("/v1/clients/{client}/travel-map")))
        .bearer_auth(COORDINATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(unstated.status(), StatusCode::BAD_REQUEST);
    let invented = get_with(
        &app,
        &format!("/v1/clients/{client}/events"),
        COORDINATOR,
        "curiosity",
    )
    .await;
    assert_eq!(invented.status(), StatusCode::BAD_REQUEST);
    let two_purposes = app
        .http
        .get(app.url(&format!("/v1/clients/{client}/events")))
        .bearer_auth(COORDINATOR)
        .header("X-Purpose", "case_management")
        .header("X-Purpose", "supervision")
        .send()
        .await
        .unwrap();
    expect_problem(two_purposes, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    let released = sample_event(client, "client.released", "2026-01-07T09:00:00+01:00");
    assert_eq!(
        app.post_event(PROBATION_WRITER, &released).await.status(),
        StatusCode::FORBIDDEN
    );
    // A write refused for want of the writer role is logged under the client(s) it names.
    assert_eq!(
        app.post_event(AUDITOR, &released).await.status(),
        StatusCode::FORBIDDEN
    );
    let batch = json!({"events": [
        released,
        sample_event(client, "contact.made", "2026-01-07T10:00:00+01:00"),
    ]});
    assert_eq!(
        app.post("/v1/events/batch", AUDITOR, &batch).await.status(),
        StatusCode::FORBIDDEN
    );

    let trail = app
        .get_ok(&format!("/v1/audit/clients/{client}"), AUDITOR)
        .await;
    let entries = trail["entries"].as_array().unwrap();
    let summary: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|entry| {
            (
                entry["operation"].as_str().unwrap().to_owned(),
                entry["credential"].as_str().unwrap().to_owned(),
                entry["outcome"].as_str().unwrap().to_owned(),
                entry["purpose"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    // A purpose not on the list may be any text a caller typed: the trail does not keep it.
    let unlisted = travelmap_api::audit::UNLISTED_PURPOSE;
    let expected = [
        ("collection", "opava-prison-system", "allowed", ""),
        ("alteration", "opava-prison-system", "allowed", ""),
        ("collection", "municipality-system", "allowed", ""),
        (
            "consultation",
            "coordinator-desk",
            "allowed",
            "case_management",
        ),
        ("consultation", "coordinator-desk", "allowed", "supervision"),
        ("consultation", "probation-system", "denied", unlisted),
        ("consultation", "coordinator-desk", "denied", ""),
        ("consultation", "coordinator-desk", "denied", unlisted),
        ("consultation", "coordinator-desk", "denied", unlisted),
        ("collection", "probation-system", "denied", ""),
        ("collection", "dpo-office", "denied", ""),
        ("collection", "dpo-office", "denied", ""),
    ];
    let expected: Vec<(String, String, String, String)> = expected
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(summary, expected);
    let first = &entries[0];
    assert_eq!(first["client_id"], json!(client));
    assert_eq!(first["agency"], "prison-opava");
    assert_eq!(first["returned"], registered["id"]);
    assert_eq!(first["action"], "POST /v1/events");
    assert_eq!(first["actor"], "OP-REG-7");
    assert!(
        first["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    // The coordinator's history read names the three events it returned.
    assert_eq!(
        entries[3]["returned"].as_str().unwrap().split(',').count(),
        3
    );
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]));

    // The global feed is a disclosure to its reader; the auditor's own reading is logged too.
    app.get_ok("/v1/events?after=0", AUDITOR).await;
    let page = app
        .get_ok("/v1/audit/entries?after=0&limit=1000", AUDITOR)
        .await;
    let all = page["entries"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = all
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("disclosure", "GET /v1/events")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("consultation", "GET /v1/audit/clients/{client_id}")),
        "{actions:?}"
    );
    assert_eq!(page["next_after"], all.last().unwrap()["seq"]);

    // Only auditors read the trail; the refusal is itself logged.
    expect_problem(
        app.get("/v1/audit/entries", COORDINATOR).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // The trail is read to audit (or for a subject access request), and for nothing else.
    let statistics = expect_problem(
        get_with(&app, "/v1/audit/entries", AUDITOR, "statistics").await,
        StatusCode::BAD_REQUEST,
        "purpose_required",
    )
    .await;
    assert_eq!(statistics["field"], "X-Purpose");
    let checkpoint = app.get_ok("/v1/audit/checkpoint", AUDITOR).await;
    let tail = app
        .get_ok(
            &format!("/v1/audit/entries?after={}", page["next_after"]),
            AUDITOR,
        )
        .await;
    let tail = tail["entries"].as_array().unwrap();
    // The page read above, the two refused reads, the checkpoint, and this read.
    assert_eq!(tail[0]["action"], "GET /v1/audit/entries");
    assert_eq!(tail[1]["outcome"], "denied");
    assert_eq!(tail[1]["credential"], "coordinator-desk");
    assert_eq!(tail[2]["outcome"], "denied");
    assert_eq!(tail[2]["purpose"], "statistics");
    assert_eq!(tail[3]["action"], "GET /v1/audit/checkpoint");
    assert_eq!(checkpoint["seq"], tail[3]["seq"]);
    assert_eq!(checkpoint["hash"], tail[3]["hash"]);
    // Caught up, a page is empty; a cursor past the last entry is a mistake, not an empty page.
    let last = tail.last().unwrap()["seq"].as_u64().unwrap();
    let caught_up = app
        .get_ok(&format!("/v1/audit/entries?after={last}"), AUDITOR)
        .await;
    assert!(caught_up["entries"].as_array().unwrap().len() <= 1);
    let problem = expect_problem(
        get_with(&app, "/v1/audit/entries?after=999999", AUDITOR, "audit").await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(problem["field"], "after");

    // A read that states no purpose still refuses headers it cannot keep (a reason too long
    // for the trail, a purpose sent twice) rather than log something it was not given.
    let too_long = app
        .http
        .get(app.url("/v1/audit/checkpoint"))
        .bearer_auth(AUDITOR)
        .header("x-justification", "j".repeat(2001))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(too_long, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "X-Justification");
    let twice = app
        .http
        .get(app.url("/v1/audit/checkpoint"))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "audit")
        .header("x-purpose", "audit")
        .send()
        .await
        .unwrap();
    expect_problem(twice, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    let entries = app
        .get_ok("/v1/audit/entries?after=0&limit=1000", AUDITOR)
        .await;
    let refused: Vec<(&str, &Value)> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            entry["action"] == "GET /v1/audit/checkpoint" && entry["outcome"] == "denied"
        })
        .map(|entry| (entry["outcome"].as_str().unwrap(), &entry["purpose"]))
        .collect();
    assert_eq!(
        refused,
        [("denied", &Value::Null), ("denied", &json!("unlisted"))]
    );
}

/// The request id in the trail is the server's: a caller cannot reuse another request's id (or
/// put any text of its own there) by sending `x-request-id`.
#[tokio::test]
async fn the_trail_names_requests_by_ids_the_server_assigned() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let forged = "c18b954d-4a6f-4d0e-8a70-2f6b3c1d4418";
    let response = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(PRISON_WRITER)
        .header("x-request-id", forged)
        .json(&sample_event(
            client,
            "client.released",
            "2026-01-05T09:00:00Z",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let assigned = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(assigned, forged);
    let trail = app
        .get_ok(&format!("/v1/audit/clients/{client}"), AUDITOR)
        .await;
    assert_eq!(trail["entries"][0]["request_id"], assigned.as_str());
}

#[tokio::test]
async fn a_batch_logs_one_entry_per_client_and_operation_and_a_refusal_as_denied() {
    let app = spawn_app().await;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let registered = sample_event(first, "client.registered", "2026-01-05T09:00:00+01:00");
    let sentenced = sample_event(first, "sentence.started", "2026-01-06T09:00:00+01:00");
    let other = sample_event(second, "client.registered", "2026-01-05T10:00:00+01:00");
    let retraction = event(
        first,
        "event.retracted",
        "2026-01-07T09:00:00+01:00",
        valid_data(
            "event.retracted",
            registered["id"].as_str().unwrap().parse().unwrap(),
        ),
    );
    let batch = json!({"events": [registered, other, sentenced, retraction]});
    let response = app.post("/v1/events/batch", PRISON_WRITER, &batch).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    // Sent again: answered with the original receipts, and logged again.
    let response = app.post("/v1/events/batch", PRISON_WRITER, &batch).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Refused by what is stored (the stream has moved on, an id is taken): nothing is
    // recorded, and the refusal is logged as denied under the client, since each tells the
    // sender something of the stream (probing is what a review looks for).
    let mut stale = sample_event(second, "sentence.started", "2026-01-06T10:00:00+01:00");
    stale["expected_version"] = json!(0);
    let refused = app
        .post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": [stale]}),
        )
        .await;
    expect_problem(refused, StatusCode::CONFLICT, "version_conflict").await;
    // An id already recorded, sent with other content, alone or in a batch: refused, logged.
    let mut conflicting = sentenced.clone();
    conflicting["occurred_at"] = json!("2026-01-08T09:00:00+01:00");
    let refused = app.post_event(PRISON_WRITER, &conflicting).await;
    expect_problem(refused, StatusCode::CONFLICT, "duplicate_conflict").await;
    let refused = app
        .post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": [conflicting]}),
        )
        .await;
    expect_problem(refused, StatusCode::CONFLICT, "duplicate_conflict").await;

    let logged = |client: Uuid| {
        let app = &app;
        async move {
            app.trail_of(client)
                .await
                .iter()
                .map(|entry| {
                    (
                        entry["operation"].as_str().unwrap().to_owned(),
                        entry["outcome"].as_str().unwrap().to_owned(),
                        entry["returned"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let id = |event: &Value| event["id"].as_str().unwrap().to_owned();
    let first_entries = [
        (
            "collection",
            "allowed",
            format!("{},{}", id(&registered), id(&sentenced)),
        ),
        ("alteration", "allowed", id(&retraction)),
    ];
    let denied = ("collection", "denied", String::new());
    let first_entries: Vec<_> = first_entries
        .iter()
        .chain(first_entries.iter())
        .chain([&denied, &denied])
        .map(|(operation, outcome, returned)| {
            (operation.to_string(), outcome.to_string(), returned.clone())
        })
        .collect();
    assert_eq!(logged(first).await, first_entries);
    let mut second_entries = vec![("collection".to_owned(), "allowed".to_owned(), id(&other)); 2];
    second_entries.push(("collection".to_owned(), "denied".to_owned(), String::new()));
    assert_eq!(logged(second).await, second_entries);
}

/// A batch refused for a type its agency may not post is logged as a batch refused for want of
/// the role is, and as an import is: one entry for the attempt and one under each client named.
#[tokio::test]
async fn a_batch_refused_for_a_type_names_every_client_in_the_trail() {
    let app = spawn_app().await;
    let (allowed, forbidden) = (Uuid::new_v4(), Uuid::new_v4());
    let batch = json!({"events": [
        event(allowed, "contact.made", "2026-01-05T09:00:00+01:00", json!({"kind": "phone"})),
        sample_event(forbidden, "client.released", "2026-01-05T10:00:00+01:00"),
    ]});
    let problem = expect_problem(
        app.post("/v1/events/batch", NGO_WRITER, &batch).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(problem["index"], 1);
    for client in [allowed, forbidden] {
        let trail = app.trail_of(client).await;
        assert_eq!(trail.len(), 1, "{client}: {trail:?}");
        assert_eq!(trail[0]["outcome"], "denied");
    }
}

/// Reads of a client id nobody recorded are logged all the same, as refused for a reader scoped
/// by need-to-know: someone probing which ids exist is what a review looks for. Such a reader is
/// answered as for a client out of scope, so that probing does not tell which ids exist.
#[tokio::test]
async fn reads_of_an_unknown_client_are_logged() {
    let app = spawn_app().await;
    let unknown = Uuid::new_v4();
    let known = Uuid::new_v4();
    let registered = app
        .post_event(
            PRISON_WRITER,
            &crate::samples::sample_event(known, "client.registered", "2026-01-05T09:00:00Z"),
        )
        .await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    for path in [
        "/v1/clients/{id}/events",
        "/v1/clients/{id}/travel-map",
        "/v1/clients/{id}/travel-map?as_of=2026-01-01T00:00:00Z",
    ] {
        let answer = async |client: Uuid| {
            let path = path.replace("{id}", &client.to_string());
            let response = get_with(&app, &path, COORDINATOR, "case_management").await;
            let status = response.status();
            let mut problem: Value = response.json().await.unwrap();
            problem.as_object_mut().unwrap().remove("instance");
            (status, problem)
        };
        let (status, problem) = answer(unknown).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(problem["code"], "forbidden");
        assert_eq!((status, problem), answer(known).await, "{path}");
    }
    expect_problem(
        get_with(
            &app,
            &format!("/v1/clients/{unknown}/subject-access"),
            DPO,
            "subject_access",
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let trail = app.trail_of(unknown).await;
    let logged: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|entry| {
            (
                entry["credential"].as_str().unwrap(),
                entry["operation"].as_str().unwrap(),
                entry["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        logged,
        [
            (
                "coordinator-desk",
                "consultation",
                "GET /v1/clients/{client_id}/events"
            ),
            (
                "coordinator-desk",
                "consultation",
                "GET /v1/clients/{client_id}/travel-map"
            ),
            (
                "coordinator-desk",
                "consultation",
                "GET /v1/clients/{client_id}/travel-map"
            ),
            (
                "dpo",
                "disclosure",
                "GET /v1/clients/{client_id}/subject-access"
            ),
        ]
    );
    // No agency has need-to-know of a client nobody recorded: the coordinator's probes are
    // refusals, while a reviewer, who may read any client, was allowed to look.
    let outcomes: Vec<&str> = trail
        .iter()
        .map(|entry| entry["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["denied", "denied", "denied", "allowed"]);

    // An emergency read of an id nobody recorded finds nothing and grants nothing: once the
    // person is recorded, reading them needs a reason of its own.
    let later = Uuid::new_v4();
    let emergency = |why: Option<&'static str>| {
        let mut request = app
            .http
            .get(app.url(&format!("/v1/clients/{later}/events")))
            .bearer_auth(COORDINATOR)
            .header("x-purpose", "emergency");
        if let Some(why) = why {
            request = request.header("x-justification", why);
        }
        request.send()
    };
    let looked = emergency(Some("found unconscious, no id")).await.unwrap();
    expect_problem(looked, StatusCode::NOT_FOUND, "not_found").await;
    let grants = app.get_ok("/v1/audit/break-glass", DPO).await;
    assert_eq!(grants["grants"].as_array().unwrap().len(), 0, "{grants}");
    let registered = app
        .post_event(
            PRISON_WRITER,
            &crate::samples::sample_event(later, "client.registered", "2026-01-05T09:00:00Z"),
        )
        .await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    expect_problem(
        emergency(None).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let trail = app.trail_of(later).await;
    assert_eq!(trail[0]["outcome"], "denied");
    assert_eq!(trail[0]["purpose"], "emergency");
    assert_eq!(trail[0]["justification"], "found unconscious, no id");
}

#[tokio::test]
async fn a_feed_page_shows_in_the_trail_of_every_client_it_disclosed() {
    let app = spawn_app().await;
    let (first, second, unread) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let events = [
        sample_event(first, "client.registered", "2026-01-05T09:00:00+01:00"),
        sample_event(second, "client.registered", "2026-01-05T10:00:00+01:00"),
        sample_event(first, "sentence.started", "2026-01-06T09:00:00+01:00"),
        sample_event(unread, "client.registered", "2026-01-05T11:00:00+01:00"),
    ];
    for event in &events {
        assert_eq!(
            app.post_event(PRISON_WRITER, event).await.status(),
            StatusCode::CREATED
        );
    }
    // A page of the first three events only.
    let page = app.get_ok("/v1/events?after=0&limit=3", AUDITOR).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3);

    let disclosures = |client: Uuid| {
        let app = &app;
        async move {
            app.trail_of(client)
                .await
                .iter()
                .filter(|entry| entry["operation"] == "disclosure")
                .map(|entry| {
                    assert_eq!(entry["action"], "GET /v1/events", "{entry}");
                    assert_eq!(entry["credential"], "dpo-office", "{entry}");
                    assert_eq!(entry["purpose"], "case_management", "{entry}");
                    entry["returned"].as_str().unwrap().to_owned()
                })
                .collect::<Vec<_>>()
        }
    };
    let id = |n: usize| events[n]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        disclosures(first).await,
        vec![format!("{},{}", id(0), id(2))]
    );
    assert_eq!(disclosures(second).await, vec![id(1)]);
    assert!(disclosures(unread).await.is_empty());

    // The page's own entry names all it returned, and no client.
    let trail = app
        .get_ok("/v1/audit/entries?after=0&limit=1000", AUDITOR)
        .await;
    let pages: Vec<&Value> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == "GET /v1/events" && entry["client_id"].is_null())
        .collect();
    assert_eq!(pages.len(), 1, "{trail}");
    assert_eq!(
        pages[0]["returned"],
        format!("{},{},{}", id(0), id(1), id(2))
    );
}

fn verify(data: &Path, checkpoint: Option<&Path>) -> (bool, String) {
    verify_with_key(data, checkpoint, None)
}

fn verify_with_key(data: &Path, checkpoint: Option<&Path>, key: Option<&str>) -> (bool, String) {
    let mut command = travelmap_command();
    command
        .args(["audit", "verify", "--data-dir"])
        .arg(data)
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_STORE");
    if let Some(checkpoint) = checkpoint {
        command.arg("--checkpoint").arg(checkpoint);
    }
    if let Some(key) = key {
        command.arg("--public-key").arg(key);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // 0 intact, 3 broken, 1 could not check: never a usage error's status (2).
    assert!(
        matches!(output.status.code(), Some(0 | 1 | 3)),
        "{:?}: {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    if stdout.contains("audit trail broken") {
        assert_eq!(output.status.code(), Some(3), "{stdout}");
    }
    (output.status.success(), stdout)
}

/// Runs `change` on a copy of the data directory's audit trail and verifies the copy against
/// the pinned `key`.
fn tampered(data: &Path, checkpoint: Option<&Path>, key: &str, change: &str) -> (bool, String) {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(data.join("audit.sqlite"), copy.path().join("audit.sqlite")).unwrap();
    let connection = rusqlite::Connection::open(copy.path().join("audit.sqlite")).unwrap();
    connection.execute_batch(change).unwrap();
    drop(connection);
    verify_with_key(copy.path(), checkpoint, Some(key))
}

#[tokio::test]
async fn audit_verify_finds_every_edited_removed_or_reordered_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(&config)).await;
    let http = reqwest::Client::new();
    let client = Uuid::new_v4();
    for index in 0..4 {
        let body = sample_event(client, "contact.made", "2026-01-01T00:00:00Z");
        let response = http
            .post(format!("{}/v1/events", server.address))
            .bearer_auth(PROBATION_WRITER)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{index}");
    }
    let checkpoint: Value = http
        .get(format!("{}/v1/audit/checkpoint", server.address))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(checkpoint["seq"], 5);
    let checkpoint_file = dir.path().join("checkpoint.json");
    std::fs::write(&checkpoint_file, checkpoint.to_string()).unwrap();
    // Verification reads beside the running server.
    let (intact, report) = verify(&data, Some(&checkpoint_file));
    assert!(intact, "{report}");
    assert!(report.contains("5 entries"), "{report}");
    server.signal("TERM");
    assert!(server.wait().success());

    // The checkpoint is signed by the service's key, which an auditor pins.
    let output = travelmap_command()
        .args(["audit", "public-key", "--data-dir"])
        .arg(&data)
        .env_remove("TRAVELMAP_CONFIG")
        .output()
        .unwrap();
    let public_key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(checkpoint["public_key"], json!(public_key));
    let (intact, report) = verify_with_key(&data, Some(&checkpoint_file), Some(&public_key));
    assert!(intact, "{report}");
    let stranger = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    let (intact, report) = verify_with_key(&data, Some(&checkpoint_file), Some(stranger));
    assert!(
        !intact && report.contains("signature does not match"),
        "{report}"
    );
    // A mistyped key, or a key without a checkpoint to check, is a wrong argument (2), not a
    // broken trail (3) that would raise a tamper alarm.
    for args in [
        vec![
            "--checkpoint",
            checkpoint_file.to_str().unwrap(),
            "--public-key",
            "abc",
        ],
        vec!["--public-key", public_key.as_str()],
    ] {
        let output = travelmap_command()
            .args(["audit", "verify", "--data-dir"])
            .arg(&data)
            .args(&args)
            .env_remove("TRAVELMAP_CONFIG")
            .env_remove("TRAVELMAP_STORE")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A checkpoint that is not there, or not one, is named for what is wrong with it, before
    // any key is looked for (in a directory holding none).
    let empty = tempfile::tempdir().unwrap();
    let not_a_checkpoint = dir.path().join("partial.json");
    std::fs::write(&not_a_checkpoint, r#"{"seq": 1}"#).unwrap();
    for (file, expected) in [
        (dir.path().join("missing.json"), "reading the checkpoint"),
        (not_a_checkpoint, "it lacks `hash`"),
    ] {
        let output = travelmap_command()
            .args(["audit", "verify", "--data-dir"])
            .arg(empty.path())
            .arg("--checkpoint")
            .arg(&file)
            .env_remove("TRAVELMAP_CONFIG")
            .env_remove("TRAVELMAP_STORE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{}: {stderr}",
            file.display()
        );
    }
    // A forged checkpoint (another head, the old signature) is rejected.
    let mut forged = checkpoint.clone();
    forged["seq"] = json!(4);
    let forged_file = dir.path().join("forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let (intact, report) = verify_with_key(&data, Some(&forged_file), Some(&public_key));
    assert!(
        !intact && report.contains("signature does not match"),
        "{report}"
    );
    // So is one signed by a key of the forger's own that it names itself: without
    // --public-key, the key the service keeps beside the store is used, not the named one.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let message =
        travelmap_domain::audit::checkpoint_message(5, checkpoint["hash"].as_str().unwrap());
    let mut self_signed = checkpoint.clone();
    self_signed["public_key"] = json!(hex::encode(forger.verifying_key().as_bytes()));
    self_signed["signature"] = json!(hex::encode(
        ed25519_dalek::Signer::sign(&forger, message.as_bytes()).to_bytes()
    ));
    let self_signed_file = dir.path().join("self-signed.json");
    std::fs::write(&self_signed_file, self_signed.to_string()).unwrap();
    let (intact, report) = verify(&data, Some(&self_signed_file));
    assert!(
        !intact && report.contains("signature does not match"),
        "{report}"
    );
    // Where no service key is at hand, a checkpoint needs --public-key.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(
        data.join("audit.sqlite"),
        elsewhere.path().join("audit.sqlite"),
    )
    .unwrap();
    let (intact, _) = verify(elsewhere.path(), Some(&checkpoint_file));
    assert!(!intact);
    let (intact, report) =
        verify_with_key(elsewhere.path(), Some(&checkpoint_file), Some(&public_key));
    assert!(intact, "{report}");

    let cases = [
        (
            "UPDATE audit SET purpose = 'statistics' WHERE seq = 3",
            "entry 3 does not match",
        ),
        (
            "UPDATE audit SET credential = 'someone-else' WHERE seq = 5",
            "entry 5 does not match",
        ),
        ("DELETE FROM audit WHERE seq = 2", "entry 3 follows entry 1"),
        (
            "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; \
             UPDATE audit SET seq = 3 WHERE seq = -2",
            "entry 2 does not match",
        ),
        (
            "DELETE FROM audit WHERE seq >= 4",
            "the entries end at entry 3, but the store records its head at entry 5",
        ),
        // Cut short at the end, with the head moved back too: the checkpoint still tells.
        (
            "DELETE FROM audit WHERE seq >= 4; \
             UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit WHERE seq = 3)",
            "before the checkpoint at entry 5",
        ),
        // An entry added before the first: the chain from 1 on still checks, so it is counted.
        (
            "INSERT INTO audit SELECT 0, at, 'coordinator-x', agency, actor, operation, \
             client_id, purpose, justification, request_id, outcome, action, returned, hash \
             FROM audit WHERE seq = 1",
            "1 entries are numbered 0 or below",
        ),
        // A row that no longer reads as an entry is a break too, not a failure to run.
        (
            "UPDATE audit SET at = 'hello' WHERE seq = 3",
            "the entries after entry 2 cannot be read",
        ),
        (
            "UPDATE audit SET hash = x'00' WHERE seq = (SELECT max(seq) FROM audit)",
            "cannot be read",
        ),
    ];
    for (change, expected) in cases {
        let (intact, report) = tampered(&data, Some(&checkpoint_file), &public_key, change);
        assert!(!intact, "{change}: not caught ({report})");
        assert!(report.contains(expected), "{change}: {report}");
    }
    let (intact, report) = verify(&data, Some(&checkpoint_file));
    assert!(intact, "{report}");
}

/// A write whose audit entries the trail refuses is not recorded: it is answered `503` and
/// nothing is stored, so that no event is ever without its entries. Once the trail takes
/// entries again, the same request is recorded as new, with its entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_trail_refused_is_not_recorded() {
    let app = spawn_app().await;
    let trail = RefusingTrail::start(&app);
    let client = Uuid::new_v4();
    let event = sample_event(client, "client.registered", "2026-01-05T09:00:00+01:00");
    let refused = app.post_event(PRISON_WRITER, &event).await;
    let problem = expect_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was recorded"),
        "{problem}"
    );
    let second = Uuid::new_v4();
    let batch = json!({"events": [
        sample_event(second, "client.registered", "2026-01-05T09:00:00+01:00"),
        sample_event(client, "sentence.started", "2026-01-06T09:00:00+01:00"),
    ]});
    let refused = app.post("/v1/events/batch", PRISON_WRITER, &batch).await;
    expect_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    // (Read once the trail takes entries: reading the feed is logged too.)
    trail.takes_entries_again();
    let feed = app.feed().await;
    assert!(feed.is_empty(), "refused writes were recorded: {feed:?}");

    let retried = app.post_event(PRISON_WRITER, &event).await;
    assert_eq!(retried.status(), StatusCode::CREATED);
    let retried = app.post("/v1/events/batch", PRISON_WRITER, &batch).await;
    assert_eq!(retried.status(), StatusCode::CREATED);
    let id = event["id"].as_str().unwrap().to_owned();
    let collected: Vec<Value> = app
        .trail_of(client)
        .await
        .into_iter()
        .filter(|entry| {
            entry["operation"] == "collection"
                && entry["returned"]
                    .as_str()
                    .is_some_and(|returned| returned.contains(&id))
        })
        .collect();
    assert_eq!(collected.len(), 1, "{collected:?}");
    assert_eq!(app.feed().await.len(), 3);
    app.stop().await;
}

/// An erasure whose entry the trail refuses is recorded all the same (the keys are gone): the
/// officer is told `503`, the entry is written in the background once the trail takes it again,
/// and a retry is answered with the erasure's receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_the_trail_refused_is_audited_once_it_takes_entries_again() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let mut registered = sample_event(client, "client.registered", "2026-01-05T09:00:00+01:00");
    registered["data"] = json!({"personal": {"given_name": "Jarmila"}});
    assert_eq!(
        app.post_event(PRISON_WRITER, &registered).await.status(),
        StatusCode::CREATED
    );
    let trail = RefusingTrail::start(&app);
    let erase = || {
        app.http
            .delete(app.url(&format!("/v1/clients/{client}/personal-data")))
            .bearer_auth(DPO)
            .json(&json!({"reason": "the client asked"}))
            .send()
    };
    let refused = erase().await.unwrap();
    let problem = expect_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("may have been recorded"),
        "{problem}"
    );
    trail.takes_entries_again();

    let retried = erase().await.unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let receipt: Value = retried.json().await.unwrap();
    let id = receipt["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let erasures: Vec<Value> = app
            .trail_of(client)
            .await
            .into_iter()
            .filter(|entry| {
                entry["operation"] == "erasure"
                    && entry["outcome"] == "allowed"
                    && entry["returned"] == json!(id)
            })
            .collect();
        // The retry's own entry and the deferred one of the first request.
        if erasures.len() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deferred entry never came: {erasures:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    app.stop().await;
}
