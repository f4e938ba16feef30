//! Black-box tests of Travelmap: the real application over HTTP on 127.0.0.1 with a fresh data
//! directory per test, and the real `travelmap` binary for what only a process can show
//! (restart durability, signals, the command line).

mod access;
mod audit;
mod batch;
mod binary;
mod coordination;
mod ingest;
mod jwt;
mod postgres;
mod protection;
mod reads;
mod samples;
mod support;
mod webhooks;
