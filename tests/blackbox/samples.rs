//! A valid `data` object for every event type of the catalogue.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::event;

/// A valid `data` for `event_type`. Corrections and retractions name `target`, which must be a
/// `client.released` event of the same client.
pub fn valid_data(event_type: &str, target: Uuid) -> Value {
    match event_type {
        "client.registered" => json!({
            "identifiers": [{"type": "prison_number", "value": "OP-2026-0117"}],
            "personal": {"given_name": "Jan", "family_name": "Novák", "birth_date": "1990-04-12"}
        }),
        "identifier.added" => {
            json!({"identifier": {"type": "probation_case", "value": "PMS-77/2026"}})
        }
        "sentence.started" => {
            json!({"prison": "Opava", "start_date": "2024-02-01", "expected_release_date": "2026-02-01"})
        }
        "programme.enrolled" => json!({"programme": "vol-mentoring", "court_approval": true}),
        "involvement.opened" => json!({"role": "mentor", "worker": "M-12", "reason": "referral"}),
        "involvement.closed" => json!({"role": "mentor", "worker": "M-12", "reason": "completed"}),
        "consent.recorded" => {
            json!({"agency": "ngo-rubikon", "purposes": ["case_management"], "legal_basis": "consent"})
        }
        "consent.withdrawn" => json!({"agency": "ngo-rubikon"}),
        "plan.agreed" => json!({"areas": ["housing", "employment"], "review_date": "2026-06-01"}),
        "need.assessed" => {
            json!({"area": "housing", "status": "support_required", "note": "sofa-surfing"})
        }
        "prerelease_lecture.attended" => json!({"topic": "registering with the bureau"}),
        "retraining.started" => json!({"course": "welding"}),
        "retraining.completed" => json!({"course": "welding", "certificate": true}),
        "counselling.attended" => json!({"kind": "debt"}),
        "release.scheduled" => json!({"release_date": "2026-03-01"}),
        "client.released" => {
            json!({"release_kind": "conditional", "supervision": true, "municipality": "Opava"})
        }
        "contact.made" => json!({"kind": "first_day", "attended": true}),
        "appointment.scheduled" => {
            json!({"appointment_id": "A-1", "at": "2026-03-05T10:00:00+01:00", "purpose": "probation meeting"})
        }
        "appointment.missed" => json!({"appointment_id": "A-1"}),
        "employment_bureau.registered" => json!({"contract_signed": true}),
        "job.placed" => json!({"kind": "full_time", "sector": "construction"}),
        "job.lost" => json!({"reason": "contract ended"}),
        "housing.secured" => json!({"kind": "social_housing"}),
        "housing.lost" => json!({"reason": "eviction"}),
        "debt_case.opened" => json!({"case_ref": "D-9"}),
        "debt_case.closed" => json!({"case_ref": "D-9", "outcome": "repayment_plan"}),
        "family_contact.restored" => json!({}),
        "programme.completed" => json!({"programme": "vol-mentoring"}),
        "programme.dropped_out" => json!({"programme": "vol-mentoring", "reason": "moved away"}),
        "reoffence.recorded" => json!({"offence_date": "2025-11-20"}),
        "client.recalled" => json!({"prison": "Opava", "reason": "breach of conditions"}),
        "event.corrected" => json!({
            "event_id": target,
            "reason": "wrong municipality",
            "data": {"release_kind": "conditional", "supervision": true, "municipality": "Ostrava"}
        }),
        "event.retracted" => json!({"event_id": target, "reason": "recorded for the wrong client"}),
        "personal_data.erased" => json!({"reason": "client request"}),
        "retention.applied" => json!({"categories": ["needs"], "due_since": "2026-01-01"}),
        "processing.restricted" => json!({"reason": "accuracy contested"}),
        "restriction.lifted" => json!({"reason": "data verified"}),
        other => panic!("no sample for {other}; add one"),
    }
}

/// An event of `event_type` with its sample data (corrections and retractions need a real target;
/// build those with [`valid_data`]).
pub fn sample_event(client: Uuid, event_type: &str, occurred_at: &str) -> Value {
    event(
        client,
        event_type,
        occurred_at,
        valid_data(event_type, Uuid::nil()),
    )
}
