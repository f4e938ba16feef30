//! Need-to-know: reads state a purpose; a coordinator reads a client only while its agency works
//! with the client or holds a consent or legal basis for the purpose, or under break-glass for a
//! limited time; every refusal is logged.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::samples::sample_event;
use crate::support::*;

const AT: &str = "2026-01-05T09:00:00+01:00";

async fn read(app: &TestApp, client: Uuid, key: &str, purpose: &str) -> StatusCode {
    app.get_for(&format!("/v1/clients/{client}/travel-map"), key, purpose)
        .await
        .status()
}

async fn read_in_emergency(
    app: &TestApp,
    client: Uuid,
    key: &str,
    why: Option<&str>,
) -> StatusCode {
    let mut request = app
        .http
        .get(app.url(&format!("/v1/clients/{client}/events")))
        .bearer_auth(key)
        .header("x-purpose", "emergency");
    if let Some(why) = why {
        request = request.header("x-justification", why);
    }
    request.send().await.unwrap().status()
}

async fn post(app: &TestApp, key: &str, body: Value) {
    let response = app.post_event(key, &body).await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
}

#[tokio::test]
async fn reads_need_a_purpose_and_a_reason_to_know_the_client() {
    let app = spawn_app_with(tempfile::tempdir().unwrap(), Duration::from_secs(2)).await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        sample_event(client, "client.registered", AT),
    )
    .await;

    // A purpose from the fixed list, or 400.
    let unstated = app
        .http
        .get(app.url(&format!("/v1/clients/{client}/travel-map")))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap();
    let problem = expect_problem(unstated, StatusCode::BAD_REQUEST, "purpose_required").await;
    assert_eq!(problem["field"], "X-Purpose");
    // Every read of personal data, the audit trail included.
    for path in [
        format!("/v1/clients/{client}/events"),
        "/v1/clients?identifier=prison_number:OP-2026-0117".to_owned(),
        "/v1/events".to_owned(),
        format!("/v1/audit/clients/{client}"),
        "/v1/audit/entries".to_owned(),
        "/v1/audit/break-glass".to_owned(),
        "/v1/audit/access-changes".to_owned(),
    ] {
        let unstated = app
            .http
            .get(app.url(&path))
            .bearer_auth(AUDITOR)
            .send()
            .await
            .unwrap();
        expect_problem(unstated, StatusCode::BAD_REQUEST, "purpose_required").await;
    }
    expect_problem(
        app.get_for(
            &format!("/v1/clients/{client}/events"),
            AUDITOR,
            "curiosity",
        )
        .await,
        StatusCode::BAD_REQUEST,
        "purpose_required",
    )
    .await;

    // Out of scope, then in scope while the municipality works with the client, then out again.
    assert_eq!(
        read(&app, client, COORDINATOR, "case_management").await,
        StatusCode::FORBIDDEN
    );
    let opened = event(
        client,
        "involvement.opened",
        AT,
        json!({"role": "social_worker"}),
    );
    post(&app, MUNICIPALITY_WRITER, opened).await;
    assert_eq!(
        read(&app, client, COORDINATOR, "case_management").await,
        StatusCode::OK
    );
    // In scope, a read stated as an emergency needs no grant, but says why all the same.
    let unexplained = expect_problem(
        app.get_for(
            &format!("/v1/clients/{client}/travel-map"),
            COORDINATOR,
            "emergency",
        )
        .await,
        StatusCode::BAD_REQUEST,
        "purpose_required",
    )
    .await;
    assert_eq!(unexplained["field"], "X-Justification");
    assert_eq!(
        read_in_emergency(&app, client, COORDINATOR, Some("client in crisis")).await,
        StatusCode::OK
    );
    // Statistics are given as aggregates only: a client's own data is not read for them.
    assert_eq!(
        read(&app, client, COORDINATOR, "statistics").await,
        StatusCode::BAD_REQUEST
    );
    for path in [
        format!("/v1/clients/{client}/events"),
        "/v1/clients?identifier=prison_number:OP-1".to_owned(),
        "/v1/agencies/municipality-opava/caseload".to_owned(),
        "/v1/alerts".to_owned(),
    ] {
        let problem = expect_problem(
            app.get_for(&path, COORDINATOR, "statistics").await,
            StatusCode::BAD_REQUEST,
            "purpose_required",
        )
        .await;
        assert_eq!(problem["field"], "X-Purpose", "{path}");
    }
    let counts = app
        .get_for("/v1/caseloads", COORDINATOR, "statistics")
        .await;
    assert_eq!(counts.status(), StatusCode::OK);
    let closed = event(
        client,
        "involvement.closed",
        "2026-01-06T09:00:00+01:00",
        json!({"role": "social_worker", "reason": "completed"}),
    );
    post(&app, MUNICIPALITY_WRITER, closed).await;
    assert_eq!(
        read(&app, client, COORDINATOR, "case_management").await,
        StatusCode::FORBIDDEN
    );

    // A consent covers its agency for its purposes only, until withdrawn.
    assert_eq!(
        read(&app, client, NGO_COORDINATOR, "service_delivery").await,
        StatusCode::FORBIDDEN
    );
    let consent = event(
        client,
        "consent.recorded",
        AT,
        json!({"agency": "ngo-opava", "purposes": ["service_delivery"], "legal_basis": "consent"}),
    );
    post(&app, PRISON_WRITER, consent).await;
    assert_eq!(
        read(&app, client, NGO_COORDINATOR, "service_delivery").await,
        StatusCode::OK
    );
    assert_eq!(
        read(&app, client, NGO_COORDINATOR, "case_management").await,
        StatusCode::FORBIDDEN
    );
    let withdrawn = event(
        client,
        "consent.withdrawn",
        "2026-01-07T09:00:00+01:00",
        json!({"agency": "ngo-opava"}),
    );
    post(&app, PRISON_WRITER, withdrawn).await;
    assert_eq!(
        read(&app, client, NGO_COORDINATOR, "service_delivery").await,
        StatusCode::FORBIDDEN
    );

    // An out-of-scope coordinator does not even find the client by identifier; the client's
    // trail names the look-up as refused.
    let found = app
        .get_ok(
            "/v1/clients?identifier=prison_number:OP-2026-0117",
            NGO_COORDINATOR,
        )
        .await;
    assert_eq!(found["clients"], json!([]));
    let found = app
        .get_ok("/v1/clients?identifier=prison_number:OP-2026-0117", AUDITOR)
        .await;
    assert_eq!(found["clients"][0]["client_id"], json!(client));

    // Break-glass: an emergency with a written reason opens access for a limited time.
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        read_in_emergency(
            &app,
            client,
            NGO_COORDINATOR,
            Some("client in crisis at the shelter")
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, None).await,
        StatusCode::OK
    );
    let grants = app.get_ok("/v1/audit/break-glass", DPO).await;
    let grants = grants["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["credential"], "ngo-desk");
    assert_eq!(
        grants[0]["justification"],
        "client in crisis at the shelter"
    );
    assert_eq!(grants[0]["client_id"], json!(client));
    assert_eq!(grants[0]["active"], true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, None).await,
        StatusCode::FORBIDDEN
    );
    let grants = app.get_ok("/v1/audit/break-glass", AUDITOR).await;
    assert_eq!(grants["grants"][0]["active"], false);

    // Every refusal is in the client's audit trail, with the purpose that was stated.
    let trail = app
        .get_ok(&format!("/v1/audit/clients/{client}"), DPO)
        .await;
    let denied: Vec<(String, String)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["outcome"] == "denied")
        .map(|entry| {
            (
                entry["credential"].as_str().unwrap().to_owned(),
                entry["purpose"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let unlisted = travelmap_api::audit::UNLISTED_PURPOSE;
    let expected = [
        // The reads above without a purpose that name the client (its travel map, history and
        // trail), and the one with a purpose not on the list (not kept as typed): refusals are
        // logged too.
        ("dpo-office", ""),
        ("dpo-office", ""),
        ("dpo-office", ""),
        ("dpo-office", unlisted),
        ("coordinator-desk", "case_management"),
        // The emergency read in scope without a reason.
        ("coordinator-desk", "emergency"),
        // The travel map and the history asked for statistics.
        ("coordinator-desk", "statistics"),
        ("coordinator-desk", "statistics"),
        ("coordinator-desk", "case_management"),
        ("ngo-desk", "service_delivery"),
        ("ngo-desk", "case_management"),
        ("ngo-desk", "service_delivery"),
        // The identifier search that withheld the client.
        ("ngo-desk", "case_management"),
        ("ngo-desk", "emergency"),
        ("ngo-desk", "emergency"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(who, why)| (who.to_string(), why.to_string()))
        .collect();
    assert_eq!(denied, expected);
}

/// A closing dated before the opening it was meant to end does not end it. A correction cannot
/// move its time (it replaces `data` only); retracting it and recording it again can, as
/// data-protection.md says.
#[tokio::test]
async fn a_closing_dated_before_its_opening_is_put_right_by_recording_it_again() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        sample_event(client, "client.registered", AT),
    )
    .await;
    let opened = json!({"role": "social_worker"});
    let ended = json!({"role": "social_worker", "reason": "completed"});
    post(
        &app,
        MUNICIPALITY_WRITER,
        event(
            client,
            "involvement.opened",
            "2026-01-05T10:00:00+01:00",
            opened,
        ),
    )
    .await;
    let misdated = event(
        client,
        "involvement.closed",
        "2026-01-04T10:00:00+01:00",
        ended.clone(),
    );
    post(&app, MUNICIPALITY_WRITER, misdated.clone()).await;
    assert_eq!(
        read(&app, client, COORDINATOR, "case_management").await,
        StatusCode::OK
    );
    let mut moved = ended.clone();
    moved["occurred_at"] = json!("2026-01-06T09:00:00+01:00");
    let correction = event(
        client,
        "event.corrected",
        "2026-01-06T10:00:00+01:00",
        json!({"event_id": misdated["id"], "reason": "wrong date", "data": moved}),
    );
    let refused = expect_problem(
        app.post_event(MUNICIPALITY_WRITER, &correction).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(refused["field"], "data.data.occurred_at");

    post(
        &app,
        MUNICIPALITY_WRITER,
        event(
            client,
            "event.retracted",
            "2026-01-06T10:00:00+01:00",
            json!({"event_id": misdated["id"], "reason": "wrong date"}),
        ),
    )
    .await;
    post(
        &app,
        MUNICIPALITY_WRITER,
        event(
            client,
            "involvement.closed",
            "2026-01-06T09:00:00+01:00",
            ended,
        ),
    )
    .await;
    assert_eq!(
        read(&app, client, COORDINATOR, "case_management").await,
        StatusCode::FORBIDDEN
    );
    let map: Value = app
        .get_for(
            &format!("/v1/clients/{client}/travel-map?min_position=5"),
            AUDITOR,
            "audit",
        )
        .await
        .json()
        .await
        .unwrap();
    let involvements = map["involvements"].as_array().unwrap();
    assert_eq!(involvements.len(), 1, "{involvements:?}");
    assert_eq!(involvements[0]["from"], "2026-01-05T10:00:00+01:00");
    assert_eq!(involvements[0]["to"], "2026-01-06T09:00:00+01:00");
}

/// A grant lasts what it was given for: lengthening `break_glass_minutes` afterwards neither
/// revives an expired grant nor extends a running one, and shortening it ends running ones.
#[tokio::test]
async fn a_grant_lasts_what_it_was_given_for_whatever_the_setting_becomes() {
    let app = spawn_app_with(tempfile::tempdir().unwrap(), Duration::from_secs(2)).await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        sample_event(client, "client.registered", AT),
    )
    .await;
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, Some("client missing")).await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let app = spawn_app_with(app.stop().await, Duration::from_secs(3600)).await;
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, None).await,
        StatusCode::FORBIDDEN,
        "an expired grant stays expired"
    );
    let grants = app.get_ok("/v1/audit/break-glass", DPO).await;
    assert_eq!(grants["grants"][0]["active"], false);

    // Given for an hour, then the setting is shortened: the shorter length holds.
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, Some("client missing again")).await,
        StatusCode::OK
    );
    let app = spawn_app_with(app.stop().await, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, None).await,
        StatusCode::FORBIDDEN
    );

    // Given for an hour, cut short by a shorter setting, then the setting is raised again: the
    // grant stays ended (the restart with the shorter setting recorded its end), with or without
    // a read while the shorter setting was in force.
    let app = spawn_app_with(app.stop().await, Duration::from_secs(3600)).await;
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, Some("a third time")).await,
        StatusCode::OK
    );
    let app = spawn_app_with(app.stop().await, Duration::from_secs(3600)).await;
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, None).await,
        StatusCode::OK,
        "a grant given for an hour runs on after a restart"
    );
    let app = spawn_app_with(app.stop().await, Duration::from_secs(1)).await;
    let app = spawn_app_with(app.stop().await, Duration::from_secs(3600)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, None).await,
        StatusCode::FORBIDDEN,
        "raising the setting again does not revive a grant it cut short"
    );
    let grants = app.get_ok("/v1/audit/break-glass", DPO).await;
    let grants = grants["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 3, "{grants:?}");
    assert!(grants.iter().all(|grant| grant["active"] == false));
    let ended: Vec<Value> = app
        .trail_of(client)
        .await
        .into_iter()
        .filter(|entry| entry["action"] == "break-glass" && entry["outcome"] == "denied")
        .collect();
    assert_eq!(
        ended.len(),
        2,
        "one end per restart that shortened: {ended:?}"
    );
    assert!(
        ended.iter().all(|entry| entry["credential"] == "ngo-desk"
            && entry["actor"] == "travelmap (break_glass_minutes)"
            && entry["returned"]
                .as_str()
                .unwrap()
                .contains("ended early: break-glass grants now last 1 second)")
            && entry["returned"].as_str().unwrap().contains("(grant ")),
        "{ended:?}"
    );
    // The review shows the end each grant had, whatever the setting now: the first, given for
    // two seconds, ended two seconds after it was given though grants now last one.
    let app = spawn_app_with(app.stop().await, Duration::from_secs(1)).await;
    let grants = app.get_ok("/v1/audit/break-glass", DPO).await;
    let first = &grants["grants"][0];
    let time =
        |field: &str| chrono::DateTime::parse_from_rfc3339(first[field].as_str().unwrap()).unwrap();
    assert_eq!(
        time("until") - time("at"),
        chrono::TimeDelta::seconds(2),
        "{first}"
    );
    app.stop().await;
}

#[tokio::test]
async fn each_role_reaches_only_its_endpoints() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        sample_event(client, "client.registered", AT),
    )
    .await;
    let reads = [
        format!("/v1/clients/{client}/events"),
        format!("/v1/clients/{client}/travel-map"),
        "/v1/events".to_owned(),
        format!("/v1/audit/clients/{client}"),
        "/v1/audit/entries".to_owned(),
        "/v1/audit/checkpoint".to_owned(),
        "/v1/audit/break-glass".to_owned(),
        "/v1/audit/access-changes".to_owned(),
    ];
    // (key, which of the reads above it may make, stating `audit`; writers search for clients
    // with purposes of their own, tested with the search)
    let matrix = [
        (
            PRISON_WRITER,
            [false, false, false, false, false, false, false, false],
        ),
        (AUDITOR, [true, true, true, true, true, true, true, true]),
        (DPO, [true, true, false, true, true, true, true, true]),
        (
            ADMIN,
            [false, false, true, false, false, false, false, false],
        ),
    ];
    for (key, allowed) in matrix {
        assert_eq!(allowed.len(), reads.len(), "{key}: one answer per read");
        for (path, allowed) in reads.iter().zip(allowed) {
            let status = app.get_for(path, key, "audit").await.status();
            let expected = if allowed {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(status, expected, "{key} GET {path}");
        }
    }
    // Statistics: coordinators, auditors and the dpo; subject access and the data-protection
    // decisions: the dpo alone.
    for (key, statistics, dpo) in [
        (PRISON_WRITER, false, false),
        (COORDINATOR, true, false),
        (AUDITOR, true, false),
        (DPO, true, true),
        (ADMIN, false, false),
    ] {
        let expect = |allowed: bool, when_allowed: StatusCode| {
            if allowed {
                when_allowed
            } else {
                StatusCode::FORBIDDEN
            }
        };
        let status = app
            .get_for("/v1/statistics/outcomes", key, "statistics")
            .await
            .status();
        assert_eq!(
            status,
            expect(statistics, StatusCode::OK),
            "{key} statistics"
        );
        let status = app
            .get_for(
                &format!("/v1/clients/{client}/subject-access"),
                key,
                "subject_access",
            )
            .await
            .status();
        assert_eq!(status, expect(dpo, StatusCode::OK), "{key} subject access");
        if !dpo {
            let reason = serde_json::json!({"reason": "test"});
            for response in [
                app.delete(&format!("/v1/clients/{client}/personal-data"), key, &reason)
                    .await,
                app.post(&format!("/v1/clients/{client}/restriction"), key, &reason)
                    .await,
                app.delete(&format!("/v1/clients/{client}/restriction"), key, &reason)
                    .await,
            ] {
                assert_eq!(response.status(), StatusCode::FORBIDDEN, "{key}");
            }
        }
    }
    // Only writers post.
    for key in [AUDITOR, DPO, ADMIN, COORDINATOR] {
        let response = app
            .post_event(key, &sample_event(client, "contact.made", AT))
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{key}");
    }
}

/// A read refused for its headers (a justification too long, a purpose that is not UTF-8) is
/// logged as denied under the client like any other refusal: a break-glass attempt leaves its
/// trace. And a read refused for its parameters opens no break-glass grant.
#[tokio::test]
async fn a_read_refused_for_its_headers_or_parameters_leaves_a_trace_and_no_grant() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        sample_event(client, "client.registered", AT),
    )
    .await;
    let events = app.url(&format!("/v1/clients/{client}/events"));
    let too_long = "x".repeat(2001);
    let refused = app
        .http
        .get(&events)
        .bearer_auth(NGO_COORDINATOR)
        .header("x-purpose", "emergency")
        .header("x-justification", too_long.as_str())
        .send()
        .await
        .unwrap();
    let problem = expect_problem(refused, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "X-Justification");
    let not_text = app
        .http
        .get(&events)
        .bearer_auth(NGO_COORDINATOR)
        .header(
            "x-purpose",
            reqwest::header::HeaderValue::from_bytes(b"case_management\xe9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    expect_problem(not_text, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    let future = app
        .http
        .get(format!("{events}?as_of=2099-01-01T00:00:00Z"))
        .bearer_auth(NGO_COORDINATOR)
        .header("x-purpose", "emergency")
        .header("x-justification", "client in crisis")
        .send()
        .await
        .unwrap();
    expect_problem(future, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    let unknown = app
        .http
        .get(app.url(&format!("/v1/clients/{client}/travel-map?bogus=1")))
        .bearer_auth(NGO_COORDINATOR)
        .header("x-purpose", "case_management")
        .send()
        .await
        .unwrap();
    expect_problem(unknown, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    // Waiting for a position the projection has not reached does not put off the decision: a
    // refusal is answered (and logged) at once, not after the wait times out.
    let ahead = app.url(&format!(
        "/v1/clients/{client}/travel-map?min_position=1000000"
    ));
    let out_of_scope = app
        .http
        .get(&ahead)
        .bearer_auth(NGO_COORDINATOR)
        .header("x-purpose", "case_management")
        .send()
        .await
        .unwrap();
    expect_problem(out_of_scope, StatusCode::FORBIDDEN, "forbidden").await;
    let aggregate_only = app
        .http
        .get(&ahead)
        .bearer_auth(NGO_COORDINATOR)
        .header("x-purpose", "statistics")
        .send()
        .await
        .unwrap();
    expect_problem(aggregate_only, StatusCode::BAD_REQUEST, "purpose_required").await;

    // Each refusal is an attempt on the client's data, in the client's trail; none opened a
    // grant.
    let denied: Vec<Value> = app
        .trail_of(client)
        .await
        .into_iter()
        .filter(|entry| entry["outcome"] == "denied" && entry["credential"] == "ngo-desk")
        .collect();
    let actions: Vec<&str> = denied
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "GET /v1/clients/{client_id}/events",
            "GET /v1/clients/{client_id}/events",
            "GET /v1/clients/{client_id}/events",
            "GET /v1/clients/{client_id}/travel-map",
            "GET /v1/clients/{client_id}/travel-map",
            "GET /v1/clients/{client_id}/travel-map"
        ],
        "{denied:?}"
    );
    // A purpose sent as bytes that are not text was stated, though not as one of the list.
    assert_eq!(denied[0]["purpose"], "emergency");
    assert_eq!(denied[1]["purpose"], travelmap_api::audit::UNLISTED_PURPOSE);
    let grants = app.get_ok("/v1/audit/break-glass", DPO).await;
    assert_eq!(grants["grants"], json!([]), "{grants}");
    assert_eq!(
        read_in_emergency(&app, client, NGO_COORDINATOR, None).await,
        StatusCode::FORBIDDEN
    );
    app.stop().await;
}

#[tokio::test]
async fn an_emergency_read_by_a_reviewer_still_needs_a_reason() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        sample_event(client, "client.registered", AT),
    )
    .await;
    for reviewer in [AUDITOR, DPO] {
        let refused = app
            .http
            .get(app.url(&format!("/v1/clients/{client}/events")))
            .bearer_auth(reviewer)
            .header("x-purpose", "emergency")
            .send()
            .await
            .unwrap();
        let problem = expect_problem(refused, StatusCode::BAD_REQUEST, "purpose_required").await;
        assert_eq!(problem["field"], "X-Justification");
        assert_eq!(
            read_in_emergency(&app, client, reviewer, Some("checking a reported crisis")).await,
            StatusCode::OK
        );
    }
    let emergency: Vec<Value> = app
        .trail_of(client)
        .await
        .into_iter()
        .filter(|entry| entry["purpose"] == "emergency")
        .collect();
    let outcomes: Vec<(&str, bool)> = emergency
        .iter()
        .map(|entry| {
            (
                entry["outcome"].as_str().unwrap(),
                entry["justification"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("denied", false),
            ("allowed", true),
            ("denied", false),
            ("allowed", true)
        ],
        "{emergency:?}"
    );
    app.stop().await;
}

/// The data-protection officer's review of access that agencies gave themselves or each other:
/// every involvement and consent recorded, ended, corrected or retracted, with who recorded it
/// for whom, and nothing else.
async fn access_changes_show_who_vouched_for_whose_access(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    let other = Uuid::new_v4();
    let at = |day: u32| format!("2026-01-{day:02}T09:00:00+01:00");
    let record = async |key: &str, body: Value| {
        let id = body["id"].as_str().unwrap().to_owned();
        post(&app, key, body).await;
        id
    };
    record(
        PRISON_WRITER,
        sample_event(client, "client.registered", &at(2)),
    )
    .await;
    // The municipality vouches for itself; the prison records a consent for an NGO.
    let own = record(
        MUNICIPALITY_WRITER,
        event(
            client,
            "involvement.opened",
            &at(3),
            json!({"role": "social_worker"}),
        ),
    )
    .await;
    let consent = record(
        PRISON_WRITER,
        event(
            client,
            "consent.recorded",
            &at(4),
            json!({"agency": "ngo-opava", "purposes": ["service_delivery"], "legal_basis": "consent"}),
        ),
    )
    .await;
    // Not about access: left out, and so is its retraction.
    let contact = record(
        PRISON_WRITER,
        event(
            client,
            "contact.made",
            &at(5),
            json!({"kind": "meeting", "attended": true}),
        ),
    )
    .await;
    record(
        PRISON_WRITER,
        event(
            client,
            "event.retracted",
            &at(5),
            json!({"event_id": contact, "reason": "recorded twice"}),
        ),
    )
    .await;
    // Probation ends the municipality's involvement; the municipality takes the closing back,
    // which gives it its access again: vouched for by itself alone.
    let ended = record(
        PROBATION_WRITER,
        event(
            client,
            "involvement.closed",
            &at(6),
            json!({"agency": "municipality-opava", "role": "social_worker"}),
        ),
    )
    .await;
    let retraction = record(
        MUNICIPALITY_WRITER,
        event(
            client,
            "event.retracted",
            &at(7),
            json!({"event_id": ended, "reason": "closed by mistake"}),
        ),
    )
    .await;
    // The NGO refers another client to probation, then corrects the referral leaving the agency
    // out, which makes the involvement its own.
    let elsewhere = record(
        NGO_WRITER,
        event(
            other,
            "involvement.opened",
            &at(8),
            json!({"agency": "probation-opava", "role": "mentor"}),
        ),
    )
    .await;
    let correction = record(
        NGO_WRITER,
        event(
            other,
            "event.corrected",
            &at(9),
            json!({"event_id": elsewhere, "reason": "wrong agency",
                   "data": {"role": "mentor"}}),
        ),
    )
    .await;
    // The map agrees: probation lost the client, the municipality has it again.
    let position = app.feed().await.last().unwrap()["position"]
        .as_u64()
        .unwrap();
    app.travel_map(other, position).await;
    assert_eq!(
        read(&app, client, COORDINATOR, "case_management").await,
        StatusCode::OK
    );

    let page = app.get_ok("/v1/audit/access-changes", DPO).await;
    let changes = page["changes"].as_array().unwrap();
    let summary: Vec<Value> = changes
        .iter()
        .map(|change| {
            json!([
                change["event_id"],
                change["type"],
                change["effect"],
                change["opens_for"],
                change["ends_for"],
                change["recorded_by"],
                change["own_access"],
            ])
        })
        .collect();
    let expected = [
        json!([
            own,
            "involvement.opened",
            "opens",
            ["municipality-opava"],
            [],
            "municipality-opava",
            true
        ]),
        json!([
            consent,
            "consent.recorded",
            "opens",
            ["ngo-opava"],
            [],
            "prison-opava",
            false
        ]),
        json!([
            ended,
            "involvement.closed",
            "ends",
            [],
            ["municipality-opava"],
            "probation-opava",
            false
        ]),
        json!([
            retraction,
            "event.retracted",
            "changes",
            ["municipality-opava"],
            [],
            "municipality-opava",
            true
        ]),
        json!([
            elsewhere,
            "involvement.opened",
            "opens",
            ["probation-opava"],
            [],
            "ngo-opava",
            false
        ]),
        json!([
            correction,
            "event.corrected",
            "changes",
            ["ngo-opava"],
            ["probation-opava"],
            "ngo-opava",
            true
        ]),
    ];
    assert_eq!(summary, expected);
    assert_eq!(changes[3]["target_event_id"], ended.as_str());
    assert_eq!(changes[3]["target_type"], "involvement.closed");
    assert_eq!(changes[5]["target_event_id"], elsewhere.as_str());
    assert_eq!(changes[5]["target_type"], "involvement.opened");
    assert_eq!(changes[0]["target_event_id"], Value::Null);
    assert_eq!(changes[1]["credential"], "opava-prison-system");
    assert_eq!(page["examined"], 9);
    let last = page["next_after"].as_u64().unwrap();
    assert_eq!(changes[5]["position"].as_u64().unwrap(), last);

    // Page by page: two events examined at a time, every change once.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let page = app
            .get_ok(
                &format!("/v1/audit/access-changes?after={after}&limit=2"),
                AUDITOR,
            )
            .await;
        assert!(page["examined"].as_u64().unwrap() <= 2);
        paged.extend(
            page["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|change| change["event_id"].clone()),
        );
        if page["next_after"] == after {
            break;
        }
        after = page["next_after"].as_u64().unwrap();
    }
    let listed: Vec<Value> = changes
        .iter()
        .map(|change| change["event_id"].clone())
        .collect();
    assert_eq!(paged, listed);
    // A full page: the changes among the first thousand events.
    let contacts: Vec<Value> = (0..1_000)
        .map(|_| {
            event(
                Uuid::new_v4(),
                "contact.made",
                &at(10),
                json!({"kind": "phone", "attended": true}),
            )
        })
        .collect();
    let response = app
        .post(
            "/v1/events/batch",
            PRISON_WRITER,
            &json!({"events": contacts}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let page = app.get_ok("/v1/audit/access-changes?limit=1000", DPO).await;
    assert_eq!(page["examined"], 1000);
    assert_eq!(page["changes"].as_array().unwrap().len(), 6);
    assert_eq!(page["next_after"].as_u64().unwrap(), last + 991);

    // Reviewers only, for an audit; a cursor past the end is refused.
    expect_problem(
        app.get_for("/v1/audit/access-changes", COORDINATOR, "audit")
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get_for("/v1/audit/access-changes", DPO, "case_management")
            .await,
        StatusCode::BAD_REQUEST,
        "purpose_required",
    )
    .await;
    let past = expect_problem(
        app.get_for(
            &format!("/v1/audit/access-changes?after={}", last + 10_000),
            DPO,
            "audit",
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(past["field"], "after");
    expect_problem(
        app.get_for("/v1/audit/access-changes?limit=1001", DPO, "audit")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;

    // The review is itself in each named client's trail, with the events it listed.
    let trail = app.trail_of(client).await;
    let reviewed: Vec<&Value> = trail
        .iter()
        .filter(|entry| entry["action"] == "GET /v1/audit/access-changes")
        .collect();
    assert!(!reviewed.is_empty());
    assert_eq!(reviewed[0]["credential"], "dpo");
    assert_eq!(reviewed[0]["operation"], "consultation");
    let returned = reviewed[0]["returned"].as_str().unwrap();
    for id in [&own, &consent, &ended, &retraction] {
        assert!(returned.contains(id.as_str()), "{returned}");
    }
    assert!(!returned.contains(elsewhere.as_str()));
    assert!(!returned.contains(contact.as_str()));
    app.stop().await;
}

on_both_backends!(access_changes_show_who_vouched_for_whose_access);

/// A break-glass read that waits for the projection (`min_position`) is decided before the wait
/// and again when it reads, but grants once, and only if it reads.
#[tokio::test]
async fn a_break_glass_read_that_waits_grants_once() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        sample_event(client, "client.registered", AT),
    )
    .await;
    let emergency = |min_position: u64| {
        app.http
            .get(app.url(&format!(
                "/v1/clients/{client}/travel-map?min_position={min_position}"
            )))
            .bearer_auth(NGO_COORDINATOR)
            .header("x-purpose", "emergency")
            .header("x-justification", "client in crisis at the shelter")
            .send()
    };
    // The projection never gets there: nothing was read, so nothing was granted.
    let unreached = emergency(1_000_000).await.unwrap();
    assert_eq!(unreached.status(), StatusCode::SERVICE_UNAVAILABLE);
    let grants = app.get_ok("/v1/audit/break-glass", DPO).await;
    assert_eq!(grants["grants"], json!([]), "{grants}");

    let head = app.feed().await.last().unwrap()["position"]
        .as_u64()
        .unwrap();
    let read = emergency(head).await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let grants = app.get_ok("/v1/audit/break-glass", DPO).await;
    assert_eq!(grants["grants"].as_array().unwrap().len(), 1, "{grants}");
    app.stop().await;
}

/// Every operation is logged, allowed or denied: a read across clients refused for its
/// parameters leaves its denied entry, as a read of one client refused for them does.
#[tokio::test]
async fn reads_across_clients_refused_for_their_parameters_are_logged() {
    let app = spawn_app().await;
    let refused = [
        (
            "/v1/statistics/outcomes?from=2026-05-01&to=2026-01-01",
            COORDINATOR,
            "statistics",
            "GET /v1/statistics/outcomes",
        ),
        (
            "/v1/statistics/outcomes?group_by=name",
            COORDINATOR,
            "statistics",
            "GET /v1/statistics/outcomes",
        ),
        (
            "/v1/alerts?kind=nope",
            COORDINATOR,
            "case_management",
            "GET /v1/alerts",
        ),
        (
            "/v1/alerts?client_id=00000000-0000-0000-0000-000000000000",
            COORDINATOR,
            "case_management",
            "GET /v1/alerts",
        ),
        (
            "/v1/caseloads?x=1",
            COORDINATOR,
            "case_management",
            "GET /v1/caseloads",
        ),
        (
            "/v1/agencies/municipality-opava/caseload?min_position=x",
            COORDINATOR,
            "case_management",
            "GET /v1/agencies/{agency}/caseload",
        ),
        (
            "/v1/clients?identifier=no-colon",
            COORDINATOR,
            "case_management",
            "GET /v1/clients?identifier=",
        ),
        (
            "/v1/subscriptions/feed?stream=nope",
            COORDINATOR,
            "case_management",
            "GET /v1/subscriptions/feed",
        ),
        ("/v1/events?limit=0", AUDITOR, "audit", "GET /v1/events"),
        ("/v1/events?after=99999", AUDITOR, "audit", "GET /v1/events"),
        (
            "/v1/audit/entries?limit=0",
            AUDITOR,
            "audit",
            "GET /v1/audit/entries",
        ),
        (
            "/v1/audit/access-changes?after=99999",
            AUDITOR,
            "audit",
            "GET /v1/audit/access-changes",
        ),
    ];
    for (path, key, purpose, _) in refused {
        let response = app.get_for(path, key, purpose).await;
        expect_problem(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    }
    let trail = app.get_ok("/v1/audit/entries?limit=1000", AUDITOR).await;
    let mut denied: Vec<&str> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["outcome"] == "denied")
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = refused.iter().map(|(.., action)| *action).collect();
    denied.sort_unstable();
    expected.sort_unstable();
    assert_eq!(denied, expected, "{trail}");
    app.stop().await;
}

/// Alerts filtered by one client answer a coordinator what its agency is to act on. Asked of a
/// client the agency has no reason to know and no alert of (or of an id never recorded), they
/// are refused as a read of the client would be, and logged as denied under the client: an
/// empty answer logged as allowed would name the agency among those that consulted them.
#[tokio::test]
async fn alerts_of_a_client_out_of_scope_are_refused_and_logged() {
    let app = spawn_app().await;
    let known = Uuid::new_v4();
    let never_recorded = Uuid::new_v4();
    let in_scope = Uuid::new_v4();
    post(
        &app,
        PRISON_WRITER,
        sample_event(known, "client.registered", AT),
    )
    .await;
    post(
        &app,
        PRISON_WRITER,
        sample_event(in_scope, "client.registered", AT),
    )
    .await;
    post(
        &app,
        NGO_WRITER,
        sample_event(in_scope, "involvement.opened", AT),
    )
    .await;
    for client in [known, never_recorded] {
        let response = app
            .get(&format!("/v1/alerts?client_id={client}"), NGO_COORDINATOR)
            .await;
        expect_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
        let denied: Vec<Value> = app
            .trail_of(client)
            .await
            .into_iter()
            .filter(|entry| entry["action"] == "GET /v1/alerts")
            .collect();
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert_eq!(denied[0]["outcome"], "denied");
    }
    let answered = app
        .get_ok(&format!("/v1/alerts?client_id={in_scope}"), NGO_COORDINATOR)
        .await;
    assert_eq!(answered["alerts"], json!([]));
    let logged: Vec<Value> = app
        .trail_of(in_scope)
        .await
        .into_iter()
        .filter(|entry| entry["action"] == "GET /v1/alerts")
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["outcome"], "allowed");
    app.stop().await;
}
