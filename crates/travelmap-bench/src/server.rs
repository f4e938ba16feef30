//! The application under test, started in this process exactly as `travelmap serve` builds it,
//! and a small HTTP client for it. Requests go through a real TCP socket on 127.0.0.1, so the
//! figures include parsing, routing, authentication and serialisation, as a sender would see.

use std::time::{Duration, Instant};
use travelmap_store::Location;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use travelmap::{Application, ServeSettings};
use travelmap_api::{Authenticator, Credential, Role};
use uuid::Uuid;

const KEY: &str = "bench-key";

/// A running application over one data directory.
pub struct Server {
    pub api: Api,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub async fn start(store: &Location) -> anyhow::Result<Self> {
        Self::start_with(store, true, true).await
    }

    /// Starts the service with its audit trail, or (`audited` false) with one that keeps
    /// nothing, to measure what the trail costs; with personal fields sealed, or (`sealed`
    /// false) stored as they are, to measure what encryption costs.
    pub async fn start_with(store: &Location, audited: bool, sealed: bool) -> anyhow::Result<Self> {
        let credential = Credential {
            id: "bench".into(),
            agency: "bench-agency".into(),
            // The workload posts every event type, as the no-config local admin may.
            agency_kind: None,
            roles: vec![Role::Writer, Role::Coordinator, Role::Auditor, Role::Admin],
        };
        let authenticator = Authenticator::new([(Authenticator::hash_key(KEY), credential)])?;
        let app = Application::build(ServeSettings {
            listen: "127.0.0.1:0".parse()?,
            listener: None,
            store: store.clone(),
            authenticator,
            break_glass: travelmap_api::DEFAULT_BREAK_GLASS,
            checkpoint_key: ed25519_dalek::SigningKey::from_bytes(&rand::random()),
            master_keys: sealed.then(bench_master_keys),
            retention: Default::default(),
            retention_every: travelmap::retention::DAILY,
            coordination: Default::default(),
            clock: std::sync::Arc::new(travelmap_service::coordination::SystemClock),
            audit_override: (!audited).then(|| {
                std::sync::Arc::new(travelmap_store::DiscardedAudit)
                    as std::sync::Arc<dyn travelmap_store::AuditLog>
            }),
            webhooks: Default::default(),
            // Receivers on the public internet only, the default (the benchmark registers none).
            webhook_destinations: Default::default(),
        })
        .await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            api: Api::new(base)?,
            stop,
            task,
        })
    }

    /// Stops serving and waits until the store is closed and the data directory unlocked.
    pub async fn stop(self) -> anyhow::Result<()> {
        drop(self.api);
        let _ = self.stop.send(());
        self.task.await.context("the server task panicked")?
    }
}

/// A client of the v1 API. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
}

impl Api {
    fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // A proxy from the environment must not carry benchmark traffic off the machine.
            .no_proxy()
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            http,
            base,
            auth: HeaderValue::from_str(&format!("Bearer {KEY}"))?,
        })
    }

    /// Posts one event; anything but `201 Created` means the workload or the service is wrong,
    /// and a benchmark of failing requests would measure nothing useful.
    pub async fn post_event(&self, body: String) -> anyhow::Result<()> {
        self.post("/v1/events", body).await.map(drop)
    }

    pub async fn post_batch(&self, body: String) -> anyhow::Result<()> {
        self.post("/v1/events/batch", body).await.map(drop)
    }

    /// Posts one event and returns the position its receipt gives.
    pub async fn post_event_at(&self, body: String) -> anyhow::Result<u64> {
        let answer = self.post("/v1/events", body).await?;
        let receipt: serde_json::Value = serde_json::from_slice(answer.as_ref())?;
        receipt["position"]
            .as_u64()
            .context("a receipt without a position")
    }

    /// POSTs `body`; anything but `201 Created` is an error. Returns the answer's body.
    async fn post(&self, path: &str, body: String) -> anyhow::Result<impl AsRef<[u8]>> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer = response.bytes().await?;
        if status != StatusCode::CREATED {
            bail!(
                "POST {path} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(answer)
    }

    /// A GET of `path` with the benchmark's key, stating purpose `case_management`.
    fn reading(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .header("x-purpose", "case_management")
    }

    /// GETs `path` (stating purpose `case_management`); anything but `200 OK` is an error.
    pub async fn get(&self, path: &str) -> anyhow::Result<impl AsRef<[u8]> + use<>> {
        let response = self.reading(path).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != StatusCode::OK {
            bail!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }

    /// Opens a server-sent event stream at `path`.
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let response = self.reading(path).send().await?;
        if response.status() != StatusCode::OK {
            bail!("GET {path} answered {}", response.status());
        }
        Ok(response)
    }

    /// Reads a travel map and returns its body.
    pub async fn travel_map(&self, client_id: Uuid) -> anyhow::Result<impl AsRef<[u8]> + use<>> {
        self.get(&format!("/v1/clients/{client_id}/travel-map"))
            .await
    }

    /// The log's head and the projection's position, from `/healthz`.
    pub async fn health(&self) -> anyhow::Result<(u64, u64)> {
        let health: serde_json::Value = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let position = |name: &str| {
            health[name]
                .as_u64()
                .with_context(|| format!("/healthz has no `{name}`: {health}"))
        };
        Ok((position("head")?, position("projection")?))
    }

    /// Waits until the travel maps reflect every recorded event (they are projected
    /// asynchronously), and returns how long that took.
    pub async fn wait_for_projection(&self, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let (head, projection) = self.health().await?;
            if projection >= head {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!("the projection is at {projection} of {head} after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The process's resident anonymous memory (heap and stacks), in KiB, from `/proc/self/status`.
/// Anonymous rather than all resident memory: the store memory-maps its files, and those pages
/// are the kernel's page cache (shared, reclaimable), not memory the service holds on to.
pub fn resident_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (resident memory is measured on Linux only)")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no RssAnon in /proc/self/status")
}

/// CPU time this process has used so far, user and system, from `/proc/self/stat` (in the
/// kernel's clock ticks of 10 ms; threads that have ended are counted too). Less disturbed by
/// other work on the machine than elapsed time, so it tells small changes apart where rates
/// cannot; on PostgreSQL it leaves out the server's own share.
pub fn process_cpu() -> anyhow::Result<Duration> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat")
        .context("reading /proc/self/stat (CPU time is measured on Linux only)")?;
    // The command name is in parentheses and may hold spaces: fields are counted after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .context("no command name in /proc/self/stat")?;
    let ticks = |index: usize| -> anyhow::Result<f64> {
        let field = fields.get(index).context("/proc/self/stat is too short")?;
        Ok(field.parse::<u64>()? as f64)
    };
    // utime and stime are the 14th and 15th fields; the state, third, is the first after `)`.
    let (user, system) = (ticks(11)?, ticks(12)?);
    Ok(Duration::from_secs_f64((user + system) / TICKS_PER_SECOND))
}

/// The live heap in KiB: bytes the allocator has handed out and not had back (jemalloc's
/// `stats.allocated`), without the free memory it keeps for reuse, which the resident set counts.
pub fn heap_kib() -> anyhow::Result<u64> {
    tikv_jemalloc_ctl::epoch::advance().map_err(|error| anyhow::anyhow!("{error}"))?;
    let allocated =
        tikv_jemalloc_ctl::stats::allocated::read().map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(allocated as u64 / 1024)
}

/// The master key the benchmark seals with (fixed, so that a rebuild opens what was sealed).
pub fn bench_master_keys() -> travelmap_store::MasterKeys {
    travelmap_store::MasterKeys::new(
        travelmap_store::MasterKey::new("bench", [5; 32]),
        Vec::new(),
    )
}
