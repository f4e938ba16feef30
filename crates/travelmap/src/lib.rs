//! The `travelmap` program: configuration, the assembled application, and the commands of the
//! command line. `main.rs` only parses arguments and calls in here, so tests and the benchmark
//! build the very same application.

/// `println!` for commands: a closed standard output (`travelmap migrate | true`) is an error
/// the command returns, not a panic with a backtrace.
macro_rules! out {
    () => {
        std::io::Write::write_all(&mut std::io::stdout().lock(), b"\n")?
    };
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(
            &mut std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        )?
    };
}

pub mod app;
pub mod commands;
pub mod erasures;
pub mod retention;
pub mod settings;

pub use app::{Application, ServeSettings};

/// Lets jemalloc (the binary's allocator, ADR 9) return freed memory to the system from threads
/// of its own, on its decay schedule, instead of only when the process next allocates: after a
/// burst, an idle service gives back what the burst used. Harmless where jemalloc is not the
/// allocator (tests): it then tunes an allocator nothing uses.
pub fn return_freed_memory_in_background() {
    if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("travelmap: could not start the allocator's background threads: {error}");
    }
}
