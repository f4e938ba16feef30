//! The envelope around a journey event: what the sender says (id, client, when it happened, who
//! did it), what the credential adds (agency), and what the store adds when it records the event
//! (version, global position, recorded time).

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{ClientId, EventId, JourneyEvent, Text};

/// A validated event as submitted, not yet recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDraft {
    /// The sender's id for the event: the idempotency key.
    pub id: EventId,
    /// The client the event is about.
    pub client_id: ClientId,
    /// When it happened, with the sender's UTC offset. Travel maps order by this time.
    pub occurred_at: DateTime<FixedOffset>,
    /// The worker reference given by the sender, if any.
    pub actor: Option<Text>,
    /// The event's type and typed data.
    #[serde(flatten)]
    pub event: JourneyEvent,
}

/// Who recorded an event: always taken from the authenticated credential, never from the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The agency the credential acts for.
    pub agency: String,
    /// The credential's id.
    pub credential: String,
}

/// What the store assigns when it records an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// 1-based position of the event in its client's stream.
    pub version: u64,
    /// Position in the global feed: strictly increasing in commit order.
    pub position: u64,
    /// When the store committed the event. Never decreases along the global feed.
    pub recorded_at: DateTime<Utc>,
}

/// An event as recorded: the draft, its provenance and the store's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub draft: EventDraft,
    pub provenance: Provenance,
    pub meta: RecordMeta,
    /// Where the event's personal fields stand (see [`crate::personal`]).
    #[serde(skip)]
    pub personal: PersonalData,
}

/// Where a recorded event's personal fields stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PersonalData {
    /// The event holds no personal field.
    #[default]
    None,
    /// The personal fields were opened: `draft.event` holds them as recorded.
    Clear,
    /// Read from the log but not opened yet: `draft.event` holds erased placeholders until the
    /// store's keyring opens it.
    Sealed(Sealed),
    /// The key is destroyed: `draft.event` holds erased placeholders, for good.
    Erased,
    /// Opened, but not for this reader: an agency told of the event that ended its access
    /// (see `Access::told_of_its_end`) receives it without its personal fields (a retraction's
    /// reason, a correction's replacement worker), since it no longer has a need to know them.
    /// `draft.event` still holds them; whoever shows the event leaves them out.
    Withheld,
}

impl PersonalData {
    pub fn is_erased(&self) -> bool {
        matches!(self, PersonalData::Erased)
    }
}

/// Sealed personal fields as stored: the names of the fields (not personal themselves) and the
/// ciphertext, which only the store's keyring can open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub fields: Vec<String>,
    pub ciphertext: Vec<u8>,
    /// The stored `data` without the personal fields, from which the event is joined again.
    pub public: String,
    /// The data key that sealed them. A store shared by several processes checks, in the
    /// transaction that stores the event, that this key is still in force: sealing under a key
    /// destroyed meanwhile would make the new fields unreadable from the start.
    pub key_id: uuid::Uuid,
}

/// The fingerprint of what a sender said, used to tell a retry (same id, same content) from a
/// conflicting reuse of an id (same id, different content). It covers everything the sender
/// controls plus the agency, so the same id from another agency is a conflict too.
pub fn content_digest(draft: &EventDraft, agency: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |name: &str, value: &str| {
        // Length-prefixing each part keeps distinct inputs from hashing the same bytes.
        for part in [name, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    };
    field("type", draft.event.event_type());
    field("schema_version", &draft.event.schema_version().to_string());
    field("client_id", &draft.client_id.to_string());
    field(
        "occurred_at",
        &draft
            .occurred_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, false),
    );
    field("actor", draft.actor.as_ref().map_or("", Text::as_str));
    field("agency", agency);
    let mut data = String::new();
    write_canonical(&draft.event.data(), &mut data);
    field("data", &data);
    hasher.finalize().into()
}

/// JSON with object keys sorted at every level, so that key order in the request never turns a
/// retry into a conflict.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn draft(data: Value) -> EventDraft {
        EventDraft {
            id: EventId(Uuid::from_u128(1)),
            client_id: ClientId(Uuid::from_u128(2)),
            occurred_at: "2026-03-01T09:00:00+01:00".parse().unwrap(),
            actor: None,
            event: JourneyEvent::decode("event.corrected", 1, &data).unwrap(),
        }
    }

    #[test]
    fn digest_ignores_key_order_but_not_content_or_agency() {
        let target = Uuid::from_u128(9).to_string();
        let one = draft(json!({"event_id": target, "reason": "typo", "data": {"a": 1, "b": 2}}));
        let reordered =
            draft(json!({"reason": "typo", "data": {"b": 2, "a": 1}, "event_id": target}));
        let changed =
            draft(json!({"event_id": target, "reason": "typo", "data": {"a": 1, "b": 3}}));
        assert_eq!(content_digest(&one, "x"), content_digest(&reordered, "x"));
        assert_ne!(content_digest(&one, "x"), content_digest(&changed, "x"));
        assert_ne!(content_digest(&one, "x"), content_digest(&one, "y"));
    }
}
