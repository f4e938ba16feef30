//! `GET /readyz`: whether the background tasks that keep the travel maps, caseloads and alerts
//! current are running, so that monitoring sees a process that answers from views that no
//! longer move.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

/// The readiness report, once `done` accepts it (or the last one after 10 s).
async fn readiness_once(
    app: &TestApp,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app.http.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status();
        let report: Value = response.json().await.unwrap();
        if done(status, &report) || Instant::now() > deadline {
            return (status, report);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sentence_started(client: Uuid) -> Value {
    event(
        client,
        "sentence.started",
        "2026-01-05T09:00:00Z",
        json!({"prison": "Opava", "start_date": "2026-01-05", "expected_release_date": "2027-01-05"}),
    )
}

fn task<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_is_ready_and_shows_how_far_each_task_has_got() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let receipt: Value = app
        .post_event(PRISON_WRITER, &sentence_started(client))
        .await
        .json()
        .await
        .unwrap();
    let position = receipt["position"].as_u64().unwrap();
    let (status, report) = readiness_once(&app, |status, report| {
        status == StatusCode::OK
            && task(report, "projection")["behind"] == 0
            && task(report, "coordination")["behind"] == 0
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "ready");
    assert_eq!(report["head"], position);
    for name in [
        "projection",
        "coordination",
        "live_feed",
        "webhooks",
        "erasures",
        "store",
        "audit_writes",
    ] {
        assert_eq!(task(&report, name)["state"], "running", "{report}");
    }
    assert_eq!(task(&report, "projection")["position"], position);
    assert_eq!(task(&report, "projection")["essential"], true);
    assert_eq!(task(&report, "webhooks")["essential"], false);
    assert!(
        report["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|task| task["name"] != "retention"),
        "no retention schedule, so no retention task: {report}"
    );
    // Liveness stays what it was: the process answers.
    assert_eq!(app.get_ok("/healthz", ADMIN).await["status"], "ok");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_that_cannot_be_read_back_is_folded_again_from_the_log() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let posted = app
        .post_event(PRISON_WRITER, &sentence_started(client))
        .await;
    assert_eq!(posted.status(), StatusCode::CREATED);
    let position = posted.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap();
    app.travel_map(client, position).await;
    let data_dir = app.stop().await;

    // A view that cannot be read back (a disk fault, a hand edit).
    let views = rusqlite::Connection::open(data_dir.path().join("projections.sqlite")).unwrap();
    let damaged = views
        .execute("UPDATE client_views SET state = x'00010203'", [])
        .unwrap();
    assert_eq!(damaged, 1);
    drop(views);

    let app = spawn_app_in(data_dir).await;
    let (status, report) = readiness_once(&app, |status, _| status == StatusCode::OK).await;
    assert_eq!(report["status"], "ready", "{report}");
    assert_eq!(status, StatusCode::OK);
    // Reads fold the client from its history meanwhile.
    let map = app
        .get_for(
            &format!("/v1/clients/{client}/travel-map"),
            AUDITOR,
            "audit",
        )
        .await;
    assert_eq!(map.status(), StatusCode::OK);
    let map: Value = map.json().await.unwrap();
    assert_eq!(map["phase"], "in_custody", "{map}");

    // The client's next event: the projector folds the client again from the log and saves a
    // view that reads back.
    let next = app
        .post_event(
            PROBATION_WRITER,
            &event(
                client,
                "appointment.scheduled",
                "2026-02-01T09:00:00Z",
                json!({"appointment_id": "A-1", "at": "2026-03-01T09:00:00Z", "purpose": "probation meeting"}),
            ),
        )
        .await;
    assert_eq!(next.status(), StatusCode::CREATED);
    let position = next.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap();
    let map = app.travel_map(client, position).await;
    assert_eq!(map["steps"].as_array().unwrap().len(), 2, "{map}");
    let (_, report) = readiness_once(&app, |_, report| {
        task(report, "projection")["behind"] == 0 && task(report, "coordination")["behind"] == 0
    })
    .await;
    assert_eq!(report["status"], "ready", "{report}");
    let data_dir = app.stop().await;
    let views = rusqlite::Connection::open(data_dir.path().join("projections.sqlite")).unwrap();
    let state: Vec<u8> = views
        .query_row("SELECT state FROM client_views", [], |row| row.get(0))
        .unwrap();
    assert_ne!(state, vec![0, 1, 2, 3], "the view was saved again");
}

/// A store that still answers reads but refuses every write (here a trigger, standing in for a
/// full disk or a file made read-only: each new row fails with an error of its own) shows as
/// a failing `store` until a write succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_writes_shows_in_readiness_until_one_succeeds() {
    let app = spawn_app().await;
    let stored = sentence_started(Uuid::new_v4());
    let first = app.post_event(PRISON_WRITER, &stored).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let log = rusqlite::Connection::open(app.data_dir.path().join("events.sqlite")).unwrap();
    log.execute_batch(
        "CREATE TRIGGER refuse_writes AFTER INSERT ON events BEGIN SELECT abs(-9223372036854775808); END;",
    )
    .unwrap();
    let refused = app
        .post_event(PRISON_WRITER, &sentence_started(Uuid::new_v4()))
        .await;
    let status = refused.status();
    let body = refused.text().await.unwrap();
    assert!(status.is_server_error(), "{status} {body}");
    let (status, report) = readiness_once(&app, |_, report| {
        task(report, "store")["state"] == "failing"
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "degraded", "{report}");
    assert_eq!(task(&report, "store")["state"], "failing", "{report}");
    // A retry answered with its receipt wrote nothing: writes are still failing, past the next
    // probe (every 2 s).
    let retried = app.post_event(PRISON_WRITER, &stored).await;
    assert_eq!(
        retried.status(),
        StatusCode::OK,
        "{}",
        retried.text().await.unwrap()
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, report) = readiness_once(&app, |_, _| true).await;
    assert_eq!(task(&report, "store")["state"], "failing", "{report}");

    log.execute_batch("DROP TRIGGER refuse_writes;").unwrap();
    let accepted = app
        .post_event(PRISON_WRITER, &sentence_started(Uuid::new_v4()))
        .await;
    assert_eq!(accepted.status(), StatusCode::CREATED);
    let (_, report) = readiness_once(&app, |_, report| {
        task(report, "store")["state"] == "running"
    })
    .await;
    assert_eq!(task(&report, "store")["state"], "running", "{report}");
    drop(log);
    app.stop().await;
}

/// A trail that refuses entries (here a trigger, standing in for a full disk or a file made
/// read-only) refuses every write and every logged read with it, while the event log is fine:
/// it shows as a failing `audit_writes`, with since when, until an attempt is written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_that_refuses_entries_shows_in_readiness_until_one_is_written() {
    let app = spawn_app().await;
    let (_, report) = readiness_once(&app, |status, _| status == StatusCode::OK).await;
    assert_eq!(
        task(&report, "audit_writes")["state"],
        "running",
        "{report}"
    );
    assert_eq!(task(&report, "audit_writes")["essential"], false);

    let trail = RefusingTrail::start(&app);
    let refused = app
        .post_event(PRISON_WRITER, &sentence_started(Uuid::new_v4()))
        .await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, report) = readiness_once(&app, |_, report| {
        task(report, "audit_writes")["state"] == "failing"
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "degraded", "{report}");
    assert_eq!(
        task(&report, "audit_writes")["state"],
        "failing",
        "{report}"
    );
    assert!(
        task(&report, "audit_writes")["failing_since"].is_string(),
        "{report}"
    );
    // The event log was not at fault.
    assert_eq!(task(&report, "store")["state"], "running", "{report}");

    trail.takes_entries_again();
    let accepted = app
        .post_event(PRISON_WRITER, &sentence_started(Uuid::new_v4()))
        .await;
    assert_eq!(accepted.status(), StatusCode::CREATED);
    let (status, report) = readiness_once(&app, |_, report| {
        task(report, "audit_writes")["state"] == "running"
    })
    .await;
    assert_eq!(
        task(&report, "audit_writes")["state"],
        "running",
        "{report}"
    );
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "ready", "{report}");
    app.stop().await;
}
