//! The client journey aggregate: the consistency boundary for one client's stream of events.
//!
//! It implements cqrs-es's [`Aggregate`], so its decisions are tested given/when/then with no I/O.
//! What it decides is small on purpose: agencies post late and out of order, so the aggregate does
//! not police the order of life events. It enforces what must hold for the record to stay
//! coherent: the sender's `expected_version`, that a correction or retraction names an earlier
//! event of the same client that is still standing, and that a correction's replacement data is
//! valid for the corrected event's type.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::agency::AgencyKind;
use crate::{EventDraft, EventId, JourneyEvent, ValidationError};

/// What the aggregate remembers about each event of the stream. Journeys are cached for many
/// clients at once and each remembers every event, so this is kept to 24 bytes with no
/// allocation of its own (a borrowed type name with its enum tag made it 48).
#[derive(Debug, Clone, Copy)]
struct Standing {
    id: EventId,
    /// The event's type: an index into the catalogue, or, past its end, into the journey's
    /// `unknown_types`; the top bit says whether the event was retracted.
    kind: u32,
    /// The day the event occurred, in its own offset (days from the Common Era), against which
    /// a correction's dated facts are checked; [`UNKNOWN_DAY`] where it was not given.
    occurred_on: i32,
}

/// Checks a correction's replacement data as the type of the event it corrects reads it: valid
/// under that type's schema, and its dated facts (see [`JourneyEvent::check_past_dates`]) after
/// neither the corrected event's day (the replacement is that event's data) nor the
/// correction's own (what it states was known when it was made). `target_day` is the corrected
/// event's day, where known. Fields are named within the replacement.
pub fn check_replacement(
    target_type: &str,
    target_day: Option<chrono::NaiveDate>,
    correction: &EventDraft,
) -> Result<(), ValidationError> {
    let JourneyEvent::EventCorrected(corrected) = &correction.event else {
        return Ok(());
    };
    let replacement = serde_json::Value::Object(corrected.data.clone());
    let current = crate::catalogue::event_type(target_type).map_or(1, |info| info.schema_version);
    let replaced =
        JourneyEvent::decode(target_type, current, &replacement).map_err(|error| match error {
            crate::DecodeError::Invalid(invalid) => invalid,
            other => ValidationError::new("", other.to_string()),
        })?;
    let made_on = correction.occurred_at.date_naive();
    match target_day {
        Some(day) if day <= made_on => {
            replaced.check_past_dates_against(day, "the day the corrected event occurred")
        }
        _ => replaced.check_past_dates_against(made_on, "the day the correction was made"),
    }
}

/// The [`Standing::occurred_on`] of a day, if known.
fn day_number(day: Option<chrono::NaiveDate>) -> i32 {
    use chrono::Datelike;
    day.map_or(UNKNOWN_DAY, |day| day.num_days_from_ce())
}

/// [`Standing::kind`]'s bit for a retracted event.
const RETRACTED: u32 = 1 << 31;
/// [`Standing::occurred_on`] of an event whose day is not known.
const UNKNOWN_DAY: i32 = i32::MIN;

impl Standing {
    fn type_index(&self) -> u32 {
        self.kind & !RETRACTED
    }

    fn retracted(&self) -> bool {
        self.kind & RETRACTED != 0
    }

    fn occurred_on(&self) -> Option<chrono::NaiveDate> {
        (self.occurred_on != UNKNOWN_DAY)
            .then(|| chrono::NaiveDate::from_num_days_from_ce_opt(self.occurred_on))
            .flatten()
    }
}

/// One client's journey, as far as recording decisions need it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(into = "JourneyRecord", from = "JourneyRecord")]
pub struct ClientJourney {
    version: u64,
    /// In stream order. A list rather than a map: looking an event up (for a correction or a
    /// retraction) is rare, and journeys are cached for many clients at once, where a map's
    /// buckets cost several times the entries.
    events: Vec<Standing>,
    /// Types of the stream the catalogue does not know (written by a newer version), by name.
    unknown_types: Vec<Box<str>>,
    /// Processing is restricted: only lifting the restriction (or erasing) may be recorded.
    restricted: bool,
    /// The personal data was erased and the record closed: nothing more may be recorded.
    erased: bool,
}

/// The serialised form of a journey (cqrs-es requires aggregates to be serialisable): types by
/// name, so that it does not depend on the catalogue's order.
#[derive(Serialize, Deserialize)]
#[serde(rename = "ClientJourney")]
struct JourneyRecord {
    version: u64,
    events: Vec<StandingRecord>,
    restricted: bool,
    erased: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename = "Standing")]
struct StandingRecord {
    id: EventId,
    event_type: String,
    retracted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    occurred_on: Option<chrono::NaiveDate>,
}

impl From<ClientJourney> for JourneyRecord {
    fn from(journey: ClientJourney) -> Self {
        Self {
            version: journey.version,
            events: journey
                .events
                .iter()
                .map(|standing| StandingRecord {
                    id: standing.id,
                    event_type: journey.type_name(standing).to_owned(),
                    retracted: standing.retracted(),
                    occurred_on: standing.occurred_on(),
                })
                .collect(),
            restricted: journey.restricted,
            erased: journey.erased,
        }
    }
}

impl From<JourneyRecord> for ClientJourney {
    fn from(record: JourneyRecord) -> Self {
        let mut journey = Self {
            version: record.version,
            events: Vec::with_capacity(record.events.len()),
            unknown_types: Vec::new(),
            restricted: record.restricted,
            erased: record.erased,
        };
        for standing in record.events {
            let type_index = journey.type_index(&standing.event_type);
            journey.events.push(Standing {
                id: standing.id,
                kind: type_index | if standing.retracted { RETRACTED } else { 0 },
                occurred_on: day_number(standing.occurred_on),
            });
        }
        journey
    }
}

/// The commands the journey accepts.
#[derive(Debug, Clone)]
pub enum Command {
    /// Record one submitted event. `expected_version`, when given, is the stream version the
    /// sender last saw; the event is refused if the stream has moved on since.
    Record {
        draft: EventDraft,
        expected_version: Option<u64>,
        /// The kind of agency posting it, when it has one: a correction or retraction is then
        /// refused unless that kind may post the type of the event it rectifies.
        poster: Option<AgencyKind>,
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
    /// A fact the event reports as past (a birth, an offence) is dated after the event (see
    /// [`JourneyEvent::check_past_dates`]). Decided here rather than when the request is read,
    /// so that a retry of an event stored before the rule existed is still answered with its
    /// receipt: the decision is only made for events not yet recorded.
    #[error("{0}")]
    FactAfterEvent(ValidationError),
    #[error(
        "processing of this client's data is restricted; nothing but lifting the restriction can be recorded until it is lifted"
    )]
    Restricted,
    #[error("this client's personal data has been erased and the record is closed")]
    Erased,
    /// A lifting of a restriction where processing is not restricted: two liftings made at once
    /// must not both be recorded.
    #[error("processing of this client's data is not restricted")]
    NotRestricted,
    /// A correction or retraction of an event of a type the posting agency may not post: it
    /// would let any agency rewrite facts only certain kinds of agency may record. The answer
    /// does not name the type (kept for the server's own use): the event may be another
    /// agency's, of a client the sender has no need to know.
    #[error(
        "agencies of kind {kind} may not correct or retract event {event_id}: it is of a type they may not post"
    )]
    NotPoster {
        event_id: EventId,
        event_type: String,
        kind: AgencyKind,
    },
}

impl ClientJourney {
    /// An empty journey with room for `events` events, for loading a stream of known length.
    pub fn with_capacity(events: usize) -> Self {
        Self {
            events: Vec::with_capacity(events),
            ..Self::default()
        }
    }

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
            .map(|standing| self.type_name(standing))
    }

    fn type_name(&self, standing: &Standing) -> &str {
        let known = crate::catalogue::event_types();
        let index = standing.type_index() as usize;
        match known.get(index) {
            Some(info) => info.event_type,
            None => &self.unknown_types[index - known.len()],
        }
    }

    /// The index [`Standing::type_index`] holds for `event_type`, remembering the name of a type
    /// the catalogue does not know.
    fn type_index(&mut self, event_type: &str) -> u32 {
        let known = crate::catalogue::event_types();
        let index = match known.iter().position(|info| info.event_type == event_type) {
            Some(index) => index,
            None => {
                let unknown = match self
                    .unknown_types
                    .iter()
                    .position(|name| **name == *event_type)
                {
                    Some(unknown) => unknown,
                    None => {
                        self.unknown_types.push(event_type.into());
                        self.unknown_types.len() - 1
                    }
                };
                known.len() + unknown
            }
        };
        u32::try_from(index)
            .ok()
            .filter(|index| index & RETRACTED == 0)
            .expect("fewer than 2^31 distinct event types in one stream")
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
        if standing.retracted() {
            return Err(Error::TargetRetracted(event_id));
        }
        // Corrections are corrected by correcting the original; data-protection decisions are
        // not facts an agency may rectify (retracting a restriction would lift it unrecorded).
        let event_type = self.type_name(standing);
        if matches!(event_type, "event.corrected" | "event.retracted")
            || crate::personal::is_lifecycle(event_type)
        {
            return Err(Error::TargetNotCorrectable {
                event_id,
                event_type: event_type.to_owned(),
            });
        }
        Ok(standing)
    }

    /// Folds what deciding needs from one recorded event: its id, type and day, and for a
    /// retraction the event it retracts. [`Aggregate::apply`] goes through here, and so does
    /// loading a journey from outlines of its recorded events, which needs no event data decoded.
    pub fn remember(
        &mut self,
        id: EventId,
        event_type: &str,
        retracts: Option<EventId>,
        occurred_on: Option<chrono::NaiveDate>,
    ) {
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
            target.kind |= RETRACTED;
        }
        let type_index = self.type_index(event_type);
        // Grown one at a time rather than doubled: journeys of many clients are cached, and
        // the allocator's size classes mostly absorb the growth in place.
        self.events.reserve_exact(1);
        self.events.push(Standing {
            id,
            kind: type_index,
            occurred_on: day_number(occurred_on),
        });
    }

    /// Checks a command without changing anything.
    pub fn decide(
        &self,
        draft: &EventDraft,
        expected_version: Option<u64>,
        poster: Option<AgencyKind>,
    ) -> Result<(), Error> {
        // The event's own data first: an invalid event is told so whatever the record's state.
        draft
            .event
            .check_past_dates(draft.occurred_at.date_naive())
            .map_err(Error::FactAfterEvent)?;
        // An erased record takes one thing more: the lifting of a restriction that outlived the
        // erasure. Kept, the restriction would hold the client's remaining facts out of
        // statistics for good, which erasure itself must not change.
        if self.erased
            && !(self.restricted && matches!(draft.event, JourneyEvent::RestrictionLifted(_)))
        {
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
        if !self.restricted && matches!(draft.event, JourneyEvent::RestrictionLifted(_)) {
            return Err(Error::NotRestricted);
        }
        // After erasure and restriction: a version conflict answers with the stream's version,
        // which must not tell anyone how a closed record moves.
        if let Some(expected) = expected_version
            && expected != self.version
        {
            return Err(Error::VersionConflict {
                expected,
                actual: self.version,
            });
        }
        // The rule of who may post a type holds for rectifying it too.
        let rectified = |event_id: EventId| -> Result<&Standing, Error> {
            let standing = self.standing_target(event_id)?;
            let target = self.type_name(standing);
            match poster {
                Some(kind) if !crate::agency::may_post(kind, target) => Err(Error::NotPoster {
                    event_id,
                    event_type: target.to_owned(),
                    kind,
                }),
                _ => Ok(standing),
            }
        };
        match &draft.event {
            JourneyEvent::EventCorrected(correction) => {
                let target = rectified(correction.event_id)?;
                check_replacement(self.type_name(target), target.occurred_on(), draft)
                    .map_err(Error::InvalidReplacement)
            }
            JourneyEvent::EventRetracted(retraction) => rectified(retraction.event_id).map(|_| ()),
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
                poster,
            } => {
                self.decide(&draft, expected_version, poster)?;
                sink.write(draft, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, draft: Self::Event) {
        self.remember(
            draft.id,
            draft.event.event_type(),
            draft.event.retracts(),
            Some(draft.occurred_at.date_naive()),
        );
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
            poster: None,
        }
    }

    #[test]
    fn only_an_agency_that_may_post_a_type_may_rectify_it() {
        let corrected = draft(
            2,
            "event.corrected",
            json!({"event_id": Uuid::from_u128(1), "reason": "wrong kind",
                   "data": {"release_kind": "parole", "supervision": true}}),
        );
        let retracted = draft(
            3,
            "event.retracted",
            json!({"event_id": Uuid::from_u128(1), "reason": "wrong client"}),
        );
        let by = |draft: EventDraft, kind| Command::Record {
            draft,
            expected_version: None,
            poster: Some(kind),
        };
        for rectification in [corrected.clone(), retracted.clone()] {
            TestFramework::<ClientJourney>::with(())
                .given(vec![released(1)])
                .when(by(rectification, AgencyKind::Ngo))
                .then_expect_error(Error::NotPoster {
                    event_id: EventId(Uuid::from_u128(1)),
                    event_type: "client.released".into(),
                    kind: AgencyKind::Ngo,
                });
        }
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1)])
            .when(by(corrected.clone(), AgencyKind::Prison))
            .then_expect_events(vec![corrected]);
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1)])
            .when(by(retracted.clone(), AgencyKind::Prison))
            .then_expect_events(vec![retracted]);
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
            .given(vec![released(1), erased.clone()])
            .when(record(released(2), None))
            .then_expect_error(Error::Erased);
        let lifted = draft(
            9,
            "restriction.lifted",
            json!({"reason": "erased meanwhile"}),
        );
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), erased])
            .when(record(lifted, None))
            .then_expect_error(Error::Erased);
    }

    #[test]
    fn a_restriction_that_outlived_an_erasure_can_still_be_lifted() {
        let restricted = draft(
            7,
            "processing.restricted",
            json!({"reason": "accuracy contested"}),
        );
        let erased = draft(
            8,
            "personal_data.erased",
            json!({"reason": "client request"}),
        );
        let lifted = draft(
            9,
            "restriction.lifted",
            json!({"reason": "erased meanwhile"}),
        );
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), restricted.clone(), erased.clone()])
            .when(record(lifted.clone(), None))
            .then_expect_events(vec![lifted.clone()]);
        // Once lifted, the record is closed again.
        TestFramework::<ClientJourney>::with(())
            .given(vec![released(1), restricted, erased, lifted])
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

    #[test]
    fn a_corrections_dated_facts_hold_against_the_day_of_the_event_it_corrects() {
        let registered = |id: u128, day: &str, birth: &str| {
            let mut registered = draft(
                id,
                "client.registered",
                json!({"personal": {"given_name": "Jan", "birth_date": birth}}),
            );
            registered.occurred_at = format!("{day}T09:00:00+01:00").parse().unwrap();
            registered
        };
        let correct = |id: u128, day: &str, birth: &str| {
            let mut correction = draft(
                id,
                "event.corrected",
                json!({"event_id": Uuid::from_u128(1), "reason": "mistyped",
                       "data": {"personal": {"given_name": "Jan", "birth_date": birth}}}),
            );
            correction.occurred_at = format!("{day}T09:00:00+01:00").parse().unwrap();
            correction
        };
        let given = || vec![registered(1, "2026-01-05", "1990-04-12")];
        // Born after the registration it corrects, though before the correction was made.
        TestFramework::<ClientJourney>::with(())
            .given(given())
            .when(record(correct(2, "2026-03-01", "2026-02-01"), None))
            .then_expect_error(Error::InvalidReplacement(ValidationError::new(
                "personal.birth_date",
                "2026-02-01 is after the day the corrected event occurred (2026-01-05)",
            )));
        TestFramework::<ClientJourney>::with(())
            .given(given())
            .when(record(correct(2, "2026-03-01", "2026-01-05"), None))
            .then_expect_events(vec![correct(2, "2026-03-01", "2026-01-05")]);
        // And not after the day the correction was made, were it dated earlier.
        TestFramework::<ClientJourney>::with(())
            .given(given())
            .when(record(correct(2, "2026-01-03", "2026-01-04"), None))
            .then_expect_error(Error::InvalidReplacement(ValidationError::new(
                "personal.birth_date",
                "2026-01-04 is after the day the correction was made (2026-01-03)",
            )));
    }

    #[test]
    fn a_journey_remembers_types_the_catalogue_does_not_know_and_serialises_them_by_name() {
        let mut journey = ClientJourney::default();
        let id = |n| EventId(Uuid::from_u128(n));
        let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1);
        journey.remember(id(1), "client.released", None, day);
        journey.remember(id(2), "future.thing", None, None);
        journey.remember(id(3), "event.retracted", Some(id(1)), day);
        journey.remember(id(4), "future.thing", None, day);
        journey.remember(id(5), "future.other", None, day);
        assert_eq!(journey.version(), 5);
        assert_eq!(journey.event_type(id(2)), Some("future.thing"));
        assert_eq!(journey.event_type(id(4)), Some("future.thing"));
        assert_eq!(journey.event_type(id(5)), Some("future.other"));
        assert_eq!(journey.event_type(id(1)), Some("client.released"));
        assert_eq!(
            journey.unknown_types.len(),
            2,
            "each unknown name is kept once"
        );

        let json = serde_json::to_value(&journey).unwrap();
        assert_eq!(json["events"][1]["event_type"], "future.thing");
        assert_eq!(json["events"][0]["retracted"], true);
        assert_eq!(json["events"][0]["occurred_on"], "2026-03-01");
        assert_eq!(json["events"][1].get("occurred_on"), None);
        assert_eq!(json["events"][3]["retracted"], false);
        let back: ClientJourney = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.event_type(id(5)), Some("future.other"));
        assert_eq!(
            back.standing_target(id(1)).unwrap_err(),
            Error::TargetRetracted(id(1))
        );
        assert!(
            std::mem::size_of::<Standing>() <= 24,
            "a remembered event stays small: journeys of many clients are cached"
        );
    }
}
