//! The running service: store, projector and HTTP server, built from settings and stopped
//! cleanly.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use travelmap_api::{AppState, Authenticator};
use travelmap_service::Journeys;
use travelmap_service::coordination::Coordination;
use travelmap_service::health;
use travelmap_service::subscriptions::FeedHub;
use travelmap_store::{Location, Store};

/// What [`Application::build`] needs.
pub struct ServeSettings {
    /// Address to bind; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// A listener already bound to `listen`, if the caller bound it first: `travelmap serve`
    /// does, so that an address in use fails the start before anything is written to disk.
    pub listener: Option<TcpListener>,
    /// Where events and views are stored.
    pub store: Location,
    /// Who may call the API.
    pub authenticator: Authenticator,
    /// How long a break-glass grant lasts.
    pub break_glass: std::time::Duration,
    /// Signs audit checkpoints.
    pub checkpoint_key: ed25519_dalek::SigningKey,
    /// Wrap the data keys that seal personal fields. `None` stores personal fields unsealed:
    /// only the benchmark does that (to measure what sealing costs); the binary never does.
    pub master_keys: Option<travelmap_store::MasterKeys>,
    /// When each category of personal data is due for shredding; empty keeps everything.
    pub retention: travelmap_projections::retention::Schedule,
    /// How often the schedule is applied ([`crate::retention::DAILY`]; tests shorten it).
    pub retention_every: std::time::Duration,
    /// The caseload threshold and the days a released client may go without a case manager.
    pub coordination: travelmap_projections::coordination::Rules,
    /// Where alerts read the time ([`travelmap_service::coordination::SystemClock`]; tests move
    /// a manual one).
    pub clock: Arc<dyn travelmap_service::coordination::Clock>,
    /// Replaces the store's audit trail. Only the benchmark sets it (to
    /// [`travelmap_store::DiscardedAudit`], to measure what the trail costs); the binary never
    /// does.
    pub audit_override: Option<Arc<dyn travelmap_store::AuditLog>>,
    /// How webhook deliveries are timed out and retried.
    pub webhooks: travelmap_webhooks::Policy,
    /// The addresses webhook receivers may be at.
    pub webhook_destinations: travelmap_webhooks::Destinations,
}

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    store: Store,
    journeys: Arc<Journeys>,
    authenticator: Arc<Authenticator>,
    break_glass: std::time::Duration,
    checkpoint_key: Arc<ed25519_dalek::SigningKey>,
    audit: Arc<dyn travelmap_store::AuditLog>,
    /// Whether the trail takes entries, for `GET /readyz`.
    trail_health: travelmap_service::trail::TrailHealth,
    retention: travelmap_projections::retention::Schedule,
    retention_every: std::time::Duration,
    coordination: Arc<Coordination>,
    hub: Arc<FeedHub>,
    webhooks: Arc<dyn travelmap_store::WebhookStore>,
    webhook_policy: travelmap_webhooks::Policy,
    webhook_destinations: travelmap_webhooks::Destinations,
}

impl Application {
    /// Opens the store and binds the listener. The projector starts with [`Self::run_until`].
    pub async fn build(settings: ServeSettings) -> anyhow::Result<Self> {
        // First: an address in use fails the start before the store is opened (or made).
        let listener = match settings.listener {
            Some(bound) => bound,
            None => TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?,
        };
        let store = Store::open(&settings.store)
            .await
            .with_context(|| format!("opening the {}", settings.store.describe()))?;
        let keyring = match settings.master_keys {
            Some(masters) => {
                let keyring = store
                    .keyring(masters)
                    .await
                    .context("opening the key store")?;
                crate::settings::master_key_used();
                Some(keyring)
            }
            None => None,
        };
        let journeys = Arc::new(Journeys::new(store.log(), store.views(), keyring).await?);
        let (audit, trail_health) = travelmap_service::trail::WatchedTrail::new(
            settings.audit_override.unwrap_or_else(|| store.audit()),
        );
        let audit: Arc<dyn travelmap_store::AuditLog> = audit;
        // A key made now for a trail a server wrote to before is not the key that server had
        // (its file was lost, or not restored with the data): the checkpoints it signed, and
        // the public key auditors took from it, would no longer verify, as if the trail had been
        // altered. A trail written only by offline commands (an `import` before a first start;
        // their actions start with `travelmap `) had no key to lose. A check that cannot be made
        // is said, and does not stop the start.
        if let Some(generated) = crate::settings::generated_signing_key() {
            match audit
                .any_action_outside(crate::commands::OFFLINE_ACTION_PREFIX)
                .await
            {
                Ok(false) => {}
                Ok(true) => tracing::error!(
                    key = %generated.display(),
                    "generated a new checkpoint-signing key for an audit trail a server wrote to \
                     before: checkpoints signed with the earlier key, and its public key as \
                     auditors took it, will not verify against this one. If that key's file was \
                     lost or not restored, stop the service and put it back; with several \
                     processes on one database, give each the same audit_signing_key_file (see \
                     docs/operations.md)"
                ),
                Err(error) => tracing::error!(
                    key = %generated.display(), %error,
                    "generated a new checkpoint-signing key, and cannot tell whether a server \
                     wrote to the audit trail before with another: if so, its checkpoints will \
                     not verify against this key"
                ),
            }
        }
        travelmap_api::audit::end_grants_a_setting_shortens(audit.as_ref(), settings.break_glass)
            .await
            .context("ending the break-glass grants a shorter setting ends")?;
        let coordination = Arc::new(Coordination::new(
            journeys.log().clone(),
            journeys.views().clone(),
            journeys.projector().clone(),
            settings.clock,
            settings.coordination,
        ));
        let hub = Arc::new(FeedHub::new(journeys.clone()));
        Ok(Self {
            listener,
            journeys,
            authenticator: Arc::new(settings.authenticator),
            break_glass: settings.break_glass,
            checkpoint_key: Arc::new(settings.checkpoint_key),
            audit,
            trail_health,
            retention: settings.retention,
            retention_every: settings.retention_every,
            coordination,
            hub,
            webhooks: store.webhooks(),
            webhook_policy: settings.webhooks,
            webhook_destinations: settings.webhook_destinations,
            store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` completes; then stops taking connections, finishes requests in
    /// flight, writes the audit entries a trail failure deferred (see
    /// [`travelmap_api::audit::Deferred`]), stops the projector and closes the log (every
    /// acknowledged event is already durable, since a receipt is only sent after its commit).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_projector, projector_stopped) = watch::channel(false);
        // Every background task reports how it is doing, for `GET /readyz`.
        let mut watched = Vec::new();
        let mut watch = |name, essential| {
            let (reporter, seen) = health::task(name, essential);
            watched.push(seen);
            reporter
        };
        let projector = tokio::spawn(
            self.journeys
                .projector()
                .clone()
                .run(projector_stopped.clone(), watch("projection", true)),
        );
        // Webhook deliveries, stopped with the projector.
        let webhooks = tokio::spawn(
            travelmap_webhooks::Dispatcher::new(
                self.journeys.clone(),
                self.webhooks.clone(),
                self.audit.clone(),
                Arc::new(travelmap_api::routes::webhooks::delivery_body),
                self.webhook_policy,
                self.webhook_destinations.clone(),
            )
            .delivering_to({
                let authenticator = self.authenticator.clone();
                Arc::new(move |agency| authenticator.declares(agency))
            })
            .run(projector_stopped.clone(), watch("webhooks", false)),
        );
        // Entries of writes (and decisions) the trail refused for longer than a request waits.
        let deferred = Arc::new(travelmap_api::audit::Deferred::default());
        // Without a schedule there is nothing to run, and nothing to watch.
        let retention = (!self.retention.is_empty()).then(|| {
            tokio::spawn(crate::retention::daily(
                self.journeys.clone(),
                self.audit.clone(),
                deferred.clone(),
                self.retention.clone(),
                self.retention_every,
                projector_stopped.clone(),
                watch("retention", false),
            ))
        });
        // Erasures cut short between destroying the keys and recording the decision.
        let erasures = tokio::spawn(crate::erasures::periodically(
            self.journeys.clone(),
            self.audit.clone(),
            deferred.clone(),
            crate::erasures::HOURLY,
            projector_stopped.clone(),
            watch("erasures", false),
        ));
        let coordination = tokio::spawn(
            self.coordination
                .clone()
                .run(projector_stopped.clone(), watch("coordination", true)),
        );
        let hub = tokio::spawn(
            self.hub
                .clone()
                .run(projector_stopped, watch("live_feed", false)),
        );
        let store_probe = tokio::spawn(probe_store(
            self.journeys.clone(),
            stop_projector.subscribe(),
            watch("store", false),
        ));
        let trail_probe = tokio::spawn(
            self.trail_health
                .report(stop_projector.subscribe(), watch("audit_writes", false)),
        );
        let (begin_stopping, stopping) = watch::channel(false);
        let mut stop_began = stopping.clone();
        // A process that lacks a master key the store's data keys are wrapped under cannot do
        // its part, and holding the projection's and the webhooks' leases it would keep every
        // other process on the store from doing it: it stops, and says why.
        let mut misconfigured = tokio::task::JoinSet::new();
        for task in watched.iter().filter(|task| task.essential).cloned() {
            misconfigured.spawn(async move {
                task.misconfigured().await;
                task.name
            });
        }
        let (fault, faulted) = tokio::sync::oneshot::channel::<&'static str>();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => {}
                Some(Ok(task)) = misconfigured.join_next() => {
                    tracing::error!(
                        task,
                        "this process lacks a master key that the store's data keys are wrapped \
                         under; stopping, so that a process that has it takes over its work. \
                         Restart it with the master keys the other processes have (see \
                         docs/operations.md, \"Rotation\")"
                    );
                    let _ = fault.send(task);
                }
            }
            let _ = begin_stopping.send(true);
        };
        // Writes whose callers hung up run on (see `travelmap_api::AppState::writes`).
        let writes = travelmap_api::Writes::new();
        let router = travelmap_api::router(AppState {
            journeys: self.journeys.clone(),
            authenticator: self.authenticator.clone(),
            audit: self.audit.clone(),
            break_glass: self.break_glass,
            checkpoint_key: self.checkpoint_key.clone(),
            retention: self.retention.clone(),
            coordination: self.coordination.clone(),
            hub: self.hub.clone(),
            stopping,
            webhooks: self.webhooks.clone(),
            webhook_destinations: self.webhook_destinations.clone(),
            named: Default::default(),
            deferred: deferred.clone(),
            tasks: Arc::new(watched),
            stalls: Default::default(),
            writes: writes.clone(),
        });
        let serving = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .into_future();
        // A graceful stop waits for every open connection's request to be answered, and a
        // connection still sending its request (slowly, or never finishing its headers) would
        // hold it for ever. Past `CLOSE_CONNECTIONS` the server stops waiting for them (their
        // tasks end with the process). Writes run in tasks of their own, waited for below: one
        // whose body is still arriving is cut off and stores nothing, and any other runs to its
        // end, its retry answered from the log.
        let served = tokio::select! {
            served = serving => served,
            () = async {
                if stop_began.wait_for(|stopping| *stopping).await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(CLOSE_CONNECTIONS).await;
            } => {
                tracing::warn!(
                    "connections were still open {} s after the stop began (a request still \
                     being sent, or its answer still being read); no longer waiting for them",
                    CLOSE_CONNECTIONS.as_secs()
                );
                // A write whose body is still arriving would otherwise be waited for below.
                writes.cut_off_bodies();
                Ok(())
            }
        };
        // Before the projector stops: a write may be waiting for it (an erasure is answered
        // once the projector has folded it).
        writes.close();
        if tokio::time::timeout(FINISH_WRITES, writes.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = writes.len(),
                "writes whose callers hung up had not ended {} s after the last connection \
                 closed; stopping without them",
                FINISH_WRITES.as_secs()
            );
        }
        let _ = stop_projector.send(true);
        let _ = projector.await;
        if let Some(retention) = retention {
            let _ = retention.await;
        }
        let _ = erasures.await;
        let _ = coordination.await;
        let _ = hub.await;
        let _ = webhooks.await;
        let _ = store_probe.await;
        let _ = trail_probe.await;
        // No request, nor the erasures task (which hands on an erasure's entry the trail
        // refused), is left to defer entries: write those deferred while the store is still
        // open.
        deferred.drain(DRAIN_DEFERRED_ENTRIES).await;
        self.store.close().await;
        served.context("serving HTTP")?;
        if let Ok(task) = faulted.await {
            anyhow::bail!(
                "stopped: the {task} met a data key wrapped under a master key this process was \
                 not given; restart it with the master keys the other processes have"
            );
        }
        Ok(())
    }
}

/// How often [`probe_store`] asks the event log for an answer, and how long it waits for one.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Reports whether the event log answers a small read and the last attempt to record events
/// did not fail in the store (or one has succeeded since), until `stopped`. The other tasks tell
/// only of their own work: a process that waits for another's lease reports it running while
/// its own connections hang, and one with nothing to fold never touches the store. Requests
/// are answered `503` while the log cannot be reached, and readiness says so here, steadily,
/// from the first probe that failed.
async fn probe_store(
    journeys: Arc<Journeys>,
    mut stopped: watch::Receiver<bool>,
    health: travelmap_service::health::Reporter,
) {
    let log = journeys.log().clone();
    let mut failing = false;
    loop {
        let head = *log.head().borrow();
        let failure = match tokio::time::timeout(PROBE_PATIENCE, log.read_all(head, 1)).await {
            // A store that answers reads may still refuse every write.
            Ok(Ok(_)) => journeys
                .failing_writes()
                .map(|error| format!("the last write failed: {error}")),
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {} s", PROBE_PATIENCE.as_secs())),
        };
        // Logged when it changes, not every probe.
        let failed = failure.is_some();
        match failure {
            None => {
                if failing {
                    tracing::info!("the event log answers again");
                }
                health.running();
            }
            Some(error) => {
                if !failing {
                    tracing::warn!(%error, "the event log does not answer or refuses writes");
                }
                health.failing();
            }
        }
        failing = failed;
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stopped.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// How long a stopping server waits for its open connections' requests to be answered.
const CLOSE_CONNECTIONS: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a stopping server waits for writes whose callers hung up, once the last
/// connection has closed. A write gives up on a store that does not answer after 30 s, and
/// those still connected have been waited for already, so this is rarely reached.
const FINISH_WRITES: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a stopping server goes on trying to write audit entries that a trail failure
/// deferred, before it gives them up (and logs the events they name).
const DRAIN_DEFERRED_ENTRIES: std::time::Duration = std::time::Duration::from_secs(10);

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
