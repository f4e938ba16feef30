//! Handlers, one module per resource.

pub mod audit;
pub mod clients;
pub mod events;
pub mod meta;
pub mod protection;
pub mod statistics;
pub mod webhooks;
