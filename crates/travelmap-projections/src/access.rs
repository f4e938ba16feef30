//! Who has a need to know about a client, derived from the client's own journey: the agencies
//! with an open involvement, and those covered by a recorded consent or legal basis (for the
//! purposes it names). Closing the involvement or withdrawing the consent ends access from then
//! on; what was recorded before stays.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use travelmap_domain::payloads::{Purpose, Role};
use travelmap_domain::{EventId, JourneyEvent, RecordedEvent};

use crate::{ClientState, TravelMap};

/// The agencies that may see a client at a moment, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Agencies with an open involvement: they may read for any purpose.
    pub involved: BTreeSet<String>,
    /// Agencies covered by a consent or legal basis, with the purposes it covers.
    pub consented: BTreeMap<String, BTreeSet<Purpose>>,
    /// Involvements that were opened and have ended: agency, role, and when (to the
    /// microsecond). See [`Access::told_of_its_end`].
    pub ended: BTreeSet<(String, Role, i64)>,
    /// Withdrawals that ended a consent's cover: agency, purpose, and the withdrawal. See
    /// [`Access::told_of_its_end`].
    pub withdrawn: BTreeSet<(String, Purpose, EventId)>,
    /// Corrections and retractions that took back an involvement or consent an agency had.
    /// See [`Access::told_of_its_end`].
    pub taken_back: Vec<crate::travel_map::TakenBack>,
    /// Processing is restricted: the data may be read only for audit or subject access.
    pub restricted: bool,
    /// The client's personal data was erased.
    pub erased: bool,
}

impl Access {
    /// Whether `agency` may read the client's data for `purpose`.
    pub fn allows(&self, agency: &str, purpose: Purpose) -> bool {
        self.involved.contains(agency)
            || self
                .consented
                .get(agency)
                .is_some_and(|purposes| purposes.contains(&purpose))
    }

    /// Whether `event` ended `agency`'s own standing with the client, so that the agency's
    /// systems, subscribed for `purpose`, hear its case ended although the event leaves it out
    /// of scope: a close that ended an involvement of the agency's that had been opened, or the
    /// withdrawal of a consent that covered `purpose`, or the correction or retraction of the
    /// involvement or consent that had given the agency access (recorded for the wrong agency,
    /// say: the agency learns that what it was sent was rectified, GDPR Art. 19). A close or
    /// withdrawal that ended nothing of the agency's (any agency may record one naming any
    /// other) tells it nothing.
    pub fn told_of_its_end(&self, agency: &str, purpose: Purpose, event: &RecordedEvent) -> bool {
        match &event.draft.event {
            JourneyEvent::InvolvementClosed(closed) => {
                let named = closed
                    .agency
                    .as_ref()
                    .map_or(event.provenance.agency.as_str(), |named| named.as_str());
                let at = event.draft.occurred_at.timestamp_micros();
                named == agency && self.ended.contains(&(agency.to_owned(), closed.role, at))
            }
            JourneyEvent::ConsentWithdrawn(withdrawal) => {
                withdrawal.agency.as_str() == agency
                    && self
                        .withdrawn
                        .contains(&(agency.to_owned(), purpose, event.draft.id))
            }
            JourneyEvent::EventCorrected(_) | JourneyEvent::EventRetracted(_) => {
                self.taken_back.iter().any(|lost| {
                    lost.rectification == event.draft.id
                        && lost.agency == agency
                        && lost
                            .purposes
                            .as_ref()
                            .is_none_or(|purposes| purposes.contains(&purpose))
                })
            }
            _ => false,
        }
    }
}

impl ClientState {
    /// Who may see the client at `now` (facts that occurred later do not count yet).
    pub fn access(&self, now: DateTime<Utc>) -> Access {
        self.access_with(&self.travel_map_without_steps(now), now)
    }

    /// [`Self::access`] where the travel map at `now` is already at hand (a read that answers
    /// with it), so that it is not derived twice.
    pub fn access_with(&self, map: &TravelMap, now: DateTime<Utc>) -> Access {
        let mut access = Access {
            // Open at `now`, as consents are read below.
            involved: map
                .involvements
                .iter()
                .filter(|involvement| involvement.open_at(now))
                .map(|involvement| involvement.agency.clone())
                .collect(),
            consented: BTreeMap::new(),
            // An involvement whose only record is its end (it began before the records) gave
            // no access here: any agency can record such an end naming any other.
            ended: map
                .involvements
                .iter()
                .filter(|involvement| involvement.from.is_some())
                .filter_map(|involvement| {
                    let to = involvement.to?.timestamp_micros();
                    Some((involvement.agency.clone(), involvement.role, to))
                })
                .collect(),
            withdrawn: BTreeSet::new(),
            taken_back: self.grants_taken_back.clone(),
            restricted: false,
            erased: false,
        };
        for fact in self.facts.iter().filter(|fact| fact.occurred_at <= now) {
            match &fact.event {
                JourneyEvent::ConsentRecorded(consent) => {
                    // Purposes a consent cannot stand for (refused when recorded since; a
                    // consent stored before that counts for the others only).
                    access
                        .consented
                        .entry(consent.agency.as_str().to_owned())
                        .or_default()
                        .extend(consent.purposes.iter().copied().filter(|purpose| {
                            !matches!(
                                purpose,
                                Purpose::Emergency | Purpose::Audit | Purpose::SubjectAccess
                            )
                        }));
                }
                JourneyEvent::ConsentWithdrawn(withdrawal) => {
                    let agency = withdrawal.agency.as_str();
                    let ended: Vec<Purpose> = match &withdrawal.purposes {
                        None => access
                            .consented
                            .remove(agency)
                            .map(|covered| covered.into_iter().collect())
                            .unwrap_or_default(),
                        Some(purposes) => match access.consented.get_mut(agency) {
                            Some(covered) => purposes
                                .iter()
                                .filter(|purpose| covered.remove(purpose))
                                .copied()
                                .collect(),
                            None => Vec::new(),
                        },
                    };
                    access.withdrawn.extend(
                        ended
                            .into_iter()
                            .map(|purpose| (agency.to_owned(), purpose, fact.event_id)),
                    );
                }
                _ => {}
            }
        }
        // Data-protection decisions take effect when they are recorded, whatever their
        // `occurred_at`, so they are read in the order they were recorded.
        let mut decisions: Vec<_> = self
            .facts
            .iter()
            .filter(|fact| {
                matches!(
                    fact.event,
                    JourneyEvent::ProcessingRestricted(_)
                        | JourneyEvent::RestrictionLifted(_)
                        | JourneyEvent::PersonalDataErased(_)
                )
            })
            .collect();
        decisions.sort_by_key(|fact| fact.position);
        for fact in decisions {
            match fact.event {
                JourneyEvent::ProcessingRestricted(_) => access.restricted = true,
                JourneyEvent::RestrictionLifted(_) => access.restricted = false,
                _ => access.erased = true,
            }
        }
        access.consented.retain(|_, purposes| !purposes.is_empty());
        access
    }
}
