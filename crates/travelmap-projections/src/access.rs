//! Who has a need to know about a client, derived from the client's own journey: the agencies
//! with an open involvement, and those covered by a recorded consent or legal basis (for the
//! purposes it names). Closing the involvement or withdrawing the consent ends access from then
//! on; what was recorded before stays.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use travelmap_domain::payloads::Purpose;
use travelmap_domain::{JourneyEvent, RecordedEvent};

use crate::{ClientState, TravelMap};

/// The agencies that may see a client at a moment, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Agencies with an open involvement: they may read for any purpose.
    pub involved: BTreeSet<String>,
    /// Agencies covered by a consent or legal basis, with the purposes it covers.
    pub consented: BTreeMap<String, BTreeSet<Purpose>>,
    /// Agencies that have had an involvement (its opening recorded) or a consent at any time,
    /// ended or not: an agency
    /// is told when its own involvement closes or its consent is withdrawn (see
    /// [`Access::told_of_its_end`]), and only an agency that had one.
    pub formerly: BTreeSet<String>,
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

    /// Whether `event` ends `agency`'s own involvement or consent with the client, so that the
    /// agency's systems hear its case ended although the event leaves it out of scope. Only an
    /// agency that had one is told: naming another agency in a close tells it nothing new.
    pub fn told_of_its_end(&self, agency: &str, event: &RecordedEvent) -> bool {
        let ended = match &event.draft.event {
            JourneyEvent::InvolvementClosed(closed) => closed
                .agency
                .as_ref()
                .map_or(event.provenance.agency.as_str(), |named| named.as_str()),
            JourneyEvent::ConsentWithdrawn(withdrawal) => withdrawal.agency.as_str(),
            _ => return false,
        };
        ended == agency && self.formerly.contains(agency)
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
            involved: map
                .involvements
                .iter()
                .filter(|involvement| involvement.to.is_none())
                .map(|involvement| involvement.agency.clone())
                .collect(),
            consented: BTreeMap::new(),
            // An involvement whose only record is its end (it began before the records) gave
            // no access here: any agency can record such an end naming any other.
            formerly: map
                .involvements
                .iter()
                .filter(|involvement| involvement.from.is_some())
                .map(|involvement| involvement.agency.clone())
                .collect(),
            restricted: false,
            erased: false,
        };
        for fact in self.facts.iter().filter(|fact| fact.occurred_at <= now) {
            match &fact.event {
                JourneyEvent::ConsentRecorded(consent) => {
                    access.formerly.insert(consent.agency.as_str().to_owned());
                    access
                        .consented
                        .entry(consent.agency.as_str().to_owned())
                        .or_default()
                        .extend(consent.purposes.iter().copied());
                }
                JourneyEvent::ConsentWithdrawn(withdrawal) => {
                    let agency = withdrawal.agency.as_str();
                    match &withdrawal.purposes {
                        None => {
                            access.consented.remove(agency);
                        }
                        Some(purposes) => {
                            if let Some(covered) = access.consented.get_mut(agency) {
                                for purpose in purposes {
                                    covered.remove(purpose);
                                }
                            }
                        }
                    }
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
