//! The real `travelmap` binary: start-up without configuration, durability across restarts and
//! kills, the directory lock, and the offline commands.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::samples::{sample_event, valid_data};
use crate::support::*;

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_travelmap");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Server {
    child: Child,
    pub(crate) address: String,
}

impl Server {
    /// Starts `travelmap serve` on `data_dir` and waits until it answers.
    pub(crate) async fn start(data_dir: &Path, config: Option<&Path>) -> Server {
        Self::launch(data_dir, None, config, TEST_MASTER_KEYS).await
    }

    /// Starts `travelmap serve` storing in the PostgreSQL database at `url`.
    pub(crate) async fn start_on(url: &str, data_dir: &Path, config: &Path) -> Server {
        Self::launch(data_dir, Some(url), Some(config), TEST_MASTER_KEYS).await
    }

    /// [`Self::start_on`] with other master keys (`id:hex`, comma-separated, current first).
    pub(crate) async fn start_on_with_keys(
        url: &str,
        data_dir: &Path,
        config: &Path,
        master_keys: &str,
    ) -> Server {
        Self::launch(data_dir, Some(url), Some(config), master_keys).await
    }

    async fn launch(
        data_dir: &Path,
        store: Option<&str>,
        config: Option<&Path>,
        master_keys: &str,
    ) -> Server {
        let port = free_port();
        let mut command = travelmap_command();
        command
            .env("TRAVELMAP_MASTER_KEYS", master_keys)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("TRAVELMAP_CONFIG")
            .env_remove("TRAVELMAP_STORE")
            .stdout(Stdio::null())
            // `TRAVELMAP_TEST_SERVER_LOG=1` shows the servers' logs, to see why a test failed.
            .stderr(if std::env::var_os("TRAVELMAP_TEST_SERVER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if let Some(url) = store {
            command.arg("--store").arg(url);
        }
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command.spawn().expect("travelmap starts");
        let server = Server {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = http.get(format!("{}/healthz", server.address)).send().await
                && response.status() == StatusCode::OK
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("travelmap did not come up");
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub(crate) fn wait(mut self) -> std::process::ExitStatus {
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        panic!("travelmap did not stop within 10 s");
    }
}

impl Server {
    /// How the process ended, if it ends within `patience`.
    pub(crate) async fn ends_within(
        &mut self,
        patience: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + patience;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("travelmap.toml");
    let mut text = String::new();
    let mut declared = std::collections::HashSet::new();
    for (_, credential) in credentials() {
        if declared.insert(credential.agency.clone()) {
            text.push_str(&format!(
                "[[agencies]]\nid = \"{}\"\nkind = \"{}\"\n\n",
                credential.agency,
                credential
                    .agency_kind
                    .expect("configured agencies have a kind")
            ));
        }
    }
    for (key, credential) in credentials() {
        let roles: Vec<String> = credential
            .roles
            .iter()
            .map(|role| format!("\"{role}\""))
            .collect();
        text.push_str(&format!(
            "[[credentials]]\nid = \"{}\"\nagency = \"{}\"\nroles = [{}]\nkey_sha256 = \"{}\"\n\n",
            credential.id,
            credential.agency,
            roles.join(", "),
            travelmap_api::Authenticator::hash_key(key)
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Posts `count` events concurrently and returns the receipts that were acknowledged.
async fn post_many(address: &str, client: Uuid, count: usize) -> Vec<Value> {
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (http, address) = (http.clone(), address.to_owned());
        tasks.push(tokio::spawn(async move {
            let body = event(
                client,
                "contact.made",
                "2026-01-01T00:00:00Z",
                json!({"kind": "meeting"}),
            );
            let response = http
                .post(format!("{address}/v1/events"))
                .bearer_auth(PROBATION_WRITER)
                .json(&body)
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::CREATED).then_some(())?;
            response.json::<Value>().await.ok()
        }));
    }
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.extend(task.await.unwrap());
    }
    receipts
}

async fn history_ids(address: &str, client: Uuid) -> Vec<Value> {
    let body: Value = reqwest::Client::new()
        .get(format!("{address}/v1/clients/{client}/events"))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "audit")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].clone())
        .collect()
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(&config)).await;
    let client = Uuid::new_v4();
    let receipts = post_many(&server.address, client, 100).await;
    assert_eq!(receipts.len(), 100);
    server.signal("TERM");
    assert!(
        server.wait().success(),
        "SIGTERM must end the process with status 0"
    );

    let server = Server::start(&data, Some(&config)).await;
    let ids = history_ids(&server.address, client).await;
    for receipt in &receipts {
        assert!(
            ids.contains(&receipt["id"]),
            "acknowledged event {} lost",
            receipt["id"]
        );
    }
    // The projection resumes from its checkpoint: the map is there without a rebuild.
    let map: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/clients/{client}/travel-map?min_position=100",
            server.address
        ))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "case_management")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(map["version"], 100);
}

/// A connection that never finishes its request (a half-sent head, a body that stops coming, a
/// client that stalled) does not hold a stopping server for ever: it is given up 10 s after the
/// stop began.
#[tokio::test]
async fn sigterm_does_not_wait_for_ever_on_a_request_never_finished() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None).await;
    let address = server.address.trim_start_matches("http://").to_owned();
    let mut half_sent = std::net::TcpStream::connect(&address).unwrap();
    half_sent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: travelmap\r\n")
        .unwrap();
    let mut begun = std::net::TcpStream::connect(&address).unwrap();
    begun.write_all(b"G").unwrap();
    // A write whose body stops coming: it is not waited for once its connection is given up.
    let key = std::fs::read_to_string(dir.path().join("data/admin.key")).unwrap();
    let mut slow_body = std::net::TcpStream::connect(&address).unwrap();
    slow_body
        .write_all(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: travelmap\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 300\r\n\r\n{{\"id\":",
                key.trim()
            )
            .as_bytes(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal("TERM");
    let status = server
        .ends_within(Duration::from_secs(20))
        .await
        .expect("the server stops within the time it gives open connections, and then some");
    assert!(status.success(), "{status:?}");
    drop((half_sent, begun, slow_body));
}

#[tokio::test]
async fn acknowledged_events_survive_a_kill_in_the_middle_of_writing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(&config)).await;
    let client = Uuid::new_v4();
    let address = server.address.clone();
    let writing = tokio::spawn(async move { post_many(&address, client, 400).await });
    // Kill while writing: once some events are acknowledged, and long before all 400 are.
    let http = reqwest::Client::new();
    for _ in 0..400 {
        let health: Value = http
            .get(format!("{}/healthz", server.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["head"].as_u64().unwrap() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.signal("KILL");
    let _ = server.wait();
    let acknowledged = writing.await.unwrap();
    assert!(!acknowledged.is_empty(), "the kill came before any write");

    let server = Server::start(&data, Some(&config)).await;
    let ids = history_ids(&server.address, client).await;
    for receipt in &acknowledged {
        assert!(
            ids.contains(&receipt["id"]),
            "acknowledged event {} lost",
            receipt["id"]
        );
    }
    assert!(ids.len() >= acknowledged.len());
}

#[tokio::test]
async fn without_config_a_private_local_admin_key_is_generated_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None).await;
    let key_file = dir.path().join("admin.key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let http = reqwest::Client::new();
    let body = event(
        Uuid::new_v4(),
        "job.placed",
        "2026-01-01T00:00:00Z",
        json!({}),
    );
    let response = http
        .post(format!("{}/v1/events", server.address))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = http
        .post(format!("{}/v1/events", server.address))
        .bearer_auth("guess")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    server.signal("TERM");
    assert!(server.wait().success());

    // The key is kept across restarts.
    let _server = Server::start(dir.path(), None).await;
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), key);
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Server::start(dir.path(), None).await;
    let output = travelmap_command()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("TRAVELMAP_CONFIG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another travelmap process"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_broken_config_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[[agencies]]\nid = \"a\"\nkind = \"ngo\"\n[[credentials]]\nid = \"x\"\nagency = \"a\"\nroles = [\"writer\"]\nkey_sha256 = \"nothex\"\n").unwrap();
    let output = travelmap_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("key_sha256 must be 64 hex digits"));

    std::fs::write(
        &config,
        "[[credentials]]\nid = \"x\"\nagency = \"a\"\nroles = [\"janitor\"]\nkey_sha256 = \"00\"\n",
    )
    .unwrap();
    let output = travelmap_command()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("janitor"));

    // Every credential's agency must be declared with its kind.
    std::fs::write(
        &config,
        format!(
            "[[credentials]]\nid = \"x\"\nagency = \"prison-opava\"\nroles = [\"writer\"]\nkey_sha256 = \"{}\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let output = travelmap_command()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("agency `prison-opava`, which no [[agencies]] entry declares"),
        "{stderr}"
    );
}

fn run(args: &[&str], data_dir: &Path) -> std::process::Output {
    travelmap_command()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("TRAVELMAP_CONFIG")
        .output()
        .unwrap()
}

/// A setting's variable that is set but empty (an empty line in an environment file) counts as
/// not set, rather than stopping the service.
#[test]
fn empty_environment_variables_count_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let output = travelmap_command()
        .args(["migrate", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("TRAVELMAP_CONFIG", "")
        .env("TRAVELMAP_STORE", "")
        .env("TRAVELMAP_MASTER_KEYS", "")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whoever reads the master keys opens every sealed field: a key file other users may read is
/// warned about, naming the file.
#[cfg(unix)]
#[test]
fn a_master_key_file_other_users_may_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let warning = "other users of this machine may read the master keys";
    // The master keys from the data directory's own file, made on first use.
    let run = |args: &[&str]| {
        travelmap_command()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("TRAVELMAP_CONFIG")
            .env_remove("TRAVELMAP_MASTER_KEYS")
            .output()
            .unwrap()
    };
    assert!(run(&["migrate"]).status.success());
    let first = run(&["rebuild"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(!String::from_utf8_lossy(&first.stderr).contains(warning));
    let key = data.join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let second = run(&["rebuild"]);
    assert!(second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(warning) && stderr.contains("master.key"),
        "{stderr}"
    );
}

/// An embedded store in `dir`/data holding one imported event; returns its data directory.
fn store_with_one_event(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    let file = dir.join("events.jsonl");
    let event = sample_event(Uuid::new_v4(), "contact.made", "2026-01-01T00:00:00Z");
    std::fs::write(&file, format!("{event}\n")).unwrap();
    assert!(
        run(&["import", file.to_str().unwrap()], &data)
            .status
            .success()
    );
    data
}

/// Imports one more event into the store at `data` (from a file made in `dir`), and checks it
/// was recorded; returns the command's output.
fn import_another_event(dir: &Path, data: &Path) -> std::process::Output {
    let file = dir.join("more.jsonl");
    let event = sample_event(Uuid::new_v4(), "contact.made", "2026-01-02T00:00:00Z");
    std::fs::write(&file, format!("{event}\n")).unwrap();
    let imported = run(&["import", file.to_str().unwrap()], data);
    assert!(imported.status.success(), "{imported:?}");
    imported
}

/// Every recorded event was logged, so an event log beside a missing audit trail is said out
/// loud when the store is opened: the trail was removed, or not restored with the log.
#[test]
fn a_missing_audit_trail_beside_a_log_with_events_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = store_with_one_event(dir.path());
    let warning = "the audit trail (audit.sqlite) holds no entries";
    let opened = run(&["rebuild"], &data);
    assert!(opened.status.success());
    assert!(!String::from_utf8_lossy(&opened.stderr).contains(warning));
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("audit.sqlite")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    // A trail that is missing altogether is as broken as an emptied one, not "cannot check".
    let missing = run(&["audit", "verify"], &data);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stdout).contains("audit.sqlite is missing"),
        "{missing:?}"
    );
    assert!(!data.join("audit.sqlite").exists());
    let reopened = run(&["rebuild"], &data);
    assert!(reopened.status.success());
    let stderr = String::from_utf8_lossy(&reopened.stderr);
    assert!(stderr.contains(warning), "{stderr}");
    // That open began the trail anew with an entry saying so, and every open after says it
    // again until the trail is restored, whatever is written meanwhile.
    let again = run(&["rebuild"], &data);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("the audit trail (audit.sqlite) was begun anew"),
        "{stderr}"
    );
    import_another_event(dir.path(), &data);
    // And an auditor's check does not pass the new chain as intact: its first entry is the
    // loss.
    let verified = run(&["audit", "verify"], &data);
    assert_eq!(verified.status.code(), Some(3), "{verified:?}");
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        stdout.contains("entry 1 begins the trail anew beside an event log of 1 recorded events"),
        "{stdout}"
    );
}

/// An older copy of the whole trail put back in its place after a stop is a chain that checks,
/// and its own recorded head agrees with it. The event log records the trail's last entry
/// beside its events, and tells: `audit verify` reports the trail broken, and the next open of
/// the store logs the loss and goes on with an entry saying so.
#[test]
fn an_older_copy_of_the_trail_put_back_after_a_stop_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let data = store_with_one_event(dir.path());
    let older = dir.path().join("older-audit.sqlite");
    std::fs::copy(data.join("audit.sqlite"), &older).unwrap();
    import_another_event(dir.path(), &data);
    let intact = run(&["audit", "verify"], &data);
    assert_eq!(intact.status.code(), Some(0), "{intact:?}");

    for stale in ["audit.sqlite-wal", "audit.sqlite-shm"] {
        let _ = std::fs::remove_file(data.join(stale));
    }
    std::fs::copy(&older, data.join("audit.sqlite")).unwrap();
    let verified = run(&["audit", "verify"], &data);
    assert_eq!(verified.status.code(), Some(3), "{verified:?}");
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        stdout.contains("the event log records that the trail held entry"),
        "{stdout}"
    );
    let reopened = run(&["rebuild"], &data);
    assert!(reopened.status.success(), "{reopened:?}");
    let stderr = String::from_utf8_lossy(&reopened.stderr);
    assert!(
        stderr.contains("entries were removed from the audit trail"),
        "{stderr}"
    );
    let marked = run(&["audit", "verify"], &data);
    assert_eq!(marked.status.code(), Some(3), "{marked:?}");
    let stdout = String::from_utf8_lossy(&marked.stdout);
    assert!(
        stdout.contains("begins the trail anew")
            && stdout.contains("the event log recorded that the trail held entry"),
        "{stdout}"
    );
}

/// An emptied trail (its rows deleted, the file kept) beside a log with events is reported as
/// one that is missing is, and stays broken once entries are written to it again, whichever
/// command writes the first: here a replay, which logs beside the store without opening it.
#[test]
fn an_emptied_audit_trail_stays_broken_after_new_entries() {
    let dir = tempfile::tempdir().unwrap();
    let data = store_with_one_event(dir.path());
    let emptied = rusqlite::Connection::open(data.join("audit.sqlite")).unwrap();
    emptied.execute("DELETE FROM audit", []).unwrap();
    drop(emptied);
    let empty = run(&["audit", "verify"], &data);
    assert_eq!(empty.status.code(), Some(3), "{empty:?}");
    assert!(
        String::from_utf8_lossy(&empty.stdout).contains("the trail holds no entries"),
        "{empty:?}"
    );
    let replayed = run(&["replay", "--client", &Uuid::new_v4().to_string()], &data);
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("holds no entries"),
        "{replayed:?}"
    );
    let begun = run(&["audit", "verify"], &data);
    assert_eq!(begun.status.code(), Some(3), "{begun:?}");
    assert!(
        String::from_utf8_lossy(&begun.stdout).contains("begins the trail anew"),
        "{begun:?}"
    );
    let imported = import_another_event(dir.path(), &data);
    assert!(
        String::from_utf8_lossy(&imported.stderr).contains("was begun anew"),
        "{imported:?}"
    );
    let verified = run(&["audit", "verify"], &data);
    assert_eq!(verified.status.code(), Some(3), "{verified:?}");
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("begins the trail anew"),
        "{verified:?}"
    );
}

/// An offline command that finds the trail emptied while another process holds the data
/// directory (a server opening the store, which begins the trail anew itself) writes nothing
/// first: its entry would begin a chain that verifies. It waits for the holder, then refuses;
/// and a trail emptied to a file of no bytes is reported as broken as a missing one is.
#[test]
fn an_offline_command_leaves_an_emptied_trail_to_the_process_holding_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = store_with_one_event(dir.path());
    let emptied = rusqlite::Connection::open(data.join("audit.sqlite")).unwrap();
    emptied.execute("DELETE FROM audit", []).unwrap();
    drop(emptied);
    let holder = std::fs::File::options()
        .write(true)
        .open(data.join("travelmap.lock"))
        .unwrap();
    holder.try_lock().unwrap();
    let replayed = run(&["replay", "--client", &Uuid::new_v4().to_string()], &data);
    assert!(!replayed.status.success(), "{replayed:?}");
    assert!(replayed.stdout.is_empty(), "{replayed:?}");
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("has not marked it as begun anew"),
        "{replayed:?}"
    );
    let untouched = run(&["audit", "verify"], &data);
    assert_eq!(untouched.status.code(), Some(3), "{untouched:?}");
    assert!(
        String::from_utf8_lossy(&untouched.stdout).contains("the trail holds no entries"),
        "{untouched:?}"
    );
    drop(holder);

    for leftover in ["audit.sqlite-wal", "audit.sqlite-shm"] {
        let _ = std::fs::remove_file(data.join(leftover));
    }
    std::fs::write(data.join("audit.sqlite"), b"").unwrap();
    // An offline command finds no trail in it, and leaves it as it is.
    let replayed = run(&["replay", "--client", &Uuid::new_v4().to_string()], &data);
    assert!(!replayed.status.success(), "{replayed:?}");
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("(the file is empty)"),
        "{replayed:?}"
    );
    let verified = run(&["audit", "verify"], &data);
    assert_eq!(verified.status.code(), Some(3), "{verified:?}");
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("audit.sqlite is an empty file"),
        "{verified:?}"
    );
    // As is one that holds no trail's tables.
    rusqlite::Connection::open(data.join("audit.sqlite"))
        .unwrap()
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    let verified = run(&["audit", "verify"], &data);
    assert_eq!(verified.status.code(), Some(3), "{verified:?}");
    assert!(
        String::from_utf8_lossy(&verified.stdout)
            .contains("audit.sqlite is a database without the trail's tables"),
        "{verified:?}"
    );
    let replayed = run(&["replay", "--client", &Uuid::new_v4().to_string()], &data);
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("holds no trail's tables"),
        "{replayed:?}"
    );
}

/// Entries removed from the trail while the server runs are found by its next write, which
/// says so in the chain; a trail file removed under it takes no more entries, and what they
/// would log is refused rather than logged into a file no one will see.
#[tokio::test]
async fn a_trail_tampered_with_under_a_running_server_is_not_continued_as_intact() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(&config)).await;
    let client = Uuid::new_v4();
    let http = reqwest::Client::new();
    let post = |event_type: &str, at: &str| {
        http.post(format!("{}/v1/events", server.address))
            .bearer_auth(PRISON_WRITER)
            .json(&sample_event(client, event_type, at))
            .send()
    };
    let read = || {
        http.get(format!(
            "{}/v1/clients/{client}/travel-map?min_position=1",
            server.address
        ))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "case_management")
        .send()
    };
    assert_eq!(
        post("client.registered", "2026-01-05T09:00:00Z")
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(read().await.unwrap().status(), StatusCode::OK);
    // Cut short at its end: the entry saying so follows what is left.
    let trail = rusqlite::Connection::open(data.join("audit.sqlite")).unwrap();
    trail
        .execute("DELETE FROM audit WHERE seq > 1", [])
        .unwrap();
    drop(trail);
    assert_eq!(read().await.unwrap().status(), StatusCode::OK);

    std::fs::rename(data.join("audit.sqlite"), dir.path().join("aside.sqlite")).unwrap();
    // A write that comes first is refused before its events are recorded (they could not be
    // logged), and told that a retry will not help.
    let write = post("sentence.started", "2026-01-06T09:00:00Z")
        .await
        .unwrap();
    assert_eq!(write.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem: Value = write.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains(
            "until the service is restarted (logged for the operator), so nothing is recorded"
        ),
        "{problem}"
    );
    // The process is out of rotation.
    let ready = http
        .get(format!("{}/readyz", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let readiness: Value = ready.json().await.unwrap();
    assert_eq!(readiness["status"], "failing", "{readiness}");
    assert_eq!(readiness["audit_trail"], "lost", "{readiness}");
    let refused = read().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("cannot be written until the service is restarted"),
        "{problem}"
    );
    std::fs::rename(dir.path().join("aside.sqlite"), data.join("audit.sqlite")).unwrap();
    server.signal("TERM");
    server.wait();
    let verified = run(&["audit", "verify"], &data);
    assert_eq!(verified.status.code(), Some(3), "{verified:?}");
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains(
            "entry 2 begins the trail anew beside an event log of 1 recorded events; the \
             trail's recorded head (audit_head) named entry 2, but its entries end at entry 1"
        ),
        "{verified:?}"
    );
    let imported = import_another_event(dir.path(), &data);
    assert!(
        String::from_utf8_lossy(&imported.stderr).contains("was begun anew"),
        "{imported:?}"
    );
    let replayed = run(&["replay", "--client", &client.to_string()], &data);
    assert!(replayed.status.success(), "{replayed:?}");
    // The client's one event from before the file was removed, and not the refused write.
    assert_eq!(
        String::from_utf8_lossy(&replayed.stdout)
            .matches("sentence.started")
            .count(),
        0,
        "{replayed:?}"
    );
}

/// An auditor checks a copy of the store on read-only media, or in a directory they may not
/// write: `audit verify` reads it without writing a byte, while `replay`, which must log what it
/// shows, refuses to show anything.
#[cfg(unix)]
#[test]
fn a_read_only_copy_of_the_store_is_verified_without_writing_to_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let data = store_with_one_event(dir.path());
    // A stopped server's files hold every commit on their own (docs/operations.md).
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for file in ["events.sqlite", "audit.sqlite", "keys.sqlite"] {
        std::fs::copy(data.join(file), copy.join(file)).unwrap();
        std::fs::set_permissions(copy.join(file), std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Permissions do not hold back a superuser, unless it gives up overriding them.
    let as_a_reader = |args: &[&str]| {
        let mut command = if std::fs::metadata(dir.path()).unwrap().uid() == 0 {
            let mut command = Command::new("setpriv");
            command.args(["--bounding-set", "-dac_override,-dac_read_search", "--"]);
            command.arg(crate::binary::BINARY);
            command
        } else {
            Command::new(crate::binary::BINARY)
        };
        command
            .env("TRAVELMAP_MASTER_KEYS", TEST_MASTER_KEYS)
            .env_remove("TRAVELMAP_CONFIG")
            .args(args)
            .arg("--data-dir")
            .arg(&copy)
            .output()
            .expect("setpriv (util-linux) runs the binary without overriding permissions")
    };
    let files_in_copy = || {
        let mut names: Vec<String> = std::fs::read_dir(&copy)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = files_in_copy();
    let verified = as_a_reader(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && stdout.contains("audit trail intact: 1 entries"),
        "{verified:?}"
    );
    let replayed = as_a_reader(&[
        "replay",
        "--client",
        "00000000-0000-0000-0000-000000000001",
        "--purpose",
        "audit",
    ]);
    assert!(!replayed.status.success(), "{replayed:?}");
    assert!(replayed.stdout.is_empty(), "{replayed:?}");
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("logging the replay in the audit trail"),
        "{replayed:?}"
    );
    assert_eq!(files_in_copy(), before);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A file of the store that cannot be opened is named, so that the operator knows which one:
/// the views' file, say, can be removed and rebuilt.
#[test]
fn a_damaged_store_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = store_with_one_event(dir.path());
    for leftover in ["projections.sqlite-wal", "projections.sqlite-shm"] {
        let _ = std::fs::remove_file(data.join(leftover));
    }
    std::fs::write(data.join("projections.sqlite"), vec![0x5a; 8192]).unwrap();
    let output = run(&["rebuild"], &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("projections.sqlite: "), "{stderr}");
}

/// A checkpoint-signing key made again for a trail a server wrote to (its file lost, or not
/// restored with the data) is said out loud: the checkpoints it signed, and the public key
/// auditors took, would no longer verify, which looks like tampering. A trail written only by
/// an import before the first start had no key to lose, and no alarm is raised.
#[tokio::test]
async fn a_signing_key_made_again_for_a_trail_a_server_wrote_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let file = dir.path().join("events.jsonl");
    let client = Uuid::new_v4();
    let registered = sample_event(client, "client.registered", "2025-01-01T09:00:00Z");
    std::fs::write(&file, format!("{registered}\n")).unwrap();
    let output = import_as(&file, "opava-prison-system", &config, &data);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!data.join("audit-signing.key").exists());

    // Serves until `then` is done with its address; returns what it logged.
    async fn serve_logged<F: std::future::Future<Output = ()>>(
        data: &Path,
        config: &Path,
        log: &Path,
        then: impl FnOnce(String) -> F,
    ) -> String {
        let port = free_port();
        let child = travelmap_command()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data)
            .arg("--config")
            .arg(config)
            .env_remove("TRAVELMAP_CONFIG")
            .env_remove("TRAVELMAP_STORE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        // Killed when dropped, a failed assertion in `then` included.
        let mut serving = Server {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let mut up = false;
        for _ in 0..200 {
            if let Ok(response) = http
                .get(format!("{}/healthz", serving.address))
                .send()
                .await
                && response.status() == StatusCode::OK
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(up, "the server started");
        assert!(
            serving.child.try_wait().unwrap().is_none(),
            "our server answered"
        );
        then(serving.address.clone()).await;
        drop(serving);
        std::fs::read_to_string(log).unwrap()
    }

    // The first start after it: no key was ever made, none is lost.
    let logged = serve_logged(
        &data,
        &config,
        &dir.path().join("first.log"),
        |address| async move {
            // Something a server logs, other than a checkpoint: the public key may have been
            // taken without one.
            assert_eq!(post_many(&address, Uuid::new_v4(), 1).await.len(), 1);
        },
    )
    .await;
    assert!(
        !logged.contains("generated a new checkpoint-signing key"),
        "{logged}"
    );
    // That server wrote to the trail with the key now lost.
    std::fs::remove_file(data.join("audit-signing.key")).unwrap();
    let logged = serve_logged(&data, &config, &dir.path().join("second.log"), |_| async {}).await;
    assert!(
        logged.contains("generated a new checkpoint-signing key"),
        "{logged}"
    );
}

/// A copy of the data files taken after an import (the server stopped) holds everything: the
/// keys the import made are in `keys.sqlite` itself, not left behind in its write-ahead log,
/// which a copy of the file alone would miss.
#[test]
fn an_import_leaves_its_keys_in_the_key_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("events.jsonl");
    let clients = 2_000;
    let lines: String = (0..clients)
        .map(|n| {
            let mut registered =
                sample_event(Uuid::new_v4(), "client.registered", "2026-01-01T00:00:00Z");
            registered["data"] = json!({
                "identifiers": [{"type": "prison_number", "value": format!("OP-{n}")}],
                "personal": {"given_name": "Jana"},
            });
            format!("{registered}\n")
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let output = run(&["import", file.to_str().unwrap()], &data);
    assert!(output.status.success(), "{output:?}");

    let wal = data.join("keys.sqlite-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |wal| wal.len() == 0),
        "the key store's write-ahead log still holds keys"
    );
    let copy = dir.path().join("keys-copy.sqlite");
    std::fs::copy(data.join("keys.sqlite"), &copy).unwrap();
    let keys: i64 = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row("SELECT count(*) FROM data_keys", [], |row| row.get(0))
        .unwrap();
    assert!(keys >= clients, "{keys} keys in the copy");
}

#[tokio::test]
async fn import_validates_the_whole_file_then_loads_it_idempotently_and_rebuild_and_replay_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = Uuid::new_v4();
    let events: Vec<Value> = [
        "client.registered",
        "sentence.started",
        "client.released",
        "contact.made",
    ]
    .iter()
    .enumerate()
    .map(|(day, event_type)| {
        sample_event(
            client,
            event_type,
            &format!("2025-0{}-01T09:00:00Z", day + 1),
        )
    })
    .collect();

    // A file with one bad line imports nothing.
    let bad = dir.path().join("bad.jsonl");
    let mut file = std::fs::File::create(&bad).unwrap();
    for (index, event) in events.iter().enumerate() {
        let mut event = event.clone();
        if index == 2 {
            event["data"]["release_kind"] = json!("escaped");
        }
        writeln!(file, "{event}").unwrap();
    }
    let output = run(&["import", bad.to_str().unwrap()], &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3: data.release_kind"), "{stderr}");

    // So does a fact dated after the event that reports it (checked by the server only when
    // deciding, after the file was read).
    let offence = dir.path().join("offence.jsonl");
    let mut reoffence = sample_event(client, "reoffence.recorded", "2025-06-01T09:00:00Z");
    reoffence["data"] = json!({"offence_date": "2025-06-02"});
    std::fs::write(&offence, format!("{}\n{reoffence}\n", events[0])).unwrap();
    let output = run(&["import", offence.to_str().unwrap()], &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nothing was imported") && stderr.contains("line 2: data.offence_date"),
        "{stderr}"
    );

    // And a correction of an event earlier in the file that dates a birth after that event,
    // though before the correction.
    let corrected = dir.path().join("corrected.jsonl");
    let mut correction = sample_event(client, "event.corrected", "2025-06-01T09:00:00Z");
    correction["data"] = json!({"event_id": events[0]["id"], "reason": "mistyped",
                                "data": {"personal": {"given_name": "Jan", "birth_date": "2025-03-01"}}});
    std::fs::write(&corrected, format!("{}\n{correction}\n", events[0])).unwrap();
    let output = run(&["import", corrected.to_str().unwrap()], &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nothing was imported")
            && stderr.contains("line 2: data.data.personal.birth_date: replacement data:"),
        "{stderr}"
    );

    // So does a file that repeats an event id.
    let repeated = dir.path().join("repeated.jsonl");
    std::fs::write(&repeated, format!("{}\n{}\n", events[0], events[0])).unwrap();
    let output = run(&["import", repeated.to_str().unwrap()], &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2: event id") && stderr.contains("already appears on line 1"),
        "{stderr}"
    );

    // So does a decision the service records itself, whatever credential imports it.
    let reserved = dir.path().join("reserved.jsonl");
    let mut erasure = sample_event(client, "personal_data.erased", "2025-06-01T09:00:00Z");
    erasure["data"] = json!({"reason": "the client asked"});
    std::fs::write(&reserved, format!("{}\n{erasure}\n", events[0])).unwrap();
    let output = run(&["import", reserved.to_str().unwrap()], &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nothing was imported")
            && stderr.contains("line 2: `personal_data.erased` is recorded by the service itself"),
        "{stderr}"
    );

    // A line longer than a body POSTed over HTTP may be is refused without being held whole,
    // and a file with many problems names the first twenty and counts the rest.
    let long = dir.path().join("long.jsonl");
    let mut file = std::fs::File::create(&long).unwrap();
    let mut padded = events[0].to_string();
    padded.insert_str(1, &" ".repeat(1024 * 1024));
    writeln!(file, "{padded}").unwrap();
    for _ in 0..25 {
        writeln!(file, "{{").unwrap();
    }
    drop(file);
    let output = run(&["import", long.to_str().unwrap()], &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 1: longer than 1048576 bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("line 20:"), "{stderr}");
    assert!(!stderr.contains("line 21:"), "{stderr}");
    assert!(stderr.contains("... and 6 more"), "{stderr}");
    let marked = dir.path().join("marked.jsonl");
    std::fs::write(&marked, format!("\u{feff}{}\n", events[0])).unwrap();
    let output = run(&["import", marked.to_str().unwrap()], &data);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("line 1: starts with a byte-order mark")
    );

    let good = dir.path().join("good.jsonl");
    let mut file = std::fs::File::create(&good).unwrap();
    for event in &events {
        writeln!(file, "{event}").unwrap();
    }
    let output = run(&["import", good.to_str().unwrap()], &data);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("imported 4 events (0 already recorded)")
    );
    let output = run(&["import", good.to_str().unwrap()], &data);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("imported 0 events (4 already recorded)")
    );
    // A clash with what is stored stops the import at its batch, naming the line.
    let clashing = dir.path().join("clashing.jsonl");
    let mut moved = events[1].clone();
    moved["occurred_at"] = json!("2025-02-02T09:00:00Z");
    std::fs::write(&clashing, format!("{}\n{moved}\n", events[0])).unwrap();
    let output = run(&["import", clashing.to_str().unwrap()], &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2: event")
            && stderr.contains("already recorded with different content"),
        "{stderr}"
    );

    let replay = |data: &Path| {
        let output = run(&["replay", "--client", &client.to_string(), "--json"], data);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut body: Value = serde_json::from_slice(&output.stdout).unwrap();
        body["travel_map"]["as_of"] = Value::Null;
        body
    };
    let before = replay(&data);
    assert_eq!(before["events"].as_array().unwrap().len(), 4);
    // A reader that stops early (`| head`) ends a replay quietly.
    for format in [&[][..], &["--json"][..]] {
        let mut replaying = travelmap_command()
            .args(["replay", "--client", &client.to_string()])
            .args(format)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("TRAVELMAP_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(replaying.stdout.take());
        let output = replaying.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        before["events"][0]["agency"], "local",
        "imported without config: the local credential"
    );
    assert_eq!(before["travel_map"]["phase"], "released");

    let output = run(&["rebuild"], &data);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("rebuilt 1 client views from 4 events")
    );
    assert_eq!(replay(&data), before);

    // The text replay is readable and as_of cuts the history.
    let output = run(
        &[
            "replay",
            "--client",
            &client.to_string(),
            "--as-of",
            "2000-01-01T00:00:00Z",
        ],
        &data,
    );
    assert!(!output.status.success());
    let output = run(
        &[
            "replay",
            "--client",
            &client.to_string(),
            "--as-of",
            "2999-01-01T00:00:00Z",
        ],
        &data,
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("in the future"),
        "{output:?}"
    );
    // A moment reads as the API reads `as_of`: no leap second.
    let output = run(
        &[
            "replay",
            "--client",
            &client.to_string(),
            "--as-of",
            "2016-12-31T23:59:60Z",
        ],
        &data,
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("leap seconds are not taken"),
        "{output:?}"
    );
    let output = run(&["replay", "--client", &client.to_string()], &data);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("History of client") && text.contains("phase: released"),
        "{text}"
    );
    // The text form holds what the JSON form holds: each event's id and data as recorded, and
    // the map's phases besides its steps.
    let release = events[2]["id"].as_str().unwrap();
    assert!(
        text.contains(&format!("client.released (schema 1) {release}"))
            && text.contains(r#""release_kind":"conditional""#)
            && text.contains(r#""municipality":"Opava""#)
            && text.contains("    in_custody from 2025-02-01T09:00:00Z to 2025-03-01T09:00:00Z")
            && text.contains("  steps:")
            && text.contains("(version 4, position 4)")
            && text.contains("FLAG no_first_day_contact since 2025-03-02T09:00:00Z"),
        "{text}"
    );
}

#[tokio::test]
async fn help_lists_every_command_and_credential_new_prints_a_working_entry() {
    let output = travelmap_command().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["serve", "import", "rebuild", "replay", "credential"] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
    let output = travelmap_command()
        .args([
            "credential",
            "new",
            "--id",
            "opava-prison-system",
            "--agency",
            "prison-opava",
            "--kind",
            "prison",
            "--role",
            "writer",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let key = String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        !text.contains(&key),
        "the key must not go to stdout, which is appended to config files"
    );
    let hash = text
        .lines()
        .find_map(|line| line.strip_prefix("key_sha256 = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(hash, travelmap_api::Authenticator::hash_key(&key));

    // The printed entry is a valid config file that the server accepts.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("travelmap.toml");
    std::fs::write(&config, text.as_bytes()).unwrap();
    let server = Server::start(&dir.path().join("data"), Some(&config)).await;
    let body = event(
        Uuid::new_v4(),
        "sentence.started",
        "2026-01-01T00:00:00Z",
        valid_data("sentence.started", Uuid::nil()),
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", server.address))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_readme_examples_run_verbatim() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = readme
        .split("<!-- example:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- example:end -->").next())
        .expect("README has an example block");
    let script = block
        .trim()
        .trim_start_matches("```sh")
        .trim_end_matches("```");

    // Started as the README says: no config, default data directory, in the working directory.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = travelmap_command()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_DATA_DIR")
        // A newcomer has no master key: the first start generates one.
        .env_remove("TRAVELMAP_MASTER_KEYS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut banner = String::new();
    while let Some(Ok(line)) = stderr.next() {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("travelmap is listening") {
            break;
        }
    }
    assert!(
        banner.contains("admin.key"),
        "the first start explains the key: {banner}"
    );
    std::thread::spawn(move || stderr.for_each(drop));

    let output = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<Value> = serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(answers.len(), 10, "{answers:?}");
    assert!(dir.path().join("travelmap-data/master.key").exists());
    // The prison number reached the log sealed, and comes back opened.
    for file in ["events.sqlite", "events.sqlite-wal"] {
        let log = std::fs::read(dir.path().join("travelmap-data").join(file)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&log).contains("OP-2026-0117"),
            "{file}"
        );
    }
    assert_eq!(answers[0]["version"], 1);
    assert_eq!(answers[1]["version"], 2);
    assert_eq!(answers[2]["phase"], "released");
    assert_eq!(
        answers[3]["clients"][0]["client_id"],
        "0b6f3c1e-7a2d-4f4e-8c1a-2d9e5b7a6c30"
    );
    assert_eq!(answers[4]["events"].as_array().unwrap().len(), 2);
    assert_eq!(answers[5]["events"], json!([]));
    // Every call above on the client's data is in its audit trail, with its purpose.
    let trail = answers[6]["entries"].as_array().unwrap();
    let operations: Vec<(&str, &str)> = trail
        .iter()
        .map(|entry| {
            (
                entry["operation"].as_str().unwrap(),
                entry["purpose"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        operations,
        [
            ("collection", "-"),
            ("collection", "-"),
            ("consultation", "case_management"),
            ("consultation", "case_management"),
            ("consultation", "case_management"),
            ("consultation", "case_management"),
        ]
    );
    assert_eq!(answers[7]["events"].as_array().unwrap().len(), 2);
    assert_eq!(
        answers[7]["events"][0]["data"]["identifiers"][0]["value"],
        "OP-2026-0117"
    );
    assert_eq!(answers[7]["recorded_by"][0]["agency"], "local");
    let kinds: Vec<&str> = answers[8]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["no_first_day_contact", "no_case_manager"]);
    assert_eq!(answers[9]["code"], "validation_failed");
    assert_eq!(answers[9]["field"], "data.release_kind");
}

/// Runs `travelmap import FILE` as `credential` of `config`, into `data`.
fn import_as(file: &Path, credential: &str, config: &Path, data: &Path) -> std::process::Output {
    travelmap_command()
        .args([
            "import",
            file.to_str().unwrap(),
            "--credential",
            credential,
            "--config",
        ])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_STORE")
        .output()
        .unwrap()
}

/// An import records as a configured credential, so its agency's kind limits what it may load,
/// as for the API: a file with an event outside the remit is refused whole.
#[tokio::test]
async fn import_refuses_events_the_credentials_agency_may_not_post() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let (client, other) = (Uuid::new_v4(), Uuid::new_v4());
    let file = dir.path().join("events.jsonl");
    let other_line = sample_event(other, "contact.made", "2026-01-01T00:00:00Z").to_string();
    let lines: Vec<String> = ["contact.made", "client.released"]
        .iter()
        .map(|event_type| sample_event(client, event_type, "2026-01-01T00:00:00Z").to_string())
        .collect();
    std::fs::write(&file, format!("{other_line}\n{}", lines.join("\n"))).unwrap();
    let import = |credential: &str| import_as(&file, credential, &config, &data);
    // The prison may post both.
    let accepted = import("opava-prison-system");
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(String::from_utf8_lossy(&accepted.stdout).contains("imported 3 events"));
    let refused = import("probation-system");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("may not post `client.released`"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    // As over HTTP, the remit is judged before the data: a line of a type outside it is refused
    // as such (and logged as denied under its client) whatever its data.
    let third = Uuid::new_v4();
    let mut invalid = sample_event(third, "client.released", "2026-01-01T00:00:00Z");
    invalid["data"] = json!({"bogus": 1});
    let invalid_file = dir.path().join("invalid.jsonl");
    std::fs::write(&invalid_file, format!("{invalid}\n")).unwrap();
    let refused = import_as(&invalid_file, "probation-system", &config, &data);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("line 1: agency `probation-opava` may not post `client.released`")
            && !stderr.contains("bogus"),
        "{stderr}"
    );
    // A credential without the writer role is refused before any line is read for its content.
    let unauthorised = import("coordinator-desk");
    assert!(!unauthorised.status.success());
    // Both are in the client's audit trail, as a batch posted over HTTP would be: the import,
    // and each refused attempt as denied under the client it named.
    let server = Server::start(&data, Some(&config)).await;
    let trail = trail_at(&server.address, client).await;
    let imported: Vec<&Value> = trail
        .iter()
        .filter(|entry| entry["action"] == "travelmap import")
        .collect();
    assert_eq!(imported.len(), 3, "{trail:?}");
    assert_eq!(imported[1]["outcome"], "denied");
    assert_eq!(imported[1]["credential"], "probation-system");
    assert_eq!(imported[2]["outcome"], "denied");
    assert_eq!(imported[2]["credential"], "coordinator-desk");
    assert_eq!(imported[0]["operation"], "collection");
    assert_eq!(imported[0]["outcome"], "allowed");
    assert_eq!(imported[0]["credential"], "opava-prison-system");
    assert_eq!(imported[0]["agency"], "prison-opava");
    let ids: Vec<String> = lines
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(imported[0]["returned"], ids.join(","));
    let third_trail = trail_at(&server.address, third).await;
    assert!(
        third_trail
            .iter()
            .any(|entry| entry["action"] == "travelmap import"
                && entry["outcome"] == "denied"
                && entry["credential"] == "probation-system"),
        "{third_trail:?}"
    );
    // The client of the file's allowed line is named in both refusals too, as a refused batch
    // names every client it holds.
    let denied = trail_at(&server.address, other)
        .await
        .into_iter()
        .filter(|entry| entry["action"] == "travelmap import" && entry["outcome"] == "denied")
        .count();
    assert_eq!(denied, 2);
}

/// With a configuration, an involvement or consent may name only an agency it declares: such an
/// event opens or ends that agency's access, so an invented or misspelt one is refused, by the
/// server and by an import alike.
#[tokio::test]
async fn involvements_and_consents_name_only_declared_agencies() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let client = Uuid::new_v4();
    let consent = |agency: &str| {
        json!({
            "id": Uuid::new_v4(), "type": "consent.recorded", "schema_version": 1,
            "client_id": client, "occurred_at": "2026-01-01T00:00:00Z",
            "data": {"agency": agency, "purposes": ["service_delivery"], "legal_basis": "consent"}
        })
    };
    let server = Server::start(&data, Some(&config)).await;
    let post = |body: Value| {
        reqwest::Client::new()
            .post(format!("{}/v1/events", server.address))
            .bearer_auth(PRISON_WRITER)
            .json(&body)
            .send()
    };
    let problem = expect_problem(
        post(consent("ngo-opavaa")).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.agency");
    let recorded = consent("ngo-opava");
    assert_eq!(
        post(recorded.clone()).await.unwrap().status(),
        StatusCode::CREATED
    );
    // A correction replaces the consent's data, so the agency it names is checked too.
    let correction = json!({
        "id": Uuid::new_v4(), "type": "event.corrected", "schema_version": 1,
        "client_id": client, "occurred_at": "2026-01-02T00:00:00Z",
        "data": {"event_id": recorded["id"], "reason": "wrong agency",
                 "data": {"agency": "ngo-invented", "purposes": ["service_delivery"], "legal_basis": "consent"}}
    });
    let problem = expect_problem(
        post(correction).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "data.data.agency");
    server.signal("TERM");
    assert!(server.wait().success());

    // The import checks lines as the server checks bodies: a member named twice, a control
    // character and an undeclared agency are each refused, and nothing is imported.
    let file = dir.path().join("events.jsonl");
    let mut twice = consent("ngo-opava").to_string();
    twice.insert_str(1, "\"type\": \"job.placed\", ");
    let mut hidden = consent("ngo-opava");
    hidden["actor"] = json!("PO\u{7}4");
    let lines = [
        consent("ngo-nowhere").to_string(),
        twice,
        hidden.to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = import_as(&file, "opava-prison-system", &config, &data);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 1: data.agency") && stderr.contains("ngo-nowhere"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 2: ambiguous") && stderr.contains("`type` appears twice"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3: actor"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
}

/// `keys rotate` rewraps every data key under the new master key: afterwards the old key can be
/// dropped from the configuration and the personal data still opens; without the new key it
/// does not, and the error names the key that is missing.
#[tokio::test]
async fn keys_rotate_moves_every_data_key_to_the_new_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = Uuid::new_v4();
    let file = dir.path().join("events.jsonl");
    let registered = json!({
        "id": Uuid::new_v4(), "type": "client.registered", "schema_version": 1,
        "client_id": client, "occurred_at": "2026-01-01T00:00:00Z",
        "data": {"personal": {"given_name": "Blanka"}}
    });
    std::fs::write(&file, registered.to_string()).unwrap();
    let imported = run(&["import", file.to_str().unwrap()], &data);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );

    let new_key = format!("k2:{}", "0a".repeat(32));
    let with_keys = |keys: &str, args: &[&str]| {
        travelmap_command()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("TRAVELMAP_CONFIG")
            .env("TRAVELMAP_MASTER_KEYS", keys)
            .output()
            .unwrap()
    };
    let rotated = with_keys(
        &format!("{new_key},{TEST_MASTER_KEYS}"),
        &["keys", "rotate"],
    );
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let said = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        said.contains("rewrapped") && said.contains("`k2`"),
        "{said}"
    );

    let replay = ["replay", "--client", &client.to_string(), "--json"];
    let opened = with_keys(&new_key, &replay);
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    assert!(String::from_utf8_lossy(&opened.stdout).contains("Blanka"));
    let refused = with_keys(TEST_MASTER_KEYS, &replay);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("master key `k2`"));
}

/// With a configuration that declares agencies, a caseload or alert query for an agency it does
/// not declare is `404`, not an empty list that reads as "nothing to do".
#[tokio::test]
async fn an_undeclared_agency_is_not_an_agency_with_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(&config)).await;
    let get = |path: String| {
        reqwest::Client::new()
            .get(format!("{}{path}", server.address))
            .bearer_auth(ADMIN)
            .header("x-purpose", "case_management")
            .send()
    };
    for path in [
        "/v1/agencies/probation-opavaa/caseload",
        "/v1/alerts?agency=probation-opavaa",
    ] {
        let problem = expect_problem(
            get(path.to_owned()).await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_eq!(problem["field"], "agency", "{path}");
    }
    for path in [
        "/v1/agencies/probation-opava/caseload",
        "/v1/alerts?agency=probation-opava",
    ] {
        assert_eq!(
            get(path.to_owned()).await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
}

/// `replay` beside a running server is logged under the credential that reads, in the same hash
/// chain the server goes on writing; a credential that is not a reviewer may not replay.
#[tokio::test]
async fn replay_beside_a_running_server_is_logged_in_its_trail() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(&config)).await;
    let client = Uuid::new_v4();
    let post = |event_type: &str, at: &str| {
        let body = sample_event(client, event_type, at);
        let address = server.address.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{address}/v1/events"))
                .bearer_auth(PRISON_WRITER)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        post("client.registered", "2026-01-05T09:00:00Z").await,
        StatusCode::CREATED
    );
    let replay = |credential: &str| {
        travelmap_command()
            .args(["replay", "--json", "--client", &client.to_string()])
            .args(["--credential", credential, "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("TRAVELMAP_CONFIG")
            .env_remove("TRAVELMAP_STORE")
            .output()
            .unwrap()
    };
    let refused = replay("opava-prison-system");
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("lacks the auditor or dpo role"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A replay of a directory that holds no master key (one named by mistake) makes none there.
    let elsewhere = tempfile::tempdir().unwrap();
    let keyless = travelmap_command()
        .args(["replay", "--client", &client.to_string(), "--data-dir"])
        .arg(elsewhere.path())
        .env_remove("TRAVELMAP_MASTER_KEYS")
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_STORE")
        .output()
        .unwrap();
    assert!(!keyless.status.success());
    // Nor does asking it for the service's checkpoint key, which an auditor would then pin.
    let no_signer = travelmap_command()
        .args(["audit", "public-key", "--data-dir"])
        .arg(elsewhere.path())
        .env_remove("TRAVELMAP_CONFIG")
        .output()
        .unwrap();
    assert!(!no_signer.status.success());
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    // A credential is one of a configuration: without --config it would mean nothing.
    let unconfigured = travelmap_command()
        .args(["replay", "--client", &client.to_string()])
        .args(["--credential", "dpo-office", "--data-dir"])
        .arg(&data)
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_STORE")
        .output()
        .unwrap();
    assert!(!unconfigured.status.success());
    assert!(unconfigured.stdout.is_empty());
    let replayed = replay("dpo-office");
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    // The server's own writer continues the chain after the replay's entry.
    assert_eq!(
        post("sentence.started", "2026-01-06T09:00:00Z").await,
        StatusCode::CREATED
    );
    let trail = trail_at(&server.address, client).await;
    let actions: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|entry| {
            (
                entry["action"].as_str().unwrap(),
                entry["credential"].as_str().unwrap(),
                entry["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    // The writer's refused replay is logged as denied, as the same refusal over HTTP would be.
    assert_eq!(
        actions,
        [
            ("POST /v1/events", "opava-prison-system", "allowed"),
            ("travelmap replay", "opava-prison-system", "denied"),
            ("travelmap replay", "dpo-office", "allowed"),
            ("POST /v1/events", "opava-prison-system", "allowed"),
        ]
    );
    // Each with the purpose it stated, the refusal too.
    assert_eq!(trail[1]["purpose"], "audit");
    assert_eq!(trail[2]["purpose"], "audit");
    // A replay that finds nothing fails, and is logged as the attempt it was.
    let unknown = Uuid::new_v4();
    let nothing = travelmap_command()
        .args(["replay", "--client", &unknown.to_string()])
        .args(["--credential", "dpo-office", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_STORE")
        .output()
        .unwrap();
    assert!(!nothing.status.success());
    let attempt = trail_at(&server.address, unknown).await;
    assert_eq!(attempt.len(), 1, "{attempt:?}");
    assert_eq!(attempt[0]["action"], "travelmap replay");
    assert!(attempt[0]["returned"].is_null(), "{attempt:?}");
    server.signal("TERM");
    assert!(server.wait().success());
    let verified = travelmap_command()
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_STORE")
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}

/// The binary with none of the settings the suite's environment gives it: what an operator
/// without a master key, configuration or store setting runs.
fn unconfigured() -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_remove("TRAVELMAP_MASTER_KEYS")
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_STORE");
    command
}

/// Commands that only make sense on an existing store refuse a directory without one (a
/// mistyped `--data-dir`) instead of creating an empty store and a master key there and reporting
/// success; an import of an invalid file leaves no generated key behind either.
#[test]
fn offline_commands_refuse_a_directory_without_a_store_and_leave_it_untouched() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("mistyped");
    for command in [
        &["keys", "rotate"][..],
        &["retention", "run"][..],
        &["rebuild"][..],
    ] {
        let output = unconfigured()
            .args(command)
            .arg("--data-dir")
            .arg(&missing)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{command:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("holds no store"),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!missing.exists(), "{command:?} created the directory");
    }
    let file = parent.path().join("bad.jsonl");
    std::fs::write(&file, "{not json\n").unwrap();
    let output = unconfigured()
        .arg("import")
        .arg(&file)
        .arg("--data-dir")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!missing.join("master.key").exists());
    // Refused for its credential's role: said plainly, with no trail made just to log it.
    let config = write_config(parent.path());
    let output = unconfigured()
        .arg("import")
        .arg(&file)
        .args(["--credential", "dpo-office", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: credential `dpo-office` lacks the writer role"),
        "{stderr}"
    );
    assert!(!missing.exists());
}

/// `credential new` prints entries the configuration reads back as given, whatever the id holds,
/// and refuses what the server would refuse: blank names, ids in the tokens' `jwt:` namespace.
#[test]
fn credential_new_prints_entries_that_read_back_as_given() {
    let made = Command::new(BINARY)
        .args([
            "credential",
            "new",
            "--id",
            r#"x"y\z"#,
            "--agency",
            "prison-a",
        ])
        .args(["--kind", "prison", "--role", "writer"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let entries: toml::Table = String::from_utf8(made.stdout).unwrap().parse().unwrap();
    assert_eq!(entries["credentials"][0]["id"].as_str(), Some(r#"x"y\z"#));
    assert_eq!(entries["agencies"][0]["id"].as_str(), Some("prison-a"));
    for unreadable in [" ", " padded", "two\nlines", "jwt:subject"] {
        let refused = Command::new(BINARY)
            .args([
                "credential",
                "new",
                "--id",
                unreadable,
                "--agency",
                "prison-a",
            ])
            .args(["--role", "writer"])
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{unreadable:?}");
        assert!(refused.stdout.is_empty());
    }
}

/// A start that fails (its port is in use) does not first tell the newcomer how to call it, nor
/// keep a key whose how-to the next start would then not tell.
#[test]
fn a_failed_start_prints_no_instructions_for_a_server_that_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = travelmap_command()
        .arg("serve")
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("TRAVELMAP_CONFIG")
        .env_remove("TRAVELMAP_STORE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("Use it like this"), "{stderr}");
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
    // Nor does it keep the key it made: the next start makes one and tells how to use it.
    assert!(!dir.path().join("admin.key").exists());

    // The address is taken before anything is written: no store, no keys, no directory.
    let fresh = dir.path().join("new-data");
    let output = unconfigured()
        .arg("serve")
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string())
        .arg("--data-dir")
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!fresh.exists(), "{:?}", std::fs::read_dir(&fresh).ok());

    // A database out of reach: the keys made for it are removed again, and the directories made
    // to hold them.
    let fresh = dir.path().join("made/for/the/start");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!(
        "postgres://postgres@{}/nothing",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let output = unconfigured()
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--store")
        .arg(&unreachable)
        .arg("--data-dir")
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!dir.path().join("made").exists());
    assert!(dir.path().exists());
}

/// A master key is generated for a new store only: beside a key store made under a key that has
/// gone missing, a new key would open nothing and would have to be found and removed before the
/// right one could be put back.
#[test]
fn a_missing_master_key_is_not_replaced_by_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("events.jsonl");
    let client = Uuid::new_v4();
    std::fs::write(
        &file,
        format!(
            "{}\n",
            sample_event(client, "client.registered", "2026-01-05T09:00:00Z")
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        unconfigured()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let imported = run(&["import", file.to_str().unwrap()]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let master = data.join("master.key");
    let generated = std::fs::read_to_string(&master).unwrap();
    // Dated, with a suffix that keeps two keys made on one day apart.
    let id = generated
        .lines()
        .find(|line| !line.starts_with('#'))
        .and_then(|line| line.split_once(':'))
        .unwrap()
        .0;
    assert!(
        id.starts_with('k') && id.len() == "k20260105-abcdef".len(),
        "{id}"
    );

    std::fs::remove_file(&master).unwrap();
    let refused = run(&["rebuild"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("holds keys wrapped"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!master.exists());
    std::fs::write(&master, generated).unwrap();
    assert!(run(&["rebuild"]).status.success());

    // A key store that holds no key yet (`migrate` on a new directory makes one) still gets a
    // master key made on first use.
    std::fs::remove_dir_all(&data).unwrap();
    assert!(run(&["migrate"]).status.success());
    assert!(!master.exists());
    let rebuilt = run(&["rebuild"]);
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(master.exists());
}

#[test]
fn retention_run_without_a_schedule_still_prints_a_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let migrated = run(&["migrate"], dir.path());
    assert!(migrated.status.success(), "{migrated:?}");
    let output = run(&["retention", "run"], dir.path());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(report["clients"], 0);
    assert_eq!(report["due"], serde_json::json!([]));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no retention schedule"),
        "the reason is told on standard error"
    );
}

/// A command whose standard output is closed early (`travelmap migrate | true`) reports it and
/// fails; it does not panic with a backtrace.
#[test]
fn a_closed_standard_output_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["migrate"][..], &["audit", "verify"]] {
        let mut child = travelmap_command()
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("TRAVELMAP_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if !output.status.success() {
            assert!(stderr.contains("Broken pipe"), "{args:?}: {stderr}");
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        }
    }
}

/// `credential new --config FILE` checks the new entry against the file it is to be appended
/// to: an id already there, an agency declared twice or not at all, are refused before a key is
/// made, so that the server does not then refuse the file.
#[test]
fn credential_new_checks_the_entry_against_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let new = |args: &[&str]| {
        travelmap_command()
            .args(["credential", "new", "--role", "writer", "--config"])
            .arg(&config)
            .args(args)
            .env_remove("TRAVELMAP_CONFIG")
            .output()
            .unwrap()
    };
    for (args, refusal) in [
        (
            &["--id", "opava-prison-system", "--agency", "prison-opava"][..],
            "already in",
        ),
        (
            &[
                "--id",
                "new-desk",
                "--agency",
                "prison-opava",
                "--kind",
                "prison",
            ],
            "already declared",
        ),
        (
            &["--id", "new-desk", "--agency", "prison-brno"],
            "not declared",
        ),
    ] {
        let output = new(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(refusal), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty());
    }
    let made = new(&["--id", "new-desk", "--agency", "prison-opava"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&String::from_utf8(made.stdout).unwrap());
    std::fs::write(&config, text).unwrap();
    let entries: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    assert!(
        entries["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["id"].as_str() == Some("new-desk"))
    );
}
