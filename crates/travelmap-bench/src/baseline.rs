//! The baseline: single-event ingest as plain cqrs-es with postgres-es would do it, one
//! transaction per event, driven by the same workload and aggregate as the Travelmap benchmark.
//!
//! Travelmap's ingest figures mean little on their own; next to what the obvious off-the-shelf
//! design reaches on the same machine they show what the service's own machinery (group commit,
//! cached journeys) is worth. The baseline is that design used as its documentation shows:
//! `postgres_es::postgres_cqrs` over Travelmap's own `ClientJourney` aggregate, no queries, no
//! snapshots, and one `execute` per event. Each `execute` reads the client's whole stream back,
//! decides, and inserts the new event in a transaction of its own, which PostgreSQL commits
//! durably (its default `synchronous_commit = on`, one WAL flush per commit unless commits
//! happen to share it).
//!
//! The comparison leans in the baseline's favour: it is driven in-process, with no HTTP, and the
//! request bodies are parsed before the clock starts.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use cqrs_es::AggregateError;
use postgres_es::PostgresCqrs;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinSet;
use travelmap_domain::ClientJourney;
use travelmap_domain::journey::Command;

use crate::workload::Workload;

/// postgres-es's `events` and `snapshots` tables, as its `db/init.sql` creates them. Snapshots
/// are unused (no snapshotting is configured) but are part of the documented schema.
const SCHEMA: &str = "
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
";

/// The provenance stored with every event (as postgres-es metadata), like the credential the
/// benchmark's server is called with: Travelmap stores an agency with each event, so the
/// baseline's rows carry one too.
const AGENCY: &str = "bench-agency";
const CREDENTIAL: &str = "bench";

/// One baseline measurement.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Events executed, one command each.
    pub events: usize,
    /// Wall time from the first command sent to the last one committed.
    pub elapsed: Duration,
    /// Rows in postgres-es's `events` table after the run, counted before the database was
    /// dropped: equal to `events` unless something was lost or doubled.
    pub stored: i64,
}

impl Baseline {
    pub fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Executes the first `limit` events of `workload` (in posting order) through cqrs-es and
/// postgres-es from `concurrency` tasks, in a database of its own created on the server that
/// `database_url` names and dropped afterwards, also when the measurement fails.
///
/// Each task owns a share of the clients and executes their events in order, as the HTTP
/// measurement's writers do, so a client's events never race each other and no command meets a
/// version conflict. TLS is off unless the URL asks for it with `sslmode`: the HTTP measurement
/// runs without TLS on 127.0.0.1 as well.
pub async fn run(
    database_url: &str,
    workload: &Workload,
    concurrency: usize,
    limit: usize,
) -> anyhow::Result<Baseline> {
    ensure!(
        concurrency > 0,
        "the baseline needs a concurrency of at least 1"
    );
    let options = connect_options(database_url)?;
    let mut admin = PgConnection::connect_with(&options)
        .await
        .with_context(|| format!("connecting to {database_url} to create the baseline database"))?;
    let database = format!("travelmap_baseline_{:016x}", rand::random::<u64>());
    sqlx::raw_sql(&format!(r#"CREATE DATABASE "{database}""#))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {database}"))?;

    let measured = measure(
        options.clone().database(&database),
        workload,
        concurrency,
        limit,
    )
    .await
    .with_context(|| format!("baseline in database {database}"));

    // FORCE ends connections a failed measurement may have left behind.
    let dropped = sqlx::raw_sql(&format!(r#"DROP DATABASE "{database}" WITH (FORCE)"#))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping the baseline database {database}"));
    // Closing politely is a courtesy; the server cleans up after a vanished client anyway.
    let _ = admin.close().await;
    let baseline = measured?;
    // A measurement that leaves a database behind fails: left silently, such databases pile up
    // on a server that may not be a throwaway one.
    dropped?;
    Ok(baseline)
}

fn connect_options(database_url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(database_url)
        .with_context(|| format!("{database_url} is not a PostgreSQL connection URL"))?;
    Ok(if database_url.contains("sslmode=") {
        options
    } else {
        options.ssl_mode(PgSslMode::Disable)
    })
}

/// Creates postgres-es's tables in the fresh database, then times the commands.
async fn measure(
    options: PgConnectOptions,
    workload: &Workload,
    concurrency: usize,
    limit: usize,
) -> anyhow::Result<Baseline> {
    // Parsed before the clock starts: the baseline is to measure storing, not JSON parsing.
    let mut shares: Vec<Vec<(String, Command)>> = vec![Vec::new(); concurrency];
    let mut events = 0;
    for &event in workload.order.iter().take(limit) {
        let body = workload.event(event);
        let value: serde_json::Value = serde_json::from_str(body)
            .with_context(|| format!("the workload holds an event that is not JSON: {body}"))?;
        let submission = travelmap_api::wire::parse_event(&value).map_err(|error| {
            anyhow!(
                "the workload holds an event the wire format refuses ({}: {}): {body}",
                error.field.as_deref().unwrap_or("event"),
                error.detail
            )
        })?;
        let aggregate_id = submission.draft.client_id.to_string();
        let command = Command::Record {
            draft: submission.draft,
            expected_version: submission.expected_version,
            poster: None,
        };
        shares[event.client as usize % concurrency].push((aggregate_id, command));
        events += 1;
    }

    // One connection per task is all they can use: an `execute` holds at most one at a time.
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(concurrency).context("concurrency too large")?)
        .connect_with(options)
        .await
        .context("connecting to the baseline database")?;
    sqlx::raw_sql(SCHEMA)
        .execute(&pool)
        .await
        .context("creating postgres-es's tables")?;
    warm_up(&pool, concurrency).await?;

    let cqrs = Arc::new(postgres_es::postgres_cqrs::<ClientJourney>(
        pool.clone(),
        Vec::new(),
        (),
    ));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for share in shares {
        let cqrs = cqrs.clone();
        tasks.spawn(async move { execute_in_order(&cqrs, share).await });
    }
    while let Some(task) = tasks.join_next().await {
        task.context("a baseline task panicked")??;
    }
    let elapsed = started.elapsed();

    let stored = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .context("counting the stored events")?;
    pool.close().await;
    Ok(Baseline {
        events,
        elapsed,
        stored,
    })
}

/// Opens every connection the tasks will use before the clock starts, so that the measurement
/// sees a warm pool, as a server past its first requests would have.
async fn warm_up(pool: &PgPool, connections: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        held.push(
            pool.acquire()
                .await
                .context("opening the baseline's connections")?,
        );
    }
    Ok(())
}

async fn execute_in_order(
    cqrs: &PostgresCqrs<ClientJourney>,
    share: Vec<(String, Command)>,
) -> anyhow::Result<()> {
    for (aggregate_id, command) in share {
        let metadata = HashMap::from([
            ("agency".to_owned(), AGENCY.to_owned()),
            ("credential".to_owned(), CREDENTIAL.to_owned()),
        ]);
        cqrs.execute_with_metadata(&aggregate_id, command, metadata)
            .await
            .map_err(|error| match error {
                // Only this task writes this client, so a conflict means the harness is wrong.
                AggregateError::AggregateConflict => {
                    anyhow!("version conflict on client {aggregate_id}, which no other task writes")
                }
                other => anyhow!(other).context(format!("executing an event of {aggregate_id}")),
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    async fn baseline_databases() -> i64 {
        let mut admin = PgConnection::connect_with(&connect_options(DATABASE_URL).unwrap())
            .await
            .unwrap();
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'travelmap_baseline_%'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap()
    }

    /// Needs PostgreSQL at DATABASE_URL; run with
    /// `cargo test -p travelmap-bench --release -- --ignored baseline --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "needs a PostgreSQL server at 127.0.0.1:5432"]
    async fn baseline_stores_every_event_and_drops_its_database() {
        // 100 whole journeys of 20 events, so that later events load real streams.
        let workload = Workload::generate(42, 100, 20);
        let before = baseline_databases().await;
        for concurrency in [1, 32] {
            let baseline = run(DATABASE_URL, &workload, concurrency, 2000)
                .await
                .unwrap();
            println!(
                "baseline at concurrency {concurrency}: {} events in {:.2} s, {:.0} events/s",
                baseline.events,
                baseline.elapsed.as_secs_f64(),
                baseline.per_second()
            );
            assert_eq!(baseline.events, 2000);
            assert_eq!(baseline.stored, 2000);
        }
        assert_eq!(
            baseline_databases().await,
            before,
            "a database was left behind"
        );
    }
}
