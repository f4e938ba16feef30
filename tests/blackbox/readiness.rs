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
    for name in ["projection", "coordination", "live_feed", "webhooks"] {
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
async fn damaged_views_leave_the_service_degraded_until_they_are_rebuilt() {
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

    // A view that cannot be read back (a disk fault, a hand edit): neither the coordination
    // index nor the projector can use it.
    let views = rusqlite::Connection::open(data_dir.path().join("projections.sqlite")).unwrap();
    let damaged = views
        .execute("UPDATE client_views SET state = x'00010203'", [])
        .unwrap();
    assert_eq!(damaged, 1);
    drop(views);

    let app = spawn_app_in(data_dir).await;
    let (status, report) = readiness_once(&app, |_, report| {
        task(report, "coordination")["state"] == "failing"
    })
    .await;
    // Degraded, not out of rotation: the process still takes events, and every process
    // reading the same views would otherwise be taken out with it.
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "degraded");
    let coordination = task(&report, "coordination");
    assert!(coordination["failing_since"].as_str().is_some(), "{report}");
    // Why is in the server's log; the public report does not say.
    assert!(!report.to_string().contains("damaged"), "{report}");

    // The projector meets the same view when the client's next event arrives.
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
    let next_status = next.status();
    let (_, report) = readiness_once(&app, |_, report| {
        task(report, "projection")["state"] == "failing"
    })
    .await;
    assert_eq!(
        next_status,
        StatusCode::CREATED,
        "the log still takes events: {report}"
    );
    assert_eq!(task(&report, "projection")["state"], "failing", "{report}");
    assert_eq!(task(&report, "projection")["behind"], 1, "{report}");
    let data_dir = app.stop().await;

    // `travelmap rebuild` makes the views again from the log.
    let rebuilt = travelmap_command()
        .arg("rebuild")
        .arg("--data-dir")
        .arg(data_dir.path())
        .env_remove("TRAVELMAP_CONFIG")
        .output()
        .unwrap();
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    let app = spawn_app_in(data_dir).await;
    let (status, report) = readiness_once(&app, |status, _| status == StatusCode::OK).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "ready");
    app.stop().await;
}
