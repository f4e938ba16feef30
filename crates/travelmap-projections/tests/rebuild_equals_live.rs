//! Property: for any journeys, appended in any grouping and projected live with catch-ups at any
//! points, the stored views equal those of a rebuild from zero, and equal a pure fold of each
//! client's history.

use std::collections::HashMap;

use chrono::{DateTime, Duration, FixedOffset};
use proptest::prelude::*;
use serde_json::{Value, json};
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance, content_digest};
use travelmap_projections::{ClientState, Projector};
use travelmap_store::sqlite::SqliteStore;
use travelmap_store::{EventLog, NewEvent, StreamAppend, ViewStore};
use uuid::Uuid;

/// One generated step: which client, what kind of event, when it happened (days from a base
/// date, so out of order on purpose), and whether the projector catches up after it.
#[derive(Debug, Clone)]
struct Step {
    client: usize,
    kind: u8,
    day: i64,
    target: usize,
    catch_up: bool,
    commit: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0usize..4,
        0u8..14,
        0i64..900,
        any::<usize>(),
        any::<bool>(),
        prop::bool::weighted(0.4),
    )
        .prop_map(|(client, kind, day, target, catch_up, commit)| Step {
            client,
            kind,
            day,
            target,
            catch_up,
            commit,
        })
}

fn data(kind: u8, day: i64) -> (&'static str, Value) {
    match kind {
        0 => (
            "client.registered",
            json!({"identifiers": [{"type": "prison_number", "value": format!("P-{day}")}]}),
        ),
        1 => (
            "sentence.started",
            json!({"prison": "Opava", "start_date": "2024-01-01"}),
        ),
        2 => (
            "client.released",
            json!({"release_kind": "conditional", "supervision": day % 2 == 0}),
        ),
        3 => ("contact.made", json!({"kind": "first_day"})),
        4 => (
            "involvement.opened",
            json!({"role": "mentor", "worker": format!("M-{}", day % 3)}),
        ),
        5 => ("involvement.closed", json!({"role": "mentor"})),
        6 => (
            "need.assessed",
            json!({"area": "housing", "status": "in_progress"}),
        ),
        7 => (
            "appointment.scheduled",
            json!({"appointment_id": format!("A-{}", day % 4), "at": "2026-05-01T10:00:00Z"}),
        ),
        8 => (
            "appointment.missed",
            json!({"appointment_id": format!("A-{}", day % 4)}),
        ),
        9 => (
            "programme.dropped_out",
            json!({"programme": "vol", "reason": "moved"}),
        ),
        10 => (
            "identifier.added",
            json!({"identifier": {"type": "probation_case", "value": format!("C-{day}")}}),
        ),
        11 => ("job.placed", json!({})),
        // 12 and 13 become corrections and retractions when the client has a target.
        _ => ("programme.completed", json!({"programme": "vol"})),
    }
}

/// Turns the steps into valid drafts per client, tracking which events may still be corrected.
fn drafts(steps: &[Step]) -> Vec<(EventDraft, bool, bool)> {
    let base: DateTime<FixedOffset> = "2024-01-01T08:00:00+01:00".parse().unwrap();
    let clients: Vec<ClientId> = (0..4)
        .map(|n| ClientId(Uuid::from_u128(n as u128 + 1)))
        .collect();
    let mut targets: HashMap<usize, Vec<(EventId, &'static str)>> = HashMap::new();
    let mut out = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let id = EventId(Uuid::from_u128(1000 + index as u128));
        let eligible = targets.entry(step.client).or_default();
        let (event_type, data) = match step.kind {
            12 | 13 if !eligible.is_empty() => {
                let (target, target_type) = eligible[step.target % eligible.len()];
                if step.kind == 12 {
                    let (_, replacement) = data_for_type(target_type, step.day + 1);
                    (
                        "event.corrected",
                        json!({"event_id": target, "reason": "fix", "data": replacement}),
                    )
                } else {
                    eligible.retain(|(candidate, _)| *candidate != target);
                    (
                        "event.retracted",
                        json!({"event_id": target, "reason": "wrong"}),
                    )
                }
            }
            kind => data(kind, step.day),
        };
        if !event_type.starts_with("event.") {
            eligible.push((id, event_type));
        }
        let draft = EventDraft {
            id,
            client_id: clients[step.client],
            occurred_at: base + Duration::days(step.day),
            actor: None,
            event: JourneyEvent::decode(event_type, 1, &data).expect("generated data is valid"),
        };
        out.push((draft, step.commit, step.catch_up));
    }
    out
}

fn data_for_type(event_type: &str, day: i64) -> (&'static str, Value) {
    (0u8..12)
        .map(|kind| data(kind, day))
        .find(|(candidate, _)| *candidate == event_type)
        .unwrap_or_else(|| data(13, day))
}

async fn stored_states(views: &dyn ViewStore) -> HashMap<ClientId, ClientState> {
    let mut states = HashMap::new();
    for n in 0..4u128 {
        let client = ClientId(Uuid::from_u128(n + 1));
        if let Some(stored) = views.get(client).await.unwrap() {
            states.insert(client, stored.decode().unwrap());
        }
    }
    states
}

async fn check(steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let projector = Projector::new(store.log.clone(), store.views.clone(), None)
        .await
        .unwrap();
    let provenance = Provenance {
        agency: "prison-opava".into(),
        credential: "test".into(),
    };
    let mut versions: HashMap<ClientId, u64> = HashMap::new();
    let mut pending: Vec<StreamAppend> = Vec::new();

    for (draft, commit, catch_up) in drafts(&steps) {
        let client_id = draft.client_id;
        let digest = content_digest(&draft, &provenance.agency);
        match pending
            .iter_mut()
            .find(|stream| stream.client_id == client_id)
        {
            Some(stream) => stream.events.push(NewEvent {
                draft,
                digest,
                sealed: None,
            }),
            None => pending.push(StreamAppend {
                client_id,
                expected_version: *versions.get(&client_id).unwrap_or(&0),
                events: vec![NewEvent {
                    draft,
                    digest,
                    sealed: None,
                }],
            }),
        }
        if commit {
            for stream in &pending {
                *versions.entry(stream.client_id).or_default() += stream.events.len() as u64;
            }
            store
                .log
                .append(&provenance, std::mem::take(&mut pending))
                .await
                .unwrap();
            if catch_up {
                projector.catch_up().await.unwrap();
            }
        }
    }
    if !pending.is_empty() {
        store.log.append(&provenance, pending).await.unwrap();
    }
    projector.catch_up().await.unwrap();
    let live = stored_states(store.views.as_ref()).await;

    // A second catch-up changes nothing: every event is applied once.
    projector.catch_up().await.unwrap();
    assert_eq!(stored_states(store.views.as_ref()).await, live);

    projector.rebuild().await.unwrap();
    let rebuilt = stored_states(store.views.as_ref()).await;
    assert_eq!(rebuilt, live, "a rebuild must equal the live projection");

    for (client, state) in &live {
        let history = store.log.read_stream(*client, None).await.unwrap();
        let folded = ClientState::from_history(*client, history);
        assert_eq!(
            &folded, state,
            "the stored view must equal a pure fold of the history"
        );
    }
    store.log.close();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_rebuild_equals_the_live_projection(steps in prop::collection::vec(step(), 1..80)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(steps));
    }
}
