//! Webhooks end to end, on the embedded store and on PostgreSQL: an agency registers a receiver
//! (an HTTP server in the test, on 127.0.0.1) that checks every signature the way docs/api.md
//! tells receivers to; it gets its agency's events in feed order and nobody else's; a receiver
//! that fails or is down gets every event once it is back, with the retries in the delivery log;
//! registrations are validated and private to their agency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::support::*;

const AT: &str = "2026-02-01T09:00:00+01:00";
/// How long any one wait for deliveries may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// One request the receiver accepted.
#[derive(Debug, Clone)]
struct Received {
    event_id: String,
    position: u64,
    attempt: u32,
    body: Value,
}

/// What the test's receiver knows and does.
#[derive(Default)]
struct Inbox {
    /// The secret shown at registration; signatures are checked against it.
    secret: Mutex<Option<String>>,
    /// While true, every request is answered 500.
    failing: AtomicBool,
    /// While true, every request is held open and never answered.
    hanging: AtomicBool,
    /// Requests held open.
    hung: AtomicUsize,
    /// While true, every request waits, and is answered (and accepted) once it is false again.
    slow: AtomicBool,
    /// Requests that waited.
    slowed: AtomicUsize,
    /// Requests whose signature or headers did not check out.
    refused: AtomicUsize,
    /// Requests answered 500 on purpose.
    failed: AtomicUsize,
    received: Mutex<Vec<Received>>,
}

impl Inbox {
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The event ids of every request accepted, in order.
    fn event_ids(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .map(|received| received.event_id)
            .collect()
    }

    /// The event ids in the order they first arrived.
    fn first_receipts(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.received()
            .into_iter()
            .filter(|received| seen.insert(received.event_id.clone()))
            .map(|received| received.event_id)
            .collect()
    }
}

/// The check docs/api.md describes: HMAC-SHA256 keyed with the secret as shown, over
/// `<t>.<body>`, compared in constant time, with a timestamp close to now.
fn signature_checks(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers
        .get("travelmap-signature")
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => timestamp = Some(value.to_owned()),
            Some(("v1", value)) => signatures.push(value.to_owned()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - seconds).abs() > 300 {
        return false;
    }
    signatures.iter().any(|signature| {
        let Ok(bytes) = hex::decode(signature) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&bytes).is_ok()
    })
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let secret = inbox.secret.lock().unwrap().clone().unwrap_or_default();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let consistent = headers
        .get("content-type")
        .is_some_and(|value| value == "application/json")
        && event["id"].as_str() == Some(header("travelmap-event-id").as_str())
        && event["type"].as_str() == Some(header("travelmap-event-type").as_str())
        && Uuid::parse_str(&header("travelmap-delivery-id")).is_ok();
    if !consistent || !signature_checks(&secret, &headers, &body) {
        inbox.refused.fetch_add(1, Ordering::SeqCst);
        return AxumStatus::UNAUTHORIZED;
    }
    if inbox.hanging.load(Ordering::SeqCst) {
        inbox.hung.fetch_add(1, Ordering::SeqCst);
        return std::future::pending().await;
    }
    if inbox.slow.load(Ordering::SeqCst) {
        inbox.slowed.fetch_add(1, Ordering::SeqCst);
        while inbox.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if inbox.failing.load(Ordering::SeqCst) {
        inbox.failed.fetch_add(1, Ordering::SeqCst);
        return AxumStatus::INTERNAL_SERVER_ERROR;
    }
    inbox.received.lock().unwrap().push(Received {
        event_id: header("travelmap-event-id"),
        position: event["position"].as_u64().unwrap_or_default(),
        attempt: header("travelmap-attempt").parse().unwrap_or_default(),
        body: event,
    });
    AxumStatus::OK
}

/// The receiver's HTTP server, which can be taken down and brought back on the same port.
struct Receiver {
    inbox: Arc<Inbox>,
    port: u16,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Receiver {
    async fn start() -> Self {
        let mut receiver = Self {
            inbox: Arc::new(Inbox::default()),
            port: 0,
            server: None,
        };
        receiver.up().await;
        receiver
    }

    fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/travelmap/events?source=test",
            self.port
        )
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("receiver binds");
        self.port = listener.local_addr().unwrap().port();
        let router = axum::Router::new()
            .route("/travelmap/events", axum::routing::post(receive))
            .with_state(self.inbox.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        self.server = Some((stop, handle));
    }

    /// Stops listening: deliveries now find the port closed.
    async fn down(&mut self) {
        if let Some((stop, handle)) = self.server.take() {
            let _ = stop.send(());
            handle.await.unwrap();
        }
    }
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn posted(app: &TestApp, key: &str, body: &Value) -> Value {
    let response = app.post_event(key, body).await;
    let status = response.status();
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    receipt
}

/// A client the NGO (`ngo-opava`) works with.
async fn ngo_client(app: &TestApp) -> Uuid {
    let client = Uuid::new_v4();
    posted(
        app,
        PRISON_WRITER,
        &event(client, "client.registered", AT, json!({})),
    )
    .await;
    posted(
        app,
        NGO_WRITER,
        &event(client, "involvement.opened", AT, json!({"role": "mentor"})),
    )
    .await;
    client
}

/// A client only the probation service works with.
async fn probation_client(app: &TestApp) -> Uuid {
    let client = Uuid::new_v4();
    posted(
        app,
        PRISON_WRITER,
        &event(client, "client.registered", AT, json!({})),
    )
    .await;
    posted(
        app,
        PROBATION_WRITER,
        &event(
            client,
            "involvement.opened",
            AT,
            json!({"role": "probation_officer"}),
        ),
    )
    .await;
    client
}

/// A `need.assessed` with a personal note, posted by `key`; returns its id.
async fn need(app: &TestApp, key: &str, client: Uuid, note: &str) -> String {
    let receipt = posted(
        app,
        key,
        &event(
            client,
            "need.assessed",
            AT,
            json!({"area": "housing", "status": "in_progress", "note": note}),
        ),
    )
    .await;
    receipt["id"].as_str().unwrap().to_owned()
}

/// Registers a webhook to `receiver` for the NGO; returns the answer (with the secret) and
/// hands the secret to the receiver.
async fn register(app: &TestApp, receiver: &Receiver, types: Value) -> Value {
    let response = app
        .post(
            "/v1/subscriptions/webhooks",
            NGO_COORDINATOR,
            &json!({"url": receiver.url(), "types": types}),
        )
        .await;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_owned());
    let webhook: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{webhook}");
    assert_eq!(
        location,
        Some(format!(
            "/v1/subscriptions/webhooks/{}",
            webhook["id"].as_str().unwrap()
        ))
    );
    let secret = webhook["secret"]
        .as_str()
        .expect("the secret is shown once");
    *receiver.inbox.secret.lock().unwrap() = Some(secret.to_owned());
    webhook
}

/// Waits until `webhook` has been read up to the feed's last event, sent or left out.
async fn read_through_head(app: &TestApp, webhook: &Value) {
    let path = format!(
        "/v1/subscriptions/webhooks/{}",
        webhook["id"].as_str().unwrap()
    );
    eventually("the webhook has read past the last event", || async {
        let head = app.feed().await.last().unwrap()["position"].as_u64();
        app.get_ok(&path, NGO_COORDINATOR).await["delivered_up_to"].as_u64() >= head
    })
    .await;
}

async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    app.get_ok(
        &format!("/v1/subscriptions/webhooks/{id}/deliveries?limit=1000"),
        NGO_COORDINATOR,
    )
    .await["attempts"]
        .as_array()
        .unwrap()
        .clone()
}

async fn the_agency_receives_its_events_in_order_signed_and_nobody_elses(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let receiver = Receiver::start().await;
    let ours = ngo_client(&app).await;
    let theirs = probation_client(&app).await;
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    assert_eq!(webhook["agency"], "ngo-opava");
    assert_eq!(webhook["types"], json!(["need.*"]));
    assert_eq!(webhook["purpose"], "case_management");
    assert_eq!(webhook["state"], "active");

    // Interleaved: the NGO's client's needs, another agency's client's needs, and a type the
    // webhook did not ask for.
    let mut expected = vec![need(&app, NGO_WRITER, ours, "first-note").await];
    need(&app, PROBATION_WRITER, theirs, "not-for-the-ngo").await;
    posted(
        &app,
        NGO_WRITER,
        &event(
            ours,
            "programme.enrolled",
            AT,
            json!({"programme": "vol-mentoring"}),
        ),
    )
    .await;
    expected.push(need(&app, NGO_WRITER, ours, "second-note").await);
    need(&app, PROBATION_WRITER, theirs, "not-for-the-ngo-either").await;
    expected.push(need(&app, NGO_WRITER, ours, "third-note").await);

    eventually("the three events are delivered", || async {
        receiver.inbox.first_receipts().len() >= expected.len()
    })
    .await;
    // The other client's events lie between ours in the feed; delivery is in feed order, so
    // had they been sent they would have arrived by now.
    assert_eq!(receiver.inbox.first_receipts(), expected);
    assert_eq!(receiver.inbox.refused.load(Ordering::SeqCst), 0);
    let received = receiver.inbox.received();
    assert!(
        received
            .windows(2)
            .all(|pair| pair[0].position < pair[1].position)
    );
    assert!(received.iter().all(|received| received.attempt == 1));

    // A delivery carries the event exactly as the feed shows it, personal fields opened.
    let feed = app.feed().await;
    for delivered in &received {
        let listed = feed
            .iter()
            .find(|event| event["id"] == delivered.body["id"])
            .expect("delivered events are in the feed");
        assert_eq!(&delivered.body, listed);
        assert_eq!(delivered.body["client_id"], ours.to_string());
    }
    assert_eq!(received[1].body["data"]["note"], "second-note");

    // Each delivery is in the log, newest first, and in the audit trail as a disclosure to
    // the registering credential.
    eventually("the cursor is saved", || async {
        app.get_ok(&format!("/v1/subscriptions/webhooks/{id}"), NGO_COORDINATOR)
            .await["delivered_up_to"]
            .as_u64()
            >= Some(received[2].position)
    })
    .await;
    let log = deliveries(&app, &id).await;
    let logged: Vec<&str> = log
        .iter()
        .map(|a| a["event_id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = expected.iter().rev().map(String::as_str).collect();
    assert_eq!(logged, newest_first);
    assert!(log.iter().all(|attempt| attempt["outcome"] == "delivered"
        && attempt["status"] == 200
        && attempt["attempt"] == 1));
    let trail = app
        .get_ok("/v1/audit/entries?after=0&limit=1000", AUDITOR)
        .await;
    let disclosures: Vec<&Value> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == format!("webhook {id}"))
        .collect();
    assert_eq!(disclosures.len(), 3);
    for (entry, event_id) in disclosures.iter().zip(&expected) {
        assert_eq!(entry["operation"], "disclosure");
        assert_eq!(entry["credential"], "ngo-desk");
        assert_eq!(entry["agency"], "ngo-opava");
        assert_eq!(entry["client_id"], ours.to_string());
        assert_eq!(entry["purpose"], "case_management");
        assert_eq!(entry["returned"], event_id.as_str());
    }

    app.stop().await;
    backend.remove().await;
}

async fn a_receiver_that_fails_or_is_down_gets_every_event_once_back(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let mut receiver = Receiver::start().await;
    let client = ngo_client(&app).await;
    let webhook = register(&app, &receiver, json!(["need.assessed"])).await;
    let id = webhook["id"].as_str().unwrap().to_owned();

    let mut expected = vec![need(&app, NGO_WRITER, client, "before").await];
    eventually("the first event is delivered", || async {
        receiver.inbox.first_receipts().len() == 1
    })
    .await;

    // The receiver answers 500 for a while: the event is tried again, and the next ones wait
    // behind it.
    receiver.inbox.failing.store(true, Ordering::SeqCst);
    for note in ["during-1", "during-2", "during-3"] {
        expected.push(need(&app, NGO_WRITER, client, note).await);
    }
    let stuck = expected[1].clone();
    eventually("the event has failed three times", || async {
        let log = deliveries(&app, &id).await;
        log.iter()
            .filter(|a| a["event_id"] == stuck.as_str() && a["status"] == 500)
            .count()
            >= 3
    })
    .await;
    let log = deliveries(&app, &id).await;
    assert!(
        log.iter()
            .filter(|attempt| attempt["event_id"] != expected[0].as_str())
            .all(|attempt| attempt["event_id"] == stuck.as_str()),
        "an event was tried before the one before it was delivered: {log:?}"
    );
    assert!(
        log.iter()
            .filter(|attempt| attempt["status"] == 500)
            .all(|attempt| attempt["outcome"] == "retrying")
    );

    // Then it is down altogether.
    receiver.down().await;
    eventually("an attempt found the receiver down", || async {
        deliveries(&app, &id)
            .await
            .iter()
            .any(|attempt| attempt["status"].is_null() && attempt["error"].is_string())
    })
    .await;

    // Back: everything missed arrives, in order.
    receiver.inbox.failing.store(false, Ordering::SeqCst);
    receiver.up().await;
    expected.push(need(&app, NGO_WRITER, client, "after").await);
    eventually("every event is delivered", || async {
        receiver.inbox.first_receipts().len() >= expected.len()
    })
    .await;
    // At least once: duplicates are allowed, losses and reordering are not.
    assert_eq!(receiver.inbox.first_receipts(), expected);
    assert_eq!(receiver.inbox.refused.load(Ordering::SeqCst), 0);
    assert!(receiver.inbox.failed.load(Ordering::SeqCst) >= 3);
    let stuck_delivery = receiver
        .inbox
        .received()
        .into_iter()
        .find(|received| received.event_id == stuck)
        .unwrap();
    assert!(stuck_delivery.attempt > 3, "{stuck_delivery:?}");

    // The log tells the story of the stuck event: attempts numbered from 1, failures first,
    // then the delivery.
    eventually("the last delivery is logged", || async {
        deliveries(&app, &id)
            .await
            .iter()
            .any(|a| a["event_id"] == expected[4].as_str() && a["outcome"] == "delivered")
    })
    .await;
    let mut story: Vec<Value> = deliveries(&app, &id)
        .await
        .into_iter()
        .filter(|attempt| attempt["event_id"] == stuck.as_str())
        .collect();
    story.reverse();
    let numbers: Vec<u64> = story
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    let (last, failures) = story.split_last().unwrap();
    assert_eq!(last["outcome"], "delivered");
    assert!(failures.iter().all(|a| a["outcome"] == "retrying"));

    app.stop().await;
    backend.remove().await;
}

async fn registrations_are_checked_and_private_to_their_agency(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let url = "https://case-system.ngo.example/travelmap";
    let register = |body: Value, key: &'static str| {
        let app = &app;
        async move { app.post("/v1/subscriptions/webhooks", key, &body).await }
    };
    for (body, field) in [
        (
            json!({"url": "ftp://files.example/x", "types": ["need.*"]}),
            "url",
        ),
        (json!({"url": "not a url", "types": ["need.*"]}), "url"),
        (
            json!({"url": "https://user:pw@ngo.example/", "types": ["need.*"]}),
            "url",
        ),
        (
            json!({"url": url, "types": ["need.*", "need.forgotten"]}),
            "types[1]",
        ),
        (json!({"url": url, "types": ["ne*"]}), "types[0]"),
        (json!({"url": url, "types": []}), "types"),
        (
            json!({"url": url, "types": ["need.*"], "purpose": "emergency"}),
            "purpose",
        ),
        // Statistics are given as aggregates only, never as a feed of clients' events.
        (
            json!({"url": url, "types": ["need.*"], "purpose": "statistics"}),
            "purpose",
        ),
        (
            json!({"url": url, "types": ["need.*"], "agency": "someone-else"}),
            "agency",
        ),
        (json!({"types": ["need.*"]}), "url"),
    ] {
        let problem = expect_problem(
            register(body.clone(), NGO_COORDINATOR).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    expect_problem(
        register(json!({"url": url, "types": ["need.*"]}), AUDITOR).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let response = app
        .http
        .post(app.url("/v1/subscriptions/webhooks"))
        .bearer_auth(NGO_COORDINATOR)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "malformed_json").await;

    let response = register(
        json!({"url": url, "types": ["need.*", "job.*"]}),
        NGO_WRITER,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/subscriptions/webhooks/{id}");

    // The whole agency sees it, never with its secret.
    let listed = app
        .get_ok("/v1/subscriptions/webhooks", NGO_COORDINATOR)
        .await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(listed["webhooks"][0]["id"], id.as_str());
    assert!(listed["webhooks"][0].get("secret").is_none());
    let shown = app.get_ok(&path, NGO_WRITER).await;
    assert!(shown.get("secret").is_none());
    assert_eq!(shown["credential"], "ngo-system");

    // Another agency is told it does not exist.
    let empty = app
        .get_ok("/v1/subscriptions/webhooks", PROBATION_WRITER)
        .await;
    assert_eq!(empty["webhooks"], json!([]));
    for response in [
        app.get(&path, PROBATION_WRITER).await,
        app.get(&format!("{path}/deliveries"), PROBATION_WRITER)
            .await,
        app.delete(&path, PROBATION_WRITER, &json!({})).await,
        app.post(&format!("{path}/resume"), PROBATION_WRITER, &json!({}))
            .await,
    ] {
        expect_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    expect_problem(
        app.get("/v1/subscriptions/webhooks/not-a-uuid", NGO_WRITER)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    expect_problem(
        app.get(&format!("{path}/deliveries?limit=0"), NGO_WRITER)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;

    // An administrator sees every agency's.
    let all = app.get_ok("/v1/subscriptions/webhooks", ADMIN).await;
    assert_eq!(all["webhooks"].as_array().unwrap().len(), 1);

    // Registration and deletion are in the audit trail.
    let response = app.delete(&path, NGO_COORDINATOR, &json!({})).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    expect_problem(
        app.get(&path, NGO_COORDINATOR).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let trail = app
        .get_ok("/v1/audit/entries?after=0&limit=1000", AUDITOR)
        .await;
    let actions: Vec<(&str, &str, &str)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            entry["action"]
                .as_str()
                .unwrap()
                .contains("/v1/subscriptions/webhooks")
        })
        .map(|entry| {
            (
                entry["action"].as_str().unwrap(),
                entry["outcome"].as_str().unwrap(),
                entry["credential"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(actions.contains(&("POST /v1/subscriptions/webhooks", "denied", "dpo-office")));
    assert!(actions.contains(&("POST /v1/subscriptions/webhooks", "allowed", "ngo-system")));
    assert!(actions.contains(&(
        "DELETE /v1/subscriptions/webhooks/{id}",
        "allowed",
        "ngo-desk"
    )));
    // Another agency's attempts to change it, answered as if it did not exist, are denied
    // entries all the same.
    for action in [
        "DELETE /v1/subscriptions/webhooks/{id}",
        "POST /v1/subscriptions/webhooks/{id}/resume",
    ] {
        assert!(
            actions.contains(&(action, "denied", "probation-system")),
            "{action}: {actions:?}"
        );
    }

    app.stop().await;
    backend.remove().await;
}

async fn a_webhook_that_keeps_failing_is_paused_and_resumes_where_it_stopped(backend: Backend) {
    let app = spawn_app_with_webhooks(
        &backend,
        travelmap_webhooks::Policy {
            max_attempts: 3,
            ..webhook_policy()
        },
    )
    .await;
    let receiver = Receiver::start().await;
    receiver.inbox.failing.store(true, Ordering::SeqCst);
    let client = ngo_client(&app).await;
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/subscriptions/webhooks/{id}");
    let expected = vec![
        need(&app, NGO_WRITER, client, "first").await,
        need(&app, NGO_WRITER, client, "second").await,
    ];
    eventually("the webhook is paused", || async {
        app.get_ok(&path, NGO_COORDINATOR).await["state"] == "paused"
    })
    .await;
    let mut story = deliveries(&app, &id).await;
    story.reverse();
    let outcomes: Vec<(&str, u64, &str)> = story
        .iter()
        .map(|a| {
            (
                a["event_id"].as_str().unwrap(),
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    let first = expected[0].as_str();
    assert_eq!(
        outcomes,
        [
            (first, 1, "retrying"),
            (first, 2, "retrying"),
            (first, 3, "failed")
        ]
    );
    assert!(receiver.inbox.received().is_empty());

    // Resumed, it starts again at the event that failed, and skips nothing.
    receiver.inbox.failing.store(false, Ordering::SeqCst);
    let response = app
        .post(&format!("{path}/resume"), NGO_WRITER, &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let resumed: Value = response.json().await.unwrap();
    assert_eq!(resumed["state"], "active");
    eventually("both events are delivered", || async {
        receiver.inbox.first_receipts().len() >= 2
    })
    .await;
    assert_eq!(receiver.inbox.first_receipts(), expected);
    assert_eq!(receiver.inbox.refused.load(Ordering::SeqCst), 0);
    // The count the receiver sees goes on; the resumed webhook had its attempts afresh.
    assert_eq!(receiver.inbox.received()[0].attempt, 4);

    app.stop().await;
    backend.remove().await;
}

/// A restart does not give a failing receiver a fresh count of attempts: the webhook pauses
/// after the configured number at one event, however many restarts fall in between.
async fn attempts_are_counted_across_a_restart(backend: Backend) {
    let policy = || travelmap_webhooks::Policy {
        max_attempts: 4,
        ..webhook_policy()
    };
    let app = spawn_app_with_webhooks(&backend, policy()).await;
    let receiver = Receiver::start().await;
    receiver.inbox.failing.store(true, Ordering::SeqCst);
    let client = ngo_client(&app).await;
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/subscriptions/webhooks/{id}");
    need(&app, NGO_WRITER, client, "never taken").await;
    eventually("two attempts are made", || async {
        deliveries(&app, &id).await.len() >= 2
    })
    .await;
    let app = spawn_app_with_webhooks_in(&backend, app.stop().await, policy()).await;
    eventually("the webhook is paused", || async {
        app.get_ok(&path, NGO_COORDINATOR).await["state"] == "paused"
    })
    .await;
    let mut story = deliveries(&app, &id).await;
    story.reverse();
    let counted: Vec<(u64, &str)> = story
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counted,
        [
            (1, "retrying"),
            (2, "retrying"),
            (3, "retrying"),
            (4, "failed")
        ]
    );
    app.stop().await;
    backend.remove().await;
}

async fn delivery_continues_from_the_saved_cursor_after_a_restart(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let receiver = Receiver::start().await;
    let client = ngo_client(&app).await;
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let path = format!(
        "/v1/subscriptions/webhooks/{}",
        webhook["id"].as_str().unwrap()
    );
    let before = need(&app, NGO_WRITER, client, "before the restart").await;
    eventually("the event is acknowledged and the cursor saved", || async {
        !receiver.inbox.received().is_empty()
            && app.get_ok(&path, NGO_COORDINATOR).await["delivered_up_to"]
                .as_u64()
                .unwrap()
                >= receiver.inbox.received()[0].position
    })
    .await;

    let app = spawn_app_on_in(&backend, app.stop().await).await;
    let after = need(&app, NGO_WRITER, client, "after the restart").await;
    eventually("the new event is delivered", || async {
        receiver.inbox.first_receipts().len() >= 2
    })
    .await;
    // The acknowledged event is not sent again: its cursor outlived the process.
    let ids = receiver.inbox.event_ids();
    assert_eq!(ids, [before, after]);

    app.stop().await;
    backend.remove().await;
}

/// The close of an agency's own involvement takes the client out of its scope, yet its
/// systems must hear that the case ended: the closing event is delivered, and nothing after it.
/// An agency that never worked with the client is not told of a close that names it.
async fn the_close_of_its_own_involvement_reaches_the_agency_and_nothing_after(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let receiver = Receiver::start().await;
    let webhook = register(&app, &receiver, json!(["involvement.*", "need.*"])).await;
    let ours = ngo_client(&app).await;
    let strangers = probation_client(&app).await;
    let close = |client| {
        event(
            client,
            "involvement.closed",
            AT,
            json!({"agency": "ngo-opava", "role": "mentor"}),
        )
    };
    // Scope is decided as each page is read: the opening must be read while it holds.
    eventually("the opening is delivered", || async {
        !receiver.inbox.received().is_empty()
    })
    .await;
    let told = posted(&app, PRISON_WRITER, &close(strangers)).await;
    let closed = posted(&app, PRISON_WRITER, &close(ours)).await;
    // A close naming the NGO in a role it never held ends nothing of its own.
    posted(
        &app,
        PRISON_WRITER,
        &event(
            ours,
            "involvement.closed",
            AT,
            json!({"agency": "ngo-opava", "role": "case_manager"}),
        ),
    )
    .await;
    need(&app, PROBATION_WRITER, ours, "after the close").await;
    let last = need(&app, NGO_WRITER, ours, "also after").await;
    read_through_head(&app, &webhook).await;
    let types: Vec<(String, String)> = receiver
        .inbox
        .received()
        .iter()
        .map(|received| {
            (
                received.body["type"].as_str().unwrap().to_owned(),
                received.event_id.clone(),
            )
        })
        .collect();
    let opened = types[0].1.clone();
    assert_eq!(
        types,
        [
            ("involvement.opened".to_owned(), opened),
            (
                "involvement.closed".to_owned(),
                closed["id"].as_str().unwrap().to_owned()
            ),
        ],
        "the stranger's close ({}) and the needs after the close ({last}) stay out",
        told["id"]
    );
    app.stop().await;
    backend.remove().await;
}

/// The same for a consent: the withdrawal that ended the cover of the webhook's purpose reaches
/// the agency; a later withdrawal, which ends nothing, does not.
async fn the_withdrawal_of_its_own_consent_reaches_the_agency_once(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let receiver = Receiver::start().await;
    let webhook = register(&app, &receiver, json!(["consent.*", "need.*"])).await;
    let client = Uuid::new_v4();
    let consent = |kind: &str, data: Value| event(client, kind, AT, data);
    let recorded = posted(
        &app,
        PRISON_WRITER,
        &consent(
            "consent.recorded",
            json!({"agency": "ngo-opava", "purposes": ["case_management"], "legal_basis": "consent"}),
        ),
    )
    .await;
    // Scope is decided as each page is read: the consent must be read while it holds.
    eventually("the consent is delivered", || async {
        !receiver.inbox.received().is_empty()
    })
    .await;
    let withdrawn = posted(
        &app,
        PRISON_WRITER,
        &consent("consent.withdrawn", json!({"agency": "ngo-opava"})),
    )
    .await;
    posted(
        &app,
        PRISON_WRITER,
        &consent("consent.withdrawn", json!({"agency": "ngo-opava"})),
    )
    .await;
    let last = need(&app, PROBATION_WRITER, client, "after the withdrawal").await;
    read_through_head(&app, &webhook).await;
    let ids = receiver.inbox.event_ids();
    assert_eq!(
        ids,
        [
            recorded["id"].as_str().unwrap(),
            withdrawn["id"].as_str().unwrap()
        ],
        "the second withdrawal and the need after it ({last}) stay out"
    );
    app.stop().await;
    backend.remove().await;
}

/// A correction or retraction that takes back the involvement or consent an agency had (it was
/// recorded for the wrong agency, or a consent's purposes were narrowed) reaches that agency,
/// without its personal fields, so that its systems learn that what they were sent was
/// rectified; nothing after it does. One that took back nothing the webhook's purpose had
/// stays out.
async fn a_rectification_that_takes_back_its_access_reaches_the_agency(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let receiver = Receiver::start().await;
    let webhook = register(
        &app,
        &receiver,
        json!(["involvement.*", "consent.*", "event.*"]),
    )
    .await;
    let involved = Uuid::new_v4();
    let consented = Uuid::new_v4();
    let narrowed = Uuid::new_v4();
    let elsewhere = Uuid::new_v4();
    let consent_for = |client, purposes: Value| {
        event(
            client,
            "consent.recorded",
            AT,
            json!({"agency": "ngo-opava", "purposes": purposes, "legal_basis": "consent"}),
        )
    };
    let opened = posted(
        &app,
        PRISON_WRITER,
        &event(
            involved,
            "involvement.opened",
            AT,
            json!({"agency": "ngo-opava", "role": "mentor"}),
        ),
    )
    .await;
    let consent = posted(
        &app,
        PRISON_WRITER,
        &consent_for(consented, json!(["case_management"])),
    )
    .await;
    let wide = posted(
        &app,
        PRISON_WRITER,
        &consent_for(narrowed, json!(["case_management", "service_delivery"])),
    )
    .await;
    // Never covered the webhook's purpose: neither it nor its retraction is sent.
    let other_purpose = posted(
        &app,
        PRISON_WRITER,
        &consent_for(elsewhere, json!(["service_delivery"])),
    )
    .await;
    // Scope is decided as each page is read: the grants must be read while they hold.
    eventually("the involvement and the consents are delivered", || async {
        receiver.inbox.received().len() >= 3
    })
    .await;
    let retract = |client, target: &Value| {
        event(
            client,
            "event.retracted",
            AT,
            json!({"event_id": target["id"], "reason": "recorded for the wrong agency"}),
        )
    };
    let retracted = posted(&app, PRISON_WRITER, &retract(involved, &opened)).await;
    let corrected = posted(
        &app,
        PRISON_WRITER,
        &event(
            consented,
            "event.corrected",
            AT,
            json!({"event_id": consent["id"], "reason": "recorded for the wrong agency",
                   "data": {"agency": "probation-opava", "purposes": ["case_management"],
                            "legal_basis": "consent"}}),
        ),
    )
    .await;
    let narrowing = posted(
        &app,
        PRISON_WRITER,
        &event(
            narrowed,
            "event.corrected",
            AT,
            json!({"event_id": wide["id"], "reason": "the client narrowed the consent",
                   "data": {"agency": "ngo-opava", "purposes": ["service_delivery"],
                            "legal_basis": "consent"}}),
        ),
    )
    .await;
    let unrelated = posted(&app, PRISON_WRITER, &retract(elsewhere, &other_purpose)).await;
    let after = need(&app, PROBATION_WRITER, involved, "after the retraction").await;
    read_through_head(&app, &webhook).await;
    let received = receiver.inbox.received();
    let ids: Vec<String> = received
        .iter()
        .map(|received| received.event_id.clone())
        .collect();
    assert_eq!(
        ids,
        [
            &opened["id"],
            &consent["id"],
            &wide["id"],
            &retracted["id"],
            &corrected["id"],
            &narrowing["id"]
        ]
        .map(|id| id.as_str().unwrap().to_owned()),
        "the need after the retraction ({after}) and the retraction of a consent for another \
         purpose ({}) stay out",
        unrelated["id"]
    );
    // The notices come without their personal fields: the reason, the replacement's.
    for notice in &received[3..] {
        assert_eq!(notice.body["personal_data"], "withheld", "{}", notice.body);
        assert!(
            notice.body["data"].get("reason").is_none(),
            "{}",
            notice.body
        );
        // Which event was rectified, not what it says now (who holds the case instead).
        assert!(notice.body["data"].get("data").is_none(), "{}", notice.body);
        assert!(
            notice.body["data"]["event_id"].is_string(),
            "{}",
            notice.body
        );
    }
    app.stop().await;
    backend.remove().await;
}

/// A restriction and its lifting are the data-protection officer's decisions, with the
/// officer's reasons: an agency's webhook may not ask for them, receives nothing of the client
/// while the restriction lasts, and after the lifting it receives the client's events again.
async fn restriction_decisions_do_not_reach_the_agency(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let receiver = Receiver::start().await;
    for types in [
        json!(["need.*", "processing.*"]),
        json!(["restriction.lifted"]),
    ] {
        let response = app
            .post(
                "/v1/subscriptions/webhooks",
                NGO_COORDINATOR,
                &json!({"url": receiver.url(), "types": types}),
            )
            .await;
        let problem = expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(
            problem["field"] == "types[1]" || problem["field"] == "types[0]",
            "{problem}"
        );
    }
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let client = ngo_client(&app).await;
    let before = need(&app, NGO_WRITER, client, "before the restriction").await;
    // Scope is decided as each page is read: the need must be read before the restriction.
    eventually("the need is delivered", || async {
        !receiver.inbox.received().is_empty()
    })
    .await;
    let path = format!("/v1/clients/{client}/restriction");
    let restricted = app
        .post(&path, DPO, &json!({"reason": "contested by the client"}))
        .await;
    assert_eq!(restricted.status(), StatusCode::CREATED);
    let lifted = app.delete(&path, DPO, &json!({"reason": "resolved"})).await;
    assert_eq!(lifted.status(), StatusCode::CREATED);
    let after = need(&app, NGO_WRITER, client, "after the lifting").await;
    read_through_head(&app, &webhook).await;
    let ids = receiver.inbox.event_ids();
    assert_eq!(ids, [before, after]);
    app.stop().await;
    backend.remove().await;
}

/// A receiver slow to answer does not stretch the decisions made when a page was read: an event
/// read with its predecessor, before the client's processing was restricted, is not sent once
/// the receiver has answered for the predecessor after the restriction.
async fn a_slow_receiver_gets_nothing_of_a_client_restricted_meanwhile(backend: Backend) {
    // Patient enough to wait out the receiver's delay, which is longer than a page is used for.
    let policy = travelmap_webhooks::Policy {
        timeout: Duration::from_secs(20),
        ..webhook_policy()
    };
    let app = spawn_app_with_webhooks(&backend, policy).await;
    let receiver = Receiver::start().await;
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let client = ngo_client(&app).await;
    receiver.inbox.slow.store(true, Ordering::SeqCst);
    // Committed together, so that one page of the feed holds both.
    let assessed = |note: &str| {
        event(
            client,
            "need.assessed",
            AT,
            json!({"area": "housing", "status": "in_progress", "note": note}),
        )
    };
    let batch = app
        .post(
            "/v1/events/batch",
            NGO_WRITER,
            &json!({"events": [assessed("first"), assessed("second")]}),
        )
        .await;
    assert_eq!(batch.status(), StatusCode::CREATED);
    let first: Value = batch.json().await.unwrap();
    let first = first["receipts"][0]["id"].as_str().unwrap().to_owned();
    eventually("the first event's delivery is waiting", || async {
        receiver.inbox.slowed.load(Ordering::SeqCst) == 1
    })
    .await;
    let restricted = app
        .post(
            &format!("/v1/clients/{client}/restriction"),
            DPO,
            &json!({"reason": "contested by the client"}),
        )
        .await;
    assert_eq!(restricted.status(), StatusCode::CREATED);
    // Longer than a page is delivered from.
    tokio::time::sleep(Duration::from_secs(6)).await;
    receiver.inbox.slow.store(false, Ordering::SeqCst);
    read_through_head(&app, &webhook).await;
    let ids = receiver.inbox.event_ids();
    assert_eq!(ids, [first]);
    app.stop().await;
    backend.remove().await;
}

/// An agency taken out of the configuration receives nothing more: its webhooks stay
/// registered, but nothing is delivered to them, while other agencies' go on.
async fn an_agency_taken_out_of_the_configuration_receives_nothing_more(backend: Backend) {
    let app = spawn_app_with_webhooks(&backend, webhook_policy()).await;
    let ngo_receiver = Receiver::start().await;
    let ngo = ngo_client(&app).await;
    register(&app, &ngo_receiver, json!(["need.*"])).await;
    let before = need(&app, NGO_WRITER, ngo, "while the NGO takes part").await;
    eventually("the NGO hears of it", || async {
        !ngo_receiver.inbox.received().is_empty()
    })
    .await;
    // The municipality's webhook shows when delivery has gone on past the NGO's event.
    let municipal_receiver = Receiver::start().await;
    let municipal = Uuid::new_v4();
    posted(
        &app,
        PRISON_WRITER,
        &event(municipal, "client.registered", AT, json!({})),
    )
    .await;
    posted(
        &app,
        MUNICIPALITY_WRITER,
        &event(
            municipal,
            "involvement.opened",
            AT,
            json!({"role": "social_worker"}),
        ),
    )
    .await;
    let response = app
        .post(
            "/v1/subscriptions/webhooks",
            COORDINATOR,
            &json!({"url": municipal_receiver.url(), "types": ["need.*"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let registered: Value = response.json().await.unwrap();
    *municipal_receiver.inbox.secret.lock().unwrap() =
        Some(registered["secret"].as_str().unwrap().to_owned());

    let credentials = credentials();
    let others: Vec<&str> = credentials
        .iter()
        .map(|(_, credential)| credential.agency.as_str())
        .filter(|agency| *agency != "ngo-opava")
        .collect();
    let app = spawn_app_declaring(&backend, app.stop().await, webhook_policy(), &others).await;
    need(&app, PRISON_WRITER, ngo, "after the NGO left").await;
    let shown = need(&app, MUNICIPALITY_WRITER, municipal, "the municipality's").await;
    eventually("the municipality hears of its event", || async {
        municipal_receiver
            .inbox
            .received()
            .iter()
            .any(|received| received.event_id == shown)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = ngo_receiver.inbox.event_ids();
    assert_eq!(ids, [before]);
    app.stop().await;
    backend.remove().await;
}

/// A delivery cut short by a shutdown counts as an attempt: the request may have reached the
/// receiver, so the attempt number the receiver sees goes on after the restart.
async fn an_attempt_cut_short_by_a_shutdown_still_counts(backend: Backend) {
    let app = spawn_app_with_webhooks(&backend, webhook_policy()).await;
    let receiver = Receiver::start().await;
    receiver.inbox.hanging.store(true, Ordering::SeqCst);
    let client = ngo_client(&app).await;
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    let cut_short = need(&app, NGO_WRITER, client, "cut short").await;
    eventually("the request is under way", || async {
        receiver.inbox.hung.load(Ordering::SeqCst) >= 1
    })
    .await;
    // Logged before it left, so that a process killed now (no clean stop) leaves it counted.
    let under_way = deliveries(&app, &id).await;
    assert_eq!(under_way.len(), 1, "{under_way:?}");
    assert_eq!(under_way[0]["attempt"], 1);
    assert_eq!(under_way[0]["status"], Value::Null);
    assert!(
        under_way[0]["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("no answer recorded")),
        "{under_way:?}"
    );
    let data_dir = app.stop().await;
    receiver.inbox.hanging.store(false, Ordering::SeqCst);
    let app = spawn_app_with_webhooks_in(&backend, data_dir, webhook_policy()).await;
    eventually("the event is delivered", || async {
        !receiver.inbox.received().is_empty()
    })
    .await;
    let received = receiver.inbox.received();
    assert_eq!(received[0].event_id, cut_short);
    assert_eq!(received[0].attempt, 2);
    // The attempt is logged once the receiver has answered, which may be a moment after it
    // has the delivery.
    let story = || async {
        deliveries(&app, &id)
            .await
            .iter()
            .rev()
            .map(|a| {
                (
                    a["attempt"].as_u64().unwrap(),
                    a["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<(u64, String)>>()
    };
    // The second attempt shows as under way until then: wait for its answer, not its line.
    let expected = [(1, "retrying".to_owned()), (2, "delivered".to_owned())];
    eventually("the delivery is logged", || async {
        story().await == expected
    })
    .await;
    app.stop().await;
    backend.remove().await;
}

/// An attempt under way when delivery stopped counts: if it was the last one allowed, the
/// webhook started again is paused without one more request.
async fn a_last_attempt_cut_short_pauses_the_webhook_without_another(backend: Backend) {
    let policy = travelmap_webhooks::Policy {
        max_attempts: 1,
        ..webhook_policy()
    };
    let app = spawn_app_with_webhooks(&backend, policy).await;
    let receiver = Receiver::start().await;
    receiver.inbox.hanging.store(true, Ordering::SeqCst);
    let client = ngo_client(&app).await;
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let path = format!(
        "/v1/subscriptions/webhooks/{}",
        webhook["id"].as_str().unwrap()
    );
    need(&app, NGO_WRITER, client, "cut short").await;
    eventually("the request is under way", || async {
        receiver.inbox.hung.load(Ordering::SeqCst) >= 1
    })
    .await;
    let data_dir = app.stop().await;
    receiver.inbox.hanging.store(false, Ordering::SeqCst);
    let app = spawn_app_with_webhooks_in(&backend, data_dir, policy).await;
    eventually("the webhook is paused", || async {
        app.get_ok(&path, NGO_COORDINATOR).await["state"] == "paused"
    })
    .await;
    assert!(receiver.inbox.received().is_empty());
    assert_eq!(receiver.inbox.hung.load(Ordering::SeqCst), 1);
    app.stop().await;
    backend.remove().await;
}

/// An agency may have a bounded number of webhooks (each one follows the feed and sends every
/// event): one more is refused, and a deletion makes room again.
#[tokio::test]
async fn an_agency_has_at_most_twenty_webhooks() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let mut ids = Vec::new();
    for _ in 0..travelmap_api::routes::webhooks::MAX_WEBHOOKS_PER_AGENCY {
        let webhook = register(&app, &receiver, json!(["need.*"])).await;
        ids.push(webhook["id"].as_str().unwrap().to_owned());
    }
    let request = json!({"url": receiver.url(), "types": ["need.*"]});
    let refused = app
        .post("/v1/subscriptions/webhooks", NGO_COORDINATOR, &request)
        .await;
    let problem = expect_problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(problem.get("field").is_none(), "{problem}");
    assert_eq!(
        app.get_ok("/v1/subscriptions/webhooks", NGO_COORDINATOR)
            .await["webhooks"]
            .as_array()
            .unwrap()
            .len(),
        ids.len()
    );
    // Another agency's are its own.
    let other = app
        .post("/v1/subscriptions/webhooks", PROBATION_WRITER, &request)
        .await;
    assert_eq!(other.status(), StatusCode::CREATED);
    let deleted = app
        .delete(
            &format!("/v1/subscriptions/webhooks/{}", ids[0]),
            NGO_COORDINATOR,
            &json!({}),
        )
        .await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let again = app
        .post("/v1/subscriptions/webhooks", NGO_COORDINATOR, &request)
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    app.stop().await;
}

/// Receivers must be on the public internet unless the operator allows their network: a URL
/// naming an internal address is refused at registration, and a webhook registered while its
/// network was allowed gets no request once it is not (nor an audit entry of a disclosure),
/// only refusals in its delivery log until it is paused, and cannot be resumed until the
/// network is allowed again.
async fn receivers_outside_the_allowed_networks_get_nothing(backend: Backend) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let public_only = travelmap_webhooks::Destinations::public_only();
    let loopback = travelmap_webhooks::Destinations::public_and_loopback();
    // Three attempts, then the webhook is paused.
    let policy = travelmap_webhooks::Policy {
        max_attempts: 3,
        ..webhook_policy()
    };
    let app = spawn_app_receiving_at(&backend, data_dir, policy, public_only.clone()).await;
    let receiver = Receiver::start().await;
    let port = receiver.port;
    for (url, kind) in [
        (receiver.url(), "loopback"),
        (format!("http://localhost:{port}/"), "loopback"),
        (format!("http://[::1]:{port}/"), "loopback"),
        ("https://10.1.2.3/hooks".to_owned(), "private"),
        ("https://169.254.169.254/latest".to_owned(), "link-local"),
        ("https://[::ffff:192.168.0.1]/".to_owned(), "private"),
        ("https://[2002:a00:1::1]/".to_owned(), "private"),
        ("https://0.0.0.0/".to_owned(), "unspecified"),
    ] {
        let refused = app
            .post(
                "/v1/subscriptions/webhooks",
                NGO_COORDINATOR,
                &json!({"url": url, "types": ["need.*"]}),
            )
            .await;
        let problem = expect_problem(
            refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], "url", "{url}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(kind), "{url}: {detail}");
        assert!(detail.contains("allow_networks"), "{url}: {detail}");
    }
    let listed = app
        .get_ok("/v1/subscriptions/webhooks", NGO_COORDINATOR)
        .await;
    assert_eq!(listed["webhooks"], json!([]), "nothing refused was stored");

    // Registered while loopback is allowed, then the operator narrows the configuration.
    let app = spawn_app_receiving_at(&backend, app.stop().await, policy, loopback.clone()).await;
    let client = ngo_client(&app).await;
    let webhook = register(&app, &receiver, json!(["need.*"])).await;
    let id = webhook["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/subscriptions/webhooks/{id}");
    let app = spawn_app_receiving_at(&backend, app.stop().await, policy, public_only).await;
    let held_back = need(&app, NGO_WRITER, client, "while loopback is not allowed").await;
    eventually("the refused webhook is paused", || async {
        app.get_ok(&path, NGO_COORDINATOR).await["state"] == "paused"
    })
    .await;
    let log = deliveries(&app, &id).await;
    let outcomes: Vec<&str> = log
        .iter()
        .map(|attempt| attempt["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "retrying", "retrying"], "{log:?}");
    for attempt in &log {
        assert_eq!(attempt["event_id"], held_back.as_str(), "{attempt}");
        assert_eq!(attempt["status"], Value::Null, "{attempt}");
        let error = attempt["error"].as_str().unwrap();
        assert!(error.starts_with("refused: "), "{error}");
        assert!(error.contains("loopback"), "{error}");
    }
    assert!(receiver.inbox.received().is_empty());
    assert_eq!(receiver.inbox.refused.load(Ordering::SeqCst), 0);
    let trail = app
        .get_ok("/v1/audit/entries?after=0&limit=1000", AUDITOR)
        .await;
    let disclosed = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == format!("webhook {id}"))
        .count();
    assert_eq!(disclosed, 0, "nothing was sent, so nothing was disclosed");
    // Resuming would only be refused again.
    let resumed = app
        .post(&format!("{path}/resume"), NGO_COORDINATOR, &json!({}))
        .await;
    let problem = expect_problem(
        resumed,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("loopback"),
        "{problem}"
    );
    assert_eq!(app.get_ok(&path, NGO_COORDINATOR).await["state"], "paused");

    // Allowed again and resumed: the held-back event goes out, once.
    let app = spawn_app_receiving_at(&backend, app.stop().await, policy, loopback).await;
    let resumed = app
        .post(&format!("{path}/resume"), NGO_COORDINATOR, &json!({}))
        .await;
    assert_eq!(resumed.status(), StatusCode::OK);
    eventually("the held-back event arrives", || async {
        !receiver.inbox.received().is_empty()
    })
    .await;
    assert_eq!(receiver.inbox.event_ids(), [held_back]);
    app.stop().await;
    backend.remove().await;
}

/// A stand-in for an egress proxy: it keeps the head of every request it gets and refuses
/// each, as such a proxy refuses what its rules do not allow.
struct ForwardProxy {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl ForwardProxy {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("the proxy binds");
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|end| end == b"\r\n\r\n") && head.len() < 16_384 {
                        match connection.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => head.extend_from_slice(&buffer[..read]),
                        }
                    }
                    kept.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = connection
                        .write_all(
                            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = connection.shutdown().await;
                });
            }
        });
        Self { port, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Behind an egress proxy (`[webhooks] proxy`), a delivery to a host name goes through it, with
/// its credentials, even where this machine cannot resolve the name; a receiver in an allowed
/// network (here this machine's loopback) is still called directly; and the proxy's password
/// shows nowhere in the delivery log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_names_go_through_the_configured_proxy() {
    let proxy = ForwardProxy::start().await;
    let destinations = travelmap_webhooks::Destinations::public_and_loopback().via_proxy(
        travelmap_webhooks::ForwardProxy::parse(&format!(
            "http://deliveries:s3cret@127.0.0.1:{}",
            proxy.port
        ))
        .unwrap(),
    );
    let policy = travelmap_webhooks::Policy {
        max_attempts: 2,
        ..webhook_policy()
    };
    let backend = Backend::embedded().await;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_receiving_at(&backend, data_dir, policy, destinations).await;
    let receiver = Receiver::start().await;
    register(&app, &receiver, json!(["need.*"])).await;
    // `.invalid` never resolves (RFC 6761): only the proxy can take it further.
    let registered = app
        .post(
            "/v1/subscriptions/webhooks",
            NGO_COORDINATOR,
            &json!({"url": "https://receiver.invalid/travelmap/events", "types": ["need.*"]}),
        )
        .await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let proxied: Value = registered.json().await.unwrap();
    let proxied = proxied["id"].as_str().unwrap().to_owned();

    let client = ngo_client(&app).await;
    let sent = need(&app, NGO_WRITER, client, "behind the proxy").await;
    eventually("the receiver on this machine has the event", || async {
        receiver.inbox.event_ids() == [sent.clone()]
    })
    .await;
    eventually("the proxied webhook has used its attempts", || async {
        app.get_ok(
            &format!("/v1/subscriptions/webhooks/{proxied}"),
            NGO_COORDINATOR,
        )
        .await["state"]
            == "paused"
    })
    .await;
    let heads = proxy.heads();
    assert_eq!(heads.len(), 2, "one request per attempt: {heads:?}");
    for head in &heads {
        assert!(
            head.starts_with("CONNECT receiver.invalid:443 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authorization: basic zgvsaxzlcmllczpzm2nyzxq="),
            "the proxy's credentials are sent: {head}"
        );
    }
    let log = deliveries(&app, &proxied).await;
    assert_eq!(log.len(), 2, "{log:?}");
    for attempt in &log {
        assert_eq!(attempt["event_id"], sent.as_str(), "{attempt}");
        let error = attempt["error"].as_str().unwrap();
        assert!(!error.starts_with("refused"), "not judged here: {error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
    app.stop().await;
}

on_both_backends!(
    receivers_outside_the_allowed_networks_get_nothing,
    a_last_attempt_cut_short_pauses_the_webhook_without_another,
    a_slow_receiver_gets_nothing_of_a_client_restricted_meanwhile,
    a_rectification_that_takes_back_its_access_reaches_the_agency,
    restriction_decisions_do_not_reach_the_agency,
    an_attempt_cut_short_by_a_shutdown_still_counts,
    an_agency_taken_out_of_the_configuration_receives_nothing_more,
    the_withdrawal_of_its_own_consent_reaches_the_agency_once,
    attempts_are_counted_across_a_restart,
    the_close_of_its_own_involvement_reaches_the_agency_and_nothing_after,
    the_agency_receives_its_events_in_order_signed_and_nobody_elses,
    a_receiver_that_fails_or_is_down_gets_every_event_once_back,
    registrations_are_checked_and_private_to_their_agency,
    a_webhook_that_keeps_failing_is_paused_and_resumes_where_it_stopped,
    delivery_continues_from_the_saved_cursor_after_a_restart,
);

/// A webhook whose events cannot be read (here a data key lost from the key store) shows in
/// readiness as failing, not as deliveries running while nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_whose_events_cannot_be_read_shows_in_readiness() {
    let app = spawn_app().await;
    let mut receiver = Receiver::start().await;
    let client = ngo_client(&app).await;
    register(&app, &receiver, json!(["need.*"])).await;
    // The receiver is away, so the webhook's cursor stays before the event.
    receiver.down().await;
    need(&app, NGO_WRITER, client, "sealed under the client's key").await;
    let data_dir = app.stop().await;
    let keys = rusqlite::Connection::open(data_dir.path().join("keys.sqlite")).unwrap();
    assert!(keys.execute("DELETE FROM data_keys", []).unwrap() > 0);
    drop(keys);

    let app = spawn_app_in(data_dir).await;
    eventually("readiness shows the webhooks failing", || async {
        let report: Value = app
            .http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        report["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|task| task["name"] == "webhooks" && task["state"] == "failing")
    })
    .await;
    app.stop().await;
}
