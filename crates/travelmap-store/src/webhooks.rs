//! Webhook registrations, how far each has been delivered, and the log of delivery attempts.
//!
//! A webhook is an agency's standing request to have the events it may know of POSTed to a URL.
//! The store keeps three things for it: the registration (immutable once made, apart from being
//! paused and resumed), a cursor (the feed position delivered up to, moved only after the
//! receiver acknowledged an event, which is what makes delivery at-least-once across crashes),
//! and the most recent delivery attempts, for the agency to see what happened. The attempt log
//! holds ids, positions and statuses, never event data; it keeps the last
//! [`ATTEMPTS_KEPT`] attempts per webhook and drops older ones as new ones come.
//!
//! The signing secret is kept as it is (not sealed under a master key): whoever can read the
//! store can forge deliveries to that webhook's receiver. See docs/adr/0007-webhooks.md.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use travelmap_domain::EventId;
use travelmap_domain::payloads::Purpose;
use uuid::Uuid;

use crate::Result;

/// How many delivery attempts are kept per webhook; older ones are dropped as new ones are
/// logged.
pub const ATTEMPTS_KEPT: usize = 1000;

/// Whether a webhook is being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Events are delivered as they are recorded.
    Active,
    /// Delivery stopped after an event kept failing; resuming picks up at the cursor, so
    /// nothing recorded meanwhile is lost.
    Paused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Paused => "paused",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [State::Active, State::Paused]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

/// A webhook to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    pub id: Uuid,
    /// The agency whose need-to-know decides what is delivered.
    pub agency: String,
    /// The credential that registered it (the recipient named in the audit trail).
    pub credential: String,
    /// Where events are POSTed.
    pub url: String,
    /// Event types or families (`job.*`) delivered.
    pub types: Vec<String>,
    /// Why the agency processes what it receives; consents name the purposes they cover.
    pub purpose: Purpose,
    /// The HMAC key that signs every delivery.
    pub secret: String,
    pub created_at: DateTime<Utc>,
    /// Delivery starts after this feed position (the head when it was registered).
    pub cursor: u64,
}

/// A registered webhook with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: Uuid,
    pub agency: String,
    pub credential: String,
    pub url: String,
    pub types: Vec<String>,
    pub purpose: Purpose,
    pub secret: String,
    pub created_at: DateTime<Utc>,
    pub state: State,
    /// Every event the webhook admits up to this feed position has been acknowledged.
    pub cursor: u64,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// The attempt failed; the event will be tried again.
    Retrying,
    /// The attempt failed and was the last one: the webhook was paused.
    Failed,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retrying => "retrying",
            AttemptOutcome::Failed => "failed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            AttemptOutcome::Delivered,
            AttemptOutcome::Retrying,
            AttemptOutcome::Failed,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == name)
    }
}

/// One attempt to deliver one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Sent as the delivery id header; unique per attempt.
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: EventId,
    /// The event's feed position.
    pub position: u64,
    /// 1 for the first attempt at this event, counting up while it fails.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why there was no answer (refused, timed out), if there was none.
    pub error: Option<String>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
}

/// Whether a webhook's delivery goes on in this process (see [`WebhookStore::standing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Active, and this process delivers.
    Deliver,
    /// Deleted or paused.
    Stopped,
    /// Another process has taken over delivery.
    Deposed,
}

/// Storage for webhooks. Registrations are made through the API; cursors and attempts are
/// written by the process that delivers (see [`WebhookStore::lead`]).
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a new registration.
    async fn register(&self, webhook: NewWebhook) -> Result<Webhook>;
    /// One webhook, if it exists.
    async fn get(&self, id: Uuid) -> Result<Option<Webhook>>;
    /// The webhooks of one agency, or (`None`) of every agency, oldest first.
    async fn list(&self, agency: Option<String>) -> Result<Vec<Webhook>>;
    /// Deletes a webhook and its attempt log; false when there was none.
    async fn remove(&self, id: Uuid) -> Result<bool>;
    /// Pauses or resumes a webhook; false when there is none.
    async fn set_state(&self, id: Uuid, state: State) -> Result<bool>;
    /// Moves the webhook's cursor forward to `position` (never back). Fails with
    /// [`crate::Error::NotLeader`] when another process has taken over delivery since this one
    /// called [`WebhookStore::lead`]. A webhook deleted meanwhile is not an error.
    async fn advance(&self, id: Uuid, position: u64) -> Result<()>;
    /// Logs an attempt, dropping the webhook's oldest beyond [`ATTEMPTS_KEPT`]. An attempt
    /// logged again with the same id replaces its entry (as the webhook's newest):
    /// an attempt is logged before its request leaves (so that a process that dies meanwhile
    /// leaves it counted) and again with its answer.
    async fn log_attempt(&self, attempt: Attempt) -> Result<()>;
    /// Up to `limit` of the webhook's most recent attempts, newest first.
    async fn attempts(&self, id: Uuid, limit: usize) -> Result<Vec<Attempt>>;
    /// Whether this process is still to deliver `id`, asked before each attempt: a webhook
    /// deleted or paused through another process, or a lease lost to another process, must not
    /// get one more request (its URL or secret may have leaked; the new holder delivers now).
    async fn standing(&self, id: Uuid) -> Result<Standing>;
    /// Waits until this process may deliver webhooks, and fences off any process that did
    /// before (its [`WebhookStore::advance`] fails from then on). Only one process delivers, so
    /// that each webhook receives its events once and in order. Returns at once when this
    /// process already delivers (and always, for a store only one process can open).
    async fn lead(&self) -> Result<()>;
    /// Bumped whenever this process registers, removes, pauses or resumes a webhook, so the
    /// deliverer need not wait for its next look at the registrations.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// The stored form of a purpose (its wire name).
pub(crate) fn purpose_name(purpose: Purpose) -> String {
    serde_json::to_value(purpose)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A purpose from its stored name.
pub(crate) fn parse_purpose(name: &str) -> Result<Purpose> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| {
        crate::Error::Io(std::io::Error::other(format!(
            "a webhook has the unknown purpose `{name}`"
        )))
    })
}

pub(crate) fn corrupt(what: &str) -> crate::Error {
    crate::Error::Io(std::io::Error::other(format!(
        "a stored webhook has an unreadable {what}"
    )))
}
