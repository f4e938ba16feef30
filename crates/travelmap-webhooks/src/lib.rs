//! Webhooks: delivering the events an agency may know of to a URL it registered.
//!
//! One [`Dispatcher`] per process follows the global feed once per active webhook, from the
//! webhook's cursor, cut to the webhook's scope (its agency's need-to-know for its purpose, and
//! the types it asked for; see `travelmap_service::subscriptions`). Each admitted event is
//! POSTed on its own, signed ([`signing`]); a 2xx answer moves the cursor on, anything else is
//! tried again after a growing pause ([`Backoff`]) without moving past the event, so each
//! webhook receives its events in feed order and at least once. Every attempt is logged in the
//! store's delivery log, and every attempt is a disclosure of personal data, written to the
//! audit trail before the request leaves.
//!
//! Also here: what makes a registration acceptable ([`registration`]), so that the API checks
//! what the dispatcher relies on, and which addresses receivers may be at ([`destinations`]:
//! the public internet, and the networks the operator allows).
//!
//! Knows the service, the storage traits and an HTTP client; knows nothing of the HTTP server
//! or of the wire format, whose serialiser the binary hands in ([`EventBody`]).

mod backoff;
pub mod destinations;
mod dispatcher;
pub mod registration;
pub mod signing;

pub use backoff::Backoff;
pub use destinations::{Destinations, ForwardProxy};
pub use dispatcher::{AgencyCheck, Dispatcher, EventBody, Policy};
