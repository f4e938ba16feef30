//! Agencies and who may record what. Each event type names the kinds of agency whose systems may
//! post it: only a prison records a sentence or a release, only the employment bureau a
//! registration with itself. An agency posting outside its remit is refused before anything is
//! stored, so the record keeps the authority of its sources.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of agency that work with people leaving prison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgencyKind {
    Prison,
    Probation,
    EmploymentBureau,
    Ngo,
    Municipality,
    Housing,
    Health,
    Court,
    Other,
}

impl AgencyKind {
    pub const ALL: [AgencyKind; 9] = [
        AgencyKind::Prison,
        AgencyKind::Probation,
        AgencyKind::EmploymentBureau,
        AgencyKind::Ngo,
        AgencyKind::Municipality,
        AgencyKind::Housing,
        AgencyKind::Health,
        AgencyKind::Court,
        AgencyKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgencyKind::Prison => "prison",
            AgencyKind::Probation => "probation",
            AgencyKind::EmploymentBureau => "employment_bureau",
            AgencyKind::Ngo => "ngo",
            AgencyKind::Municipality => "municipality",
            AgencyKind::Housing => "housing",
            AgencyKind::Health => "health",
            AgencyKind::Court => "court",
            AgencyKind::Other => "other",
        }
    }
}

impl fmt::Display for AgencyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use AgencyKind::*;

/// Every kind: facts any agency working with the client may witness.
const ANY: &[AgencyKind] = &AgencyKind::ALL;
/// The agencies that keep a person in custody or supervise them by law.
const JUSTICE: &[AgencyKind] = &[Prison, Probation, Court];
/// The agencies that deliver services to the client.
const SERVICES: &[AgencyKind] = &[
    Prison,
    Probation,
    EmploymentBureau,
    Ngo,
    Municipality,
    Housing,
    Health,
];

/// The kinds of agency that may post `event_type`, or `None` for a type not in the catalogue.
pub fn posted_by(event_type: &str) -> Option<&'static [AgencyKind]> {
    Some(match event_type {
        // Identity, working relationships, consent, plans and contacts: every agency.
        "client.registered"
        | "identifier.added"
        | "involvement.opened"
        | "involvement.closed"
        | "consent.recorded"
        | "consent.withdrawn"
        | "plan.agreed"
        | "need.assessed"
        | "contact.made"
        | "appointment.scheduled"
        | "appointment.missed" => ANY,
        // Custody: the prison alone knows when a sentence starts and a person walks out.
        "sentence.started" | "release.scheduled" | "client.released" => &[Prison],
        // The employment bureau's lecture is held inside the prison; either may record it.
        "prerelease_lecture.attended" => &[EmploymentBureau, Prison],
        "employment_bureau.registered" => &[EmploymentBureau],
        "retraining.started" | "retraining.completed" => &[EmploymentBureau, Ngo, Prison],
        "job.placed" | "job.lost" => &[EmploymentBureau, Ngo, Probation],
        "housing.secured" | "housing.lost" => &[Housing, Municipality, Ngo, Probation],
        "debt_case.opened" | "debt_case.closed" => &[Ngo, Municipality],
        "counselling.attended" => &[Ngo, Health, Municipality, Probation, Prison],
        "family_contact.restored" => &[Ngo, Probation, Municipality, Health, Prison],
        "programme.enrolled" | "programme.completed" | "programme.dropped_out" => SERVICES,
        // Offences and recalls come from the justice system.
        "reoffence.recorded" | "client.recalled" => JUSTICE,
        // Rectification is open to every agency here; the journey then holds it to who may
        // post the type of the event rectified, which only it knows.
        "event.corrected" | "event.retracted" => ANY,
        // Data-protection decisions are recorded by the service itself, through the
        // data-protection officer's endpoints and the retention run: no agency posts them.
        "personal_data.erased"
        | "retention.applied"
        | "processing.restricted"
        | "restriction.lifted" => &[],
        _ => return None,
    })
}

/// Whether an agency of `kind` may post `event_type`.
pub fn may_post(kind: AgencyKind, event_type: &str) -> bool {
    posted_by(event_type).is_some_and(|kinds| kinds.contains(&kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogue_type_names_who_may_post_it() {
        for info in crate::catalogue::event_types() {
            let kinds = posted_by(info.event_type)
                .unwrap_or_else(|| panic!("{} has no posting rule", info.event_type));
            assert_eq!(
                kinds.is_empty(),
                crate::personal::is_lifecycle(info.event_type),
                "{}",
                info.event_type
            );
        }
        assert_eq!(posted_by("no.such_type"), None);
    }

    #[test]
    fn custody_events_come_from_prisons_only() {
        for kind in AgencyKind::ALL {
            assert_eq!(may_post(kind, "client.released"), kind == Prison, "{kind}");
            assert_eq!(
                may_post(kind, "employment_bureau.registered"),
                kind == EmploymentBureau,
                "{kind}"
            );
        }
    }

    #[test]
    fn kinds_are_named_as_in_configuration() {
        for kind in AgencyKind::ALL {
            let named: AgencyKind =
                serde_json::from_value(serde_json::Value::String(kind.as_str().into())).unwrap();
            assert_eq!(named, kind);
        }
    }
}
