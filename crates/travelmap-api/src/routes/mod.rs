//! Handlers, one module per resource.

pub mod clients;
pub mod events;
pub mod meta;
