//! Which recorded events changed which agencies may read a client, for the data-protection
//! officer's review of who vouched for whose need to know. Rather than restating the rules of
//! [`crate::access`] per event type (a closing ends an involvement only of its role, a correction
//! of a role can make a closing match or stop matching, a withdrawal ends only the purposes it
//! names), each involvement, consent, correction and retraction is judged by what it did: the
//! client's access is decided by those very rules just before the event was folded and just
//! after, and the agencies that gained or lost a purpose are what the event opened and ended.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use travelmap_domain::payloads::Purpose;
use travelmap_domain::{ClientId, EventId, JourneyEvent, RecordedEvent};

use crate::ClientState;

/// Whose access an event opened and whose it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessMove {
    /// The agencies that may read the client for a purpose they could not before.
    pub opens_for: Vec<String>,
    /// The agencies that may no longer read the client for a purpose they could before.
    pub ends_for: Vec<String>,
    /// For a correction or retraction, the event it rectified and that event's type.
    pub target: Option<(EventId, &'static str)>,
}

/// Whether an event of this type can change who may read the client: the rest cannot, so they
/// are not judged.
pub fn may_move_access(event: &JourneyEvent) -> bool {
    matches!(
        event,
        JourneyEvent::InvolvementOpened(_)
            | JourneyEvent::InvolvementClosed(_)
            | JourneyEvent::ConsentRecorded(_)
            | JourneyEvent::ConsentWithdrawn(_)
            | JourneyEvent::EventCorrected(_)
            | JourneyEvent::EventRetracted(_)
    )
}

/// The purposes a coordinator reads a client's record for. Statistics are not among them: they
/// are read as aggregates only, so a consent covering them opens no record; break-glass and
/// oversight are not an agency's to be given.
const READ_FOR: [Purpose; 3] = [
    Purpose::CaseManagement,
    Purpose::Supervision,
    Purpose::ServiceDelivery,
];

/// Each agency that may read the client, with the purposes it may read for.
fn readers(state: &ClientState, now: DateTime<Utc>) -> BTreeMap<String, BTreeSet<Purpose>> {
    let access = state.access(now);
    access
        .involved
        .iter()
        .chain(access.consented.keys())
        .filter_map(|agency| {
            let purposes: BTreeSet<Purpose> = READ_FOR
                .into_iter()
                .filter(|purpose| access.allows(agency, *purpose))
                .collect();
            (!purposes.is_empty()).then(|| (agency.clone(), purposes))
        })
        .collect()
}

/// A moment at which every fact of `stream` has occurred.
fn counting_every_fact(stream: &[RecordedEvent]) -> DateTime<Utc> {
    stream
        .iter()
        .map(|recorded| recorded.draft.occurred_at.with_timezone(&Utc))
        .fold(Utc::now(), DateTime::max)
}

/// What each event of one client's stream (in version order) did to who may read the client,
/// for the events that changed it, by id. Access is decided with every recorded fact counted,
/// however it is dated (a fact may be recorded a few minutes ahead of its time, within the
/// clock skew allowed), so that the answer does not change with the moment it is asked.
pub fn access_moves(
    client_id: ClientId,
    stream: Vec<RecordedEvent>,
) -> HashMap<EventId, AccessMove> {
    let now = counting_every_fact(&stream);
    let mut state = ClientState::new(client_id);
    let mut moves = HashMap::new();
    // Who may read the client after the last event judged: events of other types leave it as
    // it is (see [`may_move_access`]), so it need not be decided again before the next one.
    let mut current = None;
    for recorded in stream {
        if !may_move_access(&recorded.draft.event) {
            state.apply(recorded);
            continue;
        }
        let target = match &recorded.draft.event {
            JourneyEvent::EventCorrected(correction) => Some(correction.event_id),
            JourneyEvent::EventRetracted(retraction) => Some(retraction.event_id),
            _ => None,
        }
        .and_then(|target| {
            let fact = state.facts.iter().find(|fact| fact.event_id == target)?;
            Some((target, fact.event.event_type()))
        });
        let id = recorded.draft.id;
        let before = current.take().unwrap_or_else(|| readers(&state, now));
        state.apply(recorded);
        let after = readers(&state, now);
        let gained = |from: &BTreeMap<String, BTreeSet<Purpose>>,
                      to: &BTreeMap<String, BTreeSet<Purpose>>| {
            to.iter()
                .filter(|(agency, purposes)| {
                    from.get(*agency)
                        .is_none_or(|had| purposes.iter().any(|purpose| !had.contains(purpose)))
                })
                .map(|(agency, _)| agency.clone())
                .collect::<Vec<_>>()
        };
        let moved = AccessMove {
            opens_for: gained(&before, &after),
            ends_for: gained(&after, &before),
            target,
        };
        if !moved.opens_for.is_empty() || !moved.ends_for.is_empty() {
            moves.insert(id, moved);
        }
        current = Some(after);
    }
    moves
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use travelmap_domain::{EventDraft, Provenance, RecordMeta};
    use uuid::Uuid;

    use super::*;

    fn id(n: u128) -> EventId {
        EventId(Uuid::from_u128(n))
    }

    fn recorded(n: u128, agency: &str, event_type: &str, data: Value) -> RecordedEvent {
        RecordedEvent {
            draft: EventDraft {
                id: id(n),
                client_id: ClientId(Uuid::from_u128(99)),
                occurred_at: format!("2026-01-{:02}T09:00:00+01:00", n % 28 + 1)
                    .parse()
                    .unwrap(),
                actor: None,
                event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
            },
            provenance: Provenance {
                agency: agency.into(),
                credential: format!("{agency}-system"),
            },
            meta: RecordMeta {
                version: n as u64,
                position: n as u64,
                recorded_at: Utc::now(),
            },
            personal: Default::default(),
        }
    }

    fn moved(opens_for: &[&str], ends_for: &[&str]) -> (Vec<String>, Vec<String>) {
        (
            opens_for.iter().map(|agency| agency.to_string()).collect(),
            ends_for.iter().map(|agency| agency.to_string()).collect(),
        )
    }

    #[test]
    fn each_event_is_judged_by_the_access_it_changed() {
        let correct = |n, agency: &str, target: u128, data: Value| {
            recorded(
                n,
                agency,
                "event.corrected",
                json!({"event_id": id(target), "reason": "x", "data": data}),
            )
        };
        let stream = vec![
            recorded(1, "ngo", "involvement.opened", json!({"role": "mentor"})),
            recorded(2, "ngo", "involvement.closed", json!({"role": "mentor"})),
            // A closing of another role ends nothing.
            recorded(3, "ngo", "involvement.opened", json!({"role": "other"})),
            recorded(
                4,
                "prison",
                "involvement.closed",
                json!({"agency": "ngo", "role": "mentor"}),
            ),
            // Correcting the first closing's role makes it match nothing: the mentor
            // involvement is open again.
            correct(5, "prison", 2, json!({"role": "case_manager"})),
            recorded(
                6,
                "prison",
                "consent.recorded",
                json!({"agency": "muni", "purposes": ["case_management", "service_delivery"], "legal_basis": "consent"}),
            ),
            recorded(
                7,
                "prison",
                "consent.withdrawn",
                json!({"agency": "muni", "purposes": ["service_delivery"]}),
            ),
            // Swapping the purposes withdrawn gives one back and takes the other.
            correct(
                8,
                "prison",
                7,
                json!({"agency": "muni", "purposes": ["case_management"]}),
            ),
            // An agency taking back a withdrawal of its own consent vouches for itself.
            recorded(
                9,
                "muni",
                "event.retracted",
                json!({"event_id": id(7), "reason": "x"}),
            ),
            recorded(
                10,
                "muni",
                "contact.made",
                json!({"kind": "meeting", "attended": true}),
            ),
        ];
        let moves = access_moves(ClientId(Uuid::from_u128(99)), stream);
        let at = |n| {
            moves
                .get(&id(n))
                .map(|found| (found.opens_for.clone(), found.ends_for.clone()))
        };
        assert_eq!(at(1), Some(moved(&["ngo"], &[])));
        assert_eq!(at(2), Some(moved(&[], &["ngo"])));
        assert_eq!(at(3), Some(moved(&["ngo"], &[])));
        assert_eq!(at(4), None);
        assert_eq!(
            at(5),
            None,
            "ngo could read already, through its other involvement"
        );
        assert_eq!(at(6), Some(moved(&["muni"], &[])));
        assert_eq!(at(7), Some(moved(&[], &["muni"])));
        assert_eq!(at(8), Some(moved(&["muni"], &["muni"])));
        assert_eq!(at(9), Some(moved(&["muni"], &[])));
        assert_eq!(at(10), None);
        assert_eq!(moves[&id(9)].target, Some((id(7), "consent.withdrawn")));
    }

    #[test]
    fn statistics_open_no_record_and_a_fact_counts_however_it_is_dated() {
        let consent = |n, agency: &str, purposes: Value| {
            recorded(
                n,
                "prison",
                "consent.recorded",
                json!({"agency": agency, "purposes": purposes, "legal_basis": "consent"}),
            )
        };
        let mut ahead = consent(4, "muni", json!(["case_management"]));
        ahead.draft.occurred_at = (Utc::now() + chrono::Duration::minutes(5)).fixed_offset();
        let stream = vec![
            consent(1, "ngo", json!(["statistics"])),
            consent(
                2,
                "pri",
                json!(["case_management", "supervision", "service_delivery"]),
            ),
            // Nothing more to open for an agency whose consent covers every purpose.
            recorded(3, "pri", "involvement.opened", json!({"role": "other"})),
            ahead,
        ];
        let moves = access_moves(ClientId(Uuid::from_u128(99)), stream);
        assert!(!moves.contains_key(&id(1)), "{moves:?}");
        assert!(moves.contains_key(&id(2)));
        assert!(!moves.contains_key(&id(3)), "{moves:?}");
        assert_eq!(moves[&id(4)].opens_for, ["muni"]);
    }

    #[test]
    fn involvements_and_consents_dated_ahead_count_from_their_time() {
        let now = Utc::now();
        let at = |minutes: i64| (now + chrono::Duration::minutes(minutes)).fixed_offset();
        let mut opened = recorded(1, "ngo", "involvement.opened", json!({"role": "mentor"}));
        opened.draft.occurred_at = at(-60);
        let mut closed = recorded(2, "ngo", "involvement.closed", json!({"role": "mentor"}));
        closed.draft.occurred_at = at(5);
        let mut muni = recorded(
            3,
            "muni",
            "involvement.opened",
            json!({"role": "social_worker"}),
        );
        muni.draft.occurred_at = at(5);
        let mut consent = recorded(
            4,
            "prison",
            "consent.recorded",
            json!({"agency": "pri", "purposes": ["case_management"], "legal_basis": "consent"}),
        );
        consent.draft.occurred_at = at(5);
        let state = ClientState::from_history(
            ClientId(Uuid::from_u128(99)),
            vec![opened, closed, muni, consent],
        );
        let readers_at = |moment| {
            let access = state.access(moment);
            ["ngo", "muni", "pri"]
                .into_iter()
                .filter(|agency| access.allows(agency, Purpose::CaseManagement))
                .collect::<Vec<_>>()
        };
        assert_eq!(readers_at(now), ["ngo"]);
        assert_eq!(
            readers_at(now + chrono::Duration::minutes(6)),
            ["muni", "pri"]
        );
    }

    #[test]
    fn a_rectification_names_what_it_rectified() {
        let stream = vec![
            recorded(
                1,
                "probation",
                "involvement.opened",
                json!({"role": "probation_officer"}),
            ),
            recorded(
                2,
                "prison",
                "involvement.closed",
                json!({"agency": "probation", "role": "probation_officer"}),
            ),
            recorded(
                3,
                "probation",
                "event.retracted",
                json!({"event_id": id(2), "reason": "x"}),
            ),
            recorded(
                4,
                "ngo",
                "event.corrected",
                json!({"event_id": id(1), "reason": "x", "data": {"agency": "ngo", "role": "mentor"}}),
            ),
        ];
        let moves = access_moves(ClientId(Uuid::from_u128(99)), stream);
        assert_eq!(
            (
                moves[&id(3)].opens_for.clone(),
                moves[&id(3)].ends_for.clone()
            ),
            moved(&["probation"], &[])
        );
        assert_eq!(moves[&id(3)].target, Some((id(2), "involvement.closed")));
        assert_eq!(
            (
                moves[&id(4)].opens_for.clone(),
                moves[&id(4)].ends_for.clone()
            ),
            moved(&["ngo"], &["probation"])
        );
        assert_eq!(moves[&id(4)].target, Some((id(1), "involvement.opened")));
    }
}
