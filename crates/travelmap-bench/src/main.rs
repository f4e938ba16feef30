//! `travelmap-bench` measures the Travelmap service as it is deployed: the real application
//! (HTTP API, journey aggregate, projector) on the embedded SQLite store and then on PostgreSQL,
//! both with durable commits, driven over HTTP on 127.0.0.1 by a seeded workload of valid
//! journeys; and, as a baseline for PostgreSQL, plain cqrs-es + postgres-es on the same workload. It measures
//! what the service promises to carry: how fast agencies can record events one by one and in
//! batches, how fast the travel maps can be rebuilt from the log, how quickly a travel map is
//! read, and that memory does not grow with the size of the record. Every figure of the printed
//! table comes from the same run, so they can be compared with each other and with the targets
//! in `docs/performance.md`.
//!
//! Each ingest measurement starts from a fresh data directory, so one does not pay for another's
//! data. The load generator runs in the same process as the server and shares its cores; the
//! figures are therefore a floor for a server with the machine to itself.

/// The allocator of the `travelmap` binary, so that the service measured in-process here runs as
/// it does in production (docs/adr/0009-allocator.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod baseline;
mod live;
mod server;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use travelmap_service::Journeys;
use travelmap_store::postgres::ScratchDatabase;
use travelmap_store::{Location, Store};

use crate::server::{Api, Server, heap_kib, resident_kib};
use crate::workload::{EventRef, Workload};

/// Mixed into the seed for the second workload, so that it has the same shape but new clients.
const SECOND_WORKLOAD: u64 = 0x9e37_79b9_7f4a_7c15;
/// Mixed into the seed for choosing which clients to read.
const READ_CHOICE: u64 = 0x51_7cc1_b727_220a;
/// Events per batch: the most the API accepts in one request.
const BATCH: usize = 1000;
/// How many senders post batches side by side in the parallel batch measurement.
const BATCH_POSTERS: usize = 4;
/// Writers posting single events at once in the concurrent measurement.
const WRITERS: usize = 32;
/// Readers at once in the concurrent read measurement.
const READERS: usize = 8;
/// Travel maps read (and checked) before the read measurements, so that they measure a warm
/// server rather than the first connections and cold caches.
const WARM_UP_READS: usize = 200;
/// How long the projection may take to catch up before the run is declared broken.
const PROJECTION_LIMIT: Duration = Duration::from_secs(300);

/// The targets of docs/performance.md.
const TARGET_SINGLE_EVENTS_PER_S: f64 = 5_000.0;
const TARGET_BATCH_EVENTS_PER_S: f64 = 50_000.0;
const TARGET_REBUILD_EVENTS_PER_S: f64 = 500_000.0;
const TARGET_READ_P99_MS: f64 = 2.0;
/// PostgreSQL: single-event ingest at concurrency 32 against the cqrs-es + postgres-es baseline.
const TARGET_VERSUS_BASELINE: f64 = 3.0;
const TARGET_POSTGRES_REBUILD_EVENTS_PER_S: f64 = 300_000.0;
/// "Flat" memory: loading a second workload of the same size may add at most this fraction.
const FLAT_MEMORY_GROWTH: f64 = 0.10;

/// Benchmark of Travelmap's ingest, rebuild, read latency and memory on the embedded store and
/// PostgreSQL.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Clients in the workload.
    #[arg(long, default_value_t = 5000)]
    clients: usize,
    /// Events in each client's journey.
    #[arg(long, default_value_t = 20)]
    events_per_client: usize,
    /// Seed of the workload; the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Events posted at concurrency 1 (whole journeys of the first clients), to keep the
    /// slowest measurement short.
    #[arg(long, default_value_t = 2000)]
    serial_events: usize,
    /// Travel maps read in each read measurement.
    #[arg(long, default_value_t = 10_000)]
    reads: usize,
    /// Where the fresh data directories are made (default: the system's temporary directory).
    /// It should be on the disk the service would use: a RAM disk makes durable commits free.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The PostgreSQL server to measure beside the embedded store; each measurement creates a
    /// database of its own there (and drops it).
    #[arg(
        long,
        env = "TRAVELMAP_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    postgres: String,
    /// Measure the embedded store only.
    #[arg(long)]
    embedded_only: bool,
    /// Measure only what encrypting personal fields costs, and print that table (for quick
    /// comparisons while working on it; the recorded figures come from a whole run).
    #[arg(long)]
    sealing_only: bool,
    /// Measure only projection lag and server-sent event fan-out, and print that table.
    #[arg(long)]
    live_only: bool,
    /// Measure only PostgreSQL's single-event ingest at concurrency 32 against the baseline's,
    /// and its rebuild of that log, and print them (for quick comparisons while working on it).
    #[arg(long)]
    postgres_only: bool,
    /// Measure only rebuilds: load the workload once (in batches, one at a time, whose rate is
    /// printed too) on each backend (the embedded store only, with `--embedded-only`), then
    /// rebuild it several times and print each rebuild (for quick comparisons while working on
    /// it).
    #[arg(long)]
    rebuild_only: bool,
    /// Measure only memory on the embedded store: load the workload in batches, read travel
    /// maps, then load the second workload into the same store, and print the resident set and
    /// the live heap at each step (for quick comparisons while working on it).
    #[arg(long)]
    memory_only: bool,
    /// Measure only travel-map reads on the embedded store: load the workload in batches (and
    /// print that ingest's rate), then read it five times at concurrency 1 and 8 and print each round (for quick comparisons
    /// while working on it).
    #[arg(long)]
    reads_only: bool,
    /// Events per second posted while measuring projection lag.
    #[arg(long, default_value_t = 2000.0)]
    lag_rate: f64,
    /// Seconds the projection lag is measured for.
    #[arg(long, default_value_t = 15)]
    lag_seconds: u64,
    /// Server-sent event subscribers following the feed in the fan-out measurement.
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    /// Events per second posted while the subscribers follow.
    #[arg(long, default_value_t = 500.0)]
    fan_out_rate: f64,
    /// Seconds the fan-out is measured for.
    #[arg(long, default_value_t = 10)]
    fan_out_seconds: u64,
    /// Events the cqrs-es + postgres-es baseline executes at concurrency 32 (at concurrency 1 it
    /// executes `--serial-events`).
    #[arg(long, default_value_t = 20_000)]
    baseline_events: usize,
}

impl Args {
    fn command(&self) -> String {
        let mut command = format!(
            "cargo run --release -p travelmap-bench -- --clients {} --events-per-client {} --seed {} --serial-events {} --reads {}",
            self.clients, self.events_per_client, self.seed, self.serial_events, self.reads
        );
        if let Some(dir) = &self.work_dir {
            command.push_str(&format!(" --work-dir {}", dir.display()));
        }
        if self.embedded_only {
            command.push_str(" --embedded-only");
        } else {
            command.push_str(&format!(" --baseline-events {}", self.baseline_events));
        }
        command
    }
}

/// An ingest measurement: events recorded, wall time, and the latency of each request.
struct Ingest {
    events: usize,
    requests: usize,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// How long the projection took to catch up after the last request was answered.
    catch_up: Duration,
}

impl Ingest {
    fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

struct Reads {
    concurrency: usize,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Reads {
    fn per_second(&self) -> f64 {
        self.latency.len() as f64 / self.elapsed.as_secs_f64()
    }
}

struct Rebuild {
    events: u64,
    clients: usize,
    elapsed: Duration,
    /// The benchmark process's CPU time over the rebuild (all of it on the embedded store).
    cpu: Duration,
}

impl Rebuild {
    fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

struct Memory {
    before_kib: u64,
    first_kib: u64,
    second_kib: u64,
    /// After the second workload's ingest, before its reads: what the allocator still holds of
    /// the ingest's short-lived memory shows here.
    right_after_ingest_kib: u64,
    /// The live heap at the same three moments (see [`heap_kib`]).
    before_heap_kib: u64,
    first_heap_kib: u64,
    second_heap_kib: u64,
    second_ingest: Ingest,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    travelmap::return_freed_memory_in_background();
    // Server logs help when a run fails; off unless asked for, so they do not cost time.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("TRAVELMAP_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let args = Args::parse();
    ensure!(
        args.clients > 0 && args.events_per_client > 0,
        "--clients and --events-per-client must be at least 1"
    );
    ensure!(args.reads > 0, "--reads must be at least 1");
    let run_started = Instant::now();
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);

    progress(format_args!(
        "generating two workloads of {} clients x {} events (seed {})",
        args.clients, args.events_per_client, args.seed
    ));
    let workload = Arc::new(Workload::generate(
        args.seed,
        args.clients,
        args.events_per_client,
    ));
    // Generated up front, so that the memory measured after it is loaded is the service's, not
    // the generator's.
    let second = Arc::new(Workload::generate(
        args.seed ^ SECOND_WORKLOAD,
        args.clients,
        args.events_per_client,
    ));

    if args.sealing_only {
        let cost = measure_sealing_cost(&args, &workload).await?;
        let [sealed, plain] = &cost.rebuild;
        let [sealed_ingest, plain_ingest] = &cost.ingest;
        println!(
            "ingest sealed/unsealed {:.2} ({:.0} / {:.0} events/s); rebuild sealed/unsealed {:.2} ({:.0} / {:.0} events/s)",
            sealed_ingest.per_second() / plain_ingest.per_second(),
            sealed_ingest.per_second(),
            plain_ingest.per_second(),
            sealed.per_second() / plain.per_second(),
            sealed.per_second(),
            plain.per_second()
        );
        return Ok(());
    }
    if args.live_only {
        let live = measure_live(&args, &workload).await?;
        print!("{}", live.markdown(&args));
        return Ok(());
    }
    if args.postgres_only {
        return measure_postgres_only(&args, &workload).await;
    }
    if args.rebuild_only {
        return measure_rebuilds_only(&args, &workload).await;
    }
    if args.memory_only {
        return measure_memory_only(&args, &workload, &second).await;
    }
    if args.reads_only {
        return measure_reads_only(&args, &workload).await;
    }
    let serial_events = workload.first_journeys(args.serial_events);
    let serial_clients = serial_events
        .iter()
        .map(|event| event.client)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let embedded = Backend::Embedded(work_dir);
    let (embedded_figures, memory) =
        measure(&embedded, &args, &workload, &serial_events, Some(&second)).await?;
    let memory = memory.context("the embedded measurement includes memory")?;
    let audit_cost = measure_audit_cost(&args, &workload).await?;
    let sealing_cost = measure_sealing_cost(&args, &workload).await?;
    let postgres = if args.embedded_only {
        None
    } else {
        let backend = Backend::Postgres(args.postgres.clone());
        let (figures, _) = measure(&backend, &args, &workload, &serial_events, None).await?;
        progress(format_args!(
            "baseline: cqrs-es + postgres-es, one transaction per event, at concurrency 1 ({} events) and {WRITERS} ({} events)",
            serial_events.len(),
            args.baseline_events.min(workload.len())
        ));
        let serial = baseline::run(&args.postgres, &workload, 1, serial_events.len()).await?;
        let concurrent =
            baseline::run(&args.postgres, &workload, WRITERS, args.baseline_events).await?;
        for run in [&serial, &concurrent] {
            ensure!(
                run.stored == run.events as i64,
                "the baseline stored {} of {} events",
                run.stored,
                run.events
            );
        }
        Some(PostgresFigures {
            figures,
            baseline: [serial, concurrent],
        })
    };

    let live = measure_live(&args, &workload).await?;

    let report = Report {
        args: &args,
        workload: &workload,
        serial_clients,
        embedded: embedded_figures,
        memory,
        audit_cost,
        sealing_cost,
        postgres,
        elapsed: run_started.elapsed(),
    };
    print!("{}", report.markdown());
    print!("{}", live.markdown(&args));
    Ok(())
}

/// Rebuilds repeated on one loaded log per backend, printed one by one.
async fn measure_rebuilds_only(args: &Args, workload: &Arc<Workload>) -> anyhow::Result<()> {
    let mut backends = vec![Backend::Embedded(
        args.work_dir.clone().unwrap_or_else(std::env::temp_dir),
    )];
    if !args.embedded_only {
        backends.push(Backend::Postgres(args.postgres.clone()));
    }
    for backend in &backends {
        let name = backend.name();
        let place = backend.fresh().await?;
        let server = Server::start(&place.location()).await?;
        progress(format_args!(
            "{name}: loading {} events in batches",
            workload.len()
        ));
        let loaded = post_batches(&server.api, workload, 1).await?;
        println!(
            "{name} load, one batch of {BATCH} at a time: {:.0} events/s",
            loaded.per_second()
        );
        server.stop().await?;
        let mut rates = Vec::with_capacity(REBUILDS);
        let mut cpu = Duration::ZERO;
        for repeat in 1..=REBUILDS {
            let rebuilt = rebuild_all_of(&place.location(), workload).await?;
            println!(
                "{name} rebuild {repeat} of {REBUILDS}: {:.0} events/s ({:.3} s, {:.2} CPU-seconds in this process)",
                rebuilt.per_second(),
                rebuilt.elapsed.as_secs_f64(),
                rebuilt.cpu.as_secs_f64()
            );
            rates.push(rebuilt.per_second());
            cpu += rebuilt.cpu;
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{name} rebuild: median {:.0}, best {:.0} events/s; {:.3} CPU-seconds per rebuild in this process",
            rates[REBUILDS / 2],
            rates[REBUILDS - 1],
            cpu.as_secs_f64() / REBUILDS as f64
        );
        place.remove().await?;
    }
    Ok(())
}

/// PostgreSQL's single-event ingest at concurrency [`WRITERS`] beside the baseline's, and the
/// rebuild of that log, printed.
async fn measure_postgres_only(args: &Args, workload: &Arc<Workload>) -> anyhow::Result<()> {
    let backend = Backend::Postgres(args.postgres.clone());
    progress(format_args!(
        "PostgreSQL: single-event ingest at concurrency {WRITERS}: {} events",
        workload.len()
    ));
    let place = backend.fresh().await?;
    let server = Server::start(&place.location()).await?;
    let ingest = post_events(&server.api, workload, &workload.order, WRITERS).await?;
    server.stop().await?;
    progress(format_args!("PostgreSQL: rebuilding from zero"));
    let rebuilt = rebuild(&place.location()).await?;
    place.remove().await?;
    println!(
        "PostgreSQL rebuild: {:.0} events/s ({} events, {:.2} s)",
        rebuilt.per_second(),
        rebuilt.events,
        rebuilt.elapsed.as_secs_f64()
    );
    progress(format_args!(
        "baseline: cqrs-es + postgres-es at concurrency {WRITERS}: {} events",
        args.baseline_events.min(workload.len())
    ));
    let baseline = baseline::run(&args.postgres, workload, WRITERS, args.baseline_events).await?;
    println!(
        "PostgreSQL {:.0} events/s, baseline {:.0} events/s: {:.2}x (latency p50 {} p99 {}, catch-up {:.1} s)",
        ingest.per_second(),
        baseline.per_second(),
        ingest.per_second() / baseline.per_second(),
        ms(ingest.latency.value_at_quantile(0.5)),
        ms(ingest.latency.value_at_quantile(0.99)),
        ingest.catch_up.as_secs_f64()
    );
    Ok(())
}

/// The live side: projection lag and fan-out, each on a fresh embedded store.
struct LiveFigures {
    lag: live::Lag,
    fan_out: live::FanOut,
    /// The same fan-out with an audit trail that keeps nothing: what logging every batch costs.
    fan_out_unaudited: live::FanOut,
}

/// Projection lag at `--lag-rate` must stay under this at the 99th percentile.
const TARGET_LAG_P99_MS: f64 = 100.0;

async fn measure_live(args: &Args, workload: &Arc<Workload>) -> anyhow::Result<LiveFigures> {
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let lag_events = workload.first((args.lag_rate * args.lag_seconds as f64) as usize);
    progress(format_args!(
        "embedded: projection lag at {} events/s for {} s",
        args.lag_rate, args.lag_seconds
    ));
    let dir = fresh_dir(&work_dir)?;
    let server = Server::start(&Location::Embedded(dir.path().to_owned())).await?;
    let lag = live::projection_lag(&server.api, workload, &lag_events, args.lag_rate).await?;
    server.stop().await?;
    drop(dir);

    let fan_out_events = workload.first((args.fan_out_rate * args.fan_out_seconds as f64) as usize);
    progress(format_args!(
        "embedded: {} subscribers following {} events/s for {} s",
        args.subscribers, args.fan_out_rate, args.fan_out_seconds
    ));
    let mut fan_outs = Vec::new();
    for audited in [true, false] {
        let dir = fresh_dir(&work_dir)?;
        let server =
            Server::start_with(&Location::Embedded(dir.path().to_owned()), audited, true).await?;
        fan_outs.push(
            live::fan_out(
                &server.api,
                workload,
                &fan_out_events,
                args.fan_out_rate,
                args.subscribers,
            )
            .await?,
        );
        server.stop().await?;
    }
    let fan_out_unaudited = fan_outs.pop().expect("two fan-outs");
    let fan_out = fan_outs.pop().expect("two fan-outs");
    Ok(LiveFigures {
        lag,
        fan_out,
        fan_out_unaudited,
    })
}

impl LiveFigures {
    fn markdown(&self, args: &Args) -> String {
        let percentile = |histogram: &Histogram<u64>, q: f64| histogram.value_at_quantile(q);
        let lag = &self.lag;
        let fan = &self.fan_out;
        let mut out = String::new();
        out += "\n### Live: projection lag and fan-out (embedded store)\n\n";
        out += &format!(
            "Command: `cargo run --release -p travelmap-bench -- --live-only --lag-rate {} --lag-seconds {} --subscribers {} --fan-out-rate {} --fan-out-seconds {}` (part of every full run).\n\n",
            args.lag_rate,
            args.lag_seconds,
            args.subscribers,
            args.fan_out_rate,
            args.fan_out_seconds
        );
        out += "| Measurement | Result | Target | Met |\n|---|---|---|---|\n";
        out += &format!(
            "| Offered / achieved rate while measuring lag | {} / {} events/s ({} events) | 2,000 events/s sustained | {} |\n",
            rate(lag.paced.offered_per_second),
            rate(lag.paced.achieved_per_second()),
            thousands(lag.paced.events as u64),
            met(lag.paced.achieved_per_second() >= 0.98 * lag.paced.offered_per_second),
        );
        out += &format!(
            "| Projection lag, acknowledged → visible in caseloads and alerts (p50 / p99 / max, {} samples) | {} / {} / {} | p99 ≤ {TARGET_LAG_P99_MS} ms | {} |\n",
            thousands(lag.lag.len()),
            ms(percentile(&lag.lag, 0.5)),
            ms(percentile(&lag.lag, 0.99)),
            ms(lag.lag.max()),
            met(percentile(&lag.lag, 0.99) as f64 / 1000.0 <= TARGET_LAG_P99_MS),
        );
        out += &format!(
            "| Fan-out: {} subscribers, {} events at {} events/s offered ({} achieved) | every subscriber got every event once and in order: {} | no loss, no duplicates | {} |\n",
            fan.subscribers,
            thousands(fan.paced.events as u64),
            rate(fan.paced.offered_per_second),
            rate(fan.paced.achieved_per_second()),
            if fan.complete { "yes" } else { "no" },
            met(fan.complete),
        );
        out += &format!(
            "| Fan-out delivery, acknowledged → received by a subscriber (p50 / p99 / max) | {} / {} / {} | — | — |\n",
            ms(percentile(&fan.delivery, 0.5)),
            ms(percentile(&fan.delivery, 0.99)),
            ms(fan.delivery.max()),
        );
        let bare = &self.fan_out_unaudited;
        out += &format!(
            "| Fan-out delivery with an audit trail that keeps nothing (p50 / p99 / max; every event once and in order: {}) | {} / {} / {} | — | — |\n",
            if bare.complete { "yes" } else { "no" },
            ms(percentile(&bare.delivery, 0.5)),
            ms(percentile(&bare.delivery, 0.99)),
            ms(bare.delivery.max()),
        );
        out += &format!(
            "| Fan-out: the slowest subscriber had everything after the last receipt | {:.0} ms | not falling behind: within 1 s of the last receipt, delivery p99 under 1 s | {} |\n",
            fan.drained_after.as_secs_f64() * 1000.0,
            met(fan.complete
                && fan.drained_after < Duration::from_secs(1)
                && percentile(&fan.delivery, 0.99) < 1_000_000),
        );
        out += "\nLag is measured with a read that waits for the event's position (`GET /v1/alerts?client_id=…&min_position=…`), so it includes that read's round trip; caseloads and alerts come from the same index and move together. Subscribers run in the benchmark's process, sharing its cores with the server and the load generator. A stream gathers events for up to 50 ms before sending and logging them, so delivery has a floor of about that.\n";
        out
    }
}

/// The store a measurement runs on.
enum Backend {
    /// The embedded store, in fresh directories under this one.
    Embedded(PathBuf),
    /// PostgreSQL, in fresh databases on the server at this URL.
    Postgres(String),
}

/// A fresh store for one measurement, removed by [`Place::remove`].
enum Place {
    Embedded(tempfile::TempDir),
    Postgres(ScratchDatabase),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    async fn fresh(&self) -> anyhow::Result<Place> {
        Ok(match self {
            Backend::Embedded(work_dir) => Place::Embedded(fresh_dir(work_dir)?),
            Backend::Postgres(server) => Place::Postgres(
                ScratchDatabase::create(server, "travelmap_bench")
                    .await
                    .with_context(|| format!("creating a database on {server}"))?,
            ),
        })
    }
}

impl Place {
    fn location(&self) -> Location {
        match self {
            Place::Embedded(dir) => Location::Embedded(dir.path().to_owned()),
            Place::Postgres(database) => Location::Postgres(database.url().to_owned()),
        }
    }

    async fn remove(self) -> anyhow::Result<()> {
        if let Place::Postgres(database) = self {
            database.drop_database().await?;
        }
        Ok(())
    }
}

/// Ingest and reads on the embedded store with the audit trail and without it (alternating, to
/// spread the machine's drift over both).
struct AuditCost {
    /// Single-event ingest at concurrency [`WRITERS`]: with, without.
    ingest: [Ingest; 2],
    /// Travel-map reads at concurrency [`READERS`]: with, without.
    reads: [Reads; 2],
}

/// Events posted in each audit-cost ingest measurement.
const AUDIT_COST_EVENTS: usize = 20_000;

async fn measure_audit_cost(args: &Args, workload: &Arc<Workload>) -> anyhow::Result<AuditCost> {
    let events = &workload.order[..AUDIT_COST_EVENTS.min(workload.len())];
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut ingest = Vec::new();
    let mut reads = Vec::new();
    for audited in [true, false] {
        progress(format_args!(
            "audit cost: {} events at concurrency {WRITERS}, then {} reads at concurrency {READERS}, {} the audit trail",
            events.len(),
            args.reads,
            if audited { "with" } else { "without" }
        ));
        let dir = fresh_dir(&work_dir)?;
        let server =
            Server::start_with(&Location::Embedded(dir.path().to_owned()), audited, true).await?;
        ingest.push(post_events(&server.api, workload, events, WRITERS).await?);
        // Reads of the clients that were written (the first events' clients).
        let written: Vec<u32> = {
            let mut clients: Vec<u32> = events.iter().map(|event| event.client).collect();
            clients.sort_unstable();
            clients.dedup();
            clients
        };
        reads.push(
            read_some(
                &server.api,
                workload,
                &written,
                args.reads,
                READERS,
                args.seed,
            )
            .await?,
        );
        server.stop().await?;
    }
    let [with_ingest, without_ingest]: [Ingest; 2] = ingest
        .try_into()
        .map_err(|_| anyhow::anyhow!("two ingest runs"))?;
    let [with_reads, without_reads]: [Reads; 2] = reads
        .try_into()
        .map_err(|_| anyhow::anyhow!("two read runs"))?;
    Ok(AuditCost {
        ingest: [with_ingest, without_ingest],
        reads: [with_reads, without_reads],
    })
}

/// How often each log is rebuilt in the encryption-cost measurement (the best run counts).
const REBUILD_REPEATS: usize = 5;
/// How often each variant (sealed, unsealed) is ingested in that measurement (the best counts).
const SEALING_ROUNDS: usize = 4;

/// Ingest and rebuild on the embedded store with personal fields sealed and without (alternating
/// like the audit cost), from the same events.
struct SealingCost {
    /// Single-event ingest at concurrency [`WRITERS`]: sealed, unsealed.
    ingest: [Ingest; 2],
    /// Rebuild of the log just written: sealed, unsealed.
    rebuild: [Rebuild; 2],
}

async fn measure_sealing_cost(
    args: &Args,
    workload: &Arc<Workload>,
) -> anyhow::Result<SealingCost> {
    let events = &workload.order[..AUDIT_COST_EVENTS.min(workload.len())];
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    // [sealed, unsealed]: the best ingest and the best rebuild of each. The two alternate, and
    // which goes first alternates too, so that the machine's drift falls on both alike.
    let mut ingest: [Option<Ingest>; 2] = [None, None];
    let mut rebuilds: [Option<Rebuild>; 2] = [None, None];
    for round in 0..SEALING_ROUNDS {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for sealed in order {
            progress(format_args!(
                "encryption cost, round {} of {SEALING_ROUNDS}: {} events at concurrency {WRITERS}, then {REBUILD_REPEATS} rebuilds, {} sealing",
                round + 1,
                events.len(),
                if sealed { "with" } else { "without" }
            ));
            let slot = usize::from(!sealed);
            let dir = fresh_dir(&work_dir)?;
            let location = Location::Embedded(dir.path().to_owned());
            let server = Server::start_with(&location, true, sealed).await?;
            let run = post_events(&server.api, workload, events, WRITERS).await?;
            server.stop().await?;
            if ingest[slot]
                .as_ref()
                .is_none_or(|best| run.per_second() > best.per_second())
            {
                ingest[slot] = Some(run);
            }
            for _ in 0..REBUILD_REPEATS {
                let run = rebuild_with(&location, sealed).await?;
                if rebuilds[slot]
                    .as_ref()
                    .is_none_or(|best| run.elapsed < best.elapsed)
                {
                    rebuilds[slot] = Some(run);
                }
            }
        }
    }
    let [Some(sealed_ingest), Some(plain_ingest)] = ingest else {
        anyhow::bail!("both ingest variants ran");
    };
    let [Some(sealed_rebuild), Some(plain_rebuild)] = rebuilds else {
        anyhow::bail!("both rebuild variants ran");
    };
    Ok(SealingCost {
        ingest: [sealed_ingest, plain_ingest],
        rebuild: [sealed_rebuild, plain_rebuild],
    })
}

/// Reads `reads` travel maps of random clients among `clients` from `concurrency` readers.
async fn read_some(
    api: &Api,
    workload: &Arc<Workload>,
    clients: &[u32],
    reads: usize,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<Reads> {
    let mut rng = StdRng::seed_from_u64(seed ^ READ_CHOICE);
    let chosen: Vec<usize> = (0..reads)
        .map(|_| clients[rng.random_range(0..clients.len())] as usize)
        .collect();
    time_reads(api, workload, &chosen, concurrency).await
}

/// What one backend reached in one run.
struct Figures {
    serial: Ingest,
    concurrent: Ingest,
    batch: Ingest,
    parallel_batch: Ingest,
    /// The median of [`REBUILDS`] rebuilds of one log.
    rebuild: Rebuild,
    /// The rates of all of them, slowest first.
    rebuild_rates: Vec<f64>,
    reads: [Reads; 2],
}

/// The PostgreSQL figures, with the plain cqrs-es + postgres-es baseline measured in the same run.
struct PostgresFigures {
    figures: Figures,
    /// At concurrency 1 and at [`WRITERS`].
    baseline: [baseline::Baseline; 2],
}

/// Runs every measurement on `backend`, each ingest on a fresh store. With `second`, memory is
/// measured too, by loading that workload into the store that served the reads.
async fn measure(
    backend: &Backend,
    args: &Args,
    workload: &Arc<Workload>,
    serial_events: &[EventRef],
    second: Option<&Arc<Workload>>,
) -> anyhow::Result<(Figures, Option<Memory>)> {
    let name = backend.name();
    let before_kib = resident_kib()?;
    let before_heap_kib = heap_kib()?;
    progress(format_args!(
        "{name}: single-event ingest at concurrency 1: {} events",
        serial_events.len()
    ));
    let place = backend.fresh().await?;
    let server = Server::start(&place.location()).await?;
    let serial = post_events(&server.api, workload, serial_events, 1).await?;
    server.stop().await?;
    place.remove().await?;

    progress(format_args!(
        "{name}: single-event ingest at concurrency {WRITERS}: {} events",
        workload.len()
    ));
    let rebuild_place = backend.fresh().await?;
    let server = Server::start(&rebuild_place.location()).await?;
    let concurrent = post_events(&server.api, workload, &workload.order, WRITERS).await?;
    server.stop().await?;

    progress(format_args!(
        "{name}: rebuilding the projections of those {} events from zero, {REBUILDS} times",
        workload.len()
    ));
    let mut rebuilds = Vec::with_capacity(REBUILDS);
    for _ in 0..REBUILDS {
        rebuilds.push(rebuild_all_of(&rebuild_place.location(), workload).await?);
    }
    rebuilds.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    let rebuild_rates: Vec<f64> = rebuilds.iter().map(Rebuild::per_second).collect();
    let rebuild = rebuilds.swap_remove(REBUILDS / 2);
    rebuild_place.remove().await?;

    progress(format_args!(
        "{name}: batch ingest, {BATCH} events per batch: {} events, by {BATCH_POSTERS} senders side by side and then by one",
        workload.len()
    ));
    let place = backend.fresh().await?;
    let server = Server::start(&place.location()).await?;
    let parallel_batch = post_batches(&server.api, workload, BATCH_POSTERS).await?;
    server.stop().await?;
    place.remove().await?;
    let place = backend.fresh().await?;
    let server = Server::start(&place.location()).await?;
    let batch = post_batches(&server.api, workload, 1).await?;

    progress(format_args!(
        "{name}: checking {WARM_UP_READS} travel maps, then {} reads at concurrency 1 and {READERS}",
        args.reads
    ));
    let [serial_reads, concurrent_reads] = check_and_read(&server.api, workload, args).await?;

    let memory = match second {
        Some(second) => Some(
            measure_second_workload(&server, name, args, second, before_kib, before_heap_kib)
                .await?,
        ),
        None => None,
    };
    server.stop().await?;
    place.remove().await?;
    Ok((
        Figures {
            serial,
            concurrent,
            batch,
            parallel_batch,
            rebuild,
            rebuild_rates,
            reads: [serial_reads, concurrent_reads],
        },
        memory,
    ))
}

/// Memory after the first workload, then after `second` is loaded into the same store and
/// read as the first was (a check and the same number of reads at concurrency 1 and
/// [`READERS`]), so that both are measured at the same point of the same work.
async fn measure_second_workload(
    server: &Server,
    name: &str,
    args: &Args,
    second: &Arc<Workload>,
    before_kib: u64,
    before_heap_kib: u64,
) -> anyhow::Result<Memory> {
    let first_kib = resident_kib()?;
    let first_heap_kib = heap_kib()?;
    progress(format_args!(
        "{name}: loading a second workload of {} events (new clients) into the same store, then reading it",
        second.len()
    ));
    let second_ingest = post_batches(&server.api, second, 1).await?;
    let right_after_ingest_kib = resident_kib()?;
    check_and_read(&server.api, second, args).await?;
    Ok(Memory {
        before_kib,
        first_kib,
        second_kib: resident_kib()?,
        right_after_ingest_kib,
        before_heap_kib,
        first_heap_kib,
        second_heap_kib: heap_kib()?,
        second_ingest,
    })
}

/// The memory measurement of a full run alone, on the embedded store: the workload loaded in
/// batches and the reads, then the second workload, printed.
async fn measure_memory_only(
    args: &Args,
    workload: &Arc<Workload>,
    second: &Arc<Workload>,
) -> anyhow::Result<()> {
    let backend = Backend::Embedded(args.work_dir.clone().unwrap_or_else(std::env::temp_dir));
    let name = backend.name();
    let before_kib = resident_kib()?;
    let before_heap_kib = heap_kib()?;
    let place = backend.fresh().await?;
    let server = Server::start(&place.location()).await?;
    progress(format_args!(
        "{name}: loading {} events in batches, then {} reads at concurrency 1 and {READERS}",
        workload.len(),
        args.reads
    ));
    post_batches(&server.api, workload, 1).await?;
    check_and_read(&server.api, workload, args).await?;
    let memory =
        measure_second_workload(&server, name, args, second, before_kib, before_heap_kib).await?;
    server.stop().await?;
    place.remove().await?;
    println!(
        "resident anonymous memory: {} before, {} after the first workload, {} after the second ({:+.1} %; {} right after its ingest)",
        mib(memory.before_kib),
        mib(memory.first_kib),
        mib(memory.second_kib),
        (memory.second_kib as f64 / memory.first_kib as f64 - 1.0) * 100.0,
        mib(memory.right_after_ingest_kib),
    );
    println!(
        "live heap: {} before, {} after the first workload, {} after the second ({:+.1} %)",
        mib(memory.before_heap_kib),
        mib(memory.first_heap_kib),
        mib(memory.second_heap_kib),
        (memory.second_heap_kib as f64 / memory.first_heap_kib as f64 - 1.0) * 100.0
    );
    Ok(())
}

/// How many rounds of reads `--reads-only` times.
const READ_ROUNDS: u64 = 5;

/// Travel-map reads alone, on the embedded store: the workload loaded in batches, then
/// [`READ_ROUNDS`] rounds of `--reads` reads at concurrency 1 and [`READERS`], each printed.
async fn measure_reads_only(args: &Args, workload: &Arc<Workload>) -> anyhow::Result<()> {
    let backend = Backend::Embedded(args.work_dir.clone().unwrap_or_else(std::env::temp_dir));
    let name = backend.name();
    let place = backend.fresh().await?;
    let server = Server::start(&place.location()).await?;
    progress(format_args!(
        "{name}: loading {} events in batches, then {READ_ROUNDS} rounds of {} reads at concurrency 1 and {READERS}",
        workload.len(),
        args.reads
    ));
    let ingest = post_batches(&server.api, workload, 1).await?;
    println!(
        "batch ingest, one batch at a time: {:.0} events/s (catch-up {:.2} s)",
        ingest.per_second(),
        ingest.catch_up.as_secs_f64()
    );
    check_travel_maps(&server.api, workload, args.seed).await?;
    for round in 0..READ_ROUNDS {
        for concurrency in [1, READERS] {
            let seed = args.seed.wrapping_add(round * 100 + concurrency as u64);
            let clients = chosen_clients(workload, args.reads, seed);
            let reads = time_reads(&server.api, workload, &clients, concurrency).await?;
            println!(
                "round {}, concurrency {concurrency}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {:.0} reads/s",
                round + 1,
                reads.latency.value_at_quantile(0.5) as f64 / 1000.0,
                reads.latency.value_at_quantile(0.99) as f64 / 1000.0,
                reads.latency.max() as f64 / 1000.0,
                reads.per_second(),
            );
        }
    }
    server.stop().await?;
    place.remove().await?;
    Ok(())
}

fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!("travelmap-bench: {message}");
}

fn fresh_dir(parent: &Path) -> anyhow::Result<tempfile::TempDir> {
    // `--work-dir` may name a directory not made yet.
    std::fs::create_dir_all(parent)
        .with_context(|| format!("making the work directory {}", parent.display()))?;
    tempfile::Builder::new()
        .prefix("travelmap-bench-")
        .tempdir_in(parent)
        .with_context(|| format!("making a data directory in {}", parent.display()))
}

/// Microsecond-resolution latencies up to a minute, three significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Posts `events` one per request from `concurrency` writers. Each writer owns a share of the
/// clients and posts their events in order, the way an agency's system would: a client's next
/// event is only sent once the previous one is acknowledged, while different clients' events are
/// in flight together.
async fn post_events(
    api: &Api,
    workload: &Arc<Workload>,
    events: &[EventRef],
    concurrency: usize,
) -> anyhow::Result<Ingest> {
    let mut shares = vec![Vec::new(); concurrency];
    for event in events {
        shares[event.client as usize % concurrency].push(*event);
    }
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for share in shares {
        let (api, workload) = (api.clone(), workload.clone());
        writers.spawn(async move {
            let mut latency = histogram()?;
            for event in share {
                let body = workload.event(event).to_owned();
                let sent = Instant::now();
                api.post_event(body).await?;
                latency.record(micros(sent.elapsed()))?;
            }
            anyhow::Ok(latency)
        });
    }
    let mut latency = histogram()?;
    while let Some(writer) = writers.join_next().await {
        latency.add(writer??)?;
    }
    let elapsed = started.elapsed();
    Ok(Ingest {
        events: events.len(),
        requests: events.len(),
        elapsed,
        latency,
        catch_up: api.wait_for_projection(PROJECTION_LIMIT).await?,
    })
}

/// Posts the whole workload in batches of [`BATCH`], one batch at a time, as an import would.
async fn post_batches(api: &Api, workload: &Workload, posters: usize) -> anyhow::Result<Ingest> {
    // Batches are built up front so that the time measured is the service's, not the generator's.
    let bodies: Vec<String> = workload
        .order
        .chunks(BATCH)
        .map(|chunk| {
            let mut body = String::with_capacity(chunk.len() * 512);
            body.push_str(r#"{"events":["#);
            for (index, event) in chunk.iter().enumerate() {
                if index > 0 {
                    body.push(',');
                }
                body.push_str(workload.event(*event));
            }
            body.push_str("]}");
            body
        })
        .collect();
    let requests = bodies.len();
    // Each poster sends every `posters`-th batch, one at a time, like that many agency systems
    // sending their own batches side by side.
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); posters];
    for (index, body) in bodies.into_iter().enumerate() {
        shares[index % posters].push(body);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(posters);
    for share in shares {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram()?;
            for body in share {
                let sent = Instant::now();
                api.post_batch(body).await?;
                latency.record(micros(sent.elapsed()))?;
            }
            anyhow::Ok(latency)
        }));
    }
    let mut latency = histogram()?;
    for task in tasks {
        latency.add(task.await??)?;
    }
    let elapsed = started.elapsed();
    Ok(Ingest {
        events: workload.len(),
        requests,
        elapsed,
        latency,
        catch_up: api.wait_for_projection(PROJECTION_LIMIT).await?,
    })
}

/// Rebuilds the travel maps from the whole log with the server stopped, as `travelmap rebuild`
/// does.
async fn rebuild(location: &Location) -> anyhow::Result<Rebuild> {
    rebuild_with(location, true).await
}

/// How many times a full run rebuilds each backend's log; the median is reported. One rebuild
/// takes a quarter to a third of a second, and single rebuilds of the same log varied by a
/// tenth or more from one to the next.
const REBUILDS: usize = 5;

/// A rebuild of the log at `location`, checked to have folded every event of `workload`.
async fn rebuild_all_of(location: &Location, workload: &Workload) -> anyhow::Result<Rebuild> {
    let rebuilt = rebuild(location).await?;
    ensure!(
        rebuilt.events == workload.len() as u64,
        "the rebuild folded {} events, the log holds {}",
        rebuilt.events,
        workload.len()
    );
    Ok(rebuilt)
}

/// A rebuild that opens sealed personal fields, or (`sealed` false) of a log stored unsealed.
async fn rebuild_with(location: &Location, sealed: bool) -> anyhow::Result<Rebuild> {
    let store = Store::open(location).await?;
    let keyring = if sealed {
        Some(store.keyring(server::bench_master_keys()).await?)
    } else {
        None
    };
    let journeys = Journeys::new(store.log(), store.views(), keyring).await?;
    let cpu_before = server::process_cpu()?;
    let report = journeys.projector().rebuild().await?;
    let cpu = server::process_cpu()?.saturating_sub(cpu_before);
    store.close().await;
    Ok(Rebuild {
        events: report.events,
        clients: report.clients,
        elapsed: report.elapsed,
        cpu,
    })
}

/// Clients to read, drawn at random (with the seed) from the workload.
fn chosen_clients(workload: &Workload, count: usize, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed ^ READ_CHOICE);
    (0..count)
        .map(|_| rng.random_range(0..workload.clients.len()))
        .collect()
}

/// Reads some travel maps before measuring and checks that each reflects every event of its
/// client: a fast read of an incomplete map would prove nothing.
async fn check_travel_maps(api: &Api, workload: &Workload, seed: u64) -> anyhow::Result<()> {
    for client in chosen_clients(workload, WARM_UP_READS, seed.wrapping_add(1)) {
        let client = &workload.clients[client];
        let body = api.travel_map(client.client_id).await?;
        let map: serde_json::Value = serde_json::from_slice(body.as_ref())?;
        let steps = map["steps"].as_array().map_or(0, Vec::len);
        ensure!(
            map["version"].as_u64() == Some(client.events.len() as u64)
                && steps == client.events.len(),
            "the travel map of {} shows version {} with {steps} steps; {} events were posted",
            client.client_id,
            map["version"],
            client.events.len()
        );
    }
    Ok(())
}

/// The reads every loaded workload gets: the check that each map shows all of its client's
/// events, then `--reads` timed reads at concurrency 1 and [`READERS`].
async fn check_and_read(
    api: &Api,
    workload: &Arc<Workload>,
    args: &Args,
) -> anyhow::Result<[Reads; 2]> {
    check_travel_maps(api, workload, args.seed).await?;
    let serial = read_travel_maps(api, workload, args.reads, 1, args.seed).await?;
    let concurrent = read_travel_maps(api, workload, args.reads, READERS, args.seed).await?;
    Ok([serial, concurrent])
}

/// Reads `reads` travel maps of random clients from `concurrency` readers, timing each request.
async fn read_travel_maps(
    api: &Api,
    workload: &Arc<Workload>,
    reads: usize,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<Reads> {
    let clients = chosen_clients(workload, reads, seed.wrapping_add(concurrency as u64 + 1));
    time_reads(api, workload, &clients, concurrency).await
}

/// Reads the travel maps of `clients` (workload indices) from `concurrency` readers, timing
/// each request.
async fn time_reads(
    api: &Api,
    workload: &Arc<Workload>,
    clients: &[usize],
    concurrency: usize,
) -> anyhow::Result<Reads> {
    let started = Instant::now();
    let mut readers = JoinSet::new();
    for share in clients.chunks(clients.len().div_ceil(concurrency)) {
        let (api, workload, share) = (api.clone(), workload.clone(), share.to_vec());
        readers.spawn(async move {
            let mut latency = histogram()?;
            for client in share {
                let sent = Instant::now();
                api.travel_map(workload.clients[client].client_id).await?;
                latency.record(micros(sent.elapsed()))?;
            }
            anyhow::Ok(latency)
        });
    }
    let mut latency = histogram()?;
    while let Some(reader) = readers.join_next().await {
        latency.add(reader??)?;
    }
    Ok(Reads {
        concurrency,
        elapsed: started.elapsed(),
        latency,
    })
}

/// Everything measured in one run, printed as markdown.
struct Report<'a> {
    args: &'a Args,
    workload: &'a Workload,
    serial_clients: usize,
    embedded: Figures,
    memory: Memory,
    audit_cost: AuditCost,
    sealing_cost: SealingCost,
    postgres: Option<PostgresFigures>,
    elapsed: Duration,
}

impl Report<'_> {
    fn markdown(&self) -> String {
        let mut out = String::new();
        let w = self.workload;
        let cores = std::thread::available_parallelism().map_or(0, |cores| cores.get());
        out += "## Travelmap benchmark\n\n";
        out += &format!("Command: `{}`\n\n", self.args.command());
        out += &format!(
            "Workload: {} events of {} clients ({} per client, seed {}), {} event types, \
             occurred {} to {}, posted in order of occurrence. Store: embedded SQLite \
             (WAL, synchronous=FULL), a fresh data directory for each ingest. Load generator \
             and server share one process and {cores} cores; all traffic on 127.0.0.1.\n\n",
            thousands(w.len() as u64),
            thousands(w.clients.len() as u64),
            self.args.events_per_client,
            self.args.seed,
            w.types.len(),
            w.first_occurred.date_naive(),
            w.last_occurred.date_naive(),
        );

        out += "| # | Measurement | Result | Target | Result / target | Met |\n";
        out += "|---|---|---|---|---|---|\n";
        let Figures {
            serial,
            concurrent,
            batch,
            parallel_batch: parallel,
            rebuild,
            rebuild_rates,
            reads,
        } = &self.embedded;
        out += &format!(
            "| 1a | Single-event ingest `POST /v1/events`, concurrency 1 ({} events: the whole journeys of the first {} clients) | {} events/s (per request p50 {}, p99 {}) | — | — | — |\n",
            thousands(serial.events as u64),
            thousands(self.serial_clients as u64),
            rate(serial.per_second()),
            ms(serial.latency.value_at_quantile(0.5)),
            ms(serial.latency.value_at_quantile(0.99)),
        );
        out += &format!(
            "| 1b | Single-event ingest `POST /v1/events`, concurrency {WRITERS} ({} events) | {} events/s (per request p50 {}, p99 {}); {:.1}× concurrency 1 | ≥ {} events/s | {} | {} |\n",
            thousands(concurrent.events as u64),
            rate(concurrent.per_second()),
            ms(concurrent.latency.value_at_quantile(0.5)),
            ms(concurrent.latency.value_at_quantile(0.99)),
            concurrent.per_second() / serial.per_second(),
            rate(TARGET_SINGLE_EVENTS_PER_S),
            ratio(concurrent.per_second() / TARGET_SINGLE_EVENTS_PER_S),
            met(concurrent.per_second() >= TARGET_SINGLE_EVENTS_PER_S),
        );
        out += &format!(
            "| 2a | Batch ingest `POST /v1/events/batch`, {} events per batch, one batch at a time ({} events, {} batches, fresh store) | {} events/s (per batch p50 {}, p99 {}); {:.1}× single events at concurrency {WRITERS} | ≥ {} events/s | {} | {} |\n",
            thousands(BATCH as u64),
            thousands(batch.events as u64),
            batch.requests,
            rate(batch.per_second()),
            ms(batch.latency.value_at_quantile(0.5)),
            ms(batch.latency.value_at_quantile(0.99)),
            batch.per_second() / concurrent.per_second(),
            rate(TARGET_BATCH_EVENTS_PER_S),
            ratio(batch.per_second() / TARGET_BATCH_EVENTS_PER_S),
            met(batch.per_second() >= TARGET_BATCH_EVENTS_PER_S),
        );
        out += &format!(
            "| 2b | Batch ingest `POST /v1/events/batch`, {} events per batch, {BATCH_POSTERS} senders side by side ({} events, {} batches, fresh store) | {} events/s (per batch p50 {}, p99 {}); {:.1}× one batch at a time | ≥ {} events/s | {} | {} |\n",
            thousands(BATCH as u64),
            thousands(parallel.events as u64),
            parallel.requests,
            rate(parallel.per_second()),
            ms(parallel.latency.value_at_quantile(0.5)),
            ms(parallel.latency.value_at_quantile(0.99)),
            parallel.per_second() / batch.per_second(),
            rate(TARGET_BATCH_EVENTS_PER_S),
            ratio(parallel.per_second() / TARGET_BATCH_EVENTS_PER_S),
            met(parallel.per_second() >= TARGET_BATCH_EVENTS_PER_S),
        );
        out += &format!(
            "| 3 | Rebuild of the projections from zero ({} events, {} clients; the median of {REBUILDS} rebuilds of the log of 1b) | {} events/s ({:.2} s); all {REBUILDS}: {} | ≥ {} events/s | {} | {} |\n",
            thousands(rebuild.events),
            thousands(rebuild.clients as u64),
            rate(rebuild.per_second()),
            rebuild.elapsed.as_secs_f64(),
            rates(rebuild_rates),
            rate(TARGET_REBUILD_EVENTS_PER_S),
            ratio(rebuild.per_second() / TARGET_REBUILD_EVENTS_PER_S),
            met(rebuild.per_second() >= TARGET_REBUILD_EVENTS_PER_S),
        );
        for (index, reads) in reads.iter().enumerate() {
            let p99_ms = reads.latency.value_at_quantile(0.99) as f64 / 1000.0;
            out += &format!(
                "| 4{} | Travel-map read `GET /v1/clients/{{id}}/travel-map`, concurrency {} ({} reads of random clients) | p50 {}, p99 {}, max {} ({} reads/s) | p99 ≤ {TARGET_READ_P99_MS} ms | {} | {} |\n",
                ['a', 'b'][index],
                reads.concurrency,
                thousands(reads.latency.len()),
                ms(reads.latency.value_at_quantile(0.5)),
                ms(reads.latency.value_at_quantile(0.99)),
                ms(reads.latency.max()),
                rate(reads.per_second()),
                ratio(p99_ms / TARGET_READ_P99_MS),
                met(p99_ms <= TARGET_READ_P99_MS),
            );
        }
        let memory = &self.memory;
        let growth = memory.second_kib as f64 / memory.first_kib as f64;
        out += &format!(
            "| 5 | Resident anonymous memory (RssAnon: heap and stacks, not the store's memory-mapped file pages) after loading the workload, then after a second workload of {} new events into the same store (each measured after the workload's batch ingest and reads) | {} → {} ({:+.1} %) | flat (≤ +{:.0} %) | {:.2} | {} |\n",
            thousands(memory.second_ingest.events as u64),
            mib(memory.first_kib),
            mib(memory.second_kib),
            (growth - 1.0) * 100.0,
            FLAT_MEMORY_GROWTH * 100.0,
            growth,
            met(growth <= 1.0 + FLAT_MEMORY_GROWTH),
        );

        out += "\nNotes:\n";
        out += &format!(
            "- Result / target: for throughput, the result divided by the target (≥ 1 meets it); for read latency, the p99 divided by the target (≤ 1 meets it); for memory, resident memory after the second workload divided by that after the first.\n\
             - Concurrency {WRITERS}: each writer owns a share of the clients and sends a client's next event only after the previous one was acknowledged.\n\
             - The travel-map projection runs during ingest, as in production. After the last acknowledgement it needed {:.2} s to catch up at concurrency {WRITERS} and {:.2} s after the batch ingest; reads were measured only after it had.\n\
             - Reads: after {WARM_UP_READS} unmeasured reads that check each map shows all of its client's events. Latency is measured by the client, so it includes the HTTP round trip on 127.0.0.1.\n\
             - Memory: {} anonymous memory before any server was started (this includes both generated workloads, about {} of serialised events); measured with the server running, after the batch ingest and the reads, then after the batch ingest of the second workload ({} events/s) and the same check and reads of its clients. Right after that ingest, before its reads, it was {}: memory the ingest had just freed and the allocator had not yet returned (it does so on a decay schedule).\n\
             - Live heap (what the allocator has handed out and not had back, without the free memory it keeps for reuse): {} before any server was started, {} after the first workload, {} after the second ({:+.1} %).\n\
             - Whole run: {:.0} s.\n",
            concurrent.catch_up.as_secs_f64(),
            batch.catch_up.as_secs_f64(),
            mib(memory.before_kib),
            mib(self.workload_bytes() * 2 / 1024),
            rate(memory.second_ingest.per_second()),
            mib(memory.right_after_ingest_kib),
            mib(memory.before_heap_kib),
            mib(memory.first_heap_kib),
            mib(memory.second_heap_kib),
            (memory.second_heap_kib as f64 / memory.first_heap_kib as f64 - 1.0) * 100.0,
            self.elapsed.as_secs_f64(),
        );
        out += &self.audit_cost();
        out += &self.sealing_cost();
        if let Some(postgres) = &self.postgres {
            out += &self.side_by_side(postgres);
        }
        out
    }

    /// The cost of the audit trail: the same work with and without it.
    fn audit_cost(&self) -> String {
        let [with, without] = &self.audit_cost.ingest;
        let [with_reads, without_reads] = &self.audit_cost.reads;
        let mut out = String::from("\n## The audit trail's cost (embedded store)\n\n");
        out += &format!(
            "The same {} events at concurrency {WRITERS}, then {} travel-map reads at concurrency {READERS}, on a fresh store with the audit trail (every write and read logged, as in production) and with a trail that keeps nothing.\n\n",
            thousands(with.events as u64),
            thousands(with_reads.latency.len()),
        );
        out += "| Measurement | With the trail | Without | With / without | Target |\n|---|---|---|---|---|\n";
        let ratio_ingest = with.per_second() / without.per_second();
        out += &format!(
            "| Single-event ingest | {} events/s | {} events/s | {:.2} | ≥ 0.5 (not halved): {} |\n",
            rate(with.per_second()),
            rate(without.per_second()),
            ratio_ingest,
            met(ratio_ingest >= 0.5),
        );
        let ratio_reads = with_reads.per_second() / without_reads.per_second();
        out += &format!(
            "| Travel-map reads | {} reads/s (p99 {}) | {} reads/s (p99 {}) | {:.2} | — |\n",
            rate(with_reads.per_second()),
            ms(with_reads.latency.value_at_quantile(0.99)),
            rate(without_reads.per_second()),
            ms(without_reads.latency.value_at_quantile(0.99)),
            ratio_reads,
        );
        out
    }

    /// The cost of sealing personal fields: the same work with and without encryption.
    fn sealing_cost(&self) -> String {
        let [sealed, plain] = &self.sealing_cost.ingest;
        let [sealed_rebuild, plain_rebuild] = &self.sealing_cost.rebuild;
        let mut out =
            String::from("\n## The cost of encrypting personal fields (embedded store)\n\n");
        out += &format!(
            "The same {} events at concurrency {WRITERS} on a fresh store, then {REBUILD_REPEATS} rebuilds of that log with the server stopped: with personal fields sealed (AES-256-GCM, a key per client and category, as in production) and stored as they are, {SEALING_ROUNDS} times each, alternating; the best ingest and the best rebuild of each count (a single run of this size varies by a third on this machine).\n\n",
            thousands(sealed.events as u64),
        );
        out += "| Measurement | Sealed | Unsealed | Sealed / unsealed | Target |\n|---|---|---|---|---|\n";
        let ratio_ingest = sealed.per_second() / plain.per_second();
        out += &format!(
            "| Single-event ingest | {} events/s | {} events/s | {:.2} | ≥ 0.75: {} |\n",
            rate(sealed.per_second()),
            rate(plain.per_second()),
            ratio_ingest,
            met(ratio_ingest >= 0.75),
        );
        let ratio_rebuild = sealed_rebuild.per_second() / plain_rebuild.per_second();
        out += &format!(
            "| Rebuild | {} events/s | {} events/s | {:.2} | ≥ 0.75: {} |\n",
            rate(sealed_rebuild.per_second()),
            rate(plain_rebuild.per_second()),
            ratio_rebuild,
            met(ratio_rebuild >= 0.75),
        );
        out
    }

    /// The PostgreSQL figures beside the embedded ones, and against the cqrs-es baseline.
    fn side_by_side(&self, postgres: &PostgresFigures) -> String {
        let (e, p) = (&self.embedded, &postgres.figures);
        let [base_serial, base_concurrent] = &postgres.baseline;
        let mut out = String::new();
        out += "\n## PostgreSQL beside the embedded store\n\n";
        out += &format!(
            "Same workload, same measurements, same run; PostgreSQL on 127.0.0.1 with its default \
             durable settings (synchronous_commit = on), a fresh database for each ingest. \
             Baseline: plain cqrs-es + postgres-es, the journey aggregate executed through \
             `CqrsFramework` with one transaction per event, in-process (no HTTP), {} events at \
             concurrency 1 and {} at {WRITERS}.\n\n",
            thousands(base_serial.events as u64),
            thousands(base_concurrent.events as u64),
        );
        out += "| Measurement | Embedded | PostgreSQL | PostgreSQL / embedded |\n";
        out += "|---|---|---|---|\n";
        let mut row = |name: &str, embedded: f64, postgres: f64, unit: &str| {
            out += &format!(
                "| {name} | {} {unit} | {} {unit} | {} |\n",
                rate(embedded),
                rate(postgres),
                ratio(postgres / embedded)
            );
        };
        row(
            "Single-event ingest, concurrency 1",
            e.serial.per_second(),
            p.serial.per_second(),
            "events/s",
        );
        row(
            &format!("Single-event ingest, concurrency {WRITERS}"),
            e.concurrent.per_second(),
            p.concurrent.per_second(),
            "events/s",
        );
        row(
            "Batch ingest, one batch at a time",
            e.batch.per_second(),
            p.batch.per_second(),
            "events/s",
        );
        row(
            &format!("Batch ingest, {BATCH_POSTERS} senders"),
            e.parallel_batch.per_second(),
            p.parallel_batch.per_second(),
            "events/s",
        );
        row(
            "Rebuild from zero",
            e.rebuild.per_second(),
            p.rebuild.per_second(),
            "events/s",
        );
        for (index, (er, pr)) in e.reads.iter().zip(&p.reads).enumerate() {
            out += &format!(
                "| Travel-map read p99, concurrency {} | {} | {} | {} |\n",
                [1, READERS][index],
                ms(er.latency.value_at_quantile(0.99)),
                ms(pr.latency.value_at_quantile(0.99)),
                ratio(
                    pr.latency.value_at_quantile(0.99) as f64
                        / er.latency.value_at_quantile(0.99) as f64
                ),
            );
        }
        out += "\n| Target (PostgreSQL) | Result | Target | Result / target | Met |\n";
        out += "|---|---|---|---|---|\n";
        let versus = p.concurrent.per_second() / base_concurrent.per_second();
        out += &format!(
            "| Single-event ingest at concurrency {WRITERS} vs the cqrs-es + postgres-es baseline ({} events/s at {WRITERS}; {} at 1) | {} events/s = {:.2}× the baseline | ≥ {TARGET_VERSUS_BASELINE:.0}× | {} | {} |\n",
            rate(base_concurrent.per_second()),
            rate(base_serial.per_second()),
            rate(p.concurrent.per_second()),
            versus,
            ratio(versus / TARGET_VERSUS_BASELINE),
            met(versus >= TARGET_VERSUS_BASELINE),
        );
        out += &format!(
            "| Rebuild from zero ({} events; the median of {REBUILDS} rebuilds) | {} events/s ({:.2} s); all {REBUILDS}: {} | ≥ {} events/s | {} | {} |\n",
            thousands(p.rebuild.events),
            rate(p.rebuild.per_second()),
            p.rebuild.elapsed.as_secs_f64(),
            rates(&p.rebuild_rates),
            rate(TARGET_POSTGRES_REBUILD_EVENTS_PER_S),
            ratio(p.rebuild.per_second() / TARGET_POSTGRES_REBUILD_EVENTS_PER_S),
            met(p.rebuild.per_second() >= TARGET_POSTGRES_REBUILD_EVENTS_PER_S),
        );
        out += &format!(
            "\nThe baseline does less work per event than Travelmap: no HTTP, no idempotency look-up, no global position, no projection. Its rate at concurrency 1 is {:.2}× Travelmap's on PostgreSQL.\n",
            base_serial.per_second() / p.serial.per_second(),
        );
        out
    }

    fn workload_bytes(&self) -> u64 {
        self.workload
            .clients
            .iter()
            .flat_map(|client| &client.events)
            .map(|event| event.len() as u64)
            .sum()
    }
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn rate(per_second: f64) -> String {
    thousands(per_second.round() as u64)
}

/// Rates listed in the order given, e.g. `380,112 / 401,554 / 430,009` (events/s).
fn rates(per_second: &[f64]) -> String {
    let listed: Vec<String> = per_second.iter().map(|each| rate(*each)).collect();
    listed.join(" / ")
}

fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ratio(value: f64) -> String {
    format!("{value:.2}")
}

fn met(yes: bool) -> &'static str {
    if yes { "yes" } else { "**no**" }
}
