//! The backend conformance suite: the same behaviour, checked against every store Travelmap can
//! run on. Each check is written once, against the storage traits and the service, and
//! instantiated for each backend by `conformance!` at the bottom.
//!
//! The PostgreSQL instances need a server (`TRAVELMAP_TEST_POSTGRES`, by default the local one
//! with trust authentication); each test creates a database of its own. Without a server they
//! fail, saying so: they never skip.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use travelmap_domain::personal::Category;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance};
use travelmap_service::{Error, Journeys, Submission, health};
use travelmap_store::postgres::{ScratchDatabase, server_from_env};
use travelmap_store::{Location, Store, StoredState, ViewStore};
use uuid::Uuid;

/// Where one test's store lives; removed at the end of the test.
struct Place {
    location: Location,
    _dir: tempfile::TempDir,
    database: Option<ScratchDatabase>,
}

#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Postgres,
}

impl Place {
    async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Embedded => Place {
                location: Location::Embedded(dir.path().to_owned()),
                _dir: dir,
                database: None,
            },
            Backend::Postgres => {
                let server = server_from_env();
                let database = ScratchDatabase::create(&server, "travelmap_test")
                    .await
                    .unwrap_or_else(|error| {
                        panic!(
                            "these tests need PostgreSQL at {server} ({error}); start it, or set \
                             TRAVELMAP_TEST_POSTGRES to a server where databases may be created \
                             (see docs/operations.md)"
                        )
                    });
                Place {
                    location: Location::Postgres(database.url().to_owned()),
                    _dir: dir,
                    database: Some(database),
                }
            }
        }
    }

    async fn open(&self) -> Store {
        Store::open(&self.location).await.unwrap()
    }

    async fn remove(self) {
        if let Some(database) = self.database {
            database.drop_database().await.unwrap();
        }
    }
}

/// The keyring every check seals with: one fixed master key, so that a reopened store opens what
/// it sealed before.
async fn keyring(store: &Store) -> Arc<travelmap_store::Keyring> {
    let masters = travelmap_store::MasterKeys::new(
        travelmap_store::MasterKey::new("conformance", [42; 32]),
        Vec::new(),
    );
    store.keyring(masters).await.unwrap()
}

/// The projector running in the background, as erasure needs: it answers once the views are
/// purged.
struct RunningProjector {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningProjector {
    fn start(journeys: &Journeys) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(
            journeys
                .projector()
                .clone()
                .run(stopped, health::task("projection", true).0),
        );
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

fn provenance() -> Provenance {
    Provenance {
        agency: "prison-opava".into(),
        credential: "conformance".into(),
    }
}

fn draft(client: ClientId, event_type: &str, data: Value) -> EventDraft {
    EventDraft {
        id: EventId(Uuid::new_v4()),
        client_id: client,
        occurred_at: "2026-01-05T09:00:00+01:00".parse().unwrap(),
        actor: None,
        event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
    }
}

/// A submission of `draft` with no expected version.
fn unversioned(draft: EventDraft) -> Submission {
    Submission {
        draft,
        expected_version: None,
    }
}

fn contact(client: ClientId) -> Submission {
    Submission {
        draft: draft(client, "contact.made", json!({"kind": "meeting"})),
        expected_version: None,
    }
}

fn client() -> ClientId {
    ClientId(Uuid::new_v4())
}

/// A short journey with an identifier, a release and a retraction, so that views have content.
fn journey(client: ClientId, number: usize) -> Vec<Submission> {
    let registered = draft(
        client,
        "client.registered",
        json!({"identifiers": [{"type": "prison_number", "value": format!("OP-{number}")}]}),
    );
    let mistaken = draft(client, "contact.made", json!({"kind": "phone"}));
    let retraction = draft(
        client,
        "event.retracted",
        json!({"event_id": mistaken.id.0, "reason": "wrong client"}),
    );
    let released = draft(
        client,
        "client.released",
        json!({"release_kind": "conditional", "supervision": true, "municipality": "Opava"}),
    );
    [registered, mistaken, retraction, released]
        .into_iter()
        .map(|draft| Submission {
            draft,
            expected_version: None,
        })
        .collect()
}

async fn appends_get_versions_and_gap_free_positions(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let (a, b) = (client(), client());
    let mut batch = journey(a, 1);
    batch.extend(journey(b, 2));
    let outcomes = journeys.record(&provenance(), &batch).await.unwrap();
    let versions: Vec<u64> = outcomes.iter().map(|o| o.receipt.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 1, 2, 3, 4]);
    let positions: Vec<u64> = outcomes.iter().map(|o| o.receipt.position).collect();
    assert_eq!(positions, (1..=8).collect::<Vec<_>>());
    assert!(outcomes.iter().all(|o| o.created));
    assert_eq!(*store.log().head().borrow(), 8);
    store.close().await;
}

async fn a_retry_is_answered_with_the_original_receipt(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let a = client();
    let submission = contact(a);
    let first = journeys
        .record(&provenance(), std::slice::from_ref(&submission))
        .await
        .unwrap();
    let again = journeys
        .record(&provenance(), std::slice::from_ref(&submission))
        .await
        .unwrap();
    assert!(first[0].created && !again[0].created);
    assert_eq!(first[0].receipt, again[0].receipt);
    // A second process (no cache of its own) answers the same.
    let other = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let from_other = other
        .record(&provenance(), std::slice::from_ref(&submission))
        .await
        .unwrap();
    assert_eq!(from_other[0].receipt, first[0].receipt);
    assert_eq!(store.log().read_stream(a, None).await.unwrap().len(), 1);
    store.close().await;
}

async fn a_reused_id_with_other_content_is_refused(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let a = client();
    let submission = contact(a);
    journeys
        .record(&provenance(), std::slice::from_ref(&submission))
        .await
        .unwrap();
    let mut altered = submission.clone();
    altered.draft.event =
        JourneyEvent::decode("contact.made", 1, &json!({"kind": "phone"})).unwrap();
    // What is done beside the commit (the audit entries) is not done for a refused duplicate,
    // whichever way the log finds the id taken.
    let beside = std::sync::atomic::AtomicBool::new(false);
    let refused = journeys
        .record_logged(&provenance(), None, &[altered.clone()], |_| async {
            beside.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), ()>(())
        })
        .await;
    assert!(
        matches!(refused, Err(Error::DuplicateConflict { .. })),
        "{refused:?}"
    );
    assert!(!beside.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(store.log().read_stream(a, None).await.unwrap().len(), 1);
    // Straight at the log: acceptance is announced for an append that commits, never for one
    // refused for a taken id.
    let append = |submission: &travelmap_service::Submission, expected_version: u64| {
        vec![travelmap_store::StreamAppend {
            client_id: submission.draft.client_id,
            expected_version,
            events: vec![travelmap_store::NewEvent {
                sealed: None,
                draft: submission.draft.clone(),
                digest: [0; 32],
            }],
        }]
    };
    let (accepted, acceptance) = tokio::sync::oneshot::channel();
    let announcement = travelmap_store::Announcement {
        accepted,
        entries: None,
    };
    let taken = store
        .log()
        .append_announced(&provenance(), append(&altered, 1), announcement)
        .await;
    assert!(
        matches!(taken, Err(travelmap_store::Error::DuplicateEvent(_))),
        "{taken:?}"
    );
    assert!(acceptance.await.is_err(), "a refused append was announced");
    let (accepted, acceptance) = tokio::sync::oneshot::channel();
    let announcement = travelmap_store::Announcement {
        accepted,
        entries: None,
    };
    let fresh = contact(a);
    store
        .log()
        .append_announced(&provenance(), append(&fresh, 1), announcement)
        .await
        .unwrap();
    assert!(
        acceptance.await.is_ok(),
        "a committed append was not announced"
    );
    store.close().await;
}

/// An append as the log gets it: `submission`'s event as the first of its stream.
fn first_append(submission: &Submission) -> Vec<travelmap_store::StreamAppend> {
    vec![travelmap_store::StreamAppend {
        client_id: submission.draft.client_id,
        expected_version: 0,
        events: vec![travelmap_store::NewEvent {
            sealed: None,
            draft: submission.draft.clone(),
            digest: [0; 32],
        }],
    }]
}

/// The entries written beside a commit come first: events whose entries were not written are
/// not stored, so that no event is ever without its entries (not even after a crash between
/// the two), and the appends beside them commit as usual, gap-free.
async fn events_whose_entries_were_not_written_are_not_stored(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let a = client();
    let submission = contact(a);
    let refused = journeys
        .record_logged(
            &provenance(),
            None,
            std::slice::from_ref(&submission),
            |_| async { Err::<(), _>("the trail refused the entries") },
        )
        .await;
    assert!(
        matches!(refused, Err(Error::Store(travelmap_store::Error::Unlogged))),
        "{refused:?}"
    );
    assert!(store.log().read_stream(a, None).await.unwrap().is_empty());
    assert_eq!(*store.log().head().borrow(), 0);
    // Sent again once the trail takes entries, it is recorded as new.
    let (outcomes, logged) = journeys
        .record_logged(
            &provenance(),
            None,
            std::slice::from_ref(&submission),
            |_| async { Ok::<(), ()>(()) },
        )
        .await
        .unwrap();
    assert!(outcomes[0].created && logged.is_ok());
    assert_eq!(outcomes[0].receipt.position, 1);

    // Straight at the log, two appends in one group: one told its entries were written, one
    // told they were not. The group is made by holding the writer on a first append's entries
    // while the two are queued behind it.
    let log = store.log();
    let handshake = || {
        let (accepted, acceptance) = tokio::sync::oneshot::channel();
        let (report, entries) = travelmap_store::entries_handshake();
        let announcement = travelmap_store::Announcement {
            accepted,
            entries: Some(entries),
        };
        (announcement, acceptance, report)
    };
    let append = |submission: Submission, announcement| {
        let log = log.clone();
        tokio::spawn(async move {
            log.append_announced(&provenance(), first_append(&submission), announcement)
                .await
        })
    };
    let (announce_a, accepted_a, report_a) = handshake();
    let held = append(contact(client()), announce_a);
    accepted_a.await.expect("the first append was accepted");
    let (b, c) = (contact(client()), contact(client()));
    let (announce_b, accepted_b, report_b) = handshake();
    let (announce_c, accepted_c, report_c) = handshake();
    let logged_b = append(b.clone(), announce_b);
    let unlogged_c = append(c.clone(), announce_c);
    // Each told as soon as it is accepted, whichever group it ends up in.
    let tell = |acceptance: tokio::sync::oneshot::Receiver<()>,
                report: travelmap_store::EntriesReport,
                written: bool| {
        tokio::spawn(async move {
            acceptance.await.expect("the append was accepted");
            report.report(written);
        })
    };
    let told_b = tell(accepted_b, report_b, true);
    let told_c = tell(accepted_c, report_c, false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    report_a.report(true);
    assert_eq!(held.await.unwrap().unwrap()[0].position, 2);
    told_b.await.unwrap();
    told_c.await.unwrap();
    let unlogged_c = unlogged_c.await.unwrap();
    assert!(
        matches!(unlogged_c, Err(travelmap_store::Error::Unlogged)),
        "{unlogged_c:?}"
    );
    assert_eq!(logged_b.await.unwrap().unwrap()[0].position, 3);
    let feed = log.read_all(2, 10).await.unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].draft.id, b.draft.id);
    assert!(
        log.lookup(vec![c.draft.id]).await.unwrap().is_empty(),
        "an append without its entries was stored"
    );
    // A report never made (its writer gone) counts as entries not written.
    let (announce_d, _accepted_d, report_d) = handshake();
    drop(report_d);
    let d = contact(client());
    let abandoned = log
        .append_announced(&provenance(), first_append(&d), announce_d)
        .await;
    assert!(
        matches!(abandoned, Err(travelmap_store::Error::Unlogged)),
        "{abandoned:?}"
    );
    assert_eq!(*log.head().borrow(), 3);
    store.close().await;
}

async fn a_stale_expected_version_is_refused(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let a = client();
    journeys.record(&provenance(), &[contact(a)]).await.unwrap();
    let mut stale = contact(a);
    stale.expected_version = Some(0);
    let refused = journeys.record(&provenance(), &[stale]).await;
    assert!(
        matches!(
            refused,
            Err(Error::VersionConflict {
                expected: 0,
                actual: 1,
                ..
            })
        ),
        "{refused:?}"
    );
    let mut current = contact(a);
    current.expected_version = Some(1);
    let accepted = journeys.record(&provenance(), &[current]).await.unwrap();
    assert_eq!(accepted[0].receipt.version, 2);
    // Straight at the log: a moved stream refuses the whole append, other streams included.
    let b = client();
    let append = |client: ClientId, expected_version: u64| travelmap_store::StreamAppend {
        client_id: client,
        expected_version,
        events: vec![travelmap_store::NewEvent {
            sealed: None,
            draft: contact(client).draft,
            digest: [0; 32],
        }],
    };
    let refused = store
        .log()
        .append(&provenance(), vec![append(b, 0), append(a, 1)])
        .await;
    assert!(
        matches!(
            refused,
            Err(travelmap_store::Error::StreamConflict { actual: 2, .. })
        ),
        "{refused:?}"
    );
    assert!(store.log().read_stream(b, None).await.unwrap().is_empty());
    store.close().await;
}

async fn streams_read_in_order_and_as_of(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let a = client();
    let first = journeys
        .record(&provenance(), &journey(a, 3))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = journeys.record(&provenance(), &[contact(a)]).await.unwrap();
    let history = journeys.history(a, None).await.unwrap();
    let versions: Vec<u64> = history.iter().map(|event| event.meta.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(history[0].provenance.credential, "conformance");
    assert_eq!(history[0].draft.event.event_type(), "client.registered");
    assert_eq!(
        history[3].draft.occurred_at.to_rfc3339(),
        "2026-01-05T09:00:00+01:00"
    );
    assert!(second[0].receipt.recorded_at > first[3].receipt.recorded_at);
    let then = journeys
        .history(a, Some(first[3].receipt.recorded_at))
        .await
        .unwrap();
    assert_eq!(then.len(), 4);
    // Stream versions: the current version per client, clients without events left out.
    let stranger = client();
    let versions = store
        .log()
        .stream_versions(vec![a, stranger])
        .await
        .unwrap();
    assert_eq!(versions, HashMap::from([(a, 5)]));
    let long_ago = Utc::now() - chrono::Duration::days(1);
    assert!(matches!(
        journeys.history(a, Some(long_ago)).await,
        Ok(events) if events.is_empty()
    ));
    assert!(matches!(
        journeys.history(client(), None).await,
        Err(Error::UnknownClient(_))
    ));
    store.close().await;
}

/// 16 writers side by side: every acknowledged event is in the feed exactly once, positions run
/// 1..=N, and recorded_at never decreases along the feed.
async fn concurrent_writers_make_one_gap_free_feed(place: &Place) {
    let store = place.open().await;
    let log = store.log();
    let journeys = Arc::new(
        Journeys::new(log.clone(), store.views(), Some(keyring(&store).await))
            .await
            .unwrap(),
    );
    let mut writers = Vec::new();
    for _ in 0..16 {
        let journeys = journeys.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for _ in 0..20 {
                let outcomes = journeys
                    .record(&provenance(), &[contact(client())])
                    .await
                    .unwrap();
                acknowledged.push(outcomes[0].receipt.id);
            }
            acknowledged
        }));
    }
    let mut acknowledged = HashSet::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    let mut feed = Vec::new();
    let mut after = 0;
    loop {
        let page = journeys.feed(after, 37).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.meta.position;
        feed.extend(page);
    }
    let positions: Vec<u64> = feed.iter().map(|event| event.meta.position).collect();
    assert_eq!(positions, (1..=320).collect::<Vec<_>>());
    let seen: HashSet<EventId> = feed.iter().map(|event| event.draft.id).collect();
    assert_eq!(seen, acknowledged);
    assert!(
        feed.windows(2)
            .all(|pair| pair[0].meta.recorded_at <= pair[1].meta.recorded_at)
    );
    store.close().await;
}

async fn all_views(views: &dyn ViewStore, clients: &[ClientId]) -> HashMap<ClientId, StoredState> {
    views.load(clients.to_vec()).await.unwrap()
}

async fn the_projection_keeps_its_checkpoint_and_rebuilds_to_the_same_views(place: &Place) {
    let clients: Vec<ClientId> = (0..30).map(|_| client()).collect();
    {
        let store = place.open().await;
        let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
            .await
            .unwrap();
        for (number, &client) in clients.iter().enumerate() {
            journeys
                .record(&provenance(), &journey(client, number))
                .await
                .unwrap();
        }
        assert_eq!(journeys.projector().catch_up().await.unwrap(), 120);
        assert_eq!(store.views().checkpoint().await.unwrap(), 120);
        store.close().await;
    }
    let store = place.open().await;
    let views = store.views();
    // Reopened: the checkpoint holds, so nothing is folded twice.
    let journeys = Journeys::new(store.log(), views.clone(), Some(keyring(&store).await))
        .await
        .unwrap();
    assert_eq!(journeys.projector().catch_up().await.unwrap(), 0);
    let found = |kind: &'static str, value: &'static str| {
        let journeys = &journeys;
        async move { journeys.find_by_identifier(kind, value).await.unwrap() }
    };
    let live = all_views(views.as_ref(), &clients).await;
    assert_eq!(live.len(), clients.len());
    let map = journeys.travel_map(clients[7], None, None).await.unwrap();
    let map = serde_json::to_value(map).unwrap();
    assert_eq!(map["client_id"], json!(clients[7].0));
    assert_eq!(found("prison_number", "OP-7").await, [clients[7]]);

    let report = journeys.projector().rebuild().await.unwrap();
    assert_eq!((report.events, report.clients), (120, clients.len()));
    assert_eq!(all_views(views.as_ref(), &clients).await, live);
    assert_eq!(views.checkpoint().await.unwrap(), 120);
    // A rebuild writes every view and identifier anew (a store may write them without looking
    // for older ones); both must read back, and later saves must replace them.
    assert_eq!(found("prison_number", "OP-7").await, [clients[7]]);
    let added = unversioned(draft(
        clients[7],
        "identifier.added",
        json!({"identifier": {"type": "probation_case", "value": "PC-7"}}),
    ));
    journeys.record(&provenance(), &[added]).await.unwrap();
    assert_eq!(journeys.projector().catch_up().await.unwrap(), 1);
    assert_eq!(found("probation_case", "PC-7").await, [clients[7]]);
    assert_ne!(all_views(views.as_ref(), &clients).await, live);
    store.close().await;
}

/// The identifier index follows each client's identifiers as they change, whichever order the
/// views are saved in: added ones are found, retracted ones no longer are, and the others stay.
async fn identifier_lookups_follow_additions_and_retractions(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let (client, other) = (client(), client());
    let lookup = |kind: &'static str, value: &'static str| {
        let journeys = &journeys;
        async move { journeys.find_by_identifier(kind, value).await.unwrap() }
    };
    let added = draft(
        client,
        "identifier.added",
        json!({"identifier": {"type": "probation_case", "value": "PC-41"}}),
    );
    let added_id = added.id;
    let mut first = journey(client, 41);
    first.push(unversioned(added));
    first.extend(journey(other, 42));
    journeys.record(&provenance(), &first).await.unwrap();
    journeys.projector().catch_up().await.unwrap();
    assert_eq!(lookup("prison_number", "OP-41").await, [client]);
    assert_eq!(lookup("probation_case", "PC-41").await, [client]);
    assert_eq!(lookup("prison_number", "OP-42").await, [other]);

    let retraction = draft(
        client,
        "event.retracted",
        json!({"event_id": added_id.0, "reason": "another client's case"}),
    );
    let later = draft(
        client,
        "identifier.added",
        json!({"identifier": {"type": "probation_case", "value": "PC-43"}}),
    );
    let second = [unversioned(retraction), unversioned(later)];
    journeys.record(&provenance(), &second).await.unwrap();
    journeys.projector().catch_up().await.unwrap();
    assert!(lookup("probation_case", "PC-41").await.is_empty());
    assert_eq!(lookup("probation_case", "PC-43").await, [client]);
    assert_eq!(lookup("prison_number", "OP-41").await, [client]);
    assert_eq!(lookup("prison_number", "OP-42").await, [other]);
    store.close().await;
}

async fn a_reopened_store_has_every_acknowledged_event(place: &Place) {
    let a = client();
    let acknowledged = {
        let store = place.open().await;
        let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
            .await
            .unwrap();
        let outcomes = journeys
            .record(&provenance(), &journey(a, 9))
            .await
            .unwrap();
        store.close().await;
        outcomes
    };
    let store = place.open().await;
    assert_eq!(*store.log().head().borrow(), 4);
    let history = store.log().read_stream(a, None).await.unwrap();
    let ids: Vec<EventId> = history.iter().map(|event| event.draft.id).collect();
    let expected: Vec<EventId> = acknowledged.iter().map(|o| o.receipt.id).collect();
    assert_eq!(ids, expected);
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let next = journeys.record(&provenance(), &[contact(a)]).await.unwrap();
    assert_eq!((next[0].receipt.version, next[0].receipt.position), (5, 5));
    store.close().await;
}

fn audit_record(client: ClientId, n: usize) -> travelmap_domain::audit::AuditRecord {
    use travelmap_domain::audit::{AuditRecord, Operation, Outcome};
    AuditRecord {
        at: Utc::now(),
        credential: "coordinator-desk".into(),
        agency: "municipality-opava".into(),
        actor: None,
        operation: Operation::Consultation,
        client_id: Some(client),
        purpose: Some("case_management".into()),
        justification: n.is_multiple_of(3).then(|| format!("reason {n}")),
        request_id: Some(format!("req-{n}")),
        outcome: if n.is_multiple_of(5) {
            Outcome::Denied
        } else {
            Outcome::Allowed
        },
        action: "GET /v1/clients/{client_id}/travel-map".into(),
        returned: None,
    }
}

async fn whole_audit_log(store: &Store) -> Vec<travelmap_domain::audit::AuditEntry> {
    let mut entries = Vec::new();
    loop {
        let after = entries
            .last()
            .map_or(0, |e: &travelmap_domain::audit::AuditEntry| e.seq);
        let page = store.audit().read_after(after, 50).await.unwrap();
        if page.is_empty() {
            return entries;
        }
        entries.extend(page);
    }
}

/// Entries from concurrent writers form one chain that verifies, survives a restart, and
/// continues after it; a client's entries can be read on their own.
async fn the_audit_trail_is_one_chain(place: &Place) {
    let clients: Vec<ClientId> = (0..4).map(|_| client()).collect();
    {
        let store = place.open().await;
        let audit = store.audit();
        assert!(!audit.any_action_outside("travelmap ").await.unwrap());
        let mut writers = Vec::new();
        for writer in 0..16 {
            let (audit, clients) = (audit.clone(), clients.clone());
            writers.push(tokio::spawn(async move {
                for n in 0..10 {
                    let client = clients[(writer + n) % clients.len()];
                    let numbers = audit
                        .append(vec![audit_record(client, writer * 10 + n)])
                        .await
                        .unwrap();
                    assert_eq!(numbers.len(), 1);
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        store.close().await;
    }
    let store = place.open().await;
    let entries = whole_audit_log(&store).await;
    assert_eq!(entries.len(), 160);
    let (last, _) = travelmap_domain::audit::verify(entries.clone()).unwrap();
    assert_eq!(last, 160);
    // Stored and read back exactly: the texts, the outcome, the client.
    let denied = entries
        .iter()
        .filter(|e| e.record.outcome == travelmap_domain::audit::Outcome::Denied)
        .count();
    assert_eq!(denied, 32);
    let numbers = store
        .audit()
        .append(vec![
            audit_record(clients[0], 1000),
            audit_record(clients[1], 1001),
        ])
        .await
        .unwrap();
    assert_eq!(numbers, [161, 162]);
    assert_eq!(
        travelmap_domain::audit::verify(whole_audit_log(&store).await)
            .unwrap()
            .0,
        162
    );
    // Whether any entry's action falls outside a prefix (the start-up check of a server that
    // had to make a new checkpoint key asks it of the offline commands' `travelmap `).
    assert!(
        store
            .audit()
            .any_action_outside("travelmap ")
            .await
            .unwrap()
    );
    assert!(!store.audit().any_action_outside("GET /v1/").await.unwrap());
    assert!(
        store
            .audit()
            .any_action_outside("GET /v1/events")
            .await
            .unwrap()
    );
    let of_one = store.audit().read_client(clients[0]).await.unwrap();
    assert_eq!(of_one.len(), 41);
    assert!(
        of_one
            .iter()
            .all(|e| e.record.client_id == Some(clients[0]))
    );
    store.close().await;
}

/// Every byte the store holds, as text: the files of the embedded store, or every row of every
/// table of the database (as PostgreSQL prints it, bytea in hex); and, since views are stored
/// encoded and compressed, what every stored view says (as JSON).
async fn everything_stored(place: &Place, views: &dyn ViewStore) -> String {
    let mut all = raw_store(place).await;
    for (_, stored) in views.scan(None, usize::MAX >> 1).await.unwrap() {
        let state: travelmap_projections::ClientState = stored.decode().unwrap();
        all.push_str(&serde_json::to_string(&state).unwrap());
    }
    all
}

async fn raw_store(place: &Place) -> String {
    match &place.location {
        Location::Embedded(dir) => {
            let mut all = String::new();
            for entry in std::fs::read_dir(dir).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
            all
        }
        Location::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let mut all = String::new();
            for table in tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" t"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                all.push_str(&rows.join("\n"));
            }
            pool.close().await;
            all
        }
    }
}

async fn erasure_leaves_no_plaintext_and_keeps_the_facts(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    // Erasure answers once the views are purged, so the projector must be running.
    let projector = RunningProjector::start(&journeys);
    let erased = client();
    let kept = client();
    let personal = |client, name: &str, number: &str, born: &str| Submission {
        draft: draft(
            client,
            "client.registered",
            json!({"identifiers": [{"type": "prison_number", "value": number}],
                   "personal": {"given_name": name, "family_name": "Zapletalova", "birth_date": born}}),
        ),
        expected_version: None,
    };
    let note = |client| Submission {
        draft: draft(
            client,
            "need.assessed",
            json!({"area": "addiction", "status": "in_progress", "note": "methadone-programme-Vitkovice"}),
        ),
        expected_version: None,
    };
    let mut submissions = vec![
        personal(erased, "Bozena", "OP-77123", "1987-06-05"),
        note(erased),
    ];
    submissions.extend(journey(erased, 1).into_iter().skip(1));
    submissions.push(personal(kept, "Ludmila", "OP-88456", "1990-01-02"));
    let receipts = journeys.record(&provenance(), &submissions).await.unwrap();
    journeys
        .wait_for_projection(receipts.last().unwrap().receipt.position)
        .await
        .unwrap();
    let before = everything_stored(place, store.views().as_ref()).await;
    // The log and the key store hold no plaintext even before erasure; the views do (they are
    // what travel maps are read from), which is why erasure must purge them.
    assert_eq!(
        journeys
            .find_by_identifier("prison_number", "OP-77123")
            .await
            .unwrap(),
        vec![erased]
    );
    assert!(
        before.contains("Bozena"),
        "the views hold the plaintext the maps show"
    );

    let dpo = Provenance {
        agency: "dpo-office".into(),
        credential: "dpo".into(),
    };
    let first = journeys
        .record_erasure(&dpo, erased, "client request".try_into().unwrap())
        .await
        .unwrap();
    assert!(first.created);
    journeys
        .wait_for_projection(first.receipt.position)
        .await
        .unwrap();
    let again = journeys
        .record_erasure(&dpo, erased, "client request".try_into().unwrap())
        .await
        .unwrap();
    assert_eq!((again.created, again.receipt), (false, first.receipt));
    assert!(matches!(
        journeys
            .record_erasure(&dpo, client(), "client request".try_into().unwrap())
            .await,
        Err(Error::UnknownClient(_))
    ));

    let history = journeys.history(erased, None).await.unwrap();
    let registered = history[0].draft.event.data();
    assert_eq!(registered["personal"], json!({}));
    assert_eq!(registered["identifiers"], json!([]));
    assert!(history[0].personal.is_erased());
    assert_eq!(history[1].draft.event.data()["note"], "[erased]");
    assert_eq!(
        history[1].draft.event.data()["area"],
        "addiction",
        "facts stay"
    );
    let kept_history = journeys.history(kept, None).await.unwrap();
    assert_eq!(
        kept_history[0].draft.event.data()["personal"]["given_name"],
        "Ludmila"
    );
    assert!(
        journeys
            .find_by_identifier("prison_number", "OP-77123")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        journeys
            .find_by_identifier("prison_number", "OP-88456")
            .await
            .unwrap(),
        vec![kept]
    );
    let refused = journeys.record(&provenance(), &[contact(erased)]).await;
    assert!(matches!(refused, Err(Error::Refused { .. })), "{refused:?}");

    journeys.projector().rebuild().await.unwrap();
    let after = everything_stored(place, store.views().as_ref()).await;
    for secret in [
        "Bozena",
        "OP-77123",
        "methadone-programme-Vitkovice",
        "1987-06-05",
    ] {
        assert!(
            !after.contains(secret),
            "{secret} is still stored after erasure"
        );
    }
    assert!(
        after.contains("Ludmila"),
        "another client's data is untouched"
    );
    let map = journeys.travel_map(erased, None, None).await.unwrap();
    assert!(
        map.flags
            .iter()
            .any(|flag| flag.kind == "personal_data_erased")
    );
    assert_eq!(
        map.phase,
        travelmap_projections::travel_map::Phase::Released
    );
    projector.stop().await;
    store.close().await;
}

/// An erasure cut short after it destroyed the keys, before its decision was recorded, leaves
/// the views showing the plaintext. It is found from the key store and finished: the decision
/// is recorded and the views are purged, once, however often the finishing runs.
async fn an_erasure_cut_short_is_finished(place: &Place) {
    let store = place.open().await;
    let keyring = keyring(&store).await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring.clone()))
        .await
        .unwrap();
    let projector = RunningProjector::start(&journeys);
    let cut_short = client();
    let kept = client();
    let registered = |client, number: &str| Submission {
        draft: draft(
            client,
            "client.registered",
            json!({"identifiers": [{"type": "prison_number", "value": number}],
                   "personal": {"given_name": "Jarmila", "family_name": "Novotna"}}),
        ),
        expected_version: None,
    };
    let receipts = journeys
        .record(
            &provenance(),
            &[
                registered(cut_short, "OP-31337"),
                registered(kept, "OP-31338"),
            ],
        )
        .await
        .unwrap();
    journeys
        .wait_for_projection(receipts[1].receipt.position)
        .await
        .unwrap();
    assert!(journeys.unfinished_erasures().await.unwrap().is_empty());

    // What an erasure does first; the request then failed before recording its decision.
    keyring.destroy(cut_short, None).await.unwrap();
    assert_eq!(
        journeys.unfinished_erasures().await.unwrap(),
        vec![cut_short]
    );
    let before = journeys.travel_map(cut_short, None, None).await.unwrap();
    assert!(
        serde_json::to_string(&before).unwrap().contains("Jarmila"),
        "until the decision is folded, the view still shows the name"
    );

    let service = Provenance {
        agency: "travelmap".into(),
        credential: "travelmap-recovery".into(),
    };
    let unfinished = journeys.unfinished_erasures().await.unwrap();
    assert_eq!(unfinished, vec![cut_short]);
    let finished = journeys.finish_erasure(&service, cut_short).await.unwrap();
    assert!(finished.created);
    // Recorded, but not yet waited for: the purge follows once the projector folds it.
    assert!(journeys.unfinished_erasures().await.unwrap().is_empty());
    journeys
        .wait_for_projection(finished.receipt.position)
        .await
        .unwrap();
    let again = journeys.finish_erasure(&service, cut_short).await.unwrap();
    assert!(!again.created, "a second finishing answers with the first");
    assert_eq!(again.receipt.id, finished.receipt.id);

    let history = journeys.history(cut_short, None).await.unwrap();
    let decision = history.last().unwrap();
    assert_eq!(decision.draft.event.event_type(), "personal_data.erased");
    assert_eq!(decision.provenance.credential, "travelmap-recovery");
    let after = journeys.travel_map(cut_short, None, None).await.unwrap();
    assert!(!serde_json::to_string(&after).unwrap().contains("Jarmila"));
    assert!(
        after
            .flags
            .iter()
            .any(|flag| flag.kind == "personal_data_erased")
    );
    assert!(
        journeys
            .find_by_identifier("prison_number", "OP-31337")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        journeys
            .find_by_identifier("prison_number", "OP-31338")
            .await
            .unwrap(),
        vec![kept]
    );
    projector.stop().await;
    store.close().await;
}

/// Whom the retention schedule's decisions are recorded as.
fn retention_provenance() -> Provenance {
    Provenance {
        agency: "travelmap".into(),
        credential: "travelmap-retention".into(),
    }
}

/// A retention decision holds only for the stream it was made on: an event recorded after it
/// (sealed under a key the decision would destroy, and perhaps restarting a category's clock)
/// makes the shredding refuse, with nothing destroyed, until it is decided again; and of two
/// runs that decided alike, one records the shredding.
async fn a_retention_decision_holds_only_for_the_stream_it_was_made_on(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let retention = retention_provenance();
    let client = client();
    let assessed = |note: &str| Submission {
        draft: draft(
            client,
            "need.assessed",
            json!({"area": "housing", "status": "in_progress", "note": note}),
        ),
        expected_version: None,
    };
    journeys
        .record(&provenance(), &[assessed("first-note")])
        .await
        .unwrap();
    let decided_on = 1;
    journeys
        .record(&provenance(), &[assessed("recorded-after-the-decision")])
        .await
        .unwrap();

    let due_since = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    let moved = journeys
        .shred_due(
            &retention,
            client,
            vec![Category::Needs],
            due_since,
            decided_on,
        )
        .await
        .unwrap();
    assert!(moved.is_none(), "decided on a stream that moved since");
    assert!(
        journeys
            .live_categories(client)
            .await
            .unwrap()
            .contains(&Category::Needs)
    );
    let history = journeys.history(client, None).await.unwrap();
    assert_eq!(
        history[1].draft.event.data()["note"],
        "recorded-after-the-decision"
    );

    let (destroyed, outcome) = journeys
        .shred_due(&retention, client, vec![Category::Needs], due_since, 2)
        .await
        .unwrap()
        .expect("decided on the stream as it is");
    assert_eq!((destroyed, outcome.receipt.version), (1, 3));
    assert!(
        journeys
            .shred_due(&retention, client, vec![Category::Needs], due_since, 2)
            .await
            .unwrap()
            .is_none(),
        "a second run that decided alike records nothing"
    );
    let history = journeys.history(client, None).await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[1].draft.event.data()["note"], "[erased]");
    store.close().await;
}

/// A retry of an event whose fields the retention schedule destroyed is refused as it always
/// was, and leaves no new key behind: the next retention run would find that key and record
/// a shredding of data that was never recorded. An event that is new gets a new key.
async fn a_refused_retry_of_a_shredded_event_makes_no_key(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let retention = retention_provenance();
    let client = client();
    let assessed = |note: &str| {
        unversioned(draft(
            client,
            "need.assessed",
            json!({"area": "housing", "status": "in_progress", "note": note}),
        ))
    };
    let first = [assessed("shredded-note")];
    journeys.record(&provenance(), &first).await.unwrap();
    let due_since = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    journeys
        .shred_due(&retention, client, vec![Category::Needs], due_since, 1)
        .await
        .unwrap()
        .expect("decided on the stream as it is");
    let holds_key = |category: Category| {
        let journeys = &journeys;
        async move {
            journeys
                .live_categories(client)
                .await
                .unwrap()
                .contains(&category)
        }
    };
    assert!(!holds_key(Category::Needs).await, "shredded");

    for _ in 0..2 {
        let retried = journeys.record(&provenance(), &first).await;
        assert!(
            matches!(retried, Err(Error::Unmatchable { index: 0, .. })),
            "{retried:?}"
        );
        assert!(
            !holds_key(Category::Needs).await,
            "a refused retry made a key"
        );
    }
    // Nor beside a new event of a category the client never had a key of.
    let appointment = unversioned(draft(
        client,
        "appointment.scheduled",
        json!({"appointment_id": "A-1", "at": "2026-03-01T09:00:00Z", "purpose": "probation"}),
    ));
    let retried = journeys
        .record(&provenance(), &[first[0].clone(), appointment.clone()])
        .await;
    assert!(
        matches!(retried, Err(Error::Unmatchable { index: 0, .. })),
        "{retried:?}"
    );
    assert!(
        !holds_key(Category::Needs).await && !holds_key(Category::Support).await,
        "a refused batch made a key"
    );
    let history = journeys.history(client, None).await.unwrap();
    assert_eq!(
        history.len(),
        2,
        "the assessment and the shredding, nothing more"
    );
    // Nor beside a recorded event without personal fields sent again with other content.
    let contact = unversioned(draft(client, "contact.made", json!({"kind": "meeting"})));
    journeys
        .record(&provenance(), std::slice::from_ref(&contact))
        .await
        .unwrap();
    let mut changed = contact.clone();
    changed.draft.event =
        JourneyEvent::decode("contact.made", 1, &json!({"kind": "phone"})).unwrap();
    let retried = journeys
        .record(&provenance(), &[changed, appointment.clone()])
        .await;
    assert!(
        matches!(retried, Err(Error::DuplicateConflict { index: 0, .. })),
        "{retried:?}"
    );
    assert!(
        !holds_key(Category::Support).await,
        "a refused batch made a key"
    );
    journeys
        .record(&provenance(), std::slice::from_ref(&appointment))
        .await
        .unwrap();
    assert!(holds_key(Category::Support).await);

    journeys
        .record(&provenance(), &[assessed("recorded-after-the-shredding")])
        .await
        .unwrap();
    assert!(
        holds_key(Category::Needs).await,
        "a new event is sealed under a new key"
    );
    let history = journeys.history(client, None).await.unwrap();
    assert_eq!(history[0].draft.event.data()["note"], "[erased]");
    assert_eq!(
        history[4].draft.event.data()["note"],
        "recorded-after-the-shredding"
    );
    store.close().await;
}

/// A full read of the log (a rebuild) reads every live key once when it begins. Its pages must
/// still open what was sealed under a key made after that. Other reads meanwhile, and every read
/// once it ends, see the keys as they are: a key destroyed since leaves its data erased.
async fn a_full_read_opens_with_the_keys_in_force(place: &Place) {
    let store = place.open().await;
    let keyring = keyring(&store).await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring.clone()))
        .await
        .unwrap();
    let log = journeys.log().clone();
    let registered = |client: ClientId, name: &str| {
        unversioned(draft(
            client,
            "client.registered",
            json!({"identifiers": [{"type": "prison_number", "value": format!("OP-{name}")}],
                   "personal": {"given_name": name, "family_name": "Novak"}}),
        ))
    };
    let (before, after) = (client(), client());
    journeys
        .record(&provenance(), &[registered(before, "Alena")])
        .await
        .unwrap();
    log.prepare_full_read().await.unwrap();
    // Its key is made after the full read began.
    journeys
        .record(&provenance(), &[registered(after, "Bohdan")])
        .await
        .unwrap();
    let head = *log.head().borrow();
    let given_names = |events: &[travelmap_domain::RecordedEvent]| -> Vec<Value> {
        events
            .iter()
            .map(|event| event.draft.event.data()["personal"]["given_name"].clone())
            .collect()
    };
    let page = log.read_range_of_full_read(0, head).await.unwrap();
    assert_eq!(given_names(&page), [json!("Alena"), json!("Bohdan")]);

    keyring.destroy(before, None).await.unwrap();
    let page = log.read_range(0, head).await.unwrap();
    assert!(
        page[0].personal.is_erased(),
        "a read beside the full read opened data whose key was destroyed"
    );
    assert_eq!(given_names(&page)[1], json!("Bohdan"));
    log.end_full_read();

    let page = log.read_range(0, head).await.unwrap();
    assert!(page[0].personal.is_erased(), "the destroyed key's data");
    assert_eq!(given_names(&page)[1], json!("Bohdan"));
    store.close().await;
}

/// A key store that lost keys (or is not the one of this log) must fail reads, not pass the
/// client's data off as erased.
/// Two processes on one store: one keeps a client's keys for sealing while the other destroys
/// them. What the first records next must be sealed under a key in force, so that it can be
/// read, and keyed so that a retry is recognised; what was sealed under the destroyed key stays
/// erased.
/// (Only PostgreSQL is shared by processes; the embedded store belongs to one.)
async fn a_key_destroyed_by_another_process_is_not_sealed_under(place: &Place) {
    let (first, second) = (place.open().await, place.open().await);
    let recorder = Journeys::new(first.log(), first.views(), Some(keyring(&first).await))
        .await
        .unwrap();
    let other_keyring = keyring(&second).await;
    let reader = Journeys::new(second.log(), second.views(), Some(other_keyring.clone()))
        .await
        .unwrap();
    let client = client();
    let registered = unversioned(draft(
        client,
        "client.registered",
        json!({"identifiers": [{"type": "prison_number", "value": "OP-3131"}],
               "personal": {"given_name": "Radek", "family_name": "Kolar"}}),
    ));
    recorder.record(&provenance(), &[registered]).await.unwrap();
    // The data-protection key too, which keys the digests that recognise a retried event.
    let destroyed = other_keyring
        .destroy(
            client,
            Some(vec![Category::Identity, Category::DataProtection]),
        )
        .await
        .unwrap();
    assert_eq!(destroyed, 2);

    let added = unversioned(draft(
        client,
        "identifier.added",
        json!({"identifier": {"type": "probation_case", "value": "PC-3131"}}),
    ));
    let outcome = recorder
        .record(&provenance(), std::slice::from_ref(&added))
        .await
        .unwrap();
    assert!(outcome[0].created);
    // The sender's retry is recognised: the stored digest was keyed with the key now in force.
    let retried = recorder.record(&provenance(), &[added]).await.unwrap();
    assert!(!retried[0].created);
    assert_eq!(retried[0].receipt, outcome[0].receipt);

    let history = reader.history(client, None).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].personal.is_erased(), "the destroyed key's data");
    assert!(!history[1].personal.is_erased(), "sealed under a new key");
    assert_eq!(
        history[1].draft.event.data()["identifier"]["value"],
        "PC-3131"
    );
    first.close().await;
    second.close().await;
}

async fn a_missing_key_is_an_error_not_an_erasure(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let someone = client();
    let registered = Submission {
        draft: draft(
            someone,
            "client.registered",
            json!({"personal": {"given_name": "Jarmila"}}),
        ),
        expected_version: None,
    };
    journeys.record(&provenance(), &[registered]).await.unwrap();
    assert!(
        !journeys.history(someone, None).await.unwrap()[0]
            .personal
            .is_erased()
    );
    match &place.location {
        Location::Embedded(dir) => {
            let keys = rusqlite::Connection::open(dir.join("keys.sqlite")).unwrap();
            keys.execute("DELETE FROM data_keys", []).unwrap();
        }
        Location::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query("DELETE FROM data_keys")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
    }
    // As after a restart with a key store that lost keys (or belongs to another log).
    drop(journeys);
    store.close().await;
    drop(store);
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let read = journeys.history(someone, None).await;
    assert!(
        matches!(
            read,
            Err(Error::Store(travelmap_store::Error::KeyMissing { .. }))
        ),
        "{read:?}"
    );
    store.close().await;
}

async fn master_keys_rotate_without_losing_data(place: &Place) {
    let store = place.open().await;
    let old = travelmap_store::MasterKey::new("old", [42; 32]);
    let new = travelmap_store::MasterKey::new("new", [43; 32]);
    let someone = client();
    {
        let keyring = keyring(&store).await;
        let journeys = Journeys::new(store.log(), store.views(), Some(keyring))
            .await
            .unwrap();
        let registered = Submission {
            draft: draft(
                someone,
                "client.registered",
                json!({"identifiers": [{"type": "prison_number", "value": "OP-5"}],
                       "personal": {"given_name": "Vendula"}}),
            ),
            expected_version: None,
        };
        journeys.record(&provenance(), &[registered]).await.unwrap();
    }
    // The conformance keyring's key is named "conformance"; rotate from it to "new".
    let conformance = travelmap_store::MasterKey::new("conformance", [42; 32]);
    let both = travelmap_store::MasterKeys::new(new.clone(), vec![conformance, old]);
    let rotated = store.keyring(both).await.unwrap().rotate().await.unwrap();
    assert!(
        rotated >= 2,
        "a data key and the digest key, at least: {rotated}"
    );

    let only_new = travelmap_store::MasterKeys::new(new, Vec::new());
    let journeys = Journeys::new(
        store.log(),
        store.views(),
        Some(store.keyring(only_new).await.unwrap()),
    )
    .await
    .unwrap();
    let history = journeys.history(someone, None).await.unwrap();
    assert_eq!(
        history[0].draft.event.data()["personal"]["given_name"],
        "Vendula"
    );
    journeys.projector().catch_up().await.unwrap();
    assert_eq!(
        journeys
            .find_by_identifier("prison_number", "OP-5")
            .await
            .unwrap(),
        vec![someone]
    );
    let only_old = travelmap_store::MasterKeys::new(
        travelmap_store::MasterKey::new("conformance", [42; 32]),
        Vec::new(),
    );
    assert!(matches!(
        store.keyring(only_old).await,
        Err(travelmap_store::Error::MasterKeyMissing(_))
    ));
    store.close().await;
}

/// A keyring opens only with every master key the store's keys are wrapped under, not only the
/// one that wraps the lookup key: a process without a newer key must not start and take work.
async fn a_key_under_a_missing_master_key_stops_the_opening(place: &Place) {
    let store = place.open().await;
    let first = travelmap_store::MasterKey::new("conformance", [42; 32]);
    let newer = travelmap_store::MasterKey::new("newer", [43; 32]);
    // The lookup key is made under the first key; the newer one, current afterwards, wraps the
    // client's data key.
    drop(keyring(&store).await);
    let both = travelmap_store::MasterKeys::new(newer, vec![first.clone()]);
    let journeys = Journeys::new(
        store.log(),
        store.views(),
        Some(store.keyring(both).await.unwrap()),
    )
    .await
    .unwrap();
    let registered = unversioned(draft(
        client(),
        "client.registered",
        json!({"identifiers": [{"type": "prison_number", "value": "OP-6"}],
               "personal": {"given_name": "Vendula"}}),
    ));
    journeys.record(&provenance(), &[registered]).await.unwrap();
    drop(journeys);

    let only_first = travelmap_store::MasterKeys::new(first, Vec::new());
    match store.keyring(only_first).await {
        Err(travelmap_store::Error::MasterKeyMissing(id)) => assert_eq!(id, "newer"),
        Err(other) => panic!("failed otherwise: {other:?}"),
        Ok(_) => panic!("opened without the key that wraps a data key"),
    }
    store.close().await;
}

/// An event stored before a validation rule existed is still answered with its receipt when its
/// sender retries it, though the rule refuses the same content as a new event.
async fn a_retry_of_an_event_stored_before_a_rule_keeps_its_receipt(place: &Place) {
    let store = place.open().await;
    let journeys = Journeys::new(store.log(), store.views(), Some(keyring(&store).await))
        .await
        .unwrap();
    let a = client();
    // An offence dated after the event that reports it, stored straight at the log as it was
    // before such dates were refused.
    let later = json!({"offence_date": "2026-02-01"});
    let stored = unversioned(draft(a, "reoffence.recorded", later.clone()));
    let digest = travelmap_domain::content_digest(&stored.draft, &provenance().agency);
    let digest = store
        .log()
        .fingerprints(vec![(&stored.draft, digest)])
        .await
        .unwrap()[0];
    let receipts = store
        .log()
        .append(
            &provenance(),
            vec![travelmap_store::StreamAppend {
                client_id: a,
                expected_version: 0,
                events: vec![travelmap_store::NewEvent {
                    sealed: None,
                    draft: stored.draft.clone(),
                    digest,
                }],
            }],
        )
        .await
        .unwrap();
    let retried = journeys.record(&provenance(), &[stored]).await.unwrap();
    assert!(!retried[0].created);
    assert_eq!(retried[0].receipt, receipts[0]);
    let fresh = unversioned(draft(a, "reoffence.recorded", later));
    let refused = journeys.record(&provenance(), &[fresh]).await;
    assert!(
        matches!(
            refused,
            Err(Error::Refused {
                source: travelmap_domain::journey::Error::FactAfterEvent(_),
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(store.log().read_stream(a, None).await.unwrap().len(), 1);
    store.close().await;
}

macro_rules! conformance {
    ($backend:ident: $($check:ident),* $(,)?) => {
        #[allow(non_snake_case)]
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let place = super::Place::new(super::Backend::$backend).await;
                    super::$check(&place).await;
                    place.remove().await;
                }
            )*
        }
    };
}

conformance!(Embedded:
    appends_get_versions_and_gap_free_positions,
    events_whose_entries_were_not_written_are_not_stored,
    identifier_lookups_follow_additions_and_retractions,
    a_retry_is_answered_with_the_original_receipt,
    a_reused_id_with_other_content_is_refused,
    a_stale_expected_version_is_refused,
    a_retry_of_an_event_stored_before_a_rule_keeps_its_receipt,
    streams_read_in_order_and_as_of,
    concurrent_writers_make_one_gap_free_feed,
    the_projection_keeps_its_checkpoint_and_rebuilds_to_the_same_views,
    a_reopened_store_has_every_acknowledged_event,
    the_audit_trail_is_one_chain,
    erasure_leaves_no_plaintext_and_keeps_the_facts,
    an_erasure_cut_short_is_finished,
    a_retention_decision_holds_only_for_the_stream_it_was_made_on,
    a_refused_retry_of_a_shredded_event_makes_no_key,
    a_missing_key_is_an_error_not_an_erasure,
    master_keys_rotate_without_losing_data,
    a_key_under_a_missing_master_key_stops_the_opening,
    a_full_read_opens_with_the_keys_in_force,
);

conformance!(Postgres:
    appends_get_versions_and_gap_free_positions,
    events_whose_entries_were_not_written_are_not_stored,
    identifier_lookups_follow_additions_and_retractions,
    a_retry_is_answered_with_the_original_receipt,
    a_reused_id_with_other_content_is_refused,
    a_stale_expected_version_is_refused,
    a_retry_of_an_event_stored_before_a_rule_keeps_its_receipt,
    streams_read_in_order_and_as_of,
    concurrent_writers_make_one_gap_free_feed,
    the_projection_keeps_its_checkpoint_and_rebuilds_to_the_same_views,
    a_reopened_store_has_every_acknowledged_event,
    the_audit_trail_is_one_chain,
    erasure_leaves_no_plaintext_and_keeps_the_facts,
    an_erasure_cut_short_is_finished,
    a_retention_decision_holds_only_for_the_stream_it_was_made_on,
    a_refused_retry_of_a_shredded_event_makes_no_key,
    a_missing_key_is_an_error_not_an_erasure,
    master_keys_rotate_without_losing_data,
    a_key_under_a_missing_master_key_stops_the_opening,
    a_full_read_opens_with_the_keys_in_force,
    a_key_destroyed_by_another_process_is_not_sealed_under,
);
