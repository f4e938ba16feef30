//! Black-box tests of Travelmap: the real application over HTTP on 127.0.0.1 with a fresh data
//! directory per test, and the real `travelmap` binary for what only a process can show
//! (restart durability, signals, the command line).

/// Instantiates each named check, an `async fn(Backend)`, as one test on the embedded store and
/// one on PostgreSQL. Defined before the modules so that every one of them can use it.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(crate::support::Backend::embedded().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(crate::support::Backend::postgres().await).await;
                }
            )*
        }
    };
}

mod access;
mod audit;
mod batch;
mod binary;
mod contract;
mod coordination;
mod ingest;
mod jwt;
mod postgres;
mod protection;
mod readiness;
mod reads;
mod samples;
mod support;
mod webhooks;
