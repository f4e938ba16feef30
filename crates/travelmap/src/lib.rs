//! The `travelmap` program: configuration, the assembled application, and the commands of the
//! command line. `main.rs` only parses arguments and calls in here, so tests and the benchmark
//! build the very same application.

pub mod app;
pub mod commands;
pub mod retention;
pub mod settings;

pub use app::{Application, ServeSettings};
