//! Which recorded events changed which agency's access to a client, for the data-protection
//! officer's review of who vouched for whose need to know. An involvement or consent opens
//! access, a closing or withdrawal ends it, and a correction or retraction of one of them moves
//! it: taking back an opening ends the access it gave, taking back an ending gives the access
//! back, and a correction naming another agency moves it from one to the other. The rules are
//! those [`crate::access`] decides access by; this module only says who gained and who lost.

use std::collections::HashMap;

use travelmap_domain::payloads::Purpose;
use travelmap_domain::{EventId, JourneyEvent, RecordedEvent};

use crate::travel_map::granted_by;

/// Whose access an event opened and whose it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessShift {
    /// The agency the event gave access to (or gave it back to).
    pub opens_for: Option<String>,
    /// The agency whose access the event ended (or took back).
    pub ends_for: Option<String>,
}

impl AccessShift {
    fn is_empty(&self) -> bool {
        self.opens_for.is_none() && self.ends_for.is_none()
    }
}

/// The agency whose access an involvement's closing or a consent's withdrawal ends (the
/// recording agency for a closing that names none).
fn ended_by(event: &JourneyEvent, recorder: &str) -> Option<String> {
    match event {
        JourneyEvent::InvolvementClosed(closed) => Some(
            closed
                .agency
                .as_ref()
                .map_or(recorder, |named| named.as_str())
                .to_owned(),
        ),
        JourneyEvent::ConsentWithdrawn(withdrawal) => Some(withdrawal.agency.as_str().to_owned()),
        _ => None,
    }
}

/// What an involvement or consent event itself does to access; `None` for any other event.
pub fn direct_shift(event: &JourneyEvent, recorder: &str) -> Option<AccessShift> {
    if let Some((agency, _)) = granted_by(event, recorder) {
        return Some(AccessShift {
            opens_for: Some(agency),
            ends_for: None,
        });
    }
    ended_by(event, recorder).map(|agency| AccessShift {
        opens_for: None,
        ends_for: Some(agency),
    })
}

/// What rectifying `before` (recorded by `recorder`) into `after` (`None` for a retraction) does
/// to access; `None` when `before` is not an involvement or consent event.
fn rectification_shift(
    before: &JourneyEvent,
    after: Option<&JourneyEvent>,
    recorder: &str,
) -> Option<AccessShift> {
    if let Some((agency, purposes)) = granted_by(before, recorder) {
        let now = after.and_then(|after| granted_by(after, recorder));
        let still_covers = |now_purposes: &Option<Vec<Purpose>>| match (&purposes, now_purposes) {
            (Some(covered), Some(now)) => covered.iter().all(|purpose| now.contains(purpose)),
            _ => true,
        };
        let adds = |now_purposes: &Option<Vec<Purpose>>| match (&purposes, now_purposes) {
            (Some(covered), Some(now)) => now.iter().any(|purpose| !covered.contains(purpose)),
            _ => false,
        };
        return Some(match now {
            Some((moved, _)) if moved != agency => AccessShift {
                opens_for: Some(moved),
                ends_for: Some(agency),
            },
            Some((same, now_purposes)) => AccessShift {
                opens_for: adds(&now_purposes).then(|| same.clone()),
                ends_for: (!still_covers(&now_purposes)).then_some(same),
            },
            None => AccessShift {
                opens_for: None,
                ends_for: Some(agency),
            },
        });
    }
    let ended = ended_by(before, recorder)?;
    let now = after.and_then(|after| ended_by(after, recorder));
    Some(match now {
        Some(same) if same == ended => AccessShift::default(),
        Some(moved) => AccessShift {
            opens_for: Some(ended),
            ends_for: Some(moved),
        },
        None => AccessShift {
            opens_for: Some(ended),
            ends_for: None,
        },
    })
}

/// A correction or retraction that touched an involvement or consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rectified {
    pub shift: AccessShift,
    /// The event corrected or retracted.
    pub target: EventId,
    /// Its type.
    pub target_type: &'static str,
}

/// The corrections and retractions in one client's stream (in version order) that touched an
/// involvement or consent, by their event id, folded as the travel map folds them: each against
/// the event as the corrections before it left it.
pub fn rectifications(stream: &[RecordedEvent]) -> HashMap<EventId, Rectified> {
    // The involvement and consent events standing, as corrected so far, with who recorded them.
    let mut standing: HashMap<EventId, (JourneyEvent, &str)> = HashMap::new();
    let mut found = HashMap::new();
    for recorded in stream {
        let event = &recorded.draft.event;
        let (target, after) = match event {
            JourneyEvent::EventCorrected(correction) => {
                let Some((before, _)) = standing.get(&correction.event_id) else {
                    continue;
                };
                // As the travel map reads it: a replacement that no longer decodes (a damaged
                // log) leaves the original reading.
                let after = travelmap_domain::personal::decode_replacement(
                    before.event_type(),
                    before.schema_version(),
                    correction.data.clone(),
                )
                .unwrap_or_else(|_| before.clone());
                (correction.event_id, Some(after))
            }
            JourneyEvent::EventRetracted(retraction) => (retraction.event_id, None),
            other => {
                if direct_shift(other, &recorded.provenance.agency).is_some() {
                    standing.insert(
                        recorded.draft.id,
                        (other.clone(), recorded.provenance.agency.as_str()),
                    );
                }
                continue;
            }
        };
        let Some((before, recorder)) = standing.remove(&target) else {
            continue;
        };
        if let Some(shift) = rectification_shift(&before, after.as_ref(), recorder)
            && !shift.is_empty()
        {
            found.insert(
                recorded.draft.id,
                Rectified {
                    shift,
                    target,
                    target_type: before.event_type(),
                },
            );
        }
        if let Some(after) = after {
            standing.insert(target, (after, recorder));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use travelmap_domain::{ClientId, EventDraft, Provenance, RecordMeta};
    use uuid::Uuid;

    use super::*;

    fn recorded(id: u128, agency: &str, event_type: &str, data: Value) -> RecordedEvent {
        RecordedEvent {
            draft: EventDraft {
                id: EventId(Uuid::from_u128(id)),
                client_id: ClientId(Uuid::from_u128(99)),
                occurred_at: "2026-01-05T09:00:00+01:00".parse().unwrap(),
                actor: None,
                event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
            },
            provenance: Provenance {
                agency: agency.into(),
                credential: format!("{agency}-system"),
            },
            meta: RecordMeta {
                version: id as u64,
                position: id as u64,
                recorded_at: chrono::Utc::now(),
            },
            personal: Default::default(),
        }
    }

    fn shift(opens_for: Option<&str>, ends_for: Option<&str>) -> AccessShift {
        AccessShift {
            opens_for: opens_for.map(str::to_owned),
            ends_for: ends_for.map(str::to_owned),
        }
    }

    #[test]
    fn involvements_and_consents_open_and_end_access_for_the_agency_they_name() {
        let opened = recorded(1, "ngo", "involvement.opened", json!({"role": "mentor"}));
        let referred = recorded(
            2,
            "prison",
            "involvement.opened",
            json!({"agency": "ngo", "role": "mentor"}),
        );
        let closed = recorded(
            3,
            "probation",
            "involvement.closed",
            json!({"role": "mentor"}),
        );
        let withdrawn = recorded(4, "prison", "consent.withdrawn", json!({"agency": "ngo"}));
        let contact = recorded(
            5,
            "ngo",
            "contact.made",
            json!({"kind": "meeting", "attended": true}),
        );
        let of = |event: &RecordedEvent| direct_shift(&event.draft.event, &event.provenance.agency);
        assert_eq!(of(&opened), Some(shift(Some("ngo"), None)));
        assert_eq!(of(&referred), Some(shift(Some("ngo"), None)));
        assert_eq!(of(&closed), Some(shift(None, Some("probation"))));
        assert_eq!(of(&withdrawn), Some(shift(None, Some("ngo"))));
        assert_eq!(of(&contact), None);
    }

    #[test]
    fn rectifications_move_access_as_the_travel_map_reads_them() {
        let id = |n| EventId(Uuid::from_u128(n));
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
            // Taking back the closing gives probation its access again.
            recorded(
                3,
                "prison",
                "event.retracted",
                json!({"event_id": id(2), "reason": "wrong client"}),
            ),
            // A correction leaving the agency out gives the involvement to its recorder.
            recorded(
                4,
                "prison",
                "event.corrected",
                json!({"event_id": id(1), "reason": "x", "data": {"agency": "ngo", "role": "mentor"}}),
            ),
            recorded(
                5,
                "ngo",
                "event.corrected",
                json!({"event_id": id(1), "reason": "x", "data": {"role": "mentor"}}),
            ),
            recorded(
                6,
                "prison",
                "consent.recorded",
                json!({"agency": "ngo", "purposes": ["service_delivery"], "legal_basis": "consent"}),
            ),
            recorded(
                7,
                "prison",
                "event.corrected",
                json!({"event_id": id(6), "reason": "x",
                       "data": {"agency": "ngo", "purposes": ["service_delivery", "case_management"], "legal_basis": "consent"}}),
            ),
            // A correction that changes nothing about access is left out.
            recorded(
                8,
                "probation",
                "event.corrected",
                json!({"event_id": id(1), "reason": "x", "data": {"role": "case_manager"}}),
            ),
            recorded(
                9,
                "ngo",
                "contact.made",
                json!({"kind": "meeting", "attended": true}),
            ),
            recorded(
                10,
                "ngo",
                "event.retracted",
                json!({"event_id": id(9), "reason": "x"}),
            ),
            recorded(
                11,
                "prison",
                "event.retracted",
                json!({"event_id": id(6), "reason": "x"}),
            ),
        ];
        let found = rectifications(&stream);
        let at = |n| found.get(&id(n)).map(|rectified| rectified.shift.clone());
        assert_eq!(at(3), Some(shift(Some("probation"), None)));
        assert_eq!(at(4), Some(shift(Some("ngo"), Some("probation"))));
        assert_eq!(at(5), Some(shift(Some("probation"), Some("ngo"))));
        assert_eq!(at(7), Some(shift(Some("ngo"), None)));
        assert_eq!(at(8), None);
        assert_eq!(at(10), None);
        assert_eq!(at(11), Some(shift(None, Some("ngo"))));
        assert_eq!(found[&id(3)].target, id(2));
        assert_eq!(found[&id(3)].target_type, "involvement.closed");
        assert_eq!(found.len(), 5);
    }
}
