//! `spawn_app` and request helpers shared by the tests.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use travelmap::{Application, ServeSettings};
use travelmap_api::{Authenticator, Credential, Role};
use travelmap_domain::AgencyKind;
use uuid::Uuid;

/// Keys of the test credentials. Each acts for a different agency so that tests can see which
/// agency an event was recorded for; the writers cover every kind of agency.
pub const PRISON_WRITER: &str = "key-prison-writer";
pub const PROBATION_WRITER: &str = "key-probation-writer";
pub const BUREAU_WRITER: &str = "key-bureau-writer";
pub const NGO_WRITER: &str = "key-ngo-writer";
pub const MUNICIPALITY_WRITER: &str = "key-municipality-writer";
pub const HOUSING_WRITER: &str = "key-housing-writer";
pub const HEALTH_WRITER: &str = "key-health-writer";
pub const COURT_WRITER: &str = "key-court-writer";
pub const OTHER_WRITER: &str = "key-other-writer";
pub const COORDINATOR: &str = "key-coordinator";
/// A coordinator of an NGO (agency `ngo-opava`, the same agency as [`NGO_WRITER`]).
pub const NGO_COORDINATOR: &str = "key-ngo-coordinator";
pub const DPO: &str = "key-dpo";
pub const AUDITOR: &str = "key-auditor";
pub const ADMIN: &str = "key-admin";

/// The writer keys, one per kind of agency.
pub const WRITERS: [(&str, AgencyKind); 9] = [
    (PRISON_WRITER, AgencyKind::Prison),
    (PROBATION_WRITER, AgencyKind::Probation),
    (BUREAU_WRITER, AgencyKind::EmploymentBureau),
    (NGO_WRITER, AgencyKind::Ngo),
    (MUNICIPALITY_WRITER, AgencyKind::Municipality),
    (HOUSING_WRITER, AgencyKind::Housing),
    (HEALTH_WRITER, AgencyKind::Health),
    (COURT_WRITER, AgencyKind::Court),
    (OTHER_WRITER, AgencyKind::Other),
];

pub fn credentials() -> Vec<(&'static str, Credential)> {
    let credential = |id: &str, agency: &str, kind: AgencyKind, roles: Vec<Role>| Credential {
        id: id.into(),
        agency: agency.into(),
        agency_kind: Some(kind),
        roles,
    };
    let mut credentials = vec![
        (
            PRISON_WRITER,
            credential(
                "opava-prison-system",
                "prison-opava",
                AgencyKind::Prison,
                vec![Role::Writer],
            ),
        ),
        (
            PROBATION_WRITER,
            credential(
                "probation-system",
                "probation-opava",
                AgencyKind::Probation,
                vec![Role::Writer],
            ),
        ),
        (
            COORDINATOR,
            credential(
                "coordinator-desk",
                "municipality-opava",
                AgencyKind::Municipality,
                vec![Role::Coordinator],
            ),
        ),
        (
            AUDITOR,
            credential(
                "dpo-office",
                "audit-office",
                AgencyKind::Other,
                vec![Role::Auditor],
            ),
        ),
        (
            ADMIN,
            credential("ops", "operations", AgencyKind::Other, vec![Role::Admin]),
        ),
        (
            NGO_COORDINATOR,
            credential(
                "ngo-desk",
                "ngo-opava",
                AgencyKind::Ngo,
                vec![Role::Coordinator],
            ),
        ),
        (
            DPO,
            credential("dpo", "audit-office", AgencyKind::Other, vec![Role::Dpo]),
        ),
    ];
    for (key, kind) in &WRITERS[2..] {
        credentials.push((
            *key,
            credential(
                &format!("{kind}-system"),
                &format!("{kind}-opava"),
                *kind,
                vec![Role::Writer],
            ),
        ));
    }
    credentials
}

/// A writer key whose agency may post `event_type` (the prison's where it may).
pub fn writer_for(event_type: &str) -> &'static str {
    WRITERS
        .iter()
        .find(|(_, kind)| travelmap_domain::agency::may_post(*kind, event_type))
        .map(|(key, _)| *key)
        .unwrap_or_else(|| panic!("no agency may post {event_type}"))
}

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub data_dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Starts the application on a free port with a fresh data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("temp dir")).await
}

pub async fn spawn_app_in(data_dir: TempDir) -> TestApp {
    spawn_app_with(data_dir, travelmap_api::DEFAULT_BREAK_GLASS).await
}

/// Where a test's store lives: the embedded store in the app's data directory, or a scratch
/// PostgreSQL database (dropped by [`Backend::remove`]).
pub enum Backend {
    Embedded,
    Postgres(travelmap_store::postgres::ScratchDatabase),
}

impl Backend {
    pub async fn embedded() -> Self {
        Backend::Embedded
    }

    pub async fn postgres() -> Self {
        let server = travelmap_store::postgres::server_from_env();
        let database =
            travelmap_store::postgres::ScratchDatabase::create(&server, "travelmap_test")
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "these tests need PostgreSQL at {server} ({error}); see docs/operations.md"
                    )
                });
        Backend::Postgres(database)
    }

    pub fn location(&self, data_dir: &std::path::Path) -> travelmap_store::Location {
        match self {
            Backend::Embedded => travelmap_store::Location::Embedded(data_dir.to_owned()),
            Backend::Postgres(database) => {
                travelmap_store::Location::Postgres(database.url().to_owned())
            }
        }
    }

    /// The arguments that point the binary at this store, given the app's data directory.
    pub fn store_args(&self, data_dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--data-dir".into(), data_dir.as_os_str().to_owned()];
        if let Backend::Postgres(database) = self {
            args.extend(["--store".into(), database.url().into()]);
        }
        args
    }

    pub async fn remove(self) {
        if let Backend::Postgres(database) = self {
            database.drop_database().await.unwrap();
        }
    }
}

/// Starts the application on `backend` with a fresh data directory.
pub async fn spawn_app_on(backend: &Backend) -> TestApp {
    spawn_app_on_in(backend, tempfile::tempdir().expect("temp dir")).await
}

/// Starts the application on `backend` with `data_dir` (to restart on an embedded store).
pub async fn spawn_app_on_in(backend: &Backend, data_dir: TempDir) -> TestApp {
    let location = backend.location(data_dir.path());
    spawn_app_at(data_dir, location, travelmap_api::DEFAULT_BREAK_GLASS).await
}

/// Starts the application with break-glass grants lasting `break_glass`.
pub async fn spawn_app_with(data_dir: TempDir, break_glass: std::time::Duration) -> TestApp {
    let location = travelmap_store::Location::Embedded(data_dir.path().to_owned());
    spawn_app_at(data_dir, location, break_glass).await
}

async fn spawn_app_at(
    data_dir: TempDir,
    store: travelmap_store::Location,
    break_glass: std::time::Duration,
) -> TestApp {
    spawn_app_full(
        data_dir,
        store,
        break_glass,
        Default::default(),
        Coordination::default(),
        (webhook_policy(), receivers_here()),
        None,
    )
    .await
}

/// How the coordinators' views are set up: the thresholds and the clock alerts read.
pub struct Coordination {
    pub rules: travelmap_projections::coordination::Rules,
    pub clock: std::sync::Arc<dyn travelmap_service::coordination::Clock>,
}

impl Default for Coordination {
    fn default() -> Self {
        Self {
            rules: Default::default(),
            clock: std::sync::Arc::new(travelmap_service::coordination::SystemClock),
        }
    }
}

/// Starts the application on `backend` with the given coordination rules and clock.
pub async fn spawn_app_with_coordination(backend: &Backend, coordination: Coordination) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let location = backend.location(data_dir.path());
    spawn_app_full(
        data_dir,
        location,
        travelmap_api::DEFAULT_BREAK_GLASS,
        Default::default(),
        coordination,
        (webhook_policy(), receivers_here()),
        None,
    )
    .await
}

/// Starts the application on `backend` applying `retention` every 100 ms.
pub async fn spawn_app_with_retention(
    backend: &Backend,
    retention: travelmap_projections::retention::Schedule,
) -> TestApp {
    spawn_app_with_retention_in(backend, tempfile::tempdir().expect("temp dir"), retention).await
}

/// [`spawn_app_with_retention`] with `data_dir` (to restart on an embedded store).
pub async fn spawn_app_with_retention_in(
    backend: &Backend,
    data_dir: TempDir,
    retention: travelmap_projections::retention::Schedule,
) -> TestApp {
    let location = backend.location(data_dir.path());
    spawn_app_full(
        data_dir,
        location,
        travelmap_api::DEFAULT_BREAK_GLASS,
        (retention, std::time::Duration::from_millis(100)),
        Coordination::default(),
        (webhook_policy(), receivers_here()),
        None,
    )
    .await
}

async fn spawn_app_full(
    data_dir: TempDir,
    store: travelmap_store::Location,
    break_glass: std::time::Duration,
    (retention, retention_every): (
        travelmap_projections::retention::Schedule,
        std::time::Duration,
    ),
    coordination: Coordination,
    (webhooks, webhook_destinations): (
        travelmap_webhooks::Policy,
        travelmap_webhooks::Destinations,
    ),
    declared: Option<&[&str]>,
) -> TestApp {
    let mut authenticator = Authenticator::new(
        credentials()
            .into_iter()
            .map(|(key, credential)| (Authenticator::hash_key(key), credential)),
    )
    .expect("valid test credentials");
    if let Some(declared) = declared {
        authenticator =
            authenticator.with_agencies(declared.iter().map(|agency| (*agency).to_owned()));
    }
    let application = Application::build(ServeSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        listener: None,
        store,
        authenticator,
        break_glass,
        checkpoint_key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        master_keys: Some(travelmap_store::MasterKeys::new(
            travelmap_store::MasterKey::new("test", [9; 32]),
            Vec::new(),
        )),
        retention,
        retention_every: if retention_every.is_zero() {
            travelmap::retention::DAILY
        } else {
            retention_every
        },
        coordination: coordination.rules,
        clock: coordination.clock,
        audit_override: None,
        webhooks,
        webhook_destinations,
    })
    .await
    .expect("application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        http: reqwest::Client::new(),
        data_dir,
        stop: Some(stop),
        server: Some(server),
    }
}

/// Starts the application on `backend` delivering webhooks by `policy`.
pub async fn spawn_app_with_webhooks(
    backend: &Backend,
    policy: travelmap_webhooks::Policy,
) -> TestApp {
    spawn_app_with_webhooks_in(backend, tempfile::tempdir().expect("temp dir"), policy).await
}

/// [`spawn_app_with_webhooks`] with `data_dir` (to restart on an embedded store).
pub async fn spawn_app_with_webhooks_in(
    backend: &Backend,
    data_dir: TempDir,
    policy: travelmap_webhooks::Policy,
) -> TestApp {
    spawn_app_delivering(backend, data_dir, policy, None).await
}

/// [`spawn_app_with_webhooks_in`] with a configuration that declares only `agencies`.
pub async fn spawn_app_declaring(
    backend: &Backend,
    data_dir: TempDir,
    policy: travelmap_webhooks::Policy,
    agencies: &[&str],
) -> TestApp {
    spawn_app_delivering(backend, data_dir, policy, Some(agencies)).await
}

async fn spawn_app_delivering(
    backend: &Backend,
    data_dir: TempDir,
    policy: travelmap_webhooks::Policy,
    declared: Option<&[&str]>,
) -> TestApp {
    spawn_app_receiving(backend, data_dir, (policy, receivers_here()), declared).await
}

/// Starts the application on `backend` with webhook receivers allowed only at `destinations`.
pub async fn spawn_app_receiving_at(
    backend: &Backend,
    data_dir: TempDir,
    policy: travelmap_webhooks::Policy,
    destinations: travelmap_webhooks::Destinations,
) -> TestApp {
    spawn_app_receiving(backend, data_dir, (policy, destinations), None).await
}

async fn spawn_app_receiving(
    backend: &Backend,
    data_dir: TempDir,
    webhooks: (travelmap_webhooks::Policy, travelmap_webhooks::Destinations),
    declared: Option<&[&str]>,
) -> TestApp {
    let location = backend.location(data_dir.path());
    spawn_app_full(
        data_dir,
        location,
        travelmap_api::DEFAULT_BREAK_GLASS,
        Default::default(),
        Coordination::default(),
        webhooks,
        declared,
    )
    .await
}

/// The test receivers listen on this machine: loopback is allowed besides the public internet,
/// as in a service started without a configuration.
fn receivers_here() -> travelmap_webhooks::Destinations {
    travelmap_webhooks::Destinations::public_and_loopback()
}

/// Webhook retries in milliseconds rather than seconds, so that tests of a receiver that fails
/// for a while take moments; the first pause is still long enough to see several attempts.
pub fn webhook_policy() -> travelmap_webhooks::Policy {
    travelmap_webhooks::Policy {
        backoff: travelmap_webhooks::Backoff {
            base: std::time::Duration::from_millis(20),
            cap: std::time::Duration::from_millis(200),
        },
        timeout: std::time::Duration::from_secs(5),
        max_attempts: 1000,
        refresh: std::time::Duration::from_millis(200),
    }
}

impl TestApp {
    /// Stops the server cleanly and hands back the data directory (to restart on it).
    pub async fn stop(mut self) -> TempDir {
        self.stop.take().unwrap().send(()).unwrap();
        self.server.take().unwrap().await.unwrap().unwrap();
        self.data_dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// DELETE with a JSON body (the data-protection officer's decisions carry a reason).
    pub async fn delete(&self, path: &str, key: &str, body: &Value) -> Response {
        self.http
            .delete(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_event(&self, key: &str, event: &Value) -> Response {
        self.post("/v1/events", key, event).await
    }

    /// GET stating a purpose, as every read of personal data must: `audit` for the audit
    /// trail, `case_management` for the rest.
    pub async fn get(&self, path: &str, key: &str) -> Response {
        let purpose = if path.starts_with("/v1/audit/") {
            "audit"
        } else {
            "case_management"
        };
        self.get_for(path, key, purpose).await
    }

    /// GET stating `purpose`.
    pub async fn get_for(&self, path: &str, key: &str, purpose: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .header("x-purpose", purpose)
            .send()
            .await
            .expect("request sent")
    }

    /// GET that must answer 200; returns the JSON body.
    pub async fn get_ok(&self, path: &str, key: &str) -> Value {
        let response = self.get(path, key).await;
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// The client's audit trail entries, in order, as an auditor reads them.
    pub async fn trail_of(&self, client: Uuid) -> Vec<Value> {
        trail_at(&self.address, client).await
    }

    /// Every event in the global feed.
    pub async fn feed(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get_ok(&format!("/v1/events?after={after}&limit=1000"), AUDITOR)
                .await;
            let batch = page["events"].as_array().unwrap().clone();
            if batch.is_empty() {
                return events;
            }
            after = page["next_after"].as_u64().unwrap();
            events.extend(batch);
        }
    }

    /// The travel map once the projection has caught up with `position`.
    pub async fn travel_map(&self, client: Uuid, position: u64) -> Value {
        self.get_ok(
            &format!("/v1/clients/{client}/travel-map?min_position={position}"),
            AUDITOR,
        )
        .await
    }
}

/// An event body with fresh id.
pub fn event(client: Uuid, event_type: &str, occurred_at: &str, data: Value) -> Value {
    json!({
        "id": Uuid::new_v4(),
        "type": event_type,
        "schema_version": 1,
        "client_id": client,
        "occurred_at": occurred_at,
        "data": data,
    })
}

/// Asserts a problem-details answer and returns its body.
pub async fn expect_problem(response: Response, status: StatusCode, code: &str) -> Value {
    let actual = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(actual, status, "unexpected status; body: {body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["type"], format!("/problems/{code}"));
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}

/// The master keys every spawned `travelmap` uses: processes sharing a database, and commands run
/// on a server's data directory, must all unwrap the same data keys.
pub const TEST_MASTER_KEYS: &str =
    "test:0909090909090909090909090909090909090909090909090909090909090909";

/// The real binary, with the test master keys.
pub fn travelmap_command() -> std::process::Command {
    let mut command = std::process::Command::new(crate::binary::BINARY);
    command.env("TRAVELMAP_MASTER_KEYS", TEST_MASTER_KEYS);
    command
}

/// The client's audit trail entries, in order, as an auditor reads them from the server at
/// `address` (`http://host:port`).
pub async fn trail_at(address: &str, client: Uuid) -> Vec<Value> {
    let response = reqwest::Client::new()
        .get(format!("{address}/v1/audit/clients/{client}"))
        .bearer_auth(AUDITOR)
        .header("x-purpose", "audit")
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    let trail: Value = response.json().await.expect("JSON body");
    trail["entries"].as_array().expect("entries").clone()
}

/// An embedded store's audit trail made to refuse every new entry, as a trail that fails does,
/// until [`RefusingTrail::takes_entries_again`].
pub struct RefusingTrail(rusqlite::Connection);

impl RefusingTrail {
    pub fn start(app: &TestApp) -> Self {
        Self::start_in(app.data_dir.path())
    }

    /// [`Self::start`] on the trail of the store in `data_dir`, running or not.
    pub fn start_in(data_dir: &std::path::Path) -> Self {
        let trail = rusqlite::Connection::open(data_dir.join("audit.sqlite")).unwrap();
        // An insert into a table that does not exist fails every entry, and so its commit.
        trail
            .execute_batch(
                "CREATE TRIGGER refuse_entries BEFORE INSERT ON audit \
                 BEGIN INSERT INTO gone VALUES (1); END;",
            )
            .unwrap();
        Self(trail)
    }

    pub fn takes_entries_again(self) {
        self.0
            .execute_batch("DROP TRIGGER refuse_entries;")
            .unwrap();
    }
}
