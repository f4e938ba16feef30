//! The v1 wire format: request and response bodies, and the conversion of a submitted event into
//! the domain's [`EventDraft`]. `travelmap import` parses its JSON lines with [`parse_event`], so
//! a file and an HTTP request are validated identically.

use chrono::{DateTime, FixedOffset, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use travelmap_domain::catalogue::deserialize_with_path;
use travelmap_domain::{
    ClientId, DecodeError, EventDraft, EventId, JourneyEvent, RecordedEvent, Text, field_path,
};
use travelmap_service::{Outcome, Submission};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, Code};

/// `occurred_at` in RFC 3339's own form only, within the years a journey can fall in (see
/// [`travelmap_domain::dates::check_date_time`]): a time before 1900 is a sender's placeholder (a
/// zero date), which would sort first in the travel map for good.
fn strict_date_time<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<DateTime<FixedOffset>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    travelmap_domain::dates::check_date_time(&text).map_err(serde::de::Error::custom)
}

/// The most events one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// A journey event as posted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Chosen by the sender; the idempotency key. Posting the same id again with the same
    /// content is answered with the original receipt. Not the nil UUID. Other spellings the
    /// UUID parser reads (no hyphens, braces, `urn:uuid:`) are taken as the same id and answered
    /// in the hyphenated form.
    pub id: Uuid,
    /// The event type, from the catalogue (`GET /v1/event-types`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The schema version of `data` (currently 1 for every type), written as a whole number
    /// (`1`, not `1.0`).
    pub schema_version: u32,
    /// The client the event is about (not the nil UUID; spelled as `id` may be).
    pub client_id: Uuid,
    /// When it happened (RFC 3339, with offset; in the years 1900 to 2199 both as written and
    /// in UTC, without a leap second). May be in the past; not in the future.
    #[serde(deserialize_with = "strict_date_time")]
    // The pattern is `travelmap_domain::dates::DATE_TIME_PATTERN` (a test checks they agree).
    #[schema(
        pattern = "^(19|20|21)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
    )]
    pub occurred_at: DateTime<FixedOffset>,
    /// The sender's reference to the worker involved (not a name): trimmed, not blank, at most
    /// 2000 characters, no control characters (tab, line feed and carriage return excepted).
    #[serde(default)]
    // The pattern is `travelmap_domain::TEXT_PATTERN` (the attribute takes only a literal; a
    // test checks they agree).
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*[^\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub actor: Option<String>,
    /// The event's data. Its schema depends on `type`: the `EventData.<type>` component of this
    /// document (also served by `GET /v1/event-types`).
    #[schema(value_type = Object)]
    pub data: Value,
    /// The client's stream version the sender last saw, as a whole number; the event is refused
    /// with `409 version_conflict` if the stream has moved since.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub expected_version: Option<u64>,
}

/// A batch of events, recorded all-or-nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1000 events.
    #[schema(value_type = Vec<EventRequest>, min_items = 1, max_items = 1000)]
    pub events: Vec<Value>,
}

/// The acknowledgement of a recorded event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Receipt {
    pub id: Uuid,
    pub client_id: Uuid,
    /// The event's 1-based version in its client's stream.
    pub version: u64,
    /// The event's position in the global feed.
    pub position: u64,
    /// When the event was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl From<&Outcome> for Receipt {
    fn from(outcome: &Outcome) -> Self {
        let receipt = &outcome.receipt;
        Self {
            id: receipt.id.0,
            client_id: receipt.client_id.0,
            version: receipt.version,
            position: receipt.position,
            recorded_at: receipt.recorded_at,
        }
    }
}

/// Receipts for a batch, in the order the events were posted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchReceipts {
    pub receipts: Vec<Receipt>,
}

/// A recorded event as returned by history and feed reads.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Recorded {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub client_id: Uuid,
    pub occurred_at: DateTime<FixedOffset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
    /// The agency of the credential that recorded the event.
    pub agency: String,
    /// The credential that recorded the event.
    pub credential: String,
    /// When the event was recorded.
    pub recorded_at: DateTime<Utc>,
    /// 1-based version in the client's stream.
    pub version: u64,
    /// Position in the global feed.
    pub position: u64,
    /// `erased` when the event's personal fields were erased: they read as `[erased]` (text),
    /// `[]` (a registration's identifiers), `{"type": "erased", "value": "[erased]"}` (an added
    /// identifier) or `{}` (personal details). `withheld` in the global feed when the
    /// client's processing is restricted: the personal fields are left out of `data`. Absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal_data: Option<String>,
}

impl Recorded {
    /// The event with its personal fields left out (a restricted client's, in the feed).
    pub fn withheld(recorded: &RecordedEvent) -> Self {
        let mut wire = Self::shown(recorded);
        if let Some(split) = travelmap_domain::personal::split(&recorded.draft.event) {
            wire.data = serde_json::from_str(&split.public).unwrap_or(Value::Null);
            wire.personal_data = Some("withheld".to_owned());
        }
        wire
    }
}

impl From<&RecordedEvent> for Recorded {
    /// The event as its reader may see it: without its personal fields where they are withheld
    /// from that reader ([`PersonalData::Withheld`]).
    ///
    /// [`PersonalData::Withheld`]: travelmap_domain::PersonalData::Withheld
    fn from(recorded: &RecordedEvent) -> Self {
        if recorded.personal != travelmap_domain::PersonalData::Withheld {
            return Self::shown(recorded);
        }
        let mut wire = Self::withheld(recorded);
        // A notice that a correction took the reader's access away says which event was
        // corrected, not what it now says: the replacement (who holds the case now, the new
        // worker) is about a client the reader no longer has a need to know.
        if let Value::Object(data) = &mut wire.data {
            data.remove("data");
        }
        wire.personal_data = Some("withheld".to_owned());
        wire
    }
}

impl Recorded {
    /// The event with every field it holds.
    fn shown(recorded: &RecordedEvent) -> Self {
        let draft = &recorded.draft;
        Self {
            id: draft.id.0,
            event_type: draft.event.event_type().to_owned(),
            schema_version: draft.event.schema_version(),
            client_id: draft.client_id.0,
            occurred_at: draft.occurred_at,
            actor: draft.actor.as_ref().map(ToString::to_string),
            data: draft.event.data(),
            agency: recorded.provenance.agency.clone(),
            credential: recorded.provenance.credential.clone(),
            recorded_at: recorded.meta.recorded_at,
            version: recorded.meta.version,
            position: recorded.meta.position,
            personal_data: recorded.personal.is_erased().then(|| "erased".to_owned()),
        }
    }
}

/// A client's history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub client_id: Uuid,
    pub events: Vec<Recorded>,
}

/// A page of the global feed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedPage {
    pub events: Vec<Recorded>,
    /// Pass as `after` to get the next page (the last position on this page, or `after` itself
    /// when the page is empty).
    pub next_after: u64,
}

/// Clients found by identifier.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientMatches {
    pub clients: Vec<ClientMatch>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientMatch {
    pub client_id: Uuid,
}

/// The event catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct Catalogue {
    pub event_types: Vec<CatalogueEntry>,
}

/// One event type of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogueEntry {
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub description: String,
    /// Top-level `data` fields holding personal data. For `event.corrected`, `data` stands for
    /// the personal fields of the corrected event's type within the replacement `data`; the
    /// rest of the replacement is not personal.
    pub personal_fields: Vec<String>,
    /// The kinds of agency (`prison`, `probation`, `employment_bureau`, `ngo`, `municipality`,
    /// `housing`, `health`, `court`, `other`) whose credentials may post this type.
    pub posted_by: Vec<String>,
    /// The JSON Schema (2020-12) of `data`.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// Parses one submitted event (an HTTP body, a batch element or an import line). Errors name the
/// offending field relative to the event (`data.release_kind`); callers add the batch index.
pub fn parse_event(value: &Value) -> Result<Submission, ApiError> {
    if !value.is_object() {
        return Err(ApiError::new(
            Code::ValidationFailed,
            "an event must be a JSON object",
        ));
    }
    refuse_control_characters(value)?;
    let request: EventRequest = deserialize_with_path(value).map_err(|invalid| {
        let detail = if invalid.field == "agency" {
            "`agency` is taken from the credential and must not be sent".to_owned()
        } else {
            invalid.message
        };
        ApiError::new(Code::ValidationFailed, detail).with_field(invalid.field)
    })?;
    for (field, id) in [("id", request.id), ("client_id", request.client_id)] {
        if id.is_nil() {
            return Err(
                ApiError::new(Code::ValidationFailed, "must not be the nil UUID").with_field(field),
            );
        }
    }
    if request.occurred_at.with_timezone(&Utc)
        > Utc::now() + travelmap_domain::dates::MAX_CLOCK_SKEW
    {
        return Err(ApiError::new(
            Code::ValidationFailed,
            "occurred_at lies in the future; record plans with their own events (e.g. appointment.scheduled)",
        )
        .with_field("occurred_at"));
    }
    // Versions are 64-bit signed in the stores (and so in the OpenAPI document); a larger one
    // could never match, and is refused as the document says rather than answered as a conflict.
    if request
        .expected_version
        .is_some_and(|version| version > i64::MAX as u64)
    {
        return Err(ApiError::new(
            Code::ValidationFailed,
            format!("expected_version must be at most {}", i64::MAX),
        )
        .with_field("expected_version"));
    }
    let actor = request
        .actor
        .map(Text::try_from)
        .transpose()
        .map_err(|message| ApiError::new(Code::ValidationFailed, message).with_field("actor"))?;
    let event = JourneyEvent::decode(&request.event_type, request.schema_version, &request.data)
        .map_err(|error| match error {
            DecodeError::UnknownType(name) => ApiError::new(
                Code::UnknownEventType,
                format!("unknown event type `{name}`; see GET /v1/event-types"),
            )
            .with_field("type"),
            DecodeError::UnsupportedVersion { .. } => {
                ApiError::new(Code::ValidationFailed, error.to_string())
                    .with_field("schema_version")
            }
            DecodeError::Invalid(invalid) => ApiError::new(Code::ValidationFailed, invalid.message)
                .with_field(field_path("data", &invalid.field)),
        })?;
    Ok(Submission {
        draft: EventDraft {
            id: EventId(request.id),
            client_id: ClientId(request.client_id),
            // Kept to the microsecond, as everywhere else in the store; finer digits would sort
            // differently in places that hold microseconds and places that hold the original.
            occurred_at: request.occurred_at.trunc_subsecs(6),
            actor,
            event,
        },
        expected_version: request.expected_version,
    })
}

/// Refuses (`422`, naming the field) a body with a control character other than tab, line feed
/// or carriage return in any string or member name. Such characters are invisible where the
/// record is read, and PostgreSQL refuses NUL in text outright: an input accepted on one backend
/// must be accepted on every other.
pub fn refuse_control_characters(value: &Value) -> Result<(), ApiError> {
    match control_character(value) {
        None => Ok(()),
        Some(field) => Err(ApiError::new(
            Code::ValidationFailed,
            "must not contain control characters (tab, line feed and carriage return excepted)",
        )
        .with_field(field)),
    }
}

/// The path (`data.identifiers[0].value`) of the first string or member name under `value` that
/// holds a forbidden control character (see [`refuse_control_characters`]), or `None`. The path
/// is made only for the branch that holds one, so that a large body with nothing wrong costs one
/// scan.
fn control_character(value: &Value) -> Option<String> {
    let mut reversed = Vec::new();
    if !find_control_character(value, &mut reversed) {
        return None;
    }
    let mut path = String::new();
    for segment in reversed.iter().rev() {
        match segment {
            Segment::Index(index) => path.push_str(&format!("[{index}]")),
            Segment::Name(name) if path.is_empty() => path.push_str(name),
            Segment::Name(name) => {
                path.push('.');
                path.push_str(name);
            }
        }
    }
    Some(path)
}

enum Segment<'a> {
    Index(usize),
    Name(&'a str),
}

/// Whether `value` holds a forbidden character; if so, pushes the path to it, innermost first.
fn find_control_character<'a>(value: &'a Value, reversed: &mut Vec<Segment<'a>>) -> bool {
    let forbidden = |text: &str| {
        text.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    };
    match value {
        Value::String(text) => forbidden(text),
        Value::Array(items) => items.iter().enumerate().any(|(index, item)| {
            find_control_character(item, reversed) && {
                reversed.push(Segment::Index(index));
                true
            }
        }),
        Value::Object(members) => members.iter().any(|(name, member)| {
            (forbidden(name) || find_control_character(member, reversed)) && {
                reversed.push(Segment::Name(name));
                true
            }
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}
