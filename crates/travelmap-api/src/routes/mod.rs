//! Handlers, one module per resource.

pub mod audit;
pub mod clients;
pub mod coordination;
pub mod events;
pub mod meta;
pub mod protection;
pub mod statistics;
pub mod subscriptions;
pub mod webhooks;
