//! Personal data inside journey events: which fields hold it, which category each event belongs
//! to, and how an event's `data` splits into the journey facts stored as they are and the
//! personal fields stored encrypted.
//!
//! The split is what makes erasure possible in an append-only log. Personal fields (names, birth
//! date, identifiers, free-text notes and reasons) are sealed with a key per client and category
//! that lives outside the log; destroying the key erases them everywhere the log is read, while
//! the facts the law lets us keep (types, dates, agencies, programmes) stay readable for
//! statistics. This module only reshapes JSON: the encryption itself is the store's.
//!
//! An event whose keys are destroyed is read back with *erased placeholders*: each personal field
//! that was sealed reads as [`ERASED`] (text), an empty list (identifiers) or an empty object
//! (personal details), so every reader, projection and export keeps working on the same types and
//! shows plainly that something was erased.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{DecodeError, JourneyEvent, ValidationError};

/// What an erased text field reads as.
pub const ERASED: &str = "[erased]";

/// A category of journey events, with its own data key per client and its own retention period:
/// `identity` (registration, identifiers, names, birth date), `justice` (sentence, release,
/// recall, re-offence), `support` (involvements, programmes, contacts, appointments, employment,
/// housing, debt, family), `needs` (needs assessments and plans, which can hold health and
/// addiction details), `consent` (consents and other legal bases), `data_protection` (erasure,
/// restriction, retention: holds no personal fields and is never shredded, being the proof that
/// the law was followed).
// Variants carry no doc comments of their own, for the reason given in `payloads`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Identity,
    Justice,
    Support,
    Needs,
    Consent,
    DataProtection,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Identity,
        Category::Justice,
        Category::Support,
        Category::Needs,
        Category::Consent,
        Category::DataProtection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Identity => "identity",
            Category::Justice => "justice",
            Category::Support => "support",
            Category::Needs => "needs",
            Category::Consent => "consent",
            Category::DataProtection => "data_protection",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|category| category.as_str() == name)
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The category of an event type. A correction or retraction belongs to the category of the
/// event it rectifies (the store seals it under that category's key), so this answers `None` for
/// them; `None` too for a type not in the catalogue.
pub fn category(event_type: &str) -> Option<Category> {
    Some(match event_type {
        "client.registered" | "identifier.added" => Category::Identity,
        "sentence.started" | "release.scheduled" | "client.released" | "client.recalled"
        | "reoffence.recorded" => Category::Justice,
        "need.assessed" | "plan.agreed" => Category::Needs,
        "consent.recorded" | "consent.withdrawn" => Category::Consent,
        "personal_data.erased"
        | "retention.applied"
        | "processing.restricted"
        | "restriction.lifted" => Category::DataProtection,
        "event.corrected" | "event.retracted" => return None,
        other if crate::catalogue::event_type(other).is_some() => Category::Support,
        _ => return None,
    })
}

/// The category whose key seals `event`: its type's, or for a correction or retraction that of
/// the event it rectifies, whose type `type_of` tells (a corrected birth date is identity data
/// and must go when identity data goes); `Support` where neither tells.
pub fn sealing_category<'a>(
    event: &JourneyEvent,
    type_of: impl FnOnce(crate::EventId) -> Option<&'a str>,
) -> Category {
    if let Some(category) = category(event.event_type()) {
        return category;
    }
    let target = match event {
        JourneyEvent::EventCorrected(correction) => Some(correction.event_id),
        JourneyEvent::EventRetracted(retraction) => Some(retraction.event_id),
        _ => None,
    };
    target
        .and_then(type_of)
        .and_then(category)
        .unwrap_or(Category::Support)
}

/// Whether the type is a data-protection decision recorded by the service itself rather than a
/// fact posted by an agency.
pub fn is_lifecycle(event_type: &str) -> bool {
    category(event_type) == Some(Category::DataProtection)
}

/// The top-level `data` fields of a type that hold personal data.
pub fn personal_fields(event_type: &str) -> &'static [&'static str] {
    crate::catalogue::event_type(event_type).map_or(&[], |info| info.personal_fields)
}

/// Keys of a correction's replacement `data` that are sealed: every name that is personal in some
/// type of the catalogue. A correction's data is a partial copy of another event's data, so the
/// same names mean the same things (a `reason` that is an enum elsewhere is sealed too, which
/// costs nothing).
fn personal_in_corrections(key: &str) -> bool {
    key != "data"
        && crate::catalogue::event_types()
            .iter()
            .any(|info| info.personal_fields.contains(&key))
}

/// An event's `data`, split for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The journey facts, as JSON text: stored as they are.
    pub public: String,
    /// The personal fields, as a JSON object: stored sealed.
    pub personal: Map<String, Value>,
}

impl Split {
    /// The names of the sealed fields (not themselves personal: they say what was sealed). A
    /// correction's sealed replacement keys are named `data.KEY`, so that once erased each can
    /// read as erased rather than vanish. (Corrections sealed before named only `data`; theirs
    /// are left out when erased.)
    pub fn fields(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.personal.len());
        for (key, value) in &self.personal {
            match (key.as_str(), value) {
                ("data", Value::Object(replacement)) => {
                    names.extend(replacement.keys().map(|inner| format!("data.{inner}")));
                }
                _ => names.push(key.clone()),
            }
        }
        names
    }
}

/// Splits an event's `data` into journey facts and personal fields, or `None` when this event
/// holds no personal field (optional ones may simply be absent).
pub fn split(event: &JourneyEvent) -> Option<Split> {
    let fields = personal_fields(event.event_type());
    if fields.is_empty() {
        return None;
    }
    let Value::Object(mut data) = event.data() else {
        return None;
    };
    let mut personal = Map::new();
    for &field in fields {
        if field == "data" {
            // A correction's replacement data: only its personal keys are sealed, so that a
            // corrected release date stays as usable for statistics as the original.
            if let Some(Value::Object(replacement)) = data.get_mut("data") {
                let keys: Vec<String> = replacement
                    .keys()
                    .filter(|key| personal_in_corrections(key) && !is_empty(&replacement[*key]))
                    .cloned()
                    .collect();
                let mut sealed = Map::new();
                for key in keys {
                    if let Some(value) = replacement.remove(&key) {
                        sealed.insert(key, value);
                    }
                }
                if !sealed.is_empty() {
                    personal.insert("data".to_owned(), Value::Object(sealed));
                }
            }
        } else if let Some(value) = data.remove(field) {
            if is_empty(&value) {
                // Nothing personal in an empty list or object: keep it in the facts so the
                // event reads back exactly as it was posted.
                data.insert(field.to_owned(), value);
            } else {
                personal.insert(field.to_owned(), value);
            }
        }
    }
    if personal.is_empty() {
        return None;
    }
    Some(Split {
        public: Value::Object(data).to_string(),
        personal,
    })
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// Puts an event back together from its stored parts. With `personal`, the sealed fields (as
/// opened by the store) are merged back; without it, they are erased and each of `sealed_fields`
/// reads as its placeholder.
pub fn join(
    event_type: &str,
    schema_version: u32,
    public: &str,
    personal: Option<&Map<String, Value>>,
    sealed_fields: &[String],
) -> Result<JourneyEvent, DecodeError> {
    let mut data: Map<String, Value> = serde_json::from_str(public)
        .map_err(|error| ValidationError::new("", error.to_string()))?;
    match personal {
        Some(personal) => {
            for (key, value) in personal {
                match (key.as_str(), value, data.get_mut(key)) {
                    ("data", Value::Object(sealed), Some(Value::Object(replacement))) => {
                        replacement.extend(sealed.clone());
                    }
                    _ => {
                        data.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        None => {
            for field in sealed_fields {
                match field.strip_prefix("data.") {
                    // A correction's sealed replacement key: erased inside the replacement.
                    Some(inner) if event_type == "event.corrected" => {
                        if let (Some(Value::Object(replacement)), Some(placeholder)) =
                            (data.get_mut("data"), erased_placeholder(event_type, inner))
                        {
                            replacement.insert(inner.to_owned(), placeholder);
                        }
                    }
                    _ => {
                        if let Some(placeholder) = erased_placeholder(event_type, field) {
                            data.insert(field.clone(), placeholder);
                        }
                    }
                }
            }
        }
    }
    JourneyEvent::decode_stored_value(event_type, schema_version, Value::Object(data))
}

/// [`join`] for the common case, from the opened personal fields as JSON text (what the store
/// decrypts): the facts and the personal fields are disjoint objects, so they are joined as text
/// and decoded once, straight into the event's type. A correction, whose replacement `data` is
/// split between the two, takes the general path.
pub fn join_text(
    event_type: &str,
    schema_version: u32,
    public: &str,
    personal: &str,
) -> Result<JourneyEvent, DecodeError> {
    let invalid = |error: serde_json::Error| ValidationError::new("", error.to_string());
    if event_type == "event.corrected" {
        let personal: Map<String, Value> = serde_json::from_str(personal).map_err(invalid)?;
        return join(event_type, schema_version, public, Some(&personal), &[]);
    }
    JourneyEvent::decode_stored(event_type, schema_version, &merge_objects(public, personal))
}

/// [`join`] of an erased event, as text like [`join_text`].
pub fn join_erased(
    event_type: &str,
    schema_version: u32,
    public: &str,
    sealed_fields: &[String],
) -> Result<JourneyEvent, DecodeError> {
    if event_type == "event.corrected" {
        return join(event_type, schema_version, public, None, sealed_fields);
    }
    let placeholders: Map<String, Value> = sealed_fields
        .iter()
        .filter_map(|field| Some((field.clone(), erased_placeholder(event_type, field)?)))
        .collect();
    JourneyEvent::decode_stored(
        event_type,
        schema_version,
        &merge_objects(public, &Value::Object(placeholders).to_string()),
    )
}

/// A correction's replacement `data`, decoded as the corrected type. Once erased, its sealed
/// keys read as [`ERASED`]; where the corrected type holds a fixed set of values under such a
/// key (an involvement's `reason`), the placeholder cannot decode, and that key alone is left
/// out, so that the rest of the correction still holds, other placeholders included.
pub fn decode_replacement(
    event_type: &str,
    schema_version: u32,
    replacement: Map<String, Value>,
) -> Result<JourneyEvent, DecodeError> {
    let erased = Value::String(ERASED.to_owned());
    let mut replacement = Value::Object(replacement);
    loop {
        match JourneyEvent::decode_recorded(event_type, schema_version, &replacement) {
            Err(DecodeError::Invalid(invalid)) => {
                // Each round leaves out one placeholder, the one the refusal names, so this
                // ends; a refusal of anything else is the caller's to see.
                let key = top_level_key(&invalid.field);
                let fields = replacement.as_object_mut().expect("built as an object");
                if fields.get(key) != Some(&erased) {
                    return Err(DecodeError::Invalid(invalid));
                }
                fields.remove(key);
            }
            decoded => return decoded,
        }
    }
}

/// The top-level key a validation error's path starts with: `reason` of `reason`,
/// `identifiers` of `identifiers[1].value`.
fn top_level_key(field: &str) -> &str {
    field.split(['.', '[']).next().unwrap_or_default()
}

/// Two JSON objects with disjoint keys, as one: `{"a":1}` and `{"b":2}` give `{"a":1,"b":2}`.
fn merge_objects(left: &str, right: &str) -> String {
    let left = left.trim();
    let right = right.trim();
    let left_body = left[1..left.len() - 1].trim();
    let right_body = right[1..right.len() - 1].trim();
    let mut merged = String::with_capacity(left.len() + right.len());
    merged.push('{');
    merged.push_str(left_body);
    if !left_body.is_empty() && !right_body.is_empty() {
        merged.push(',');
    }
    merged.push_str(right_body);
    merged.push('}');
    merged
}

/// What an erased field reads as; `None` when the field is simply left out (a correction's sealed
/// replacement keys: the correction then replaces only what is left).
fn erased_placeholder(event_type: &str, field: &str) -> Option<Value> {
    Some(match (event_type, field) {
        (_, "personal") => Value::Object(Map::new()),
        (_, "identifiers") => Value::Array(Vec::new()),
        (_, "identifier") => serde_json::json!({"type": "erased", "value": ERASED}),
        ("event.corrected", "data") => return None,
        (_, "case_ref") | (_, "purpose") => Value::String(ERASED.to_owned()),
        _ => Value::String(ERASED.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(event_type: &str, data: Value) -> JourneyEvent {
        JourneyEvent::decode(event_type, 1, &data).unwrap()
    }

    #[test]
    fn a_rectification_is_sealed_under_its_targets_category() {
        let target = crate::EventId(uuid::Uuid::new_v4());
        let retraction = event(
            "event.retracted",
            json!({"event_id": target.0, "reason": "posted for the wrong client"}),
        );
        let registration = |id| (id == target).then_some("client.registered");
        assert_eq!(
            sealing_category(&retraction, registration),
            Category::Identity
        );
        assert_eq!(sealing_category(&retraction, |_| None), Category::Support);
        let assessed = event(
            "need.assessed",
            json!({"area": "housing", "status": "in_progress"}),
        );
        assert_eq!(sealing_category(&assessed, registration), Category::Needs);
    }

    fn round_trip(original: &JourneyEvent) -> (Split, JourneyEvent, JourneyEvent) {
        let split = split(original).expect("has personal fields");
        let personal = Value::Object(split.personal.clone()).to_string();
        assert_eq!(
            join_text(original.event_type(), 1, &split.public, &personal).unwrap(),
            *original
        );
        assert_eq!(
            join_erased(original.event_type(), 1, &split.public, &split.fields()).unwrap(),
            join(
                original.event_type(),
                1,
                &split.public,
                None,
                &split.fields()
            )
            .unwrap()
        );
        let opened = join(
            original.event_type(),
            1,
            &split.public,
            Some(&split.personal),
            &split.fields(),
        )
        .unwrap();
        let erased = join(
            original.event_type(),
            1,
            &split.public,
            None,
            &split.fields(),
        )
        .unwrap();
        (split, opened, erased)
    }

    #[test]
    fn every_type_has_a_category_except_rectification() {
        for info in crate::catalogue::event_types() {
            let rectifies = matches!(info.event_type, "event.corrected" | "event.retracted");
            assert_eq!(
                category(info.event_type).is_none(),
                rectifies,
                "{}",
                info.event_type
            );
        }
        assert_eq!(category("no.such_type"), None);
        for category in Category::ALL {
            assert_eq!(Category::parse(category.as_str()), Some(category));
        }
    }

    #[test]
    fn every_type_reads_back_when_all_its_personal_fields_are_erased() {
        for info in crate::catalogue::event_types() {
            let fields: Vec<String> = info.personal_fields.iter().map(|f| f.to_string()).collect();
            if fields.is_empty() {
                continue;
            }
            // The minimal facts each type needs besides its personal fields.
            let facts = match info.event_type {
                "need.assessed" => json!({"area": "health", "status": "done"}),
                "programme.dropped_out" => json!({"programme": "p"}),
                "appointment.scheduled" => {
                    json!({"appointment_id": "a1", "at": "2026-03-01T09:00:00+01:00"})
                }
                "event.corrected" => json!({"event_id": uuid::Uuid::from_u128(3), "data": {}}),
                "event.retracted" => json!({"event_id": uuid::Uuid::from_u128(3)}),
                _ => json!({}),
            };
            let erased = join(
                info.event_type,
                info.schema_version,
                &facts.to_string(),
                None,
                &fields,
            )
            .unwrap_or_else(|error| panic!("{} erased: {error}", info.event_type));
            let data = erased.data();
            for field in info.personal_fields {
                if *field != "data" {
                    assert!(
                        data.get(*field).is_some(),
                        "{}.{field} reads as erased",
                        info.event_type
                    );
                }
            }
        }
    }

    #[test]
    fn a_registration_keeps_no_name_or_identifier_in_its_facts() {
        let original = event(
            "client.registered",
            json!({"identifiers": [{"type": "prison_number", "value": "OP-7731"}],
                   "personal": {"given_name": "Jan", "family_name": "Novak", "birth_date": "1990-04-01"}}),
        );
        let (split, opened, erased) = round_trip(&original);
        for secret in ["OP-7731", "Jan", "Novak", "1990"] {
            assert!(
                !split.public.contains(secret),
                "{secret} in {}",
                split.public
            );
        }
        assert_eq!(opened, original);
        assert_eq!(erased.data(), json!({"identifiers": [], "personal": {}}));
    }

    #[test]
    fn required_personal_fields_read_as_erased() {
        let original = event(
            "programme.dropped_out",
            json!({"programme": "vol-mentoring", "reason": "relapse into addiction"}),
        );
        let (split, opened, erased) = round_trip(&original);
        assert_eq!(
            split.public,
            json!({"programme": "vol-mentoring"}).to_string()
        );
        assert_eq!(opened, original);
        assert_eq!(
            erased.data(),
            json!({"programme": "vol-mentoring", "reason": ERASED})
        );
    }

    #[test]
    fn optional_personal_fields_only_split_when_present() {
        assert_eq!(split(&event("job.lost", json!({}))), None);
        assert_eq!(
            split(&event(
                "client.released",
                json!({"release_kind": "parole", "supervision": false})
            )),
            None
        );
        let with_note = event(
            "need.assessed",
            json!({"area": "health", "status": "in_progress", "note": "diabetes"}),
        );
        let (_, opened, erased) = round_trip(&with_note);
        assert_eq!(opened, with_note);
        assert_eq!(erased.data()["note"], ERASED);
        assert_eq!(erased.data()["area"], "health");
    }

    #[test]
    fn an_erased_replacement_key_that_the_corrected_type_holds_as_a_choice_is_left_out() {
        let corrected = event(
            "event.corrected",
            json!({"event_id": uuid::Uuid::from_u128(7), "reason": "wrong agency",
                   "data": {"agency": "ngo-b", "role": "mentor", "reason": "client_moved"}}),
        );
        let (_, _, erased) = round_trip(&corrected);
        let replacement = erased.data()["data"].as_object().unwrap().clone();
        assert_eq!(replacement["reason"], ERASED);
        // `reason` of a closing is one of a list: the placeholder is left out, the rest holds.
        let closed = decode_replacement("involvement.closed", 1, replacement).unwrap();
        assert_eq!(closed.data(), json!({"agency": "ngo-b", "role": "mentor"}));
        // Free text keeps its placeholder.
        let noted = decode_replacement(
            "need.assessed",
            1,
            json!({"area": "health", "status": "done", "note": ERASED})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        assert_eq!(noted.data()["note"], ERASED);
        // Only the placeholder that cannot decode is left out; free text beside it keeps its own.
        let both = decode_replacement(
            "involvement.closed",
            1,
            json!({"role": "mentor", "worker": ERASED, "reason": ERASED})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        assert_eq!(both.data(), json!({"role": "mentor", "worker": ERASED}));
        // A replacement recorded before dates were checked strictly still holds when read back.
        let rescheduled = decode_replacement(
            "release.scheduled",
            1,
            json!({"release_date": "2026-5-1"})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        assert_eq!(rescheduled.data(), json!({"release_date": "2026-05-01"}));
        // A refusal of anything but a placeholder still refuses.
        let wrong = json!({"role": "astronaut", "reason": ERASED});
        assert!(
            decode_replacement("involvement.closed", 1, wrong.as_object().unwrap().clone())
                .is_err()
        );
    }

    #[test]
    fn a_correction_seals_only_the_personal_part_of_its_replacement() {
        let original = event(
            "event.corrected",
            json!({"event_id": uuid::Uuid::from_u128(7), "reason": "birth date mistyped",
                   "data": {"personal": {"birth_date": "1990-04-02"}, "identifiers": []}}),
        );
        let (split, opened, erased) = round_trip(&original);
        assert!(!split.public.contains("1990"));
        assert!(!split.public.contains("mistyped"));
        assert_eq!(opened, original);
        assert_eq!(erased.data()["reason"], ERASED);
        // Each sealed replacement key reads as erased, as in the event it corrects.
        assert_eq!(
            split.fields(),
            ["data.personal".to_owned(), "reason".to_owned()]
        );
        assert_eq!(
            erased.data()["data"],
            json!({"identifiers": [], "personal": {}})
        );
        let noted = event(
            "event.corrected",
            json!({"event_id": uuid::Uuid::from_u128(7), "reason": "status wrong",
                   "data": {"area": "health", "status": "in_progress", "note": "sees a GP"}}),
        );
        let (_, _, erased) = round_trip(&noted);
        assert_eq!(
            erased.data()["data"],
            json!({"area": "health", "status": "in_progress", "note": ERASED})
        );
        // Sealed before keys were named one by one: the replacement's sealed part is left out.
        let (split, _, _) = round_trip(&noted);
        let old = join(
            "event.corrected",
            1,
            &split.public,
            None,
            &["data".to_owned(), "reason".to_owned()],
        )
        .unwrap();
        assert_eq!(
            old.data()["data"],
            json!({"area": "health", "status": "in_progress"})
        );

        let facts_only = event(
            "event.corrected",
            json!({"event_id": uuid::Uuid::from_u128(7), "reason": "typo",
                   "data": {"release_kind": "parole", "supervision": true}}),
        );
        let (split, _, erased) = round_trip(&facts_only);
        assert!(split.public.contains("parole"));
        assert_eq!(
            erased.data()["data"],
            json!({"release_kind": "parole", "supervision": true})
        );
    }
}
