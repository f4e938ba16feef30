//! The `travelmap` command line.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use travelmap::settings::{self, ConfigFile, LocalKey};
use travelmap::{Application, ServeSettings, app, commands};
use travelmap_api::{Authenticator, Role};
use travelmap_domain::dates::MomentRefused;
use travelmap_domain::{AgencyKind, ClientId, Provenance};

/// Travelmap: one record of a person's path from prison back into society, built from the events
/// every agency posts.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML file with the settings: [[credentials]], [[agencies]], listen, data_dir, store, master
    /// keys, [retention], [jwt] and the rest (see docs/operations.md).
    #[arg(long, global = true, env = "TRAVELMAP_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the embedded store keeps its files [default: ./travelmap-data].
    #[arg(long, global = true, env = "TRAVELMAP_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Store in PostgreSQL instead: a postgres:// URL, e.g.
    /// postgres://travelmap@db.example/travelmap.
    #[arg(long, global = true, env = "TRAVELMAP_STORE", value_name = "URL")]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service. Without --config, a local admin key is generated into the data
    /// directory and the service listens on loopback by default (another address is warned
    /// about).
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "TRAVELMAP_LISTEN", value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Load events from a JSON-lines file (one event per line, as for POST /v1/events, so at
    /// most 1 MiB each). Every line's shape is checked before anything is stored; then the events are recorded in batches
    /// of 1000, each all or nothing, and logged in the audit trail. A clash with what is stored
    /// (an id recorded with other content, a stale expected_version, a correction of an event its
    /// agency may not rectify) stops the import at its batch, with the batches before it
    /// recorded; run it again once fixed: recorded events are skipped. On the embedded store, run
    /// with the server stopped; on PostgreSQL, beside running servers.
    Import {
        /// The file to load.
        file: PathBuf,
        /// The configured credential the events are recorded under (its agency is recorded).
        /// Without --config, on the embedded store only, the local admin credential is used;
        /// on PostgreSQL give the deployment's --config and a credential.
        #[arg(long, value_name = "ID")]
        credential: Option<String>,
    },
    /// Delete every projection and fold the whole event log again. On the embedded store, run
    /// with the server stopped; on PostgreSQL it waits for the view lease a running server holds.
    Rebuild,
    /// Apply missing schema migrations (serve applies them too, on start).
    Migrate,
    /// Print a client's history exactly as recorded, and the travel map folded from it.
    Replay {
        /// The client id.
        #[arg(long, value_name = "ID")]
        client: ClientId,
        /// Only what had been recorded by this RFC 3339 time.
        #[arg(long, value_name = "TIME", value_parser = moment)]
        as_of: Option<DateTime<Utc>>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The configured credential that reads (it needs the auditor or dpo role; the read is
        /// logged under it). Without --config, on the embedded store only, the local admin
        /// credential is used; on PostgreSQL give the deployment's --config and a credential.
        #[arg(long, value_name = "ID")]
        credential: Option<String>,
        /// Why: `audit` or `subject_access` (logged with the read).
        #[arg(long, value_name = "PURPOSE", default_value = "audit",
              value_parser = ["audit", "subject_access"])]
        purpose: String,
    },
    /// Manage credentials.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Apply the retention schedule.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Manage the keys that seal personal data.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Shred the personal data whose retention period has ended (per [retention] in the config
    /// file), audit each shredding, and print what was due and what was done. The server also
    /// runs this daily.
    Run {
        /// Beside running servers on PostgreSQL, the server that writes the views folds what
        /// the run shredded; wait at most this many seconds for it before failing.
        #[arg(long, value_name = "SECONDS", default_value_t = travelmap::retention::VIEWS_PATIENCE.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
        wait: u64,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Rewrap every data key under the current (first) master key, so that older master keys
    /// can be removed from the configuration.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the whole hash chain (exit 0 when intact; non-zero, naming the first bad entry,
    /// when an entry was edited, removed or reordered), and with --checkpoint that the trail
    /// extends a checkpoint kept earlier (`GET /v1/audit/checkpoint`). Reads beside a running
    /// server.
    Verify {
        /// A checkpoint file, as served by GET /v1/audit/checkpoint.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The service's checkpoint key (from `travelmap audit public-key`): the checkpoint's
        /// signature must be by this key. Without it, the key the service keeps beside this
        /// store (its data directory, or `audit_signing_key_file`) is used, never the key the
        /// checkpoint itself names.
        #[arg(long, value_name = "HEX", requires = "checkpoint", value_parser = checkpoint_key_hex)]
        public_key: Option<String>,
    },
    /// Print the public key that signs audit checkpoints, for auditors to keep.
    PublicKey,
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Generate a new bearer key and print the [[credentials]] entry for the config file.
    New {
        /// The credential id (shown in logs and recorded with events).
        #[arg(long)]
        id: String,
        /// The agency it acts for.
        #[arg(long)]
        agency: String,
        /// The agency's kind (prison, probation, employment_bureau, ngo, municipality, housing,
        /// health, court, other): also print the [[agencies]] entry, for an agency not yet in
        /// the config file.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<AgencyKind>,
        /// A role: writer, coordinator, auditor, dpo or admin. Repeat for several.
        #[arg(long = "role", required = true, value_parser = parse_role)]
        roles: Vec<Role>,
    },
}

fn parse_kind(text: &str) -> Result<AgencyKind, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        format!(
            "`{text}` is not an agency kind ({})",
            AgencyKind::ALL.map(AgencyKind::as_str).join(", ")
        )
    })
}

fn parse_role(text: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("`{text}` is not a role (writer, coordinator, auditor, dpo, admin)"))
}

/// A moment read as the API reads `as_of`, so that a replay and a read of the same moment agree.
fn moment(text: &str) -> Result<DateTime<Utc>, String> {
    travelmap_domain::dates::parse_moment(text).map_err(|refused| match refused {
        MomentRefused::NotRfc3339 => {
            format!("`{text}` is not an RFC 3339 time, e.g. 2026-03-01T09:00:00+01:00")
        }
        MomentRefused::LeapSecond => {
            format!("`{text}` has no such second (leap seconds are not taken)")
        }
    })
}

/// jemalloc instead of the system allocator: the service allocates many short-lived strings and
/// maps per request, where glibc's allocator took a sixth of the time and held on to more freed
/// memory (docs/adr/0009-allocator.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    travelmap::return_freed_memory_in_background();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TRAVELMAP_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(parse_arguments()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", report(&error));
            if let Some(path) = travelmap::settings::discard_generated_master_key() {
                eprintln!(
                    "the master key this start generated at {} was never used and was removed \
                     again",
                    path.display()
                );
            }
            travelmap::settings::remove_created_data_dir();
            std::process::ExitCode::FAILURE
        }
    }
}

/// The exit status of `audit verify` when the trail does not verify.
const BROKEN_TRAIL: i32 = 3;

/// The command line, with every `TRAVELMAP_*` variable that is set but empty taken as not set:
/// an empty line in an environment file should not stop the service with "a value is required
/// for --config".
fn parse_arguments() -> Cli {
    fn forget_empty(command: clap::Command) -> clap::Command {
        let command = command.mut_args(|arg| {
            let empty = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|value| value.is_empty());
            if empty { arg.env(None) } else { arg }
        });
        let names: Vec<String> = command
            .get_subcommands()
            .map(|subcommand| subcommand.get_name().to_owned())
            .collect();
        names.into_iter().fold(command, |command, name| {
            command.mut_subcommand(name, forget_empty)
        })
    }
    let matches = forget_empty(Cli::command()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The error and its causes, each cause left out where the message before it already says it
/// (many errors name their source in their own message).
fn report(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match &cli.config {
        Some(path) => Some((path.clone(), ConfigFile::load(path)?)),
        None => None,
    };
    let data_dir = cli
        .data_dir
        .clone()
        .or_else(|| config.as_ref().and_then(|(_, file)| file.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(settings::DEFAULT_DATA_DIR));
    let store = cli
        .store
        .clone()
        .or_else(|| config.as_ref().and_then(|(_, file)| file.store.clone()));
    let location = settings::store_location(store, &data_dir).map_err(anyhow::Error::msg)?;
    let masters = || {
        settings::master_keys(
            config
                .as_ref()
                .and_then(|(_, file)| file.master_key_file.as_deref()),
            &data_dir,
        )
    };
    let retention = travelmap_projections::retention::Schedule::from_config(
        &config
            .as_ref()
            .map(|(_, file)| file.retention.clone())
            .unwrap_or_default(),
    )
    .map_err(anyhow::Error::msg)?;

    match cli.command {
        Command::Serve { listen } => {
            let listen = match listen.or_else(|| config.as_ref().and_then(|(_, file)| file.listen))
            {
                Some(listen) => listen,
                None => settings::DEFAULT_LISTEN
                    .parse()
                    .expect("valid default address"),
            };
            // Bound before anything is written: a start that fails for an address in use leaves
            // no data directory, store or keys behind.
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            // How to use a local admin key is told once the server is up, not before a start
            // that then fails (PostgreSQL out of reach, say).
            let (authenticator, local) = match &config {
                Some((path, file)) => (
                    with_tokens(file.authenticator(path)?, path, file).await?,
                    None,
                ),
                None => {
                    let (authenticator, local) = local_authenticator(&data_dir, listen)?;
                    (authenticator, Some(local))
                }
            };
            let serve_settings = || -> anyhow::Result<ServeSettings> {
                Ok(ServeSettings {
                    listen,
                    listener: Some(listener),
                    store: location.clone(),
                    authenticator,
                    break_glass: config
                        .as_ref()
                        .and_then(|(_, file)| file.break_glass_minutes)
                        .map_or(travelmap_api::DEFAULT_BREAK_GLASS, |minutes| {
                            std::time::Duration::from_secs(minutes * 60)
                        }),
                    checkpoint_key: settings::checkpoint_key(
                        config
                            .as_ref()
                            .and_then(|(_, file)| file.audit_signing_key_file.as_deref()),
                        &data_dir,
                    )?,
                    master_keys: Some(masters()?),
                    retention,
                    retention_every: travelmap::retention::DAILY,
                    coordination: config
                        .as_ref()
                        .map(|(_, file)| file.coordination.rules())
                        .unwrap_or_default(),
                    clock: std::sync::Arc::new(travelmap_service::coordination::SystemClock),
                    audit_override: None,
                    webhooks: config
                        .as_ref()
                        .map(|(_, file)| file.webhooks.policy())
                        .unwrap_or_default(),
                    // Without a configuration only the person at this machine holds a key, and
                    // a receiver to try webhooks with is most likely on it too.
                    webhook_destinations: match &config {
                        Some((_, file)) => file
                            .webhooks
                            .destinations()
                            .expect("checked when the configuration was loaded"),
                        None => travelmap_webhooks::Destinations::public_and_loopback(),
                    },
                })
            };
            let built = match serve_settings() {
                Ok(settings) => Application::build(settings).await,
                Err(error) => Err(error),
            };
            let application = match built {
                Ok(application) => application,
                Err(error) => {
                    // A key made by a start that then failed would be found by the next start,
                    // which would not tell how to use it: it is made, and told, then.
                    if let Some(LocalAdmin {
                        generated: Some(path),
                        ..
                    }) = &local
                    {
                        let _ = std::fs::remove_file(path);
                    }
                    settings::discard_generated_signing_key();
                    return Err(error);
                }
            };
            if let Some(local) = local {
                eprintln!("{}", local.notice);
            }
            tracing::info!(
                address = %application.local_addr(),
                store = %location.describe(),
                "travelmap is listening"
            );
            application.run_until(app::shutdown_signal()).await
        }
        Command::Import { file, credential } => {
            let (provenance, kind, authenticator) =
                match import_provenance(config.as_ref(), credential.as_deref(), &location) {
                    Ok(acting) => acting,
                    Err(error) => {
                        // Named as a refused batch over HTTP names them.
                        return Err(refused(
                            error,
                            &location,
                            travelmap_domain::audit::Operation::Collection,
                            &|| commands::clients_named_in(&file),
                            None,
                            commands::IMPORT_ACTION,
                        )
                        .await);
                    }
                };
            commands::import(
                &location,
                &file,
                provenance,
                kind,
                authenticator.as_ref(),
                masters,
            )
            .await
        }
        Command::Rebuild => {
            commands::existing_store(&location)?;
            commands::rebuild(&location, masters()?).await
        }
        Command::Retention(RetentionCommand::Run { wait }) => {
            commands::existing_store(&location)?;
            commands::retention_run(
                &location,
                masters()?,
                &retention,
                std::time::Duration::from_secs(wait),
            )
            .await
        }
        Command::Keys(KeysCommand::Rotate) => {
            commands::existing_store(&location)?;
            commands::rotate_keys(&location, masters()?).await
        }
        Command::Migrate => commands::migrate(&location).await,
        Command::Replay {
            client,
            as_of,
            json,
            credential,
            purpose,
        } => {
            let reader = match configured_provenance(
                config.as_ref(),
                credential.as_deref(),
                &[Role::Auditor, Role::Dpo],
                "read as",
                &location,
            ) {
                Ok((reader, _)) => reader,
                Err(error) => {
                    return Err(refused(
                        error,
                        &location,
                        travelmap_domain::audit::Operation::Consultation,
                        &|| vec![client],
                        Some(&purpose),
                        commands::REPLAY_ACTION,
                    )
                    .await);
                }
            };
            let reader = commands::Reader {
                provenance: reader,
                purpose,
            };
            // A replay only reads: a master key made here would open nothing, and would be left
            // behind in whatever directory was named by mistake.
            let configured = config
                .as_ref()
                .and_then(|(_, file)| file.master_key_file.as_deref());
            if std::env::var_os(settings::MASTER_KEYS_ENV).is_none()
                && configured.is_none()
                && !data_dir.join(settings::MASTER_KEY_FILE).exists()
            {
                anyhow::bail!(
                    "no master key in {}: replay opens personal data with the key the service \
                     uses (its data directory, master_key_file or {})",
                    data_dir.display(),
                    settings::MASTER_KEYS_ENV
                );
            }
            // As the API does: a moment still to come has no record yet, and its map would
            // show what has not happened (allowing, as it does, for clock skew).
            if let Some(as_of) = as_of
                && as_of > Utc::now() + travelmap_domain::dates::MAX_CLOCK_SKEW
            {
                anyhow::bail!(
                    "--as-of {} is in the future: leave it out to replay the current state",
                    as_of.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                );
            }
            commands::replay(&location, client, as_of, json, &reader, masters()?).await
        }
        Command::Audit(AuditCommand::PublicKey) => {
            let configured = config
                .as_ref()
                .and_then(|(_, file)| file.audit_signing_key_file.as_deref());
            // The key the service signs with, never one made here: an auditor would pin a key
            // no checkpoint is signed with.
            let key = service_public_key(configured, &data_dir)?;
            // A closed standard output is an error to report, not a panic.
            std::io::Write::write_all(
                &mut std::io::stdout().lock(),
                format!("{key}\n").as_bytes(),
            )?;
            Ok(())
        }
        Command::Audit(AuditCommand::Verify {
            checkpoint,
            public_key,
        }) => {
            let configured = config
                .as_ref()
                .and_then(|(_, file)| file.audit_signing_key_file.as_deref());
            // The checkpoint first: a missing file is the mistake to name, not a key that
            // would only have checked it.
            if let Some(path) = &checkpoint {
                commands::read_checkpoint(path)?;
            }
            let public_key = match (public_key, &checkpoint) {
                (None, Some(_)) => {
                    let key = service_public_key(configured, &data_dir)?;
                    eprintln!(
                        "checking the checkpoint against this service's key ({key}); to check \
                         against a key kept elsewhere, give --public-key"
                    );
                    Some(key)
                }
                (public_key, _) => public_key,
            };
            match commands::verify_audit(&location, checkpoint.as_deref(), public_key.as_deref())
                .await?
            {
                commands::Verified::Intact => Ok(()),
                // Not 1 (the command failed to run) nor 2 (its arguments were wrong): a script
                // must tell a broken trail from a failure to check it.
                commands::Verified::Broken => std::process::exit(BROKEN_TRAIL),
            }
        }
        Command::Credential(CredentialCommand::New {
            id,
            agency,
            kind,
            roles,
        }) => {
            // Printed to be appended to the configuration: checked against it, when given, so
            // that the server does not then refuse the file.
            if let Some((path, file)) = &config {
                if file.credentials.iter().any(|entry| entry.id == id) {
                    anyhow::bail!("credential id `{id}` is already in {}", path.display());
                }
                let declared = file.agencies.iter().any(|entry| entry.id == agency);
                if declared && kind.is_some() {
                    anyhow::bail!(
                        "agency `{agency}` is already declared in {}: leave out --kind",
                        path.display()
                    );
                }
                if !declared && kind.is_none() {
                    anyhow::bail!(
                        "agency `{agency}` is not declared in {}: give its --kind to declare it",
                        path.display()
                    );
                }
            }
            commands::new_credential(&id, &agency, kind, &roles)
        }
    }
}

/// Adds JWT verification to `authenticator` when the config file has a `[jwt]` table: the key set
/// is read now (a start-up error if it cannot be) and again every `refresh_minutes`, keeping the
/// last good set when a refresh fails.
async fn with_tokens(
    authenticator: Authenticator,
    path: &Path,
    file: &ConfigFile,
) -> anyhow::Result<Authenticator> {
    let Some((source, jwt_settings)) = file.jwt(path)? else {
        return Ok(authenticator);
    };
    let verifier = std::sync::Arc::new(travelmap_api::jwt::JwtVerifier::new(jwt_settings));
    let keys = verifier.set_keys(&source.read().await?)?;
    tracing::info!(keys, "accepting OAuth2 tokens (JWT)");
    let every = std::time::Duration::from_secs(
        60 * file
            .jwt
            .as_ref()
            .map_or(10, |jwt| jwt.refresh_minutes.max(1)),
    );
    let refreshed = verifier.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let outcome = match source.read().await {
                Ok(jwks) => refreshed.set_keys(&jwks).map_err(anyhow::Error::from),
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                tracing::warn!(error = %format!("{error:#}"), "could not refresh the JWKS; keeping the previous keys");
            }
        }
    });
    Ok(authenticator.with_jwt(verifier))
}

/// The no-config start's local admin key: what to tell its user once the server is up, and the
/// key file if this start made it.
struct LocalAdmin {
    notice: String,
    generated: Option<PathBuf>,
}

/// The no-config start: one local admin credential whose key lives in the data directory.
fn local_authenticator(
    data_dir: &Path,
    listen: SocketAddr,
) -> anyhow::Result<(Authenticator, LocalAdmin)> {
    let (key, origin) = settings::local_admin_key(data_dir)?;
    let key_file = match &origin {
        LocalKey::Generated(path) | LocalKey::Existing(path) => path.display().to_string(),
    };
    let local = match origin {
        LocalKey::Generated(path) => LocalAdmin {
            notice: format!(
                "\nNo --config given: generated a local admin key into {key_file} (readable by you only).\n\
                 Use it like this:\n\n  curl -H \"Authorization: Bearer $(cat {key_file})\" http://{listen}/v1/event-types\n\n\
                 For agency systems, write a config file with [[credentials]] (see `travelmap credential new --help`).\n"
            ),
            generated: Some(path),
        },
        LocalKey::Existing(_) => LocalAdmin {
            notice: format!("No --config given: using the local admin key in {key_file}."),
            generated: None,
        },
    };
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "serving beyond loopback with the generated local admin key; configure credentials for real deployments");
    }
    let authenticator =
        Authenticator::new([(Authenticator::hash_key(&key), settings::local_admin())])
            .context("building the local admin credential")?;
    Ok((authenticator, local))
}

/// Who an import records as, the kind of its agency, and (with a configuration) the
/// authenticator `serve` would build from it, whose checks the import applies too.
fn import_provenance(
    config: Option<&(PathBuf, ConfigFile)>,
    credential: Option<&str>,
    location: &travelmap_store::Location,
) -> anyhow::Result<(Provenance, Option<AgencyKind>, Option<Authenticator>)> {
    let (provenance, kind) =
        configured_provenance(config, credential, &[Role::Writer], "import as", location)?;
    // The same checks as `serve`, so that an import cannot record what the API would refuse.
    let authenticator = config
        .map(|(path, file)| file.authenticator(path))
        .transpose()?;
    Ok((provenance, kind, authenticator))
}

/// An offline command refused because its credential lacks the role: logged as denied, like
/// the same refusal over HTTP.
#[derive(Debug, thiserror::Error)]
#[error("credential `{}` lacks the {roles} role", provenance.credential)]
struct LacksRole {
    provenance: Provenance,
    roles: String,
}

/// Logs `error` as a denied `operation` (with the purpose the command stated) if it is a
/// [`LacksRole`] refusal, then returns it.
async fn refused(
    error: anyhow::Error,
    location: &travelmap_store::Location,
    operation: travelmap_domain::audit::Operation,
    // Read only where the refusal is logged (an import's reads its file).
    clients: &dyn Fn() -> Vec<ClientId>,
    purpose: Option<&str>,
    action: &str,
) -> anyhow::Error {
    // A directory with no store has no trail to log into, and none is made for a refusal.
    if commands::existing_store(location).is_err() {
        return error;
    }
    if let Some(LacksRole { provenance, .. }) = error.downcast_ref::<LacksRole>() {
        // One entry for the attempt and one per client named, as a refused batch over HTTP.
        let clients: Vec<Option<ClientId>> = std::iter::once(None)
            .chain(clients().into_iter().map(Some))
            .collect();
        let records = clients
            .into_iter()
            .map(|client| {
                commands::offline_record(
                    provenance,
                    travelmap_domain::audit::Outcome::Denied,
                    commands::OfflineLogged {
                        operation,
                        client,
                        purpose,
                        action,
                        returned: None,
                    },
                )
            })
            .collect();
        if let Err(logging) = commands::log_offline_all(location, records).await {
            return anyhow::anyhow!("{error} (and the refusal could not be logged: {logging:#})");
        }
    }
    error
}

/// Who an offline command acts as: the configured credential named `credential`, which must
/// hold one of `roles`, with its agency's kind; without a configuration, the local admin.
fn configured_provenance(
    config: Option<&(PathBuf, ConfigFile)>,
    credential: Option<&str>,
    roles: &[Role],
    acting: &str,
    location: &travelmap_store::Location,
) -> anyhow::Result<(Provenance, Option<AgencyKind>)> {
    let Some((path, file)) = config else {
        // A database is a deployment, not a newcomer's sandbox: its trail must name who acted.
        if matches!(location, travelmap_store::Location::Postgres(_)) {
            anyhow::bail!(
                "on PostgreSQL, give the deployment's --config and a --credential to {acting}"
            );
        }
        if let Some(id) = credential {
            anyhow::bail!(
                "--credential {id} names a credential of a configuration: give --config too \
                 (without it, the command acts as the local admin)"
            );
        }
        let local = settings::local_admin();
        return Ok((
            Provenance {
                agency: local.agency,
                credential: local.id,
            },
            local.agency_kind,
        ));
    };
    let id = credential.with_context(|| {
        format!("with --config, name the credential to {acting}: --credential ID")
    })?;
    let entry = file
        .credentials
        .iter()
        .find(|entry| entry.id == id)
        .with_context(|| format!("no credential `{id}` in {}", path.display()))?;
    if !roles.iter().any(|role| entry.roles.contains(role)) {
        let names: Vec<String> = roles.iter().map(Role::to_string).collect();
        return Err(anyhow::Error::new(LacksRole {
            provenance: Provenance {
                agency: entry.agency.clone(),
                credential: entry.id.clone(),
            },
            roles: names.join(" or "),
        }));
    }
    let kind = file
        .agencies
        .iter()
        .find(|agency| agency.id == entry.agency)
        .map(|agency| agency.kind);
    Ok((
        Provenance {
            agency: entry.agency.clone(),
            credential: entry.id.clone(),
        },
        kind,
    ))
}

/// A checkpoint key as `--public-key` takes it: 64 hex digits of an ed25519 public key. A
/// mistyped key is a wrong argument (exit 2), not a broken trail (exit 3).
fn checkpoint_key_hex(text: &str) -> Result<String, String> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("not 64 hex digits (as `travelmap audit public-key` prints the key)")?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "not an ed25519 public key".to_owned())?;
    Ok(text.trim().to_owned())
}

/// The public key of the service's checkpoint-signing key, for `audit public-key` and for
/// `audit verify --checkpoint` without `--public-key` (a checkpoint's own key would prove
/// nothing: anyone can sign with a key of their own). The service's key is read where the
/// service keeps it, never made here.
fn service_public_key(configured: Option<&Path>, data_dir: &Path) -> anyhow::Result<String> {
    let path = configured.map_or_else(
        || data_dir.join(settings::AUDIT_SIGNING_KEY_FILE),
        Path::to_owned,
    );
    if !path.exists() {
        anyhow::bail!(
            "no checkpoint-signing key at {}: the service makes it on its first start, or reads \
             it from audit_signing_key_file; to verify a checkpoint elsewhere, give --public-key \
             as `travelmap audit public-key` prints it where the service runs",
            path.display()
        );
    }
    let key = settings::checkpoint_key(configured, data_dir)?;
    Ok(hex::encode(key.verifying_key().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn a_cause_the_message_already_names_is_not_repeated() {
        let named = anyhow::Error::new(std::io::Error::other("No such file"))
            .context("cannot read config file a.toml: No such file");
        assert_eq!(
            report(&named),
            "cannot read config file a.toml: No such file"
        );
        let unnamed = anyhow::anyhow!("the key is not hex").context("reading the master keys");
        assert_eq!(
            report(&unnamed),
            "reading the master keys: the key is not hex"
        );
    }
}
