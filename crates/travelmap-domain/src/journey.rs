//! The client journey aggregate: the consistency boundary for one client's stream of events.
//!
//! It implements cqrs-es's [`Aggregate`], so its decisions are tested given/when/then with no I/O.
//! What it decides is small on purpose: agencies post late and out of order, so the aggregate does
//! not police the order of life events. It enforces what must hold for the record to stay
//! coherent: the sender's `expected_version`, that a correction or retraction names an earlier
//! event of the same client that is still standing, and that a correction's replacement data is
//! valid for the corrected event's type.

use std::borrow::Cow;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{EventDraft, EventId, JourneyEvent, ValidationError};

/// What the aggregate remembers about each event of the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Standing {
    id: EventId,
    /// Borrowed from the catalogue for every type it knows, so that remembering an event
    /// allocates nothing of its own.
    event_type: Cow<'static, str>,
    retracted: bool,
}

/// One client's journey, as far as recording decisions need it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientJourney {
    version: u64,
    /// In stream order. A list rather than a map: looking an event up (for a correction or a
    /// retraction) is rare, and journeys are cached for many clients at once, where a map's
    /// buckets cost several times the entries.
    events: Vec<Standing>,
    /// Processing is restricted: only lifting the restriction (or erasing) may be recorded.
    restricted: bool,
    /// The personal data was erased and the record closed: nothing more may be recorded.
    erased: bool,
}

/// The commands the journey accepts.
#[derive(Debug, Clone)]
pub enum Command {
    /// Record one submitted event. `expected_version`, when given, is the stream version the
    /// sender last saw; the event is refused if the stream has moved on since.
    Record {
        draft: EventDraft,
        expected_version: Option<u64>,
    },
}

/// Why the journey refuses to record an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("the client's stream is at version {actual}, not the expected {expected}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("event {0} is not an earlier event of this client")]
    UnknownTarget(EventId),
    #[error("event {0} has been retracted and can no longer be corrected or retracted")]
    TargetRetracted(EventId),
    #[error(
        "event {event_id} is a {event_type}; corrections, retractions and data-protection decisions cannot be corrected or retracted (to rectify a correction, correct the original event)"
    )]
    TargetNotCorrectable {
        event_id: EventId,
        event_type: String,
    },
    /// The replacement data of a correction is not valid for the corrected event's type.
    #[error("replacement data: {0}")]
    InvalidReplacement(ValidationError),
    #[error(
        "processing of this client's data is restricted; nothing but lifting the restriction can be recorded until it is lifted"
    )]
    Restricted,
    #[error("this client's personal data has been erased and the record is closed")]
    Erased,
}

impl ClientJourney {
    /// The stream version: how many events the client has.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether processing of the client's data is restricted.
    pub fn is_restricted(&self) -> bool {
        self.restricted
    }

    /// Whether the client's personal data has been erased (the record is closed).
    pub fn is_erased(&self) -> bool {
        self.erased
    }

    /// The type of one of the client's events, if it is theirs.
    pub fn event_type(&self, event_id: EventId) -> Option<&str> {
        self.standing(event_id)
            .map(|standing| standing.event_type.as_ref())
    }

    fn standing(&self, event_id: EventId) -> Option<&Standing> {
        self.events
            .iter()
            .rev()
            .find(|standing| standing.id == event_id)
    }

    fn standing_target(&self, event_id: EventId) -> Result<&Standing, Error> {
        let standing = self
            .standing(event_id)
            .ok_or(Error::UnknownTarget(event_id))?;
        if standing.retracted {
            return Err(Error::TargetRetracted(event_id));
        }
        // Corrections are corrected by correcting the original; data-protection decisions are
        // not facts an agency may rectify (retracting a restriction would lift it unrecorded).
        if matches!(
            standing.event_type.as_ref(),
            "event.corrected" | "event.retracted"
        ) || crate::personal::is_lifecycle(&standing.event_type)
        {
            return Err(Error::TargetNotCorrectable {
                event_id,
                event_type: standing.event_type.to_string(),
            });
        }
        Ok(standing)
    }

    /// Folds what deciding needs from one recorded event: its id and type, and for a retraction
    /// the event it retracts. [`Aggregate::apply`] goes through here, and so does loading a
    /// journey from outlines of its recorded events, which needs no event data decoded.
    pub fn remember(&mut self, id: EventId, event_type: &str, retracts: Option<EventId>) {
        self.version += 1;
        match event_type {
            "processing.restricted" => self.restricted = true,
            "restriction.lifted" => self.restricted = false,
            "personal_data.erased" => self.erased = true,
            _ => {}
        }
        if let Some(target) = retracts.and_then(|target| {
            self.events
                .iter_mut()
                .rev()
                .find(|standing| standing.id == target)
        }) {
            target.retracted = true;
        }
        let event_type = match crate::catalogue::event_type(event_type) {
            Some(info) => Cow::Borrowed(info.event_type),
            None => Cow::Owned(event_type.to_owned()),
        };
        self.events.push(Standing {
            id,
            event_type,
            retracted: false,
        });
    }

    /// Checks a command without changing anything.
    pub fn decide(&self, draft: &EventDraft, expected_version: Option<u64>) -> Result<(), Error> {
        if let Some(expected) = expected_version
            && expected != self.version
        {
            return Err(Error::VersionConflict {
                expected,
                actual: self.version,
            });
        }
        if self.erased {
            return Err(Error::Erased);
        }
        if self.restricted
            && !matches!(
                draft.event,
                JourneyEvent::RestrictionLifted(_)
                    | JourneyEvent::PersonalDataErased(_)
                    | JourneyEvent::RetentionApplied(_)
            )
        {
            return Err(Error::Restricted);
        }
        match &draft.event {
            JourneyEvent::EventCorrected(correction) => {
                let target = self.standing_target(correction.event_id)?;
                let replacement = serde_json::Value::Object(correction.data.clone());
                let current = crate::catalogue::event_type(&target.event_type)
                    .map_or(1, |info| info.schema_version);
                JourneyEvent::decode(&target.event_type, current, &replacement).map_err(
                    |error| match error {
                        crate::DecodeError::Invalid(invalid) => Error::InvalidReplacement(invalid),
                        other => {
                            Error::InvalidReplacement(ValidationError::new("", other.to_string()))
                        }
                    },
                )?;
                Ok(())
            }
            JourneyEvent::EventRetracted(retraction) => {
                self.standing_target(retraction.event_id).map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

impl DomainEvent for EventDraft {
    fn event_type(&self) -> String {
        self.event.event_type().to_owned()
    }

    fn event_version(&self) -> String {
        self.event.schema_version().to_string()
    }
}

impl Aggregate for ClientJourney {
    const TYPE: &'static str = "client_journey";
    type Command = Command;
    type Event = EventDraft;
    type Error = Error;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            Command::Record {
                draft,
                expected_version,
            } => {
                self.decide(&draft, expected_version)?;
                sink.write(draft, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, draft: Self::Event) {
        self.remember(draft.id, draft.event.event_type(), draft.event.retracts());
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::ClientId;

    fn draft(id: u128, event_type: &str, data: serde_json::Value) -> EventDraft {
        EventDraft {
            id: EventId(Uuid::from_u128(id)),
            client_id: ClientId(Uuid::from_u128(100)),
            occurred_at: "2026-03-01T09:00:00+01:00".parse().unwrap(),
            actor: None,
            event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
        }
    }

    fn released(id: u128) -> EventDraft {
        draft(
            id,
            "client.released",
            json!({"release_kind": "conditional", "supervision": true}),
        )
    }

    fn record(draft: EventDraft, expected_version: Option<u64>) -> Command {
        Command::Record {
            draft,
            expected_version,
        }
    }

    #[test]
    fn records_any_event_when_no_version_is_expected() {
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1)])
            .when(record(released(2), None))
            .then_expect_events(vec![released(2)]);
    }

    #[test]
    fn refuses_when_the_stream_moved_past_the_expected_version() {
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), released(2)])
            .when(record(released(3), Some(1)))
            .then_expect_error(Error::VersionConflict {
                expected: 1,
                actual: 2,
            });
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), released(2)])
            .when(record(released(3), Some(2)))
            .then_expect_events(vec![released(3)]);
    }

    #[test]
    fn a_correction_must_name_an_earlier_event_of_the_client() {
        let correction = draft(
            5,
            "event.corrected",
            json!({"event_id": Uuid::from_u128(4), "reason": "typo", "data": {}}),
        );
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1)])
            .when(record(correction, None))
            .then_expect_error(Error::UnknownTarget(EventId(Uuid::from_u128(4))));
    }

    #[test]
    fn a_correction_carries_data_valid_for_the_corrected_type() {
        let bad = draft(
            5,
            "event.corrected",
            json!({"event_id": Uuid::from_u128(1), "reason": "wrong kind", "data": {"release_kind": "escaped", "supervision": true}}),
        );
        let Err(Error::InvalidReplacement(invalid)) = TestFramework::<ClientJourney>::with(())
            .given(vec![released(1)])
            .when(record(bad, None))
            .inspect_result()
        else {
            panic!("invalid replacement data must be refused");
        };
        assert_eq!(invalid.field, "release_kind");

        let good = draft(
            6,
            "event.corrected",
            json!({"event_id": Uuid::from_u128(1), "reason": "wrong kind", "data": {"release_kind": "parole", "supervision": true}}),
        );
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1)])
            .when(record(good.clone(), None))
            .then_expect_events(vec![good]);
    }

    #[test]
    fn a_restricted_client_takes_only_the_lifting_of_its_restriction() {
        let restricted = draft(
            7,
            "processing.restricted",
            json!({"reason": "accuracy contested"}),
        );
        let lifted = draft(8, "restriction.lifted", json!({"reason": "data verified"}));
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), restricted.clone()])
            .when(record(released(2), None))
            .then_expect_error(Error::Restricted);
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), restricted.clone()])
            .when(record(lifted.clone(), None))
            .then_expect_events(vec![lifted.clone()]);
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), restricted, lifted])
            .when(record(released(2), None))
            .then_expect_events(vec![released(2)]);
    }

    #[test]
    fn an_erased_client_takes_nothing_more() {
        let erased = draft(
            7,
            "personal_data.erased",
            json!({"reason": "client request"}),
        );
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), erased])
            .when(record(released(2), None))
            .then_expect_error(Error::Erased);
    }

    #[test]
    fn retracted_events_and_corrections_cannot_be_targeted() {
        let retract = |id, target| {
            draft(
                id,
                "event.retracted",
                json!({"event_id": Uuid::from_u128(target), "reason": "wrong client"}),
            )
        };
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), retract(2, 1)])
            .when(record(retract(3, 1), None))
            .then_expect_error(Error::TargetRetracted(EventId(Uuid::from_u128(1))));
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), retract(2, 1)])
            .when(record(retract(3, 2), None))
            .then_expect_error(Error::TargetNotCorrectable {
                event_id: EventId(Uuid::from_u128(2)),
                event_type: "event.retracted".into(),
            });
    }
}
