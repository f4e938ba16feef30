//! The audit trail's entries and their hash chain (LED Art. 25: logs of collection, alteration,
//! consultation, disclosure, combination and erasure, with who, when, why and for whom).
//!
//! Each entry commits to the one before it: its hash covers the previous entry's hash, its own
//! sequence number and its fields, so an entry edited, removed or moved anywhere in the log
//! breaks every hash after it. Free text that may itself be personal (the justification, the
//! actor) enters the hash only as a digest, and client ids are pseudonymous already, so that
//! erasing personal data later can blank such text without breaking verification.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ClientId;

/// What was done with personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Events were recorded.
    Collection,
    /// A correction or retraction was recorded.
    Alteration,
    /// A client's data was read (history, travel map, identifier search).
    Consultation,
    /// Data left for another system (global feed, export).
    Disclosure,
    /// Data of several sources was combined for someone.
    Combination,
    /// Personal data was erased.
    Erasure,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::Collection,
        Operation::Alteration,
        Operation::Consultation,
        Operation::Disclosure,
        Operation::Combination,
        Operation::Erasure,
    ];

    /// The operation named `name` (as [`Operation::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|operation| operation.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Collection => "collection",
            Operation::Alteration => "alteration",
            Operation::Consultation => "consultation",
            Operation::Disclosure => "disclosure",
            Operation::Combination => "combination",
            Operation::Erasure => "erasure",
        }
    }
}

/// Whether the operation was allowed. Denied attempts are logged as carefully as allowed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    Denied,
}

impl Outcome {
    /// The outcome named `name` (as [`Outcome::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Self> {
        [Outcome::Allowed, Outcome::Denied]
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
        }
    }
}

/// One logged operation, before the log gives it a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it happened (server clock, microseconds).
    pub at: DateTime<Utc>,
    /// The credential that acted (for a disclosure: the recipient).
    pub credential: String,
    /// The agency it acts for.
    pub agency: String,
    /// The sender's reference to the worker, if given.
    pub actor: Option<String>,
    pub operation: Operation,
    /// The client concerned (a pseudonymous id), if one.
    pub client_id: Option<ClientId>,
    /// The stated purpose of a read.
    pub purpose: Option<String>,
    /// The stated justification (break-glass, erasure).
    pub justification: Option<String>,
    /// The request that did it, to join with the service's logs.
    pub request_id: Option<String>,
    pub outcome: Outcome,
    /// What was done, e.g. `GET /v1/clients/{client_id}/events` or `POST /v1/events`.
    pub action: String,
    /// What was returned or recorded: event ids, or a digest of them (`sha256:...`) when many.
    pub returned: Option<String>,
}

/// An entry of the audit log: a record with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// 1, 2, 3, ... without gaps.
    pub seq: u64,
    pub record: AuditRecord,
    /// [`chain_hash`] of the previous entry's hash, `seq` and `record`.
    pub hash: [u8; 32],
}

/// The hash the first entry chains to.
pub const GENESIS: [u8; 32] = [0; 32];

/// The action of the entry a store writes first into a trail it finds empty beside a log with
/// events (every recorded event was logged, so the trail was removed or emptied). New entries
/// would otherwise begin a chain that verifies, and the loss would show no more; this entry
/// keeps it in the chain, and [`ChainError::BegunAnew`] reports it for as long as it is there.
pub const TRAIL_BEGUN_ANEW: &str = "travelmap audit trail begun anew";

/// The entry [`TRAIL_BEGUN_ANEW`] names, written `at`, for a log of `events` events.
pub fn begun_anew(events: u64, at: DateTime<Utc>) -> AuditRecord {
    AuditRecord {
        at,
        credential: "travelmap-store".to_owned(),
        agency: "travelmap".to_owned(),
        actor: None,
        operation: Operation::Alteration,
        client_id: None,
        purpose: None,
        justification: None,
        request_id: None,
        outcome: Outcome::Allowed,
        action: TRAIL_BEGUN_ANEW.to_owned(),
        returned: Some(format!("an event log of {events} recorded events")),
    }
}

/// The hash of an entry: it commits to the previous entry's hash, the entry's sequence number
/// and every field (free text only as its digest).
pub fn chain_hash(previous: &[u8; 32], seq: u64, record: &AuditRecord) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(seq.to_be_bytes());
    let mut field = |value: &str| {
        // Length-prefixed, so that distinct fields never hash the same bytes.
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    };
    field(&record.at.timestamp_micros().to_string());
    field(&record.credential);
    field(&record.agency);
    field(&text_digest(record.actor.as_deref()));
    field(record.operation.as_str());
    field(
        &record
            .client_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
    );
    field(record.purpose.as_deref().unwrap_or_default());
    field(&text_digest(record.justification.as_deref()));
    field(record.request_id.as_deref().unwrap_or_default());
    field(record.outcome.as_str());
    field(&record.action);
    field(record.returned.as_deref().unwrap_or_default());
    hasher.finalize().into()
}

/// The digest under which free text enters the chain (empty for none).
pub fn text_digest(text: Option<&str>) -> String {
    match text {
        Some(text) => hex(&Sha256::digest(text.as_bytes())),
        None => String::new(),
    }
}

/// Names what was returned: the ids themselves when few, else their count and digest.
pub fn returned_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<String> {
    returned_things("events", ids)
}

/// [`returned_ids`] for ids of `things` (`"events"`, `"clients"`): the ids when few, else
/// `"<count> <things>, sha256:<digest>"`.
pub fn returned_things<'a>(things: &str, ids: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let ids: Vec<&str> = ids.into_iter().collect();
    match ids.len() {
        0 => None,
        1..=10 => Some(ids.join(",")),
        count => {
            let mut hasher = Sha256::new();
            for id in &ids {
                hasher.update(id.as_bytes());
                hasher.update(b"\n");
            }
            Some(format!(
                "{count} {things}, sha256:{}",
                hex(&hasher.finalize())
            ))
        }
    }
}

/// Why a log does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry {found} follows entry {previous}: entries are missing or out of order")]
    Gap { previous: u64, found: u64 },
    #[error("entry {0} does not match its hash: it was altered, or an entry before it was")]
    Altered(u64),
    #[error("the log ends at entry {last}, before the checkpoint at entry {checkpoint}")]
    ShorterThanCheckpoint { last: u64, checkpoint: u64 },
    #[error("entry {0} differs from the checkpoint taken at it")]
    CheckpointMismatch(u64),
    #[error(
        "the entries end at entry {last}, but the store records its head at entry {head} \
         (with another hash, if the same entry): entries were removed or replaced at the end"
    )]
    HeadMismatch { last: u64, head: u64 },
    #[error("the entries after entry {after} cannot be read (altered or damaged): {reason}")]
    Unreadable { after: u64, reason: String },
    #[error(
        "{0} entries are numbered 0 or below, before the first entry: they were added outside \
         the service"
    )]
    BeforeTheFirst(u64),
    #[error(
        "the trail holds no entries while the event log holds {0} events, each of which was \
         logged: the trail was removed or emptied, or not restored with the log"
    )]
    EmptyBesideEvents(u64),
    #[error(
        "the event log records that the trail held entry {recorded} on disk, but {found}: \
         entries were removed, or an older copy was put in the trail's place, or the trail was \
         not restored with the log"
    )]
    NotAsRecorded { recorded: u64, found: String },
    #[error(
        "entry {seq} begins the trail anew beside {beside}: entries before it were removed or \
         emptied, or not restored with the log"
    )]
    BegunAnew { seq: u64, beside: String },
}

/// Checks a log entry by entry, from the first, in order (so that a long log need not be held in
/// memory at once).
#[derive(Debug, Clone)]
pub struct ChainCheck {
    head: (u64, [u8; 32]),
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self { head: (0, GENESIS) }
    }
}

impl ChainCheck {
    /// Checks the next entry against everything checked so far.
    pub fn next(&mut self, entry: &AuditEntry) -> Result<(), ChainError> {
        if entry.seq != self.head.0 + 1 {
            return Err(ChainError::Gap {
                previous: self.head.0,
                found: entry.seq,
            });
        }
        if chain_hash(&self.head.1, entry.seq, &entry.record) != entry.hash {
            return Err(ChainError::Altered(entry.seq));
        }
        self.head = (entry.seq, entry.hash);
        Ok(())
    }

    /// The last entry checked: its sequence number and hash.
    pub fn head(&self) -> (u64, [u8; 32]) {
        self.head
    }
}

/// Checks a whole log, from its first entry, in order; returns the last sequence number and
/// hash (the head a checkpoint records).
pub fn verify(
    entries: impl IntoIterator<Item = AuditEntry>,
) -> Result<(u64, [u8; 32]), ChainError> {
    let mut check = ChainCheck::default();
    for entry in entries {
        check.next(&entry)?;
    }
    Ok(check.head())
}

/// What a checkpoint's signature signs: the trail's head, in a form that cannot be mistaken for
/// anything else Travelmap might sign.
pub fn checkpoint_message(seq: u64, hash_hex: &str) -> String {
    format!("travelmap audit checkpoint v1\nseq={seq}\nhash={hash_hex}\n")
}

/// Hex of bytes, lower case.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> AuditRecord {
        AuditRecord {
            at: DateTime::from_timestamp(1_700_000_000 + i64::from(n), 0).unwrap(),
            credential: "coordinator-desk".into(),
            agency: "municipality-opava".into(),
            actor: None,
            operation: Operation::Consultation,
            client_id: Some(ClientId(uuid::Uuid::from_u128(u128::from(n)))),
            purpose: Some("case_management".into()),
            justification: Some(format!("reason {n}")),
            request_id: Some(format!("req-{n}")),
            outcome: Outcome::Allowed,
            action: "GET /v1/clients/{client_id}/travel-map".into(),
            returned: None,
        }
    }

    fn chain(count: u32) -> Vec<AuditEntry> {
        let mut previous = GENESIS;
        (1..=count)
            .map(|n| {
                let record = record(n);
                let hash = chain_hash(&previous, u64::from(n), &record);
                previous = hash;
                AuditEntry {
                    seq: u64::from(n),
                    record,
                    hash,
                }
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_any_edit_removal_or_swap_is_found() {
        let entries = chain(5);
        assert_eq!(verify(entries.clone()).unwrap(), (5, entries[4].hash));

        let mut edited = entries.clone();
        edited[2].record.purpose = Some("statistics".into());
        assert_eq!(verify(edited), Err(ChainError::Altered(3)));

        let mut removed = entries.clone();
        removed.remove(1);
        assert_eq!(
            verify(removed),
            Err(ChainError::Gap {
                previous: 1,
                found: 3
            })
        );

        // Swapped and renumbered to hide it: the hashes still give it away.
        let mut swapped = entries.clone();
        swapped.swap(1, 2);
        swapped[1].seq = 2;
        swapped[2].seq = 3;
        assert_eq!(verify(swapped), Err(ChainError::Altered(2)));
    }

    #[test]
    fn free_text_enters_the_hash_only_as_a_digest() {
        let entries = chain(1);
        let mut blanked = entries[0].record.clone();
        blanked.justification = None;
        assert_ne!(chain_hash(&GENESIS, 1, &blanked), entries[0].hash);
        assert_eq!(
            text_digest(Some("reason 1")).len(),
            64,
            "a digest, not the text"
        );
    }

    #[test]
    fn many_returned_ids_are_summarised() {
        assert_eq!(returned_ids(["a", "b"]), Some("a,b".into()));
        let many: Vec<String> = (0..20).map(|n| n.to_string()).collect();
        let summary = returned_ids(many.iter().map(String::as_str)).unwrap();
        assert!(summary.starts_with("20 events, sha256:"), "{summary}");
        assert_eq!(returned_ids([]), None);
    }
}
