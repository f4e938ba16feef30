//! Reading back: histories, time travel, travel maps, identifier look-up, the feed, the
//! catalogue and the OpenAPI document.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::samples::{sample_event, valid_data};
use crate::support::*;

async fn post(app: &TestApp, key: &str, body: &Value) -> Value {
    let response = app.post_event(key, body).await;
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{}: {answer}", body["type"]);
    answer
}

#[tokio::test]
async fn out_of_order_events_are_mapped_by_when_they_happened() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    // The release is posted before the sentence it ends: agencies post late.
    let release = sample_event(client, "client.released", "2026-02-01T09:00:00+01:00");
    let sentence = sample_event(client, "sentence.started", "2024-02-01T09:00:00+01:00");
    post(&app, PRISON_WRITER, &release).await;
    let last = post(&app, PRISON_WRITER, &sentence).await;

    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let recorded: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        recorded,
        ["client.released", "sentence.started"],
        "history is in stream order"
    );

    let map = app
        .travel_map(client, last["position"].as_u64().unwrap())
        .await;
    let steps: Vec<&str> = map["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["sentence.started", "client.released"],
        "the map is in occurred_at order"
    );
    assert_eq!(map["phase"], "released");
    let phases: Vec<&str> = map["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["in_custody", "released"]);
    assert_eq!(map["phases"][0]["to"], "2026-02-01T09:00:00+01:00");
}

/// Only a release ends custody: a programme dropped or completed, or an offence recorded, while
/// the client is in prison is a step, not the end of the stay. Out of custody, they begin their
/// phase, and the first-day flag stays up with them, as its alert does, until a return to
/// custody.
#[tokio::test]
async fn programme_ends_in_custody_keep_the_client_in_custody_and_the_first_day_flag_stands() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let programme = |event_type: &str, at: &str| {
        let data = match event_type {
            "programme.dropped_out" => json!({"programme": "vol-mentoring", "reason": "moved"}),
            _ => json!({"programme": "vol-mentoring"}),
        };
        event(client, event_type, at, data)
    };
    post(
        &app,
        PRISON_WRITER,
        &event(
            client,
            "sentence.started",
            "2025-02-01T10:00:00Z",
            json!({"prison": "Opava", "start_date": "2025-02-01"}),
        ),
    )
    .await;
    for (key, body) in [
        (
            NGO_WRITER,
            programme("programme.completed", "2025-06-01T10:00:00Z"),
        ),
        (
            NGO_WRITER,
            programme("programme.dropped_out", "2025-09-01T10:00:00Z"),
        ),
        (
            COURT_WRITER,
            event(
                client,
                "reoffence.recorded",
                "2025-10-01T10:00:00Z",
                json!({}),
            ),
        ),
    ] {
        post(&app, key, &body).await;
    }
    let released = post(
        &app,
        PRISON_WRITER,
        &event(
            client,
            "client.released",
            "2026-03-01T08:00:00Z",
            json!({"release_kind": "conditional", "supervision": true}),
        ),
    )
    .await;
    let map = app
        .travel_map(client, released["position"].as_u64().unwrap())
        .await;
    assert_eq!(map["phases"].as_array().unwrap().len(), 2, "{map}");
    assert_eq!(map["phases"][0]["phase"], "in_custody");
    assert_eq!(map["phases"][0]["to"], "2026-03-01T08:00:00Z");
    assert_eq!(map["phase"], "released");
    assert_eq!(map["flags"][0]["kind"], "no_first_day_contact");

    // Out of custody, dropping out begins its phase; nobody has met the client yet, so the
    // flag stays, and the alert of the same name too.
    let dropped = post(
        &app,
        NGO_WRITER,
        &programme("programme.dropped_out", "2026-03-05T10:00:00Z"),
    )
    .await;
    let map = app
        .travel_map(client, dropped["position"].as_u64().unwrap())
        .await;
    assert_eq!(map["phase"], "dropped_out");
    assert_eq!(map["flags"][0]["kind"], "no_first_day_contact", "{map}");
    assert_eq!(map["flags"][0]["since"], "2026-03-02T08:00:00Z");
    let alerts = app
        .get_ok(
            &format!(
                "/v1/alerts?kind=no_first_day_contact&client_id={client}&min_position={}",
                dropped["position"]
            ),
            ADMIN,
        )
        .await;
    assert_eq!(alerts["alerts"].as_array().unwrap().len(), 1, "{alerts}");

    // A recall takes the client back into custody: no flag.
    let recalled = post(
        &app,
        PROBATION_WRITER,
        &event(client, "client.recalled", "2026-04-01T10:00:00Z", json!({})),
    )
    .await;
    let map = app
        .travel_map(client, recalled["position"].as_u64().unwrap())
        .await;
    assert_eq!(map["phase"], "in_custody");
    assert_eq!(map["flags"], json!([]));
}

/// The first-day flag is up from the very moment the day ends (its `since`), as the alert is.
#[tokio::test]
async fn the_first_day_flag_is_up_at_its_since() {
    use chrono::SubsecRound;
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    // Released a day ago, less a few seconds: the window closes just ahead, within the ten
    // minutes an `as_of` may lie in the future.
    let released_at =
        chrono::Utc::now() - chrono::Duration::hours(24) + chrono::Duration::seconds(5);
    let released_at = released_at.trunc_subsecs(0);
    post(
        &app,
        PRISON_WRITER,
        &event(
            client,
            "client.released",
            &released_at.to_rfc3339(),
            json!({"release_kind": "end_of_sentence", "supervision": false}),
        ),
    )
    .await;
    let closes = released_at + chrono::Duration::hours(24);
    let at = |moment: chrono::DateTime<chrono::Utc>| {
        let moment = moment.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        format!("/v1/clients/{client}/travel-map?as_of={moment}")
    };
    let before = app
        .get_ok(&at(closes - chrono::Duration::microseconds(1)), AUDITOR)
        .await;
    assert_eq!(before["flags"], json!([]), "{before}");
    let then = app.get_ok(&at(closes), AUDITOR).await;
    assert_eq!(then["flags"][0]["kind"], "no_first_day_contact", "{then}");
    assert_eq!(
        then["flags"][0]["since"],
        closes.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
}

#[tokio::test]
async fn as_of_shows_what_had_been_recorded_by_then() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let first = post(
        &app,
        PRISON_WRITER,
        &sample_event(client, "sentence.started", "2024-02-01T09:00:00Z"),
    )
    .await;
    let between = first["recorded_at"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = post(
        &app,
        PRISON_WRITER,
        &sample_event(client, "client.released", "2026-02-01T09:00:00Z"),
    )
    .await;
    assert!(second["recorded_at"].as_str().unwrap() > between.as_str());

    let encoded = between.replace('+', "%2B");
    let then = app
        .get_ok(
            &format!("/v1/clients/{client}/events?as_of={encoded}"),
            AUDITOR,
        )
        .await;
    assert_eq!(then["events"].as_array().unwrap().len(), 1);
    assert_eq!(then["events"][0]["type"], "sentence.started");
    let now = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    assert_eq!(now["events"].as_array().unwrap().len(), 2);

    let map_then = app
        .get_ok(
            &format!("/v1/clients/{client}/travel-map?as_of={encoded}"),
            AUDITOR,
        )
        .await;
    assert_eq!(map_then["phase"], "in_custody");
    assert_eq!(map_then["steps"].as_array().unwrap().len(), 1);
    let map_now = app
        .travel_map(client, second["position"].as_u64().unwrap())
        .await;
    assert_eq!(map_now["phase"], "released");
    // The moment a map is derived for is kept to the microsecond, like every recorded time.
    let derived_at = map_now["as_of"].as_str().unwrap();
    let fraction = derived_at
        .split_once('.')
        .map_or("", |(_, rest)| rest.trim_end_matches('Z'));
    assert!(fraction.len() <= 6, "{derived_at}");

    // Before anything was recorded, the client did not exist yet.
    let before = app
        .get(
            &format!("/v1/clients/{client}/travel-map?as_of=2000-01-01T00:00:00Z"),
            AUDITOR,
        )
        .await;
    expect_problem(before, StatusCode::NOT_FOUND, "not_found").await;
    let empty = app
        .get_ok(
            &format!("/v1/clients/{client}/events?as_of=2000-01-01T00:00:00Z"),
            AUDITOR,
        )
        .await;
    assert_eq!(empty["events"], json!([]));
    let malformed = app
        .get(
            &format!("/v1/clients/{client}/events?as_of=yesterday"),
            AUDITOR,
        )
        .await;
    let problem = expect_problem(malformed, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "as_of");
    // A leap second is no moment an answer could name back.
    let leap = app
        .get(
            &format!("/v1/clients/{client}/travel-map?as_of=2026-06-30T23:59:60Z"),
            AUDITOR,
        )
        .await;
    let problem = expect_problem(leap, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("leap"),
        "{problem}"
    );

    // A moment still to come has no record: its map would show what has not happened.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for read in ["events", "travel-map"] {
        let future = app
            .get(
                &format!("/v1/clients/{client}/{read}?as_of={tomorrow}"),
                AUDITOR,
            )
            .await;
        let problem = expect_problem(future, StatusCode::BAD_REQUEST, "invalid_parameter").await;
        assert_eq!(problem["field"], "as_of");
        assert!(
            problem["detail"].as_str().unwrap().contains("future"),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn unknown_clients_are_404() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    expect_problem(
        app.get(&format!("/v1/clients/{client}/events"), AUDITOR)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_problem(
        app.get(&format!("/v1/clients/{client}/travel-map"), AUDITOR)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn clients_are_found_by_agency_identifiers() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        &sample_event(client, "client.registered", "2024-01-01T00:00:00Z"),
    )
    .await;
    let added = post(
        &app,
        PROBATION_WRITER,
        &sample_event(client, "identifier.added", "2024-03-01T00:00:00Z"),
    )
    .await;
    app.travel_map(client, added["position"].as_u64().unwrap())
        .await;

    for identifier in ["prison_number:OP-2026-0117", "probation_case:PMS-77/2026"] {
        let found = app
            .get_ok(
                &format!("/v1/clients?identifier={identifier}"),
                PRISON_WRITER,
            )
            .await;
        assert_eq!(
            found["clients"],
            json!([{"client_id": client}]),
            "{identifier}"
        );
    }
    let none = app
        .get_ok("/v1/clients?identifier=prison_number:nobody", AUDITOR)
        .await;
    assert_eq!(none["clients"], json!([]));
    let malformed = app.get("/v1/clients?identifier=no-colon", AUDITOR).await;
    let problem = expect_problem(malformed, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "identifier");
    expect_problem(
        app.get("/v1/clients", AUDITOR).await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
}

#[tokio::test]
async fn the_travel_map_shows_who_works_with_the_client_and_what_is_next() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let released_at = "2026-02-01T09:00:00+01:00";
    let events = [
        sample_event(client, "sentence.started", "2024-02-01T09:00:00+01:00"),
        event(
            client,
            "involvement.opened",
            "2025-08-01T09:00:00+01:00",
            json!({"agency": "ngo-rubikon", "role": "mentor", "worker": "M-12"}),
        ),
        event(
            client,
            "involvement.opened",
            "2025-09-01T09:00:00+01:00",
            json!({"role": "probation_officer", "worker": "PO-1"}),
        ),
        event(
            client,
            "involvement.opened",
            "2025-10-01T09:00:00+01:00",
            json!({"role": "probation_officer", "worker": "PO-2", "reason": "transfer"}),
        ),
        event(
            client,
            "involvement.closed",
            "2025-10-01T09:00:00+01:00",
            json!({"role": "probation_officer", "worker": "PO-1", "reason": "transferred"}),
        ),
        event(
            client,
            "plan.agreed",
            "2025-09-15T09:00:00+01:00",
            json!({"areas": ["housing", "employment"]}),
        ),
        event(
            client,
            "need.assessed",
            "2025-09-20T09:00:00+01:00",
            json!({"area": "housing", "status": "support_required"}),
        ),
        sample_event(client, "client.released", released_at),
        event(
            client,
            "appointment.scheduled",
            "2026-02-01T10:00:00+01:00",
            json!({"appointment_id": "A-1", "at": "2026-02-03T10:00:00+01:00"}),
        ),
        event(
            client,
            "appointment.scheduled",
            "2026-02-01T10:00:00+01:00",
            json!({"appointment_id": "A-2", "at": "2099-02-03T10:00:00+01:00"}),
        ),
        event(
            client,
            "appointment.scheduled",
            "2026-02-01T10:00:00+01:00",
            json!({"appointment_id": "A-3", "at": "2026-02-04T10:00:00+01:00"}),
        ),
        event(
            client,
            "appointment.missed",
            "2026-02-04T11:00:00+01:00",
            json!({"appointment_id": "A-3"}),
        ),
    ];
    let mut position = 0;
    let mut recorded_before_contact = String::new();
    for body in &events {
        // Probation keeps the appointments: an appointment id is its sender's own reference,
        // and the contact below (probation's) settles probation's appointment.
        let key = if [
            "involvement.opened",
            "involvement.closed",
            "appointment.scheduled",
            "appointment.missed",
        ]
        .contains(&body["type"].as_str().unwrap())
        {
            PROBATION_WRITER
        } else {
            PRISON_WRITER
        };
        let receipt = post(&app, key, body).await;
        position = receipt["position"].as_u64().unwrap();
        recorded_before_contact = receipt["recorded_at"].as_str().unwrap().to_owned();
    }
    let map = app.travel_map(client, position).await;
    assert_eq!(map["phase"], "released");
    assert_eq!(map["version"], 12);

    let involvements = map["involvements"].as_array().unwrap();
    assert_eq!(involvements.len(), 3);
    assert_eq!(involvements[0]["agency"], "ngo-rubikon");
    assert_eq!(
        involvements[0]["recorded_by"], "probation-opava",
        "recorded by another agency, which opened the NGO's access"
    );
    assert!(involvements[0]["to"].is_null());
    assert!(involvements[0]["closed_by"].is_null());
    assert_eq!(
        involvements[1]["agency"], "probation-opava",
        "defaults to the recording agency"
    );
    assert_eq!(involvements[1]["worker"], "PO-1");
    assert_eq!(involvements[1]["to"], "2025-10-01T09:00:00+01:00");
    assert_eq!(involvements[1]["closed_by"], "probation-opava");
    assert_eq!(involvements[2]["handover"], true);
    assert!(involvements[2]["to"].is_null());

    assert_eq!(map["needs"]["housing"]["status"], "support_required");
    assert_eq!(map["needs"]["employment"]["status"], "not_started");

    let next: Vec<(&str, bool)> = map["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["appointment_id"].as_str().unwrap(),
                a["overdue"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(next, [("A-1", true), ("A-2", false)]);

    // Released long ago and nobody met the client within 24 hours.
    let flags: Vec<&str> = map["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(flags, ["no_first_day_contact"]);

    // A first-day contact posted late (but dated the day of release) clears the flag.
    let contact = post(
        &app,
        PROBATION_WRITER,
        &event(
            client,
            "contact.made",
            "2026-02-01T15:00:00+01:00",
            json!({"kind": "first_day", "appointment_id": "A-1"}),
        ),
    )
    .await;
    let map = app
        .travel_map(client, contact["position"].as_u64().unwrap())
        .await;
    assert_eq!(map["flags"], json!([]));
    assert_eq!(
        map["next"].as_array().unwrap().len(),
        1,
        "the contact met appointment A-1"
    );

    // As the map stood before the contact was recorded, the flag was up.
    let before = app
        .get_ok(
            &format!("/v1/clients/{client}/travel-map?as_of={recorded_before_contact}"),
            AUDITOR,
        )
        .await;
    assert_eq!(before["flags"][0]["kind"], "no_first_day_contact");
    assert_eq!(before["flags"][0]["since"], "2026-02-02T08:00:00Z");
}

#[tokio::test]
async fn corrections_and_retractions_flow_into_the_map_and_the_history_keeps_the_original() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let released = sample_event(client, "client.released", "2026-02-01T09:00:00+01:00");
    let job = event(
        client,
        "job.placed",
        "2026-02-10T09:00:00+01:00",
        json!({"sector": "logistics"}),
    );
    post(&app, PRISON_WRITER, &released).await;
    post(&app, BUREAU_WRITER, &job).await;
    let target: Uuid = released["id"].as_str().unwrap().parse().unwrap();
    let job_id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    post(
        &app,
        PRISON_WRITER,
        &event(
            client,
            "event.corrected",
            "2026-02-11T09:00:00+01:00",
            valid_data("event.corrected", target),
        ),
    )
    .await;
    // Retracted by an agency that may post placements (the prison may not).
    let last = post(
        &app,
        BUREAU_WRITER,
        &event(
            client,
            "event.retracted",
            "2026-02-11T09:00:00+01:00",
            valid_data("event.retracted", job_id),
        ),
    )
    .await;

    let map = app
        .travel_map(client, last["position"].as_u64().unwrap())
        .await;
    let steps = map["steps"].as_array().unwrap();
    assert_eq!(
        steps.len(),
        1,
        "the retracted job is gone from the map: {steps:?}"
    );
    assert_eq!(steps[0]["data"]["municipality"], "Ostrava");
    assert_eq!(steps[0]["corrections"][0]["reason"], "wrong municipality");
    assert_eq!(steps[0]["corrections"][0]["agency"], "prison-opava");

    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(
        events[0]["data"]["municipality"], "Opava",
        "the original stays as recorded"
    );
    assert_eq!(events[2]["type"], "event.corrected");

    // A retracted event cannot be corrected again.
    let late = event(
        client,
        "event.corrected",
        "2026-02-12T09:00:00+01:00",
        json!({"event_id": job_id, "reason": "x", "data": {}}),
    );
    expect_problem(
        app.post_event(PRISON_WRITER, &late).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn the_global_feed_pages_in_commit_order() {
    let app = spawn_app().await;
    let mut sent = Vec::new();
    for index in 0..25 {
        let body = event(
            Uuid::new_v4(),
            "job.placed",
            "2026-01-01T00:00:00Z",
            json!({}),
        );
        post(
            &app,
            if index % 2 == 0 {
                BUREAU_WRITER
            } else {
                PROBATION_WRITER
            },
            &body,
        )
        .await;
        sent.push(body["id"].clone());
    }
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = app
            .get_ok(&format!("/v1/events?after={after}&limit=10"), AUDITOR)
            .await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(page["next_after"], after);
            break;
        }
        assert!(events.len() <= 10);
        after = page["next_after"].as_u64().unwrap();
        assert_eq!(events.last().unwrap()["position"], after);
        seen.extend(events.iter().map(|event| event["id"].clone()));
    }
    assert_eq!(seen, sent);
    let problem = expect_problem(
        app.get("/v1/events?limit=5000", AUDITOR).await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(problem["field"], "limit");
    for (query, field) in [
        ("after=-1", "after"),
        ("limit=abc", "limit"),
        ("after=9223372036854775808", "after"),
    ] {
        let problem = expect_problem(
            app.get(&format!("/v1/events?{query}"), AUDITOR).await,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        )
        .await;
        assert_eq!(problem["field"], field, "{query}");
    }
    // A cursor past the end was never sent (a typo, or a log restored from an older backup):
    // an empty page would hand it back and skip, unsaid, whatever comes up to it.
    let head = seen.len();
    let at_head = app
        .get_ok(&format!("/v1/events?after={head}"), AUDITOR)
        .await;
    assert_eq!(at_head["events"], json!([]));
    assert_eq!(at_head["next_after"], head);
    let problem = expect_problem(
        app.get(&format!("/v1/events?after={}", head + 1), AUDITOR)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(problem["field"], "after");
}

#[tokio::test]
async fn concurrent_writers_to_one_client_get_distinct_versions_and_nothing_is_lost() {
    let app = std::sync::Arc::new(spawn_app().await);
    let client = Uuid::new_v4();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let body = event(
                client,
                "contact.made",
                "2026-01-01T00:00:00Z",
                json!({"kind": "phone"}),
            );
            let response = app.post_event(PROBATION_WRITER, &body).await;
            assert_eq!(response.status(), StatusCode::CREATED);
            response.json::<Value>().await.unwrap()
        }));
    }
    let mut versions = HashSet::new();
    let mut positions = HashSet::new();
    for task in tasks {
        let receipt = task.await.unwrap();
        versions.insert(receipt["version"].as_u64().unwrap());
        positions.insert(receipt["position"].as_u64().unwrap());
    }
    assert_eq!(versions, (1..=64).collect::<HashSet<_>>());
    assert_eq!(positions.len(), 64);
    assert_eq!(app.feed().await.len(), 64);
}

#[tokio::test]
async fn the_catalogue_publishes_a_schema_per_type() {
    let app = spawn_app().await;
    // The catalogue is public: it holds no personal data and senders need it before they have keys.
    let response = app
        .http
        .get(app.url("/v1/event-types"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let types = body["event_types"].as_array().unwrap();
    let released = types
        .iter()
        .find(|t| t["type"] == "client.released")
        .unwrap();
    assert_eq!(released["schema_version"], 1);
    assert!(released["description"].as_str().unwrap().len() > 10);
    assert_eq!(
        released["data"]["required"],
        json!(["release_kind", "supervision"])
    );
    assert_eq!(
        released["data"]["properties"]["release_kind"]["enum"],
        json!([
            "conditional",
            "parole",
            "end_of_sentence",
            "transfer",
            "other"
        ])
    );
    let registered = types
        .iter()
        .find(|t| t["type"] == "client.registered")
        .unwrap();
    assert_eq!(
        registered["personal_fields"],
        json!(["personal", "identifiers"])
    );
}

#[tokio::test]
async fn openapi_covers_every_endpoint() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for (path, method) in [
        ("/v1/events", "post"),
        ("/v1/events", "get"),
        ("/v1/events/batch", "post"),
        ("/v1/clients", "get"),
        ("/v1/clients/{client_id}/events", "get"),
        ("/v1/clients/{client_id}/travel-map", "get"),
        ("/v1/event-types", "get"),
        ("/healthz", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    for schema in [
        "EventRequest",
        "Receipt",
        "Problem",
        "TravelMap",
        "FeedPage",
        "BatchRequest",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    assert!(doc["paths"]["/v1/events"]["post"]["responses"]["409"].is_object());
    // Every operation: a unique id (generators key on it), the answers any of them may give,
    // and `X-Justification` wherever `X-Purpose` is read.
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id), "operationId {id} twice");
            let responses = &operation["responses"];
            assert!(responses["500"].is_object(), "{method} {path}: no 500");
            if path.starts_with("/v1/") && path != "/v1/event-types" {
                assert!(responses["503"].is_object(), "{method} {path}: no 503");
            }
            let headers: Vec<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|parameter| parameter["in"] == "header")
                .map(|parameter| parameter["name"].as_str().unwrap())
                .collect();
            if headers.contains(&"X-Purpose") && method == "get" {
                assert!(
                    headers.contains(&"X-Justification"),
                    "{method} {path}: X-Justification"
                );
            }
        }
    }
    let report = &doc["paths"]["/v1/clients/{client_id}/subject-access"]["get"]["responses"]["200"];
    assert!(report["content"]["text/html"].is_object(), "{report}");
    let health = app.get_ok("/healthz", ADMIN).await;
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn a_restarted_app_serves_the_same_history_and_map() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        &sample_event(client, "sentence.started", "2024-02-01T09:00:00Z"),
    )
    .await;
    let last = post(
        &app,
        PRISON_WRITER,
        &sample_event(client, "client.released", "2026-02-01T09:00:00Z"),
    )
    .await;
    let mut map = app
        .travel_map(client, last["position"].as_u64().unwrap())
        .await;
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;

    let app = spawn_app_in(app.stop().await).await;
    assert_eq!(
        app.get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
            .await,
        history
    );
    let mut again = app
        .travel_map(client, last["position"].as_u64().unwrap())
        .await;
    map["as_of"] = Value::Null;
    again["as_of"] = Value::Null;
    assert_eq!(again, map);
    // Positions continue after a restart rather than starting over.
    let next = post(
        &app,
        PRISON_WRITER,
        &event(
            client,
            "contact.made",
            "2026-02-01T12:00:00Z",
            json!({"kind": "first_day"}),
        ),
    )
    .await;
    assert_eq!(next["position"], 3);
    assert_eq!(next["version"], 3);
}

#[tokio::test]
async fn occurred_at_is_kept_to_the_microsecond() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let body = event(
        client,
        "job.placed",
        "2026-01-01T09:00:00.123456789+01:00",
        json!({}),
    );
    post(&app, BUREAU_WRITER, &body).await;
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    assert_eq!(
        history["events"][0]["occurred_at"],
        "2026-01-01T09:00:00.123456+01:00"
    );
    // A retry with the original nanoseconds is still the same event.
    assert_eq!(
        app.post_event(BUREAU_WRITER, &body).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_or_repeated_query_parameters_are_refused_by_name() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    // A misspelt parameter would otherwise be ignored: `as_of` on the feed (which has none)
    // would return the whole feed to a caller who believes it asked for a moment.
    let refused = [
        (
            "/v1/events?after=0&as_of=2026-01-01T00:00:00Z".to_owned(),
            "as_of",
        ),
        (
            format!("/v1/clients/{client}/travel-map?asof=2026-01-01T00:00:00Z"),
            "asof",
        ),
        (
            format!(
                "/v1/clients/{client}/events?as_of=2026-01-01T00:00:00Z&as_of=2027-01-01T00:00:00Z"
            ),
            "as_of",
        ),
    ];
    for (path, field) in refused {
        let problem = expect_problem(
            app.get(&path, AUDITOR).await,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        )
        .await;
        assert_eq!(problem["field"], field, "{path}");
    }
}

#[tokio::test]
async fn endpoints_without_query_parameters_refuse_any() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let registered = sample_event(client, "client.registered", "2026-01-05T09:00:00+01:00");
    // A sender that believes it asked for a dry run must not have its event stored.
    let problem = expect_problem(
        app.post("/v1/events?dry_run=true", PRISON_WRITER, &registered)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(problem["field"], "dry_run");
    let batch = json!({"events": [registered]});
    let problem = expect_problem(
        app.post("/v1/events/batch?validate_only=1", PRISON_WRITER, &batch)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(problem["field"], "validate_only");
    assert!(app.feed().await.is_empty(), "nothing was stored");
    // Reads too; the endpoint's answer is otherwise unchanged.
    for (path, field) in [
        ("/v1/event-types?type=client.released", "type"),
        ("/healthz?verbose", "verbose"),
        ("/v1/audit/checkpoint?seq=3", "seq"),
    ] {
        let problem = expect_problem(
            app.get(path, AUDITOR).await,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        )
        .await;
        assert_eq!(problem["field"], field, "{path}");
    }
    assert_eq!(app.get("/healthz", AUDITOR).await.status(), StatusCode::OK);
    // An empty query is no parameter.
    assert_eq!(app.get("/healthz?", AUDITOR).await.status(), StatusCode::OK);
    // The subject access report takes `format`, and nothing else, and only a known format.
    assert_eq!(
        app.post_event(PRISON_WRITER, &registered).await.status(),
        StatusCode::CREATED
    );
    for (query, field) in [("format=htm", "format"), ("format=html&lang=cs", "lang")] {
        let path = format!("/v1/clients/{client}/subject-access?{query}");
        let problem = expect_problem(
            app.get_for(&path, DPO, "subject_access").await,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        )
        .await;
        assert_eq!(problem["field"], field, "{path}");
    }
    let html = app
        .get_for(
            &format!("/v1/clients/{client}/subject-access?format=html"),
            DPO,
            "subject_access",
        )
        .await;
    assert_eq!(html.status(), StatusCode::OK);
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn ambiguous_or_unreadable_requests_are_refused_not_guessed_at() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let registered = sample_event(client, "client.registered", "2026-01-05T09:00:00+01:00");
    // HEAD takes what GET takes.
    let head = app
        .http
        .head(app.url("/v1/event-types?type=client.released"))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::BAD_REQUEST);
    // Two keys, two purposes, or a justification too long to keep whole.
    let twice = app
        .http
        .get(app.url("/v1/events"))
        .header("authorization", format!("Bearer {AUDITOR}"))
        .header("authorization", "Bearer not-a-key")
        .header("x-purpose", "audit")
        .send()
        .await
        .unwrap();
    expect_problem(twice, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let twice = app
        .http
        .get(app.url("/v1/events"))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "audit")
        .header("x-purpose", "statistics")
        .send()
        .await
        .unwrap();
    let problem = expect_problem(twice, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "X-Purpose");
    let long = app
        .http
        .get(app.url(&format!("/v1/clients/{client}/events")))
        .bearer_auth(COORDINATOR)
        .header("x-purpose", "emergency")
        .header("x-justification", "a".repeat(2001))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(long, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "X-Justification");
    // A compressed body is not read as if it were plain; nothing is stored.
    let encoded = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(PRISON_WRITER)
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body(registered.to_string())
        .send()
        .await
        .unwrap();
    expect_problem(
        encoded,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert!(app.feed().await.is_empty(), "nothing was stored");
    // So is a body in a transfer coding other than chunked, whose chunks would otherwise be read
    // as the body itself.
    let body = registered.to_string();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {PRISON_WRITER}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let answer = raw_exchange(&app.address, &request).await;
    assert!(
        answer.starts_with("HTTP/1.1 415") && answer.contains("`Transfer-Encoding: gzip`"),
        "{answer}"
    );
    assert!(app.feed().await.is_empty(), "nothing was stored");
    // A live feed filter of the other stream is refused, not ignored.
    for (query, field) in [
        ("stream=alerts&types=job.*", "types"),
        ("stream=alerts&after=5", "after"),
        ("stream=events&kind=job_lost", "kind"),
        ("agency=probation-opava", "agency"),
    ] {
        let problem = expect_problem(
            app.get(&format!("/v1/subscriptions/feed?{query}"), ADMIN)
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        )
        .await;
        assert_eq!(problem["field"], field, "{query}");
    }
    // The scheme's name is case-insensitive; a justification may be any UTF-8 text, but bytes
    // that are not UTF-8 are refused rather than taken for no justification.
    let shouted = app
        .http
        .get(app.url("/v1/event-types"))
        .header("authorization", format!("BEARER {AUDITOR}"))
        .send()
        .await
        .unwrap();
    assert_eq!(shouted.status(), StatusCode::OK);
    let latin1 = app
        .http
        .get(app.url(&format!("/v1/clients/{client}/events")))
        .bearer_auth(COORDINATOR)
        .header("x-purpose", "emergency")
        .header(
            "x-justification",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9 crisis").unwrap(),
        )
        .send()
        .await
        .unwrap();
    let problem = expect_problem(latin1, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "X-Justification");
    // A parameter left empty, as a form sends a blank field, is one not given; an unknown one
    // is refused even empty.
    let blank = app
        .get("/v1/alerts?agency=&kind=&client_id=&status=", ADMIN)
        .await;
    assert_eq!(blank.status(), StatusCode::OK);
    let problem = expect_problem(
        app.get("/v1/alerts?agency=&agnecy=", ADMIN).await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(problem["field"], "agnecy");
    // An unknown stream is named as such, whatever filters come with it.
    let problem = expect_problem(
        app.get("/v1/subscriptions/feed?stream=bogus&types=job.*", ADMIN)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(problem["field"], "stream");
    // Two resume points are no resume point.
    let twice = app
        .http
        .get(app.url("/v1/subscriptions/feed"))
        .bearer_auth(ADMIN)
        .header("x-purpose", "case_management")
        .header("last-event-id", "8")
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    let problem = expect_problem(twice, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "Last-Event-ID");
    let trail = app
        .get_ok("/v1/audit/entries?after=0&limit=1000", AUDITOR)
        .await;
    assert!(
        trail["entries"].as_array().unwrap().iter().any(|entry| {
            entry["action"] == "GET /v1/subscriptions/feed"
                && entry["outcome"] == "denied"
                && entry["credential"] == "ops"
        }),
        "the refusal of two resume points is logged: {trail}"
    );
    // A webhook's purpose is its body's; a header naming another is refused, not dropped.
    let webhook = app
        .http
        .post(app.url("/v1/subscriptions/webhooks"))
        .bearer_auth(PROBATION_WRITER)
        .header("x-purpose", "supervision")
        .json(&json!({"url": "https://example.org/hook", "types": ["job.*"]}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(webhook, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "X-Purpose");
    // `identity` in any form is no encoding.
    let identity = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(PRISON_WRITER)
        .header("content-type", "application/json")
        .header("content-encoding", "identity, Identity")
        .body(registered.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(identity.status(), StatusCode::CREATED);

    // Statistics need their own purpose, and say which header is wrong.
    let problem = expect_problem(
        app.get("/v1/statistics/outcomes", AUDITOR).await,
        StatusCode::BAD_REQUEST,
        "purpose_required",
    )
    .await;
    assert_eq!(problem["field"], "X-Purpose");

    // Dates are read one way everywhere: as events write them.
    for (query, field) in [("from=2026-1-1", "from"), ("to=%2B2026-01-01", "to")] {
        let problem = expect_problem(
            app.get_for(
                &format!("/v1/statistics/outcomes?{query}"),
                AUDITOR,
                "statistics",
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        )
        .await;
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
    let fine = app
        .get_for(
            "/v1/statistics/outcomes?from=2026-01-01&to=2026-12-31",
            AUDITOR,
            "statistics",
        )
        .await;
    assert_eq!(fine.status(), StatusCode::OK);
}

/// Sends `request` as it stands over a new connection to the app and returns all it answers.
async fn raw_exchange(address: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the answer, and the connection closed")
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}
