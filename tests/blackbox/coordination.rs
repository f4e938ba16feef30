//! The coordinators' views and the live feed through the HTTP API, on the embedded store and on
//! PostgreSQL: caseloads from realistic journeys, alerts raised and cleared (by events, and by
//! time alone on a manual clock), and server-sent events resumed without loss or duplicates.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use travelmap_service::coordination::{Clock, ManualClock};
use uuid::Uuid;

use crate::support::*;

async fn posted(app: &TestApp, key: &str, body: &Value) -> u64 {
    let response = app.post_event(key, body).await;
    let status = response.status();
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    receipt["position"].as_u64().unwrap()
}

fn at(moment: DateTime<Utc>) -> String {
    moment.to_rfc3339()
}

fn released(supervision: bool) -> Value {
    json!({"release_kind": if supervision { "parole" } else { "end_of_sentence" },
           "supervision": supervision, "municipality": "Opava"})
}

/// A server-sent event.
#[derive(Debug, Clone)]
struct Message {
    id: Option<String>,
    event: Option<String>,
    data: Value,
}

/// Reads a `text/event-stream` response message by message.
struct EventStream {
    response: reqwest::Response,
    /// Bytes, not text: a chunk can end inside a character.
    buffer: Vec<u8>,
}

impl EventStream {
    async fn open(app: &TestApp, key: &str, query: &str, last_event_id: Option<&str>) -> Self {
        Self::open_for(app, key, query, last_event_id, "case_management").await
    }

    async fn open_for(
        app: &TestApp,
        key: &str,
        query: &str,
        last_event_id: Option<&str>,
        purpose: &str,
    ) -> Self {
        let mut request = app
            .http
            .get(app.url(&format!("/v1/subscriptions/feed?{query}")))
            .bearer_auth(key)
            .header("x-purpose", purpose);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("request sent");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next message (comments such as heartbeats skipped), or `None` if none comes within
    /// `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("the stream is UTF-8");
                let mut message = Message {
                    id: None,
                    event: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        message.id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        message.event = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                message.data = serde_json::from_str(&data).expect("data is JSON");
                return Some(message);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("stream readable")?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    async fn take(&mut self, count: usize) -> Vec<Message> {
        let mut messages = Vec::new();
        while messages.len() < count {
            let message = self
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("only {} of {count} messages came", messages.len()));
            messages.push(message);
        }
        messages
    }
}

/// The Opava figures scaled to a month: 20 released from Opava prison (4 under supervision) and
/// 4 still inside; 18 of the 20 work with the probation officer (the field's "~90 of 100"),
/// two never turn up. One client is handed over between probation workers.
async fn opava_caseloads_and_alerts_add_up(backend: Backend) {
    let app = spawn_app_with_coordination(
        &backend,
        Coordination {
            rules: travelmap_projections::coordination::Rules {
                worker_threshold: 9,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let now = Utc::now();
    let days = chrono::Duration::days;
    let hours = chrono::Duration::hours;
    let mut clients = Vec::new();
    let mut last = 0;
    for i in 0..24usize {
        let client = Uuid::new_v4();
        clients.push(client);
        posted(
            &app,
            PRISON_WRITER,
            &event(
                client,
                "sentence.started",
                &at(now - days(400)),
                json!({"prison": "Opava", "start_date": "2025-10-01"}),
            ),
        )
        .await;
        if i >= 20 {
            continue;
        }
        let released_at = now - if i < 10 { days(10) } else { days(45) };
        let visits = i != 3 && i != 13;
        if visits {
            let worker = if i % 2 == 0 { "novak" } else { "svoboda" };
            posted(
                &app,
                PROBATION_WRITER,
                &event(
                    client,
                    "involvement.opened",
                    &at(released_at - days(30)),
                    json!({"role": "probation_officer", "worker": worker}),
                ),
            )
            .await;
        }
        last = posted(
            &app,
            PRISON_WRITER,
            &event(
                client,
                "client.released",
                &at(released_at),
                released(i % 5 == 0),
            ),
        )
        .await;
        if visits {
            last = posted(
                &app,
                PROBATION_WRITER,
                &event(
                    client,
                    "contact.made",
                    &at(released_at + hours(2)),
                    json!({"kind": "first_day"}),
                ),
            )
            .await;
        }
    }
    // Client 19 is handed over from svoboda to dvorak five days ago.
    for (event_type, data) in [
        (
            "involvement.closed",
            json!({"role": "probation_officer", "worker": "svoboda"}),
        ),
        (
            "involvement.opened",
            json!({"role": "probation_officer", "worker": "dvorak", "reason": "transfer"}),
        ),
    ] {
        last = posted(
            &app,
            PROBATION_WRITER,
            &event(clients[19], event_type, &at(now - days(5)), data),
        )
        .await;
    }

    let caseloads = app
        .get_ok(&format!("/v1/caseloads?min_position={last}"), COORDINATOR)
        .await;
    assert_eq!(caseloads["worker_threshold"], 9);
    let probation = caseloads["agencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|load| load["agency"] == "probation-opava")
        .expect("probation's caseload")
        .clone();
    assert_eq!(probation["active_clients"], 18, "{probation}");
    assert_eq!(probation["by_role"]["probation_officer"], 18);
    assert_eq!(probation["stages"]["released_under_30_days"], 9);
    assert_eq!(probation["stages"]["released_over_30_days"], 9);
    assert_eq!(probation["stages"]["in_custody"], 0);
    let workers: Vec<(String, u64, bool)> = probation["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|worker| {
            (
                worker["worker"].as_str().unwrap().to_owned(),
                worker["clients"].as_u64().unwrap(),
                worker["over_threshold"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        workers,
        vec![
            ("novak".to_owned(), 10, true),
            ("svoboda".to_owned(), 7, false),
            ("dvorak".to_owned(), 1, false),
        ],
        "novak carries more than the threshold of 9"
    );
    assert_eq!(probation["handovers_last_30_days"], 1);
    assert_eq!(probation["closed_last_30_days"], 1);
    assert_eq!(probation["opened_last_30_days"], 1);

    // The agency's own list: 18 clients, longest released first.
    let list = app
        .get_ok("/v1/agencies/probation-opava/caseload", ADMIN)
        .await;
    let entries = list["clients"].as_array().unwrap();
    assert_eq!(entries.len(), 18);
    assert_eq!(entries[0]["days_since_release"], 45);
    assert_eq!(entries[17]["days_since_release"], 10);
    // Each entry's stage is spelt as the caseload's counts are.
    assert_eq!(entries[0]["stage"], "released_over_30_days");
    assert_eq!(entries[17]["stage"], "released_under_30_days");
    let handed_over = entries
        .iter()
        .find(|entry| entry["client_id"] == clients[19].to_string())
        .unwrap();
    assert_eq!(handed_over["assignments"][0]["worker"], "dvorak");
    assert_eq!(handed_over["assignments"][0]["handover"], true);
    // Another agency's coordinator may not list probation's clients.
    expect_problem(
        app.get("/v1/agencies/probation-opava/caseload", COORDINATOR)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // The two who never turned up: no contact within 24 hours, no probation officer.
    let alerts = app
        .get_ok(
            "/v1/alerts?agency=prison-opava&kind=no_first_day_contact",
            ADMIN,
        )
        .await;
    let mut flagged: Vec<String> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["client_id"].as_str().unwrap().to_owned())
        .collect();
    flagged.sort();
    let mut expected = vec![clients[3].to_string(), clients[13].to_string()];
    expected.sort();
    assert_eq!(flagged, expected);
    let unassigned = app.get_ok("/v1/alerts?kind=no_case_manager", ADMIN).await;
    assert_eq!(unassigned["alerts"].as_array().unwrap().len(), 2);

    // Lists that span clients show in each listed client's own trail: client 3, who never met
    // probation, in both alert lists (by their alerts' ids) and in no caseload; client 19 in
    // probation's caseload and in no alert list.
    let alert_ids = |list: &Value, client: Uuid| -> Vec<String> {
        list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|alert| alert["client_id"] == client.to_string())
            .map(|alert| alert["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let reads_of = |trail: &[Value], action: &str| -> Vec<String> {
        trail
            .iter()
            .filter(|entry| entry["action"] == action && entry["outcome"] == "allowed")
            .map(|entry| {
                assert_eq!(entry["credential"], "ops", "{entry}");
                entry["returned"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let trail = app.trail_of(clients[3]).await;
    let expected: Vec<String> = [
        alert_ids(&alerts, clients[3]),
        alert_ids(&unassigned, clients[3]),
    ]
    .into_iter()
    .map(|ids| format!("alerts {}", ids.join(",")))
    .collect();
    assert_eq!(reads_of(&trail, "GET /v1/alerts"), expected, "{trail:?}");
    assert!(reads_of(&trail, "GET /v1/agencies/{agency}/caseload").is_empty());
    let trail = app.trail_of(clients[19]).await;
    assert_eq!(
        reads_of(&trail, "GET /v1/agencies/{agency}/caseload"),
        vec!["caseload entry of probation-opava"]
    );
    assert!(reads_of(&trail, "GET /v1/alerts").is_empty(), "{trail:?}");

    // Client 3 turns up: the alert clears, and stays in the history.
    let contact = event(
        clients[3],
        "contact.made",
        &at(now - hours(1)),
        json!({"kind": "meeting"}),
    );
    let position = posted(&app, PROBATION_WRITER, &contact).await;
    let open = app
        .get_ok(
            &format!(
                "/v1/alerts?kind=no_first_day_contact&client_id={}&min_position={position}",
                clients[3]
            ),
            ADMIN,
        )
        .await;
    assert!(open["alerts"].as_array().unwrap().is_empty(), "{open}");
    let history = app
        .get_ok(
            &format!(
                "/v1/alerts?kind=no_first_day_contact&client_id={}&status=all",
                clients[3]
            ),
            ADMIN,
        )
        .await;
    let cleared = &history["alerts"][0];
    assert_eq!(cleared["cleared"]["by"], contact["id"]);
    assert_eq!(cleared["cleared"]["resolution"], "resolved");

    // A coordinator reads only the alerts its own agency must act on.
    expect_problem(
        app.get("/v1/alerts?agency=prison-opava", COORDINATOR).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get("/v1/alerts?kind=late_for_tea", ADMIN).await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    app.stop().await;
    backend.remove().await;
}

/// A release with no contact: nothing is posted afterwards, only the clock moves, and the alert
/// is raised on the live stream when it falls due; a contact then clears it.
async fn time_based_alerts_fire_on_time_without_a_new_event(backend: Backend) {
    // The manual clock starts two days back, so that every event posted stays in the (real)
    // past, as the service requires.
    let clock = Arc::new(ManualClock::new(Utc::now() - chrono::Duration::days(2)));
    let app = spawn_app_with_coordination(
        &backend,
        Coordination {
            clock: clock.clone(),
            ..Default::default()
        },
    )
    .await;
    let start = clock.now();
    let client = Uuid::new_v4();
    let release = event(
        client,
        "client.released",
        &at(start - chrono::Duration::hours(1)),
        released(true),
    );
    let position = posted(&app, PRISON_WRITER, &release).await;
    let none = app
        .get_ok(&format!("/v1/alerts?min_position={position}"), ADMIN)
        .await;
    assert!(none["alerts"].as_array().unwrap().is_empty(), "{none}");

    let mut stream = EventStream::open(&app, ADMIN, "stream=alerts", None).await;
    assert!(
        stream.next(Duration::from_millis(300)).await.is_none(),
        "no alert is open yet"
    );
    clock.advance(chrono::Duration::hours(24));
    let raised = stream
        .next(Duration::from_secs(10))
        .await
        .expect("the scheduler raised the alert when it fell due");
    assert_eq!(raised.event.as_deref(), Some("alert"));
    assert_eq!(raised.data["change"], "raised");
    assert_eq!(raised.data["alert"]["kind"], "no_first_day_contact");
    assert_eq!(raised.data["alert"]["client_id"], client.to_string());
    assert_eq!(raised.data["alert"]["cause"], release["id"]);

    let contact = event(
        client,
        "contact.made",
        &at(start + chrono::Duration::minutes(23 * 60 + 30)),
        json!({"kind": "home_visit"}),
    );
    posted(&app, PROBATION_WRITER, &contact).await;
    let cleared = stream.next(Duration::from_secs(10)).await.expect("cleared");
    assert_eq!(cleared.data["change"], "cleared");
    assert_eq!(cleared.data["alert"]["cleared"]["by"], contact["id"]);

    // A subscriber that reconnects with the last id it saw resumes after it.
    let raised_id = raised.id.clone().unwrap();
    drop(stream);
    let mut resumed = EventStream::open(&app, ADMIN, "stream=alerts", Some(&raised_id)).await;
    let again = resumed.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        again.id, cleared.id,
        "resumed right after the raised notice"
    );
    // From an unknown epoch (a restart), the stream starts from the open alerts: none now.
    let mut fresh = EventStream::open(&app, ADMIN, "stream=alerts", Some("0-5")).await;
    assert!(fresh.next(Duration::from_millis(300)).await.is_none());
    app.stop().await;
    backend.remove().await;
}

/// A probation system follows the feed: it receives its own clients' events only, of the types
/// it asked for, and after a reconnect with `Last-Event-ID` exactly the events it missed.
async fn the_live_feed_resumes_without_loss_or_duplicates(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let now = Utc::now();
    let ours = Uuid::new_v4();
    let theirs = Uuid::new_v4();
    posted(
        &app,
        PROBATION_WRITER,
        &event(
            ours,
            "involvement.opened",
            &at(now - chrono::Duration::days(40)),
            json!({"role": "probation_officer", "worker": "novak"}),
        ),
    )
    .await;
    let mut expected = Vec::new();
    for (n, client) in [ours, theirs, ours, theirs, ours].into_iter().enumerate() {
        let position = posted(
            &app,
            PRISON_WRITER,
            &event(
                client,
                "client.released",
                &at(now - chrono::Duration::days(30 - n as i64)),
                released(false),
            ),
        )
        .await;
        if client == ours {
            expected.push(position);
        }
    }

    let mut stream = EventStream::open(
        &app,
        PROBATION_WRITER,
        "after=0&types=client.released",
        None,
    )
    .await;
    let first = stream.take(2).await;
    let positions = |messages: &[Message]| -> Vec<u64> {
        messages
            .iter()
            .map(|message| message.id.as_ref().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(positions(&first), expected[..2]);
    for message in &first {
        assert_eq!(message.event.as_deref(), Some("journey_event"));
        assert_eq!(message.data["client_id"], ours.to_string());
        assert_eq!(message.data["type"], "client.released");
    }
    let last_seen = first[1].id.clone().unwrap();
    drop(stream);

    // Missed while away: one more of ours (and one of theirs).
    for client in [theirs, ours] {
        let position = posted(
            &app,
            PRISON_WRITER,
            &event(
                client,
                "client.released",
                &at(now - chrono::Duration::days(1)),
                released(false),
            ),
        )
        .await;
        if client == ours {
            expected.push(position);
        }
    }
    let mut resumed = EventStream::open(
        &app,
        PROBATION_WRITER,
        "types=client.released",
        Some(&last_seen),
    )
    .await;
    let rest = resumed.take(2).await;
    assert_eq!(positions(&rest), expected[2..]);
    // A client that cannot send the header (an EventSource polyfill) resumes from the query.
    let mut from_query = EventStream::open(
        &app,
        PROBATION_WRITER,
        &format!("types=client.released&lastEventId={last_seen}"),
        None,
    )
    .await;
    assert_eq!(positions(&from_query.take(2).await), expected[2..]);
    drop(from_query);
    // And it stays live: a new event arrives without reconnecting.
    let live = posted(
        &app,
        PRISON_WRITER,
        &event(ours, "client.released", &at(now), released(false)),
    )
    .await;
    let next = resumed.take(1).await;
    assert_eq!(positions(&next), vec![live]);
    assert!(
        resumed.next(Duration::from_millis(300)).await.is_none(),
        "nothing else: no duplicates, nothing of other clients"
    );

    // A position past the end of the feed was never sent: resuming from it would skip what
    // is recorded up to it without a word.
    let beyond = app
        .http
        .get(app.url("/v1/subscriptions/feed"))
        .bearer_auth(PROBATION_WRITER)
        .header("x-purpose", "case_management")
        .header("last-event-id", (live + 1000).to_string())
        .send()
        .await
        .unwrap();
    let problem = expect_problem(beyond, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "Last-Event-ID");

    // Bad subscriptions are refused in the problem format.
    let bad = app
        .http
        .get(app.url("/v1/subscriptions/feed?types=client.vanished"))
        .bearer_auth(PROBATION_WRITER)
        .header("x-purpose", "case_management")
        .send()
        .await
        .unwrap();
    expect_problem(bad, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    // So is a filter an agency's stream could never match: a restriction and its lifting go
    // to readers of every client only, who may ask for them.
    let never = app
        .http
        .get(app.url("/v1/subscriptions/feed?types=need.*,processing.*"))
        .bearer_auth(PROBATION_WRITER)
        .header("x-purpose", "case_management")
        .send()
        .await
        .unwrap();
    let problem = expect_problem(never, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "types");
    assert!(
        problem["detail"].as_str().unwrap().contains("processing.*"),
        "{problem}"
    );
    let auditor = app
        .http
        .get(app.url("/v1/subscriptions/feed?types=processing.*"))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "audit")
        .send()
        .await
        .unwrap();
    assert_eq!(auditor.status(), StatusCode::OK);
    drop(auditor);
    let bad = app
        .http
        .get(app.url("/v1/subscriptions/feed"))
        .bearer_auth(PROBATION_WRITER)
        .header("x-purpose", "case_management")
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    let problem = expect_problem(bad, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "Last-Event-ID");
    // The same in the query string is named as sent there.
    let bad = app
        .http
        .get(app.url("/v1/subscriptions/feed?lastEventId=yesterday"))
        .bearer_auth(PROBATION_WRITER)
        .header("x-purpose", "case_management")
        .send()
        .await
        .unwrap();
    let problem = expect_problem(bad, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "lastEventId");
    let anonymous = app
        .http
        .get(app.url("/v1/subscriptions/feed"))
        .send()
        .await
        .unwrap();
    expect_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // A stream runs for the purposes of a standing subscription: break-glass is a read of one
    // client, and audits are an auditor's.
    for (key, purpose, allowed) in [
        (PROBATION_WRITER, "emergency", false),
        (PROBATION_WRITER, "audit", false),
        (PROBATION_WRITER, "subject_access", false),
        (AUDITOR, "emergency", false),
        (PROBATION_WRITER, "statistics", false),
        (PROBATION_WRITER, "service_delivery", true),
        (AUDITOR, "audit", true),
    ] {
        let answer = app
            .http
            .get(app.url("/v1/subscriptions/feed"))
            .bearer_auth(key)
            .header("x-purpose", purpose)
            .header("x-justification", "the client is missing")
            .send()
            .await
            .unwrap();
        if allowed {
            assert_eq!(answer.status(), StatusCode::OK, "{purpose}");
            // A stream of personal data is no more to be kept by a cache than any answer.
            assert_eq!(answer.headers()["cache-control"], "no-store");
        } else {
            let problem = expect_problem(answer, StatusCode::BAD_REQUEST, "purpose_required").await;
            assert_eq!(problem["field"], "X-Purpose", "{purpose}");
        }
    }

    // The recipient's streams named our client in an entry of their own once, in the first
    // batch, however many batches and streams followed within the hour: the trail of the other
    // client, whose events were not sent, names no stream.
    let streams_naming = |client: Uuid| {
        let app = &app;
        async move {
            app.trail_of(client)
                .await
                .iter()
                .filter(|entry| entry["action"] == "GET /v1/subscriptions/feed")
                .map(|entry| {
                    assert_eq!(entry["operation"], "disclosure", "{entry}");
                    assert_eq!(entry["credential"], "probation-system", "{entry}");
                    entry["returned"].as_str().unwrap().to_owned()
                })
                .collect::<Vec<String>>()
        }
    };
    let named = streams_naming(ours).await;
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(
        named[0].contains(first[0].data["id"].as_str().unwrap()),
        "{named:?}"
    );
    assert!(streams_naming(theirs).await.is_empty());

    // Every batch sent was logged as a disclosure.
    let trail = app
        .get_ok("/v1/audit/entries?after=0&limit=1000", AUDITOR)
        .await;
    let disclosures = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            entry["action"] == "GET /v1/subscriptions/feed"
                && entry["operation"] == "disclosure"
                && entry["returned"].is_string()
        })
        .count();
    assert!(disclosures >= 3, "{trail}");
    app.stop().await;
    backend.remove().await;
}

/// A restricted client's events keep their place in the live feed of a reader of every client,
/// personal fields withheld unless an auditor audits, and leave an agency's feed.
async fn the_live_feed_withholds_a_restricted_clients_personal_data(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    let now = Utc::now();
    posted(
        &app,
        PROBATION_WRITER,
        &event(
            client,
            "involvement.opened",
            &at(now - chrono::Duration::days(2)),
            json!({"role": "probation_officer", "worker": "novak"}),
        ),
    )
    .await;
    let registered = event(
        client,
        "client.registered",
        &at(now - chrono::Duration::days(1)),
        json!({
            "identifiers": [{"type": "prison_number", "value": "OP-2026-0117"}],
            "personal": {"given_name": "Jan", "family_name": "Novák", "birth_date": "1990-04-12"}
        }),
    );
    let position = posted(&app, PRISON_WRITER, &registered).await;
    let restricted = app
        .post(
            &format!("/v1/clients/{client}/restriction"),
            DPO,
            &json!({"reason": "the client contests the accuracy of the record"}),
        )
        .await;
    assert_eq!(restricted.status(), StatusCode::CREATED);

    let received = |mut stream: EventStream| async move {
        let mut found = None;
        while let Some(message) = stream.next(Duration::from_millis(500)).await {
            if message.id.as_deref() == Some(position.to_string().as_str()) {
                found = Some(message.data);
            }
        }
        found
    };
    let admin = EventStream::open(&app, ADMIN, "after=0", None).await;
    let seen = received(admin)
        .await
        .expect("the admin's feed keeps the event");
    assert_eq!(seen["personal_data"], "withheld", "{seen}");
    assert!(!seen.to_string().contains("Novák"), "{seen}");
    let auditor = EventStream::open_for(&app, AUDITOR, "after=0", None, "audit").await;
    let seen = received(auditor)
        .await
        .expect("the auditor's feed keeps it");
    assert!(seen["personal_data"].is_null(), "{seen}");
    assert_eq!(seen["data"]["personal"]["family_name"], "Novák", "{seen}");
    let probation = EventStream::open(&app, PROBATION_WRITER, "after=0", None).await;
    assert!(
        received(probation).await.is_none(),
        "an agency's feed leaves a restricted client out"
    );
    app.stop().await;
    backend.remove().await;
}

/// An agency's alert stream stops speaking of a client once their processing is restricted (not
/// even to say the alert was withdrawn), and raises the alert again once it is lifted.
async fn the_alert_stream_leaves_a_restricted_client_out(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    let lost = event(
        client,
        "job.lost",
        &at(Utc::now() - chrono::Duration::hours(1)),
        json!({"reason": "contract ended"}),
    );
    let position = posted(&app, writer_for("job.lost"), &lost).await;
    let alerts = app
        .get_ok(
            &format!("/v1/alerts?client_id={client}&min_position={position}"),
            ADMIN,
        )
        .await;
    let alert_id = alerts["alerts"][0]["id"].clone();
    assert!(alert_id.is_string(), "{alerts}");

    let mut stream = EventStream::open(&app, ADMIN, "stream=alerts", None).await;
    let open = stream
        .next(Duration::from_secs(10))
        .await
        .expect("the open alert");
    assert_eq!(open.data["change"], "open");
    assert_eq!(open.data["alert"]["id"], alert_id);
    let path = format!("/v1/clients/{client}/restriction");
    let reason = json!({"reason": "the client contests the record"});
    assert_eq!(
        app.post(&path, DPO, &reason).await.status(),
        StatusCode::CREATED
    );
    assert!(
        stream.next(Duration::from_millis(500)).await.is_none(),
        "nothing of a restricted client"
    );
    assert_eq!(
        app.delete(&path, DPO, &reason).await.status(),
        StatusCode::CREATED
    );
    let raised = stream
        .next(Duration::from_secs(10))
        .await
        .expect("raised again once lifted");
    assert_eq!(raised.data["change"], "raised");
    assert_eq!(raised.data["alert"]["id"], alert_id);
    // A subscriber that resumes from before the restriction hears no more of it than a live
    // one did: the `withdrawn` the restriction caused is not replayed.
    let mut resumed = EventStream::open(&app, ADMIN, "stream=alerts", open.id.as_deref()).await;
    let replayed = resumed
        .next(Duration::from_secs(10))
        .await
        .expect("the raise after the lift");
    assert_eq!(replayed.data["change"], "raised", "{:?}", replayed.data);
    assert_eq!(replayed.id, raised.id);
    app.stop().await;
    backend.remove().await;
}

on_both_backends!(
    opava_caseloads_and_alerts_add_up,
    the_alert_stream_leaves_a_restricted_client_out,
    the_live_feed_withholds_a_restricted_clients_personal_data,
    time_based_alerts_fire_on_time_without_a_new_event,
    the_live_feed_resumes_without_loss_or_duplicates,
);
