//! The event catalogue: every journey event type, its schema version, a one-line description,
//! the JSON Schema of its `data`, and the code that decodes (and, for old versions, upcasts)
//! stored or submitted `data` into a typed [`JourneyEvent`].
//!
//! One table (the `catalogue!` invocation below) drives all of it, so adding a type means adding
//! one line and one payload struct.
//!
//! ## Versioning and upcasting
//! Every type carries a `schema_version`. Senders must post the current version. Stored events
//! keep the version they were written with and are upcast when read: when a type gets a v2, its
//! entry's version becomes 2, and `upcast` gains an arm that rewrites v1 `data` into v2 shape
//! before the typed decode. The log itself is never rewritten.

use chrono::NaiveDate;
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::field_path;
use crate::payloads::*;
use crate::{DecodeError, EventId, ValidationError};

/// One entry of the catalogue, as published by `GET /v1/event-types` and docs/events.md.
#[derive(Debug, Clone, Serialize)]
pub struct EventTypeInfo {
    /// The event type, e.g. `client.released`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// The current schema version of the type's `data`.
    pub schema_version: u32,
    /// One line saying what the event records.
    pub description: &'static str,
    /// Top-level `data` fields that hold personal data (to be encrypted at rest and erased on
    /// request). Empty when the type records only journey facts.
    pub personal_fields: &'static [&'static str],
    /// The kinds of agency whose systems may post this type.
    pub posted_by: &'static [crate::AgencyKind],
    /// The JSON Schema (2020-12) of `data`, generated from the same types the server decodes into.
    pub data: Value,
}

macro_rules! catalogue {
    ($(
        $variant:ident($payload:ty) = $name:literal @ $version:literal,
            personal: [$($personal:literal),*],
            $description:literal;
    )*) => {
        /// A journey event: its type and typed `data`. Serialises as `{"type": ..., "data": ...}`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "data")]
        pub enum JourneyEvent {
            $(
                #[doc = $description]
                #[serde(rename = $name)]
                $variant($payload),
            )*
        }

        impl JourneyEvent {
            /// The catalogue name of this event's type.
            pub fn event_type(&self) -> &'static str {
                match self { $(Self::$variant(_) => $name,)* }
            }

            /// The schema version this value is in (always the current one: decoding upcasts).
            pub fn schema_version(&self) -> u32 {
                match self { $(Self::$variant(_) => $version,)* }
            }

            /// The `data` object as JSON.
            pub fn data(&self) -> Value {
                let data = match self {
                    $(Self::$variant(payload) => serde_json::to_value(payload),)*
                };
                data.expect("journey event payloads always serialise")
            }

            /// The `data` object as JSON text, serialised straight from the payload.
            pub fn data_json(&self) -> String {
                let data = match self {
                    $(Self::$variant(payload) => serde_json::to_string(payload),)*
                };
                data.expect("journey event payloads always serialise")
            }

            /// Decodes `data` of the given type and schema version, upcasting old versions.
            pub fn decode(event_type: &str, schema_version: u32, data: &Value) -> Result<Self, DecodeError> {
                match event_type {
                    $($name => {
                        let data = upcast($name, schema_version, $version, data)?;
                        decode_payload::<$payload>($name, &data).map(Self::$variant)
                    })*
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }

            /// Decodes `data` recorded earlier inside another event (a correction's
            /// replacement), which was valid by the rules in force when it was recorded: shaped
            /// and typed as [`Self::decode`] requires, with refusals naming the field, but without
            /// the checks added since (stricter dates, say), which would otherwise undo a
            /// correction that stood when it was made.
            pub fn decode_recorded(event_type: &str, schema_version: u32, data: &Value) -> Result<Self, DecodeError> {
                match event_type {
                    $($name => {
                        let data = upcast($name, schema_version, $version, data)?;
                        Ok(Self::$variant(deserialize_with_path::<$payload>(&data)?))
                    })*
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }

            /// Like [`Self::decode_stored`], from a JSON value already parsed (the store's
            /// keyring builds one when it joins sealed personal fields back to the facts).
            pub fn decode_stored_value(event_type: &str, schema_version: u32, data: Value) -> Result<Self, DecodeError> {
                match event_type {
                    $($name if schema_version == $version => serde_json::from_value::<$payload>(data)
                        .map(Self::$variant)
                        .map_err(|error| ValidationError::new("", error.to_string()).into()),)*
                    _ => Self::decode_recorded(event_type, schema_version, &data),
                }
            }

            /// Decodes `data` read back from the store. It was validated when it was recorded, so
            /// data in the current version is parsed straight into its type (no intermediate JSON
            /// tree, no rule checks); older versions are upcast as [`Self::decode_recorded`] does,
            /// also without the rules added since they were recorded.
            pub fn decode_stored(event_type: &str, schema_version: u32, data: &str) -> Result<Self, DecodeError> {
                match event_type {
                    $($name if schema_version == $version => serde_json::from_str::<$payload>(data)
                        .map(Self::$variant)
                        .map_err(|error| ValidationError::new("", error.to_string()).into()),)*
                    _ => {
                        let value: Value = serde_json::from_str(data)
                            .map_err(|error| ValidationError::new("", error.to_string()))?;
                        Self::decode_recorded(event_type, schema_version, &value)
                    }
                }
            }
        }

        /// The whole catalogue, in documentation order.
        pub fn event_types() -> &'static [EventTypeInfo] {
            static TYPES: OnceLock<Vec<EventTypeInfo>> = OnceLock::new();
            TYPES.get_or_init(|| {
                // Inlined rather than `$ref`-linked: each type's schema stands alone, which is what
                // a sender reading one entry of the catalogue needs.
                let generator = SchemaSettings::draft2020_12()
                    .with(|settings| settings.inline_subschemas = true)
                    .into_generator();
                vec![$(EventTypeInfo {
                    event_type: $name,
                    schema_version: $version,
                    description: $description,
                    personal_fields: &[$($personal),*],
                    posted_by: crate::agency::posted_by($name).unwrap_or_default(),
                    data: with_date_patterns(
                        generator.clone().into_root_schema_for::<$payload>().to_value(),
                    ),
                },)*]
            })
        }
    };
}

catalogue! {
    ClientRegistered(ClientRegistered) = "client.registered" @ 1, personal: ["personal", "identifiers"],
        "The client becomes known, with agency identifiers and personal details.";
    IdentifierAdded(IdentifierAdded) = "identifier.added" @ 1, personal: ["identifier"],
        "Another agency identifier (prison number, probation case, ...) is linked to the client.";
    SentenceStarted(SentenceStarted) = "sentence.started" @ 1, personal: [],
        "The client starts serving a prison sentence.";
    ProgrammeEnrolled(ProgrammeEnrolled) = "programme.enrolled" @ 1, personal: [],
        "The client enrols in a programme (e.g. mentoring), with court approval where needed.";
    InvolvementOpened(InvolvementOpened) = "involvement.opened" @ 1, personal: [],
        "An agency and worker start working with the client in a role.";
    InvolvementClosed(InvolvementClosed) = "involvement.closed" @ 1, personal: [],
        "An agency's involvement with the client in a role ends.";
    ConsentRecorded(ConsentRecorded) = "consent.recorded" @ 1, personal: [],
        "Consent or another legal basis lets an agency process the client's data for purposes.";
    ConsentWithdrawn(ConsentWithdrawn) = "consent.withdrawn" @ 1, personal: [],
        "The client withdraws consent for an agency.";
    PlanAgreed(PlanAgreed) = "plan.agreed" @ 1, personal: [],
        "An individual plan covering needs areas is agreed with the client.";
    NeedAssessed(NeedAssessed) = "need.assessed" @ 1, personal: ["note"],
        "A needs area is assessed and given a status.";
    PrereleaseLectureAttended(PrereleaseLectureAttended) = "prerelease_lecture.attended" @ 1, personal: [],
        "The client attends an employment bureau lecture in prison before release.";
    RetrainingStarted(RetrainingStarted) = "retraining.started" @ 1, personal: [],
        "A retraining course starts.";
    RetrainingCompleted(RetrainingCompleted) = "retraining.completed" @ 1, personal: [],
        "A retraining course is completed.";
    CounsellingAttended(CounsellingAttended) = "counselling.attended" @ 1, personal: [],
        "The client attends debt, legal, family-law or psychological counselling.";
    ReleaseScheduled(ReleaseScheduled) = "release.scheduled" @ 1, personal: [],
        "A release date is set.";
    ClientReleased(ClientReleased) = "client.released" @ 1, personal: [],
        "The client leaves prison (conditional release, parole, end of sentence, ...).";
    ContactMade(ContactMade) = "contact.made" @ 1, personal: [],
        "A worker has contact with the client (first-day contact, meeting, visit, crisis).";
    AppointmentScheduled(AppointmentScheduled) = "appointment.scheduled" @ 1, personal: ["purpose"],
        "An appointment with the client is scheduled.";
    AppointmentMissed(AppointmentMissed) = "appointment.missed" @ 1, personal: [],
        "The client misses a scheduled appointment.";
    EmploymentBureauRegistered(EmploymentBureauRegistered) = "employment_bureau.registered" @ 1, personal: [],
        "The client registers with the employment bureau.";
    JobPlaced(JobPlaced) = "job.placed" @ 1, personal: [],
        "The client starts a job.";
    JobLost(JobLost) = "job.lost" @ 1, personal: ["reason"],
        "The client loses or leaves a job.";
    HousingSecured(HousingSecured) = "housing.secured" @ 1, personal: [],
        "The client secures housing.";
    HousingLost(HousingLost) = "housing.lost" @ 1, personal: ["reason"],
        "The client loses housing.";
    DebtCaseOpened(DebtCaseOpened) = "debt_case.opened" @ 1, personal: ["case_ref"],
        "Debt counselling opens a case for the client.";
    DebtCaseClosed(DebtCaseClosed) = "debt_case.closed" @ 1, personal: ["case_ref"],
        "A debt case is closed.";
    FamilyContactRestored(FamilyContactRestored) = "family_contact.restored" @ 1, personal: ["note"],
        "Contact with the client's family is restored.";
    ProgrammeCompleted(ProgrammeCompleted) = "programme.completed" @ 1, personal: [],
        "The client completes a programme.";
    ProgrammeDroppedOut(ProgrammeDroppedOut) = "programme.dropped_out" @ 1, personal: ["reason"],
        "The client drops out of a programme, with the reason.";
    ReoffenceRecorded(ReoffenceRecorded) = "reoffence.recorded" @ 1, personal: [],
        "A new offence by the client is recorded.";
    ClientRecalled(ClientRecalled) = "client.recalled" @ 1, personal: ["reason"],
        "A conditionally released client is recalled to prison.";
    EventCorrected(EventCorrected) = "event.corrected" @ 1, personal: ["reason", "data"],
        "Rectification: an earlier event of the client is to be read with replacement data.";
    EventRetracted(EventRetracted) = "event.retracted" @ 1, personal: ["reason"],
        "An earlier event of the client is withdrawn as recorded in error.";
    PersonalDataErased(PersonalDataErased) = "personal_data.erased" @ 1, personal: [],
        "The client's personal data is erased by destroying its keys; the record is closed.";
    RetentionApplied(RetentionApplied) = "retention.applied" @ 1, personal: [],
        "Categories of the client's personal data reached the end of their retention and were shredded.";
    ProcessingRestricted(ProcessingRestricted) = "processing.restricted" @ 1, personal: [],
        "Processing of the client's data is restricted: stored, but readable only for audit or subject access.";
    RestrictionLifted(RestrictionLifted) = "restriction.lifted" @ 1, personal: [],
        "A restriction of processing ends.";
}

impl JourneyEvent {
    /// Refuses a date of a fact the event reports as past (a birth, an offence) that falls after
    /// `occurred_on`, the day the event says it happened: an event from the future is refused,
    /// and so is a fact from the future inside one. Planned dates (a release, a review) and
    /// dates of a stay that is still to begin are not checked. Fields are named within `data`.
    pub fn check_past_dates(&self, occurred_on: NaiveDate) -> Result<(), ValidationError> {
        self.check_past_dates_against(occurred_on, "the day the event occurred")
    }

    /// [`Self::check_past_dates`] against `day`, named in a refusal as `what`.
    pub fn check_past_dates_against(
        &self,
        day: NaiveDate,
        what: &str,
    ) -> Result<(), ValidationError> {
        let occurred_on = day;
        let (field, date) = match self {
            Self::ClientRegistered(registered) => {
                ("personal.birth_date", registered.personal.birth_date)
            }
            Self::ReoffenceRecorded(reoffence) => ("offence_date", reoffence.offence_date),
            _ => return Ok(()),
        };
        match date {
            Some(date) if date > occurred_on => Err(ValidationError::new(
                field,
                format!("{date} is after {what} ({occurred_on})"),
            )),
            _ => Ok(()),
        }
    }

    /// For an `event.retracted`, the event it withdraws. Stores keep it beside the event so that
    /// deciding about a client never has to decode event data.
    pub fn retracts(&self) -> Option<EventId> {
        match self {
            Self::EventRetracted(retraction) => Some(retraction.event_id),
            _ => None,
        }
    }

    /// The agency an involvement or consent names, if it names one, with the field that names
    /// it: such an event opens or ends that agency's access to the client. A correction replaces
    /// its target's data, and access is decided from the corrected facts, so a replacement that
    /// names an agency counts too (only involvements and consents have an `agency` field, so a
    /// replacement that has one corrects one of them).
    pub fn named_agency(&self) -> Option<(&str, &'static str)> {
        let (agency, field) = match self {
            Self::InvolvementOpened(opened) => (opened.agency.as_ref()?.as_str(), "data.agency"),
            Self::InvolvementClosed(closed) => (closed.agency.as_ref()?.as_str(), "data.agency"),
            Self::ConsentRecorded(consent) => (consent.agency.as_str(), "data.agency"),
            Self::ConsentWithdrawn(withdrawal) => (withdrawal.agency.as_str(), "data.agency"),
            Self::EventCorrected(correction) => {
                (correction.data.get("agency")?.as_str()?, "data.data.agency")
            }
            _ => return None,
        };
        Some((agency, field))
    }
}

/// Looks up one catalogue entry.
pub fn event_type(name: &str) -> Option<&'static EventTypeInfo> {
    event_types().iter().find(|info| info.event_type == name)
}

/// Rewrites `data` written under `from` into the shape of the current version `current`.
/// Every type is at version 1, so there is nothing to rewrite yet; a future v2 adds its arm here
/// (e.g. `("client.released", 1) => rename a field`) and the rest of the system never sees v1.
fn upcast<'a>(
    event_type: &str,
    from: u32,
    current: u32,
    data: &'a Value,
) -> Result<std::borrow::Cow<'a, Value>, DecodeError> {
    if from == current {
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    Err(DecodeError::UnsupportedVersion {
        event_type: event_type.to_owned(),
        schema_version: from,
        current,
    })
}

/// Decodes one payload of `event_type` (in its current version), reporting the first problem
/// with the path of the offending field.
fn decode_payload<P: DeserializeOwned + Rules>(
    event_type: &str,
    data: &Value,
) -> Result<P, DecodeError> {
    if !data.is_object() {
        return Err(ValidationError::new("", "must be a JSON object").into());
    }
    if let Some(info) = self::event_type(event_type) {
        schema_checks(data, &info.data, "")?;
    }
    let payload: P = deserialize_with_path(data)?;
    payload.check()?;
    Ok(payload)
}

/// The published pattern of a date (`format: date`): the strict form, in the years
/// [`crate::dates::EARLIEST_YEAR`] to [`crate::dates::LATEST_YEAR`], which is what
/// [`crate::dates::check_date`] accepts (a day the month lacks, such as 2026-02-30, aside).
const DATE_PATTERN: &str = "^(19|20|21)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";

/// Adds [`DATE_PATTERN`] wherever a schema says `format: date`, and
/// [`crate::dates::DATE_TIME_PATTERN`] wherever it says `format: date-time`, so that the published
/// schemas refuse the years the server refuses, also to a validator that takes `format` as a
/// mere annotation (JSON Schema 2020-12's default).
fn with_date_patterns(mut schema: Value) -> Value {
    fn visit(value: &mut Value) {
        match value {
            Value::Object(members) => {
                let pattern = match members.get("format").and_then(Value::as_str) {
                    Some("date") => Some(DATE_PATTERN),
                    Some("date-time") => Some(crate::dates::DATE_TIME_PATTERN),
                    _ => None,
                };
                if let Some(pattern) = pattern {
                    members.insert("pattern".to_owned(), Value::from(pattern));
                }
                members.values_mut().for_each(visit);
            }
            Value::Array(items) => items.iter_mut().for_each(visit),
            _ => {}
        }
    }
    visit(&mut schema);
    schema
}

/// Checks `value` where serde, reading it into the type, would take more than the type's
/// published schema allows:
///
/// - a JSON array wherever the schema expects an object: serde reads a struct from an array too
///   (its fields in order), so without this check `"personal": ["Jana", null]` would be recorded
///   as if it named the fields;
/// - a date or a date and time in any but its strict form, wherever the schema says
///   `format: date` or `format: date-time` (see [`crate::dates`]): chrono takes looser forms
///   and years far outside any journey.
fn schema_checks(value: &Value, schema: &Value, path: &str) -> Result<(), ValidationError> {
    match value {
        Value::String(text) => {
            let format = alternatives(schema).find_map(|schema| schema.get("format"));
            let checked = match format.and_then(Value::as_str) {
                Some("date") => crate::dates::check_date(text).map(drop),
                Some("date-time") => crate::dates::check_date_time(text).map(drop),
                _ => Ok(()),
            };
            checked.map_err(|message| ValidationError::new(path, message))?;
        }
        Value::Array(items) => {
            if allows(schema, "object") && !allows(schema, "array") {
                return Err(ValidationError::new(path, "must be a JSON object"));
            }
            if let Some(item_schema) = alternatives(schema).find_map(|schema| schema.get("items")) {
                for (index, item) in items.iter().enumerate() {
                    schema_checks(item, item_schema, &format!("{path}[{index}]"))?;
                }
            }
        }
        Value::Object(fields) => {
            if let Some(properties) = alternatives(schema)
                .find_map(|schema| schema.get("properties").and_then(Value::as_object))
            {
                for (name, field) in fields {
                    if let Some(field_schema) = properties.get(name) {
                        schema_checks(field, field_schema, &field_path(path, name))?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A schema and the alternatives it lists (`anyOf`, `oneOf`: how an optional field is written).
fn alternatives(schema: &Value) -> impl Iterator<Item = &Value> {
    let listed = ["anyOf", "oneOf"]
        .into_iter()
        .filter_map(|key| schema.get(key).and_then(Value::as_array))
        .flatten();
    std::iter::once(schema).chain(listed)
}

/// Whether the schema (or one of its alternatives) allows JSON values of `kind`.
fn allows(schema: &Value, kind: &str) -> bool {
    alternatives(schema).any(|schema| match schema.get("type") {
        Some(Value::String(name)) => name == kind,
        Some(Value::Array(names)) => names.iter().any(|name| name == kind),
        _ => false,
    })
}

/// Deserialises `value` into `T`; on failure reports the dotted path to the offending field and
/// serde's message. A missing field is reported at the field itself rather than at the object
/// holding it, which is what a sender needs to see.
pub fn deserialize_with_path<T: DeserializeOwned>(value: &Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = error.inner().to_string();
        let field = named_field(&message)
            .map(|name| field_path(&path, name))
            .unwrap_or(path);
        ValidationError::new(field, message)
    })
}

/// Pulls the field name out of serde's "missing field `x`" message. (For unknown fields the path
/// already ends at the field.)
fn named_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused_field(event_type: &str, data: Value) -> String {
        match JourneyEvent::decode(event_type, 1, &data) {
            Err(DecodeError::Invalid(invalid)) => invalid.field,
            other => panic!("{event_type} {data} was not refused as invalid: {other:?}"),
        }
    }

    #[test]
    fn a_withdrawal_of_no_purposes_is_refused() {
        assert_eq!(
            refused_field(
                "consent.withdrawn",
                json!({"agency": "ngo-a", "purposes": []})
            ),
            "purposes"
        );
        // Left out, it withdraws every purpose.
        assert!(JourneyEvent::decode("consent.withdrawn", 1, &json!({"agency": "ngo-a"})).is_ok());
    }

    #[test]
    fn loose_dates_and_times_are_refused_where_they_stand() {
        assert_eq!(
            refused_field(
                "release.scheduled",
                json!({"release_date": "-262143-01-01"})
            ),
            "release_date"
        );
        assert_eq!(
            refused_field(
                "client.registered",
                json!({"identifiers": [], "personal": {"birth_date": "1990-1-5"}})
            ),
            "personal.birth_date"
        );
        assert_eq!(
            refused_field(
                "appointment.scheduled",
                json!({"appointment_id": "A-1", "at": "2026-06-01T12:34:60+02:00"})
            ),
            "at"
        );
        assert!(
            JourneyEvent::decode(
                "appointment.scheduled",
                1,
                &json!({"appointment_id": "A-1", "at": "2026-06-01T12:34:59.5+02:00"})
            )
            .is_ok()
        );
    }

    /// serde would read these arrays as the objects' fields in order.
    #[test]
    fn an_array_in_place_of_an_object_is_refused_where_it_stands() {
        assert_eq!(
            refused_field(
                "client.registered",
                json!({"identifiers": [], "personal": ["Jana", "Nováková", null]})
            ),
            "personal"
        );
        assert_eq!(
            refused_field(
                "client.registered",
                json!({"identifiers": [{"type": "prison_number", "value": "P-1"}, ["probation_case", "PMS-1"]]})
            ),
            "identifiers[1]"
        );
        assert_eq!(
            refused_field(
                "identifier.added",
                json!({"identifier": ["prison_number", "P-1"]})
            ),
            "identifier"
        );
        // The same data as objects is accepted, and arrays where arrays belong stay accepted.
        JourneyEvent::decode(
            "client.registered",
            1,
            &json!({"identifiers": [{"type": "prison_number", "value": "P-1"}],
                    "personal": {"given_name": "Jana", "family_name": "Nováková"}}),
        )
        .unwrap();
        JourneyEvent::decode(
            "plan.agreed",
            1,
            &json!({"areas": ["housing", "employment"]}),
        )
        .unwrap();
    }

    #[test]
    fn every_type_is_listed_once_with_an_object_schema() {
        let types = event_types();
        assert_eq!(types.len(), 37);
        for (index, info) in types.iter().enumerate() {
            assert!(
                types[..index]
                    .iter()
                    .all(|other| other.event_type != info.event_type),
                "{} listed twice",
                info.event_type
            );
            assert_eq!(info.data["type"], "object", "{}", info.event_type);
            assert_eq!(
                info.data["additionalProperties"], false,
                "{}",
                info.event_type
            );
        }
    }

    #[test]
    fn decode_reports_the_offending_field() {
        let missing = JourneyEvent::decode("client.released", 1, &json!({"supervision": true}));
        assert_eq!(
            missing,
            Err(DecodeError::Invalid(ValidationError::new(
                "release_kind",
                "missing field `release_kind`"
            )))
        );
        let Err(DecodeError::Invalid(wrong_enum)) = JourneyEvent::decode(
            "client.released",
            1,
            &json!({"release_kind": "escaped", "supervision": true}),
        ) else {
            panic!("an unknown release kind must be rejected");
        };
        assert_eq!(wrong_enum.field, "release_kind");
        let Err(DecodeError::Invalid(nested)) = JourneyEvent::decode(
            "client.registered",
            1,
            &json!({"identifiers": [{"type": "prison_number", "value": "  "}]}),
        ) else {
            panic!("a blank identifier must be rejected");
        };
        assert_eq!(nested.field, "identifiers[0].value");
        let Err(DecodeError::Invalid(unknown)) =
            JourneyEvent::decode("job.lost", 1, &json!({"reason": "closed", "salary": 3}))
        else {
            panic!("unknown fields must be rejected");
        };
        assert_eq!(unknown.field, "salary");
    }

    #[test]
    fn decode_rejects_unknown_types_and_versions() {
        assert_eq!(
            JourneyEvent::decode("client.teleported", 1, &json!({})),
            Err(DecodeError::UnknownType("client.teleported".into()))
        );
        assert!(matches!(
            JourneyEvent::decode("job.lost", 2, &json!({})),
            Err(DecodeError::UnsupportedVersion { current: 1, .. })
        ));
    }

    #[test]
    fn cross_field_rules_apply() {
        let Err(DecodeError::Invalid(error)) = JourneyEvent::decode(
            "sentence.started",
            1,
            &json!({"prison": "Opava", "start_date": "2026-01-10", "expected_release_date": "2025-01-01"}),
        ) else {
            panic!("release before start must be rejected");
        };
        assert_eq!(error.field, "expected_release_date");
    }

    #[test]
    fn decoded_events_round_trip_through_their_data() {
        let data =
            json!({"release_kind": "conditional", "supervision": true, "municipality": "Opava"});
        let event = JourneyEvent::decode("client.released", 1, &data).unwrap();
        assert_eq!(event.event_type(), "client.released");
        assert_eq!(event.data(), data);
    }
}
