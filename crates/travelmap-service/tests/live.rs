//! Live subscribers and the coordinators' index, without HTTP: a subscriber that stops reading
//! falls behind the hub's bounded backlog and still gets every event once, in order; the index
//! follows the projector and raises a time-based alert when a manual clock reaches it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;
use tokio::sync::watch;
use travelmap_domain::payloads::Purpose;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance};
use travelmap_projections::coordination::{AlertKind, Rules};
use travelmap_service::coordination::{AlertFilter, Change, Coordination, ManualClock};
use travelmap_service::subscriptions::{FeedHub, Scope};
use travelmap_service::{Journeys, Submission, health};
use travelmap_store::sqlite::SqliteStore;
use uuid::Uuid;

fn submission(
    client: ClientId,
    event_type: &str,
    at: DateTime<Utc>,
    data: serde_json::Value,
) -> Submission {
    Submission {
        draft: EventDraft {
            id: EventId(Uuid::new_v4()),
            client_id: client,
            occurred_at: at.fixed_offset(),
            actor: None,
            event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
        },
        expected_version: None,
    }
}

/// A fresh embedded store (kept alive by its directory) and the use cases over it.
async fn embedded() -> (tempfile::TempDir, SqliteStore, Arc<Journeys>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let journeys = Arc::new(
        Journeys::new(store.log.clone(), store.views.clone(), None)
            .await
            .unwrap(),
    );
    (dir, store, journeys)
}

fn provenance() -> Provenance {
    Provenance {
        agency: "prison-opava".into(),
        credential: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_catches_up_from_the_log_without_loss() {
    let (_dir, _store, journeys) = embedded().await;
    let hub = Arc::new(FeedHub::new(journeys.clone()));
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(hub.clone().run(stopped, health::task("live_feed", false).0));
    let scope = Scope {
        agency: None,
        purpose: Purpose::CaseManagement,
        types: Default::default(),
    };
    let mut slow = hub.subscribe(scope, 0);

    // Far more pages than the hub keeps, one event per commit, while the subscriber reads nothing.
    let total = 600u64;
    for n in 0..total {
        let client = ClientId(Uuid::from_u128(u128::from(n % 7) + 1));
        journeys
            .record(
                &provenance(),
                &[submission(client, "job.placed", Utc::now(), json!({}))],
            )
            .await
            .unwrap();
    }
    // Give the hub time to broadcast every page past the subscriber's backlog.
    let mut head = journeys.log().head();
    head.wait_for(|head| *head >= total).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut positions = Vec::new();
    while positions.len() < total as usize {
        let batch = tokio::time::timeout(Duration::from_secs(10), slow.next_batch())
            .await
            .expect("the subscriber catches up")
            .unwrap()
            .expect("the hub runs");
        positions.extend(batch.events.iter().map(|event| event.meta.position));
    }
    assert_eq!(
        positions,
        (1..=total).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(slow.cursor(), total);
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_raises_a_due_alert_when_the_clock_reaches_it() {
    let (_dir, _store, journeys) = embedded().await;
    // Whole milliseconds: the store keeps times to the microsecond.
    let start = (Utc::now() - chrono::Duration::days(3)).trunc_subsecs(3);
    let clock = Arc::new(ManualClock::new(start));
    let coordination = Arc::new(Coordination::new(
        journeys.log().clone(),
        journeys.views().clone(),
        journeys.projector().clone(),
        clock.clone(),
        Rules::default(),
    ));
    let (stop, stopped) = watch::channel(false);
    let projector = tokio::spawn(
        journeys
            .projector()
            .clone()
            .run(stopped.clone(), health::task("projection", true).0),
    );
    let index = tokio::spawn(
        coordination
            .clone()
            .run(stopped, health::task("coordination", true).0),
    );
    let (_, mut notices) = coordination.notices_after(0).unwrap();

    let client = ClientId(Uuid::new_v4());
    let outcomes = journeys
        .record(
            &provenance(),
            &[submission(
                client,
                "client.released",
                start,
                json!({"release_kind": "parole", "supervision": true}),
            )],
        )
        .await
        .unwrap();
    assert!(
        coordination
            .wait_for(outcomes[0].receipt.position, Duration::from_secs(5))
            .await
    );
    assert!(coordination.alerts(&AlertFilter::default()).is_empty());

    // 23 hours on: nothing yet. 25 hours on: raised, with no new event.
    clock.advance(chrono::Duration::hours(23));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), notices.recv())
            .await
            .is_err()
    );
    clock.advance(chrono::Duration::hours(2));
    let notice = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .expect("raised on time")
        .unwrap();
    assert_eq!(notice.change, Change::Raised);
    assert_eq!(notice.alert.kind, AlertKind::NoFirstDayContact);
    assert_eq!(notice.alert.since, start + chrono::Duration::hours(24));
    assert_eq!(coordination.alerts(&AlertFilter::default()).len(), 1);
    // A subscriber resumes after a notice it was sent, not after one never sent (a made-up or
    // mistyped id), which would have it take later notices for ones it already had.
    let (kept, _) = coordination.notices_after(notice.seq - 1).unwrap();
    assert_eq!(kept, std::slice::from_ref(&notice));
    assert!(coordination.notices_after(notice.seq).unwrap().0.is_empty());
    assert!(coordination.notices_after(notice.seq + 1).is_none());

    stop.send(true).unwrap();
    projector.await.unwrap();
    index.await.unwrap();
}
