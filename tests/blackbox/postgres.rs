//! Two `travelmap serve` processes on one PostgreSQL database behave as one service: one global
//! feed without gaps or repeats under concurrent writers, idempotency and version conflicts
//! across processes, and projections that stay current whichever process is asked (and when
//! the process writing them stops).
//!
//! Each test creates its own database on the server named by `TRAVELMAP_TEST_POSTGRES` (by
//! default the local one); without a server the tests fail, saying so.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use travelmap_store::postgres::{ScratchDatabase, server_from_env};
use uuid::Uuid;

use crate::binary::{Server, write_config};
use crate::support::*;

struct Cluster {
    servers: Vec<Server>,
    database: ScratchDatabase,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(processes: usize) -> Cluster {
        let server = server_from_env();
        let database = ScratchDatabase::create(&server, "travelmap_test")
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "these tests need PostgreSQL at {server} ({error}); start it, or set \
                     TRAVELMAP_TEST_POSTGRES (see docs/operations.md)"
                )
            });
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        let mut servers = Vec::new();
        for index in 0..processes {
            let data_dir: PathBuf = dir.path().join(format!("process-{index}"));
            servers.push(Server::start_on(database.url(), &data_dir, &config).await);
        }
        Cluster {
            servers,
            database,
            config,
            _dir: dir,
        }
    }

    fn address(&self, index: usize) -> String {
        self.servers[index % self.servers.len()].address.clone()
    }

    async fn stop(self) {
        drop(self.servers);
        self.database.drop_database().await.unwrap();
    }
}

async fn post(http: &reqwest::Client, address: &str, body: &Value) -> (StatusCode, Value) {
    let response = http
        .post(format!("{address}/v1/events"))
        .bearer_auth(PROBATION_WRITER)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn contact(client: Uuid) -> Value {
    event(
        client,
        "contact.made",
        "2026-01-01T00:00:00Z",
        json!({"kind": "meeting"}),
    )
}

/// Follows the global feed (alternating between the processes) until `done` and caught up,
/// checking as it goes that each page starts right after the previous one: positions are
/// gap-free, so a skipped event would show as a jump.
async fn follow_feed(
    http: reqwest::Client,
    addresses: Vec<String>,
    mut after: u64,
    done: Arc<AtomicBool>,
) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    for turn in 0.. {
        let finished = done.load(Ordering::SeqCst);
        let address = &addresses[turn % addresses.len()];
        let page: Value = http
            .get(format!("{address}/v1/events?after={after}&limit=50"))
            .bearer_auth(AUDITOR)
            .header("x-purpose", "audit")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        for event in events {
            let position = event["position"].as_u64().unwrap();
            assert_eq!(
                position,
                after + 1,
                "the feed jumped from {after} to {position}"
            );
            after = position;
            seen.push((position, event["id"].as_str().unwrap().to_owned()));
        }
        if events.is_empty() {
            if finished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    seen
}

/// 16 writers, each alternating between the two processes, while a reader follows the feed;
/// ten rounds. Every acknowledged event appears in the feed exactly once, in position order,
/// and each client's versions run 1, 2, 3, ... in the order its events were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_make_one_gap_free_feed_under_concurrent_writers() {
    const ROUNDS: usize = 10;
    const WRITERS: usize = 16;
    const EVENTS_PER_WRITER: usize = 15;
    let cluster = Cluster::start(2).await;
    let http = reqwest::Client::new();
    let addresses = vec![cluster.address(0), cluster.address(1)];
    let mut followed = 0;
    for round in 0..ROUNDS {
        let done = Arc::new(AtomicBool::new(false));
        let follower = tokio::spawn(follow_feed(
            http.clone(),
            addresses.clone(),
            followed,
            done.clone(),
        ));
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let (http, addresses) = (http.clone(), addresses.clone());
            writers.push(tokio::spawn(async move {
                let client = Uuid::new_v4();
                let mut acknowledged = Vec::new();
                for index in 0..EVENTS_PER_WRITER {
                    let address = &addresses[(writer + index) % 2];
                    let body = contact(client);
                    let (status, receipt) = post(&http, address, &body).await;
                    assert_eq!(status, StatusCode::CREATED, "{receipt}");
                    acknowledged.push((
                        receipt["position"].as_u64().unwrap(),
                        body["id"].as_str().unwrap().to_owned(),
                        receipt["version"].as_u64().unwrap(),
                    ));
                }
                acknowledged
            }));
        }
        let mut acknowledged = Vec::new();
        for writer in writers {
            let of_one_client = writer.await.unwrap();
            let versions: Vec<u64> = of_one_client.iter().map(|(_, _, v)| *v).collect();
            assert_eq!(versions, (1..=EVENTS_PER_WRITER as u64).collect::<Vec<_>>());
            acknowledged.extend(of_one_client);
        }
        done.store(true, Ordering::SeqCst);
        let seen = follower.await.unwrap();
        acknowledged.sort();
        let expected: Vec<(u64, String)> = acknowledged
            .into_iter()
            .map(|(position, id, _)| (position, id))
            .collect();
        assert_eq!(
            seen, expected,
            "round {round}: the feed differs from what was acknowledged"
        );
        followed += (WRITERS * EVENTS_PER_WRITER) as u64;
        assert_eq!(seen.last().unwrap().0, followed);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_agree_on_retries_conflicts_and_travel_maps() {
    let cluster = Cluster::start(2).await;
    let http = reqwest::Client::new();
    let (a, b) = (cluster.address(0), cluster.address(1));

    // The same event sent to both at once is recorded once; both answers carry its receipt.
    let client = Uuid::new_v4();
    let body = contact(client);
    let ((first_status, first), (second_status, second)) =
        tokio::join!(post(&http, &a, &body), post(&http, &b, &body));
    let statuses: HashSet<StatusCode> = [first_status, second_status].into();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::OK].into());
    assert_eq!(first["position"], second["position"]);
    // The same id with other content, at the other process: refused.
    let mut altered = body.clone();
    altered["data"]["kind"] = json!("phone");
    let response = http
        .post(format!("{b}/v1/events"))
        .bearer_auth(PROBATION_WRITER)
        .json(&altered)
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::CONFLICT, "duplicate_conflict").await;

    // A version seen at one process is checked at the other.
    let mut stale = contact(client);
    stale["expected_version"] = json!(0);
    let response = http
        .post(format!("{b}/v1/events"))
        .bearer_auth(PROBATION_WRITER)
        .json(&stale)
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, StatusCode::CONFLICT, "version_conflict").await;
    assert_eq!(problem["current_version"], 1);
    let mut current = contact(client);
    current["expected_version"] = json!(1);
    let (status, receipt) = post(&http, &b, &current).await;
    assert_eq!(
        (status, receipt["version"].clone()),
        (StatusCode::CREATED, json!(2))
    );

    // Events posted to both, read from either: the map has them all once projected.
    let mut last_position = 0;
    for index in 0..10 {
        let address = if index % 2 == 0 { &a } else { &b };
        let (status, receipt) = post(&http, address, &contact(client)).await;
        assert_eq!(status, StatusCode::CREATED);
        last_position = receipt["position"].as_u64().unwrap();
    }
    let mut steps = HashMap::new();
    for address in [&a, &b] {
        let map: Value = http
            .get(format!(
                "{address}/v1/clients/{client}/travel-map?min_position={last_position}"
            ))
            .bearer_auth(AUDITOR)
            .header("x-purpose", "case_management")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        steps.insert(address.clone(), map["steps"].as_array().unwrap().len());
    }
    assert_eq!(steps[&a], 12, "{steps:?}");
    assert_eq!(steps[&b], 12, "{steps:?}");

    // Whichever process wrote the views stops; the other takes over and stays current.
    let mut cluster = cluster;
    let survivor = cluster.servers.pop().unwrap();
    cluster.servers.clear();
    let (status, receipt) = post(&http, &survivor.address, &contact(client)).await;
    assert_eq!(status, StatusCode::CREATED);
    let position = receipt["position"].as_u64().unwrap();
    let map: Value = http
        .get(format!(
            "{}/v1/clients/{client}/travel-map?min_position={position}",
            survivor.address
        ))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "case_management")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(map["steps"].as_array().unwrap().len(), 13, "{map}");
    cluster.servers.push(survivor);
    cluster.stop().await;
}

/// On PostgreSQL too, the trail written by two processes is one chain, `audit verify` checks it
/// beside the running servers, and an entry edited in the database is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_of_two_processes_verifies_and_tampering_is_found() {
    let cluster = Cluster::start(2).await;
    let http = reqwest::Client::new();
    let client = Uuid::new_v4();
    for index in 0..6 {
        let (status, _) = post(&http, &cluster.address(index), &contact(client)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let verify = |url: &str| {
        let output = crate::support::travelmap_command()
            .args(["--store", url, "audit", "verify"])
            .env_remove("TRAVELMAP_CONFIG")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let url = cluster.database.url().to_owned();
    // An auditor's replay is logged in the same chain, between the servers' entries.
    let replayed = crate::support::travelmap_command()
        .args([
            "--store",
            &url,
            "replay",
            "--json",
            "--client",
            &client.to_string(),
        ])
        .args(["--credential", "dpo-office", "--config"])
        .arg(&cluster.config)
        .env_remove("TRAVELMAP_CONFIG")
        .output()
        .unwrap();
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    // A database is a deployment: a replay without its configuration would be logged under a
    // sandbox's local admin, so it is refused.
    let unconfigured = crate::support::travelmap_command()
        .args(["--store", &url, "replay", "--client", &client.to_string()])
        .env_remove("TRAVELMAP_CONFIG")
        .output()
        .unwrap();
    assert!(!unconfigured.status.success());
    assert!(unconfigured.stdout.is_empty());
    let (status, _) = post(&http, &cluster.address(1), &contact(client)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (intact, report) = verify(&url);
    assert!(intact && report.contains("8 entries"), "{report}");
    let trail = trail_at(&cluster.address(0), client).await;
    assert_eq!(trail[6]["action"], "travelmap replay", "{trail:?}");
    assert_eq!(trail[6]["credential"], "dpo-office");
    let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
    // Entries slipped in before the first are found by verification, and shown and trusted
    // by no read (here one that would grant break-glass access).
    sqlx::query(
        "INSERT INTO audit_entries
         SELECT -5, at, 'coordinator-x', agency, actor, operation, client_id, purpose,
                'forged', request_id, outcome, 'break-glass', returned, hash
         FROM audit_entries WHERE seq = 1",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    let (intact, report) = verify(&url);
    assert!(
        !intact && report.contains("1 entries are numbered 0 or below"),
        "{report}"
    );
    assert!(
        trail_at(&cluster.address(0), client)
            .await
            .iter()
            .all(|entry| entry["credential"] != "coordinator-x")
    );
    sqlx::query("DELETE FROM audit_entries WHERE seq <= 0")
        .execute(&mut connection)
        .await
        .unwrap();
    // Entries removed at the end leave a chain that checks, but the head the database keeps
    // apart from them says how far it went.
    sqlx::query("DELETE FROM audit_entries WHERE seq = (SELECT max(seq) FROM audit_entries)")
        .execute(&mut connection)
        .await
        .unwrap();
    let (intact, report) = verify(&url);
    assert!(
        !intact && report.contains("but the store records its head at entry"),
        "{report}"
    );
    // A head set back to an earlier entry, hash and all (what a restore that failed part way
    // leaves) is found as well.
    sqlx::query(
        "UPDATE audit_head SET seq = entry.seq, hash = entry.hash
         FROM audit_entries entry WHERE entry.seq = 2",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    let (intact, report) = verify(&url);
    assert!(
        !intact && report.contains("but the store records its head at entry 2"),
        "{report}"
    );
    sqlx::query("DELETE FROM audit_head")
        .execute(&mut connection)
        .await
        .unwrap();
    let (intact, report) = verify(&url);
    assert!(!intact && report.contains("the stored head"), "{report}");
    sqlx::query("UPDATE audit_entries SET agency = 'elsewhere' WHERE seq = 4")
        .execute(&mut connection)
        .await
        .unwrap();
    let (intact, report) = verify(&url);
    assert!(
        !intact && report.contains("entry 4 does not match"),
        "{report}"
    );
    connection.close().await.unwrap();
    cluster.stop().await;
}

/// A write whose audit entries the trail refuses is not recorded, on PostgreSQL too: `503`,
/// nothing stored, and once the trail takes entries again the same request is recorded as new,
/// with one entry. Never a recorded event without its entry.
#[tokio::test]
async fn a_write_the_trail_refused_is_not_recorded() {
    let cluster = Cluster::start(1).await;
    let url = cluster.database.url().to_owned();
    let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_entries() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'the trail is down'; END $$;
         CREATE TRIGGER refuse_entries BEFORE INSERT ON audit_entries
             FOR EACH ROW EXECUTE FUNCTION refuse_entries();",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let client = Uuid::new_v4();
    let event = contact(client);
    let (status, problem) = post(&http, &cluster.address(0), &event).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "unavailable");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was recorded"),
        "{problem}"
    );
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(stored, 0, "an event was stored without its entry");

    sqlx::raw_sql("DROP TRIGGER refuse_entries ON audit_entries")
        .execute(&mut connection)
        .await
        .unwrap();
    let (status, _) = post(&http, &cluster.address(0), &event).await;
    assert_eq!(status, StatusCode::CREATED);
    let collections: Vec<String> = trail_at(&cluster.address(0), client)
        .await
        .iter()
        .filter(|entry| entry["operation"] == "collection")
        .map(|entry| entry["returned"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(collections, [event["id"].as_str().unwrap()]);
    connection.close().await.unwrap();
    cluster.stop().await;
}

/// The readiness report's `store` task once it is in `state` (waiting up to 15 s for it), and
/// the report saying `degraded` while it fails.
async fn store_readiness(http: &reqwest::Client, address: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..75 {
        let report: Value = http
            .get(format!("{address}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let store = report["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|task| task["name"] == "store")
            .cloned()
            .unwrap_or_else(|| panic!("no store task in {report}"));
        if store["state"] == state {
            if state == "failing" {
                assert_eq!(report["status"], "degraded", "{report}");
            }
            return store;
        }
        last = report;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the store never reported {state}: {last}");
}

/// A database that goes away is a moment to retry, not a bug: requests are answered
/// `503 unavailable` while it refuses connections, and once it is back the service carries on
/// with everything acknowledged before.
#[tokio::test]
async fn a_database_that_goes_away_is_answered_503_and_the_service_recovers() {
    let cluster = Cluster::start(1).await;
    let http = reqwest::Client::new();
    let address = cluster.address(0);
    let client = Uuid::new_v4();
    let before = contact(client);
    assert_eq!(post(&http, &address, &before).await.0, StatusCode::CREATED);

    let mut admin = sqlx::PgConnection::connect(&server_from_env())
        .await
        .unwrap();
    let name = cluster.database.name().to_owned();
    let allow = |allowed: bool| format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allowed}");
    sqlx::raw_sql(&allow(false))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .execute(&mut admin)
    .await
    .unwrap();

    let during = contact(client);
    let (status, problem) = post(&http, &address, &during).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "unavailable");
    let read = http
        .get(format!("{address}/v1/events?after=0"))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "audit")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(read.headers().contains_key("retry-after"));
    // Readiness says so steadily, whatever the other tasks are doing meanwhile.
    let store = store_readiness(&http, &address, "failing").await;
    let since = store["failing_since"].clone();
    assert!(since.is_string(), "{store}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = store_readiness(&http, &address, "failing").await;
    assert_eq!(again["failing_since"], since, "{again}");

    sqlx::raw_sql(&allow(true))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = post(&http, &address, &during).await.0;
        if status != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the retry is recorded once back"
    );
    assert_eq!(
        post(&http, &address, &before).await.0,
        StatusCode::OK,
        "what was acknowledged before is still there"
    );
    store_readiness(&http, &address, "running").await;
    admin.close().await.unwrap();
    cluster.stop().await;
}

/// `retention run` beside servers waits for the one that writes the views to fold the log; a
/// writer that is stuck (here: one that holds the lease and folds nothing, its views left
/// behind the log) makes the run fail after `--wait` seconds, saying what it waited for, instead
/// of waiting for ever.
#[tokio::test]
async fn a_retention_run_beside_a_stuck_view_writer_gives_up_after_its_wait() {
    use travelmap_store::ViewStore;
    use travelmap_store::postgres::{Migrations, PgStore};
    let cluster = Cluster::start(1).await;
    let http = reqwest::Client::new();
    let client = Uuid::new_v4();
    assert_eq!(
        post(&http, &cluster.address(0), &contact(client)).await.0,
        StatusCode::CREATED
    );
    let Cluster {
        servers,
        database,
        config,
        _dir,
    } = cluster;
    drop(servers);
    let stuck = PgStore::connect(database.url(), Migrations::Require)
        .await
        .unwrap();
    stuck.views.lead().await.unwrap();
    let mut connection = sqlx::PgConnection::connect(database.url()).await.unwrap();
    sqlx::query("UPDATE projection_checkpoints SET position = 0")
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[retention]\nneeds = 5\n");
    std::fs::write(&config, text).unwrap();

    let started = std::time::Instant::now();
    let mut command = tokio::process::Command::from(travelmap_command());
    command
        .kill_on_drop(true)
        .args(["--store", database.url(), "retention", "run", "--wait", "1"])
        .arg("--config")
        .arg(&config)
        .env_remove("TRAVELMAP_CONFIG");
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the run gives up instead of waiting for ever")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("has not folded the log up to position 1 within 1 s"),
        "{stderr}"
    );
    // The report is printed all the same: a run that fails after shredding must still say what
    // it shredded.
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["done"], json!([]), "{report}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    stuck.close().await;
    database.drop_database().await.unwrap();
}

/// A database restored from the documented dump, which leaves the views out but keeps their
/// checkpoint, has its views folded again when a server starts on it, even if the restore's
/// `rebuild` step was skipped: no travel map stays unanswered and no identifier search comes
/// back empty for clients the log holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_missing_beside_their_checkpoint_are_folded_again_at_start() {
    let mut cluster = Cluster::start(1).await;
    let http = reqwest::Client::new();
    let client = Uuid::new_v4();
    let mut position = 0;
    for _ in 0..3 {
        let (status, receipt) = post(&http, &cluster.address(0), &contact(client)).await;
        assert_eq!(status, StatusCode::CREATED);
        position = receipt["position"].as_u64().unwrap();
    }
    let read_map = |address: String| {
        let http = http.clone();
        async move {
            http.get(format!(
                "{address}/v1/clients/{client}/travel-map?min_position={position}"
            ))
            .bearer_auth(AUDITOR)
            .header("x-purpose", "case_management")
            .send()
            .await
            .unwrap()
        }
    };
    let before: Value = read_map(cluster.address(0)).await.json().await.unwrap();
    assert_eq!(before["steps"].as_array().unwrap().len(), 3, "{before}");
    cluster.servers.clear();

    let mut connection = sqlx::PgConnection::connect(cluster.database.url())
        .await
        .unwrap();
    sqlx::raw_sql("TRUNCATE client_views, client_identifiers")
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();

    let data_dir = cluster._dir.path().join("restored");
    cluster
        .servers
        .push(Server::start_on(cluster.database.url(), &data_dir, &cluster.config).await);
    let response = read_map(cluster.address(0)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let after: Value = response.json().await.unwrap();
    assert_eq!(after["steps"], before["steps"]);
    cluster.servers.clear();

    // A dump taken without the data of the tables that only say where work stands (the views'
    // checkpoint, the webhooks' lease) lacks their rows: they are made again, and the views are
    // folded again, rather than every start failing.
    let mut connection = sqlx::PgConnection::connect(cluster.database.url())
        .await
        .unwrap();
    sqlx::raw_sql(
        "TRUNCATE client_views, client_identifiers, projection_checkpoints, webhook_dispatch",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();
    // A command that only reads works on such a database as it is.
    let (succeeded, stderr) = run_on(
        cluster.database.url(),
        &cluster.config,
        &[
            "replay",
            "--client",
            &client.to_string(),
            "--credential",
            "dpo-office",
        ],
    );
    assert!(succeeded, "{stderr}");
    assert!(!stderr.contains("made them again"), "{stderr}");
    let (succeeded, stderr) = run_on(cluster.database.url(), &cluster.config, &["rebuild"]);
    assert!(succeeded, "{stderr}");
    assert!(stderr.contains("made them again"), "{stderr}");
    cluster.servers.push(
        Server::start_on(
            cluster.database.url(),
            &cluster._dir.path().join("without-bookkeeping"),
            &cluster.config,
        )
        .await,
    );
    let response = read_map(cluster.address(0)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["steps"], before["steps"]);
    cluster.stop().await;
}

/// Runs the binary on `database` with the cluster's configuration; returns whether it
/// succeeded, and what it printed on stderr.
fn run_on(database: &str, config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = travelmap_command()
        .args(["--store", database, "--config"])
        .arg(config)
        .args(args)
        .env_remove("TRAVELMAP_CONFIG")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Commands that only make sense on an existing store refuse an empty database rather than make
/// a store there (a restore into it would then collide with what they made), and a database
/// whose log head is behind its events, which such a collision leaves, is refused instead of
/// served: every append would fail on it while the service looked healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_inconsistent_database_is_refused() {
    let cluster = Cluster::start(1).await;
    let http = reqwest::Client::new();
    let (status, _) = post(&http, &cluster.address(0), &contact(Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::CREATED);

    let empty = ScratchDatabase::create(&server_from_env(), "travelmap_test")
        .await
        .unwrap();
    for command in [&["rebuild"][..], &["keys", "rotate"]] {
        let (succeeded, stderr) = run_on(empty.url(), &cluster.config, command);
        assert!(!succeeded, "{command:?}: {stderr}");
        assert!(
            stderr.contains("holds no Travelmap store"),
            "{command:?}: {stderr}"
        );
    }
    let mut connection = sqlx::PgConnection::connect(empty.url()).await.unwrap();
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(tables, 0, "a refused command made tables");
    connection.close().await.unwrap();
    empty.drop_database().await.unwrap();

    let Cluster {
        servers,
        database,
        config,
        _dir,
    } = cluster;
    drop(servers);
    let (succeeded, stderr) = run_on(database.url(), &config, &["rebuild"]);
    assert!(succeeded, "an existing store is rebuilt: {stderr}");
    let mut connection = sqlx::PgConnection::connect(database.url()).await.unwrap();
    sqlx::query("UPDATE log_head SET position = 0")
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    for command in [&["rebuild"][..], &["keys", "rotate"]] {
        let (succeeded, stderr) = run_on(database.url(), &config, command);
        assert!(!succeeded, "{command:?}: {stderr}");
        assert!(
            stderr.contains("its events end at position 1, but its log head is at 0"),
            "{command:?}: {stderr}"
        );
    }
    database.drop_database().await.unwrap();
}

/// A process started with a new master key first, beside one that lacks it (a rotation rolled
/// out in one round instead of two), wraps new data keys under it. The process without it, which
/// writes the views, cannot fold them: it stops, non-zero, rather than hold the views' and the
/// webhooks' leases while it fails, and the process that has the key takes its work over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_the_current_master_key_stops_and_another_takes_over() {
    let mut cluster = Cluster::start(1).await;
    let newer = format!("newer:{},{TEST_MASTER_KEYS}", "0a".repeat(32));
    let dir = tempfile::tempdir().unwrap();
    let rotated = crate::binary::Server::start_on_with_keys(
        cluster.database.url(),
        &dir.path().join("rotated"),
        &cluster.config,
        &newer,
    )
    .await;
    let http = reqwest::Client::new();
    let client = Uuid::new_v4();
    let (status, receipt) = post(
        &http,
        &rotated.address,
        &crate::samples::sample_event(client, "client.registered", "2026-01-05T09:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");

    let ended = cluster.servers[0]
        .ends_within(Duration::from_secs(20))
        .await
        .expect("the process without the key stops");
    assert!(!ended.success(), "{ended:?}");
    let position = receipt["position"].as_u64().unwrap();
    let map = http
        .get(format!(
            "{}/v1/clients/{client}/travel-map?min_position={position}",
            rotated.address
        ))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "audit")
        .send()
        .await
        .unwrap();
    assert_eq!(map.status(), StatusCode::OK, "the other process took over");

    // Started again without the key, it refuses at once, naming the key, instead of taking
    // work it would fail at.
    let mut again = travelmap_command()
        .args(["--store", cluster.database.url(), "--config"])
        .arg(&cluster.config)
        .arg("--data-dir")
        .arg(dir.path().join("again"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("TRAVELMAP_CONFIG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = again.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            again.kill().unwrap();
            panic!("a process without the key started");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut again.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("master key `newer`"), "{stderr}");
    drop(rotated);
    cluster.stop().await;
}

/// A start on a database whose keys are wrapped under a master key it was not given generates
/// one in its data directory (as for any first start), finds it opens nothing, and removes it
/// again: left there, it would be read on every later start. So does a start that cannot reach
/// its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_generated_for_a_store_it_cannot_open_is_removed() {
    let cluster = Cluster::start(1).await;
    let http = reqwest::Client::new();
    let registered = event(
        Uuid::new_v4(),
        "client.registered",
        "2026-01-05T10:00:00+01:00",
        json!({"personal": {"given_name": "Dagmar"}}),
    );
    let (status, _) = post(&http, &cluster.address(0), &registered).await;
    assert_eq!(status, StatusCode::CREATED);
    let Cluster {
        servers,
        database,
        config,
        _dir,
    } = cluster;
    drop(servers);

    let elsewhere = tempfile::tempdir().unwrap();
    let data_dir = elsewhere.path().join("data");
    let output = travelmap_command()
        .env_remove("TRAVELMAP_MASTER_KEYS")
        .env_remove("TRAVELMAP_CONFIG")
        .args(["--store", database.url(), "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("rebuild")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("which this process was not given"),
        "{stderr}"
    );
    assert!(stderr.contains("was removed again"), "{stderr}");
    assert!(!data_dir.join("master.key").exists(), "{stderr}");
    // Nor is one kept from a start that could not reach the database at all.
    let unreachable = "postgres://postgres@127.0.0.1:1/travelmap?connect_timeout=1";
    let output = travelmap_command()
        .env_remove("TRAVELMAP_MASTER_KEYS")
        .env_remove("TRAVELMAP_CONFIG")
        .args(["--store", unreachable, "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("rebuild")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(!data_dir.join("master.key").exists(), "{stderr}");
    database.drop_database().await.unwrap();
}

/// A trail being appended to while it is checked verifies intact: the entries read reach past
/// the head read before them, never the head (read again after them) behind the entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_verified_while_servers_append_to_it_is_intact() {
    let cluster = Cluster::start(2).await;
    let http = reqwest::Client::new();
    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..2)
        .map(|index| {
            let (http, address, writing) = (http.clone(), cluster.address(index), writing.clone());
            tokio::spawn(async move {
                while writing.load(Ordering::Relaxed) {
                    let (status, _) = post(&http, &address, &contact(Uuid::new_v4())).await;
                    assert_eq!(status, StatusCode::CREATED);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let url = cluster.database.url().to_owned();
        let output = tokio::task::spawn_blocking(move || {
            crate::support::travelmap_command()
                .args(["--store", &url, "audit", "verify"])
                .env_remove("TRAVELMAP_CONFIG")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{report}");
    }
    writing.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    cluster.stop().await;
}
