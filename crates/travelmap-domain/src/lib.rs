//! The Travelmap domain: what a journey event is, which event types exist and what their `data`
//! must look like, and the client journey aggregate that decides whether a submitted event may be
//! recorded.
//!
//! This crate does no I/O and knows neither HTTP nor SQL. Storage crates depend on it, never the
//! other way round; the HTTP crate owns the wire format and converts into these types.

pub mod agency;
pub mod audit;
pub mod catalogue;
pub mod dates;
mod envelope;
mod error;
mod ids;
pub mod journey;
pub mod payloads;
pub mod personal;
mod text;

pub use agency::AgencyKind;
pub use catalogue::{EventTypeInfo, JourneyEvent};
pub use envelope::{
    EventDraft, PersonalData, Provenance, RecordMeta, RecordedEvent, Sealed, content_digest,
};
pub use error::{DecodeError, ValidationError, field_path};
pub use ids::{ClientId, EventId};
pub use journey::ClientJourney;
pub use text::{PATTERN as TEXT_PATTERN, Text};
