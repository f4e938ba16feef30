//! Read models folded from the global event feed, and the projector that keeps them current.
//!
//! - [`travel_map`]: the per-client travel map (phase, phases, involvements, steps, needs, next
//!   appointments, flags). Its fold is pure: events in, state out, no I/O, so a live projection
//!   and a rebuild from zero compute the same thing by construction (and a property test checks
//!   it).
//! - [`projector`]: a catch-up consumer of [`travelmap_store::EventLog::read_all`] that stores
//!   state and checkpoint together in a [`travelmap_store::ViewStore`], so it can stop anywhere
//!   and resume, and can be rebuilt from zero.
//! - [`statistics`]: outcome statistics per programme, prison, municipality or quarter, as
//!   aggregates with small counts suppressed. Pure, like the travel map.
//! - [`coordination`]: each client's case file (who carries the client, the stage, the next
//!   appointment, the alerts with their history) and the caseloads summed over them. Pure, like
//!   the travel map; the service keeps them current and wakes for alerts that fall due.
//! - [`retention`]: the retention schedule and which categories of a client's data are due.
//! - [`health`]: how the background tasks that keep these current are doing, for readiness.
//!
//! Depends on the domain and the storage traits; knows nothing of HTTP.

pub mod access;
pub mod access_changes;
pub mod coordination;
pub mod health;
pub mod projector;
pub mod retention;
pub mod statistics;
pub mod travel_map;

pub use access::Access;
pub use projector::{ChangeSet, Handover, Progress, Projector};
pub use travel_map::{ClientState, TravelMap};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while projecting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed, or a stored view cannot be read back (the store's error says to run
    /// `travelmap rebuild`).
    #[error(transparent)]
    Store(#[from] travelmap_store::Error),
    /// The process that writes the views did not fold the log up to `head` in time (see
    /// [`Projector::bring_to_head`]).
    #[error(
        "the process that writes the views (a running server) has not folded the log up to position {head} within {} s; it has saved up to {saved}. Check that server's log and readiness, then run again",
        waited.as_secs()
    )]
    Behind {
        head: u64,
        saved: u64,
        waited: std::time::Duration,
    },
}

impl Error {
    /// Whether this process's configuration is at fault (see
    /// [`travelmap_store::Error::is_misconfiguration`]).
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, Error::Store(error) if error.is_misconfiguration())
    }
}
