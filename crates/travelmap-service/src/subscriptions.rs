//! What agency systems that subscribe to the feed (a server-sent event stream, a webhook) may
//! receive: the global feed, cut down to the clients the subscriber's agency has a need to know
//! about, and to the event types it asked for.
//!
//! Need-to-know is decided per client when the page is read, from the client's journey as
//! recorded so far (the same rule as every other read): an agency receives a client's events
//! while it has an open involvement or a consent covering the subscription's purpose. Events of a
//! client under a restriction of processing are never sent to a subscriber.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use travelmap_domain::payloads::Purpose;
use travelmap_domain::{ClientId, RecordedEvent};
use travelmap_projections::Access;

use crate::{Journeys, MAX_FEED_PAGE, Result};

/// Which events a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The subscriber's agency; `None` for a subscriber that may read every client (an auditor
    /// or administrator).
    pub agency: Option<String>,
    /// Why the subscriber processes the events; consents name the purposes they cover.
    pub purpose: Purpose,
    /// Event types (`job.lost`) or families of types (`job.*`); empty for every type.
    pub types: BTreeSet<String>,
}

impl Scope {
    /// Whether the scope asks for events of this type.
    pub fn wants_type(&self, event_type: &str) -> bool {
        self.types.is_empty()
            || self
                .types
                .iter()
                .any(|wanted| match wanted.strip_suffix('*') {
                    Some(prefix) => event_type.starts_with(prefix),
                    None => wanted == event_type,
                })
    }

    /// Whether the subscriber may receive `event`, given who may read its client now.
    pub fn admits(&self, event: &RecordedEvent, access: Option<&Access>) -> bool {
        if !self.wants_type(event.draft.event.event_type()) {
            return false;
        }
        let Some(access) = access else {
            return false;
        };
        if access.restricted {
            return false;
        }
        match &self.agency {
            None => true,
            Some(agency) => access.allows(agency, self.purpose),
        }
    }
}

/// A page of the feed as one subscriber sees it.
#[derive(Debug, Clone)]
pub struct ScopedPage {
    /// The events the subscriber may receive, in position order.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts: the position of the last event read, whether it was sent or
    /// left out. A subscriber that stores it never reads an event twice.
    pub next_after: u64,
}

/// Whether `pattern` names an event type in the catalogue, or a family of them (`job.*`).
pub fn is_known_type_pattern(pattern: &str) -> bool {
    let types = travelmap_domain::catalogue::event_types();
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            prefix.ends_with('.') && types.iter().any(|info| info.event_type.starts_with(prefix))
        }
        None => types.iter().any(|info| info.event_type == pattern),
    }
}

impl Journeys {
    /// Who may read each client of `events` now. Decided once per client, however many of its
    /// events the page holds.
    pub async fn feed_access(&self, events: &[RecordedEvent]) -> Result<HashMap<ClientId, Access>> {
        let mut clients: Vec<ClientId> = events.iter().map(|event| event.draft.client_id).collect();
        clients.sort_unstable();
        clients.dedup();
        let now = Utc::now();
        Ok(self
            .current_states(clients)
            .await?
            .into_iter()
            .map(|(client_id, state)| (client_id, state.access(now)))
            .collect())
    }

    /// Reads up to `limit` events of the feed after `after` and keeps those `scope` admits.
    pub async fn scoped_feed(&self, scope: &Scope, after: u64, limit: usize) -> Result<ScopedPage> {
        let events = self.feed(after, limit.clamp(1, MAX_FEED_PAGE)).await?;
        let next_after = events.last().map_or(after, |event| event.meta.position);
        let wanted: Vec<RecordedEvent> = events
            .into_iter()
            .filter(|event| scope.wants_type(event.draft.event.event_type()))
            .collect();
        let access = self.feed_access(&wanted).await?;
        let events = wanted
            .into_iter()
            .filter(|event| scope.admits(event, access.get(&event.draft.client_id)))
            .collect();
        Ok(ScopedPage { events, next_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(types: &[&str]) -> Scope {
        Scope {
            agency: Some("probation-opava".into()),
            purpose: Purpose::CaseManagement,
            types: types.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn an_empty_type_list_wants_every_type() {
        assert!(scope(&[]).wants_type("client.released"));
    }

    #[test]
    fn types_match_exactly_or_by_family() {
        let scope = scope(&["client.released", "job.*"]);
        assert!(scope.wants_type("client.released"));
        assert!(scope.wants_type("job.lost"));
        assert!(scope.wants_type("job.placed"));
        assert!(!scope.wants_type("client.registered"));
        assert!(!scope.wants_type("housing.lost"));
    }

    #[test]
    fn type_patterns_are_checked_against_the_catalogue() {
        assert!(is_known_type_pattern("job.lost"));
        assert!(is_known_type_pattern("job.*"));
        assert!(!is_known_type_pattern("job.stolen"));
        assert!(!is_known_type_pattern("jo*"));
        assert!(!is_known_type_pattern("nothing.*"));
    }
}
