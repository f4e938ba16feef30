//! Typed configuration: built from the TOML file (`--config` / `TRAVELMAP_CONFIG`), overridden by
//! environment variables and command-line flags (clap reads both), with safe defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use travelmap_api::jwt::JwtSettings;
use travelmap_api::{Authenticator, Credential, Role};
use travelmap_domain::AgencyKind;

/// The default address: loopback only, so a newcomer's first start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default data directory, relative to where the service is started.
pub const DEFAULT_DATA_DIR: &str = "./travelmap-data";
/// The file in the data directory holding the generated local admin key (no-config start).
pub const LOCAL_ADMIN_KEY_FILE: &str = "admin.key";

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub listen: Option<SocketAddr>,
    /// Where the embedded store keeps its files.
    pub data_dir: Option<PathBuf>,
    /// A `postgres://` URL: store in PostgreSQL instead of the embedded store.
    pub store: Option<String>,
    /// How long a break-glass grant lasts, in minutes (default 60).
    pub break_glass_minutes: Option<u64>,
    /// A file holding the ed25519 key (64 hex digits: its 32-byte seed) that signs audit
    /// checkpoints. Default: `audit-signing.key` in the data directory, generated on first use.
    pub audit_signing_key_file: Option<PathBuf>,
    /// A file of master keys (`id:64-hex-digits`, one per line, the current one first) that wrap
    /// the data keys sealing personal fields. `TRAVELMAP_MASTER_KEYS` (same format, entries
    /// separated by commas) takes precedence. Default: `master.key` in the data directory,
    /// generated on first use.
    pub master_key_file: Option<PathBuf>,
    /// Retention periods in whole years after the end of the client's last involvement, per
    /// category (`identity`, `justice`, `support`, `needs`, `consent`). Categories left out are
    /// kept until erased.
    #[serde(default)]
    pub retention: std::collections::BTreeMap<String, u32>,
    /// Caseload and alert thresholds.
    #[serde(default)]
    pub coordination: CoordinationEntry,
    /// The agencies that take part, with their kinds.
    #[serde(default)]
    pub agencies: Vec<AgencyEntry>,
    /// The credentials that may call the API.
    #[serde(default)]
    pub credentials: Vec<CredentialEntry>,
    /// OAuth2 client-credentials tokens (JWTs), besides API keys.
    pub jwt: Option<JwtEntry>,
    /// How webhook deliveries are timed out and retried.
    #[serde(default)]
    pub webhooks: WebhooksEntry,
}

/// The `[webhooks]` table; every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksEntry {
    /// The pause after an event's first failed delivery, in milliseconds (default 1000); it
    /// doubles with every further failure.
    pub retry_base_ms: Option<u64>,
    /// The longest pause between attempts, in seconds (default 900).
    pub retry_cap_seconds: Option<u64>,
    /// After this many failed attempts at one event the webhook is paused (default 300, about
    /// three days with the default pauses).
    pub max_attempts: Option<u32>,
    /// How long a receiver has to answer, in seconds (default 10).
    pub timeout_seconds: Option<u64>,
    /// Networks receivers may be in besides the public internet, as `10.20.0.0/16` or a single
    /// address; loopback, private, link-local and other internal addresses are refused unless
    /// listed here (default: none).
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// A forward proxy deliveries go through, as `http://proxy.example:3128`, with an optional
    /// `user:password@` (default: none, deliveries connect straight to receivers).
    pub proxy: Option<Concealed>,
}

/// `message` with the text of every string value it quotes left out: serde's type errors quote
/// the value (`invalid type: string "http://user:password@..."`), which may be a password put in
/// the wrong place; so do its errors for a value that is none of a setting's choices
/// (``unknown variant `...`, expected one of``), left out where it holds `@` or `:` (a
/// mistyped choice, `prisn`, is shown: it is what the operator must find).
fn without_quoted_strings(message: &str) -> String {
    without_unknown_variants(&without_quoted_string_values(message))
}

/// [`without_quoted_strings`] for serde's ``unknown variant `VALUE`, expected ...``: the value
/// is written as it is, so it ends at the backtick before what serde says last.
fn without_unknown_variants(message: &str) -> String {
    const QUOTED: &str = "unknown variant `";
    let Some(found) = message.find(QUOTED) else {
        return message.to_owned();
    };
    let after = &message[found + QUOTED.len()..];
    let end = ["`, expected", "`, there are no variants"]
        .iter()
        .find_map(|next| after.rfind(next))
        .or_else(|| after.rfind('`'))
        .unwrap_or(after.len());
    if !after[..end].contains(['@', ':']) {
        return message.to_owned();
    }
    format!(
        "{}unknown variant (not shown){}",
        &message[..found],
        &after[(end + 1).min(after.len())..]
    )
}

fn without_quoted_string_values(message: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut shown = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(found) = rest.find(QUOTED) {
        shown.push_str(&rest[..found]);
        shown.push_str("string (not shown)");
        // The value is quoted as Rust's `Debug` writes strings: a quote inside is escaped.
        let mut escaped = false;
        let after = &rest[found + QUOTED.len()..];
        let end = after.char_indices().find_map(|(index, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(index + 1)
        });
        rest = &after[end.unwrap_or(after.len())..];
    }
    shown.push_str(rest);
    shown
}

/// A setting whose text may hold a password (`[webhooks] proxy`): read as written, and left
/// out of `Debug`, so that no log or panic message shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Concealed(pub String);

impl std::fmt::Debug for Concealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Concealed(..)")
    }
}

impl WebhooksEntry {
    /// The delivery policy: the defaults, with what the table sets.
    pub fn policy(&self) -> travelmap_webhooks::Policy {
        use std::time::Duration;
        let defaults = travelmap_webhooks::Policy::default();
        travelmap_webhooks::Policy {
            backoff: travelmap_webhooks::Backoff {
                base: self
                    .retry_base_ms
                    .map_or(defaults.backoff.base, Duration::from_millis),
                cap: self
                    .retry_cap_seconds
                    .map_or(defaults.backoff.cap, Duration::from_secs),
            },
            timeout: self
                .timeout_seconds
                .map_or(defaults.timeout, Duration::from_secs),
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts).max(1),
            refresh: defaults.refresh,
        }
    }

    /// The addresses receivers may be at: the public internet and `allow_networks`, reached
    /// through `proxy` if it names one. Each entry of `allow_networks` is a network in CIDR
    /// form or a single address; the first that is not is the problem returned, as is a proxy
    /// that is not an `http://` or `https://` address.
    pub fn destinations(&self) -> Result<travelmap_webhooks::Destinations, DestinationsProblem> {
        let networks = self
            .allow_networks
            .iter()
            .map(|entry| {
                travelmap_webhooks::Destinations::network(entry).map_err(|reason| {
                    DestinationsProblem::Network {
                        // A URL with a password put here by mistake is not repeated.
                        entry: if entry.contains('@') {
                            "(an entry holding @, not shown)".to_owned()
                        } else {
                            entry.clone()
                        },
                        reason,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let destinations = travelmap_webhooks::Destinations::allowing(networks);
        Ok(match &self.proxy {
            None => destinations,
            Some(proxy) => destinations.via_proxy(
                travelmap_webhooks::ForwardProxy::parse(&proxy.0)
                    .map_err(DestinationsProblem::Proxy)?,
            ),
        })
    }
}

/// What is wrong with the `[webhooks]` settings that say where receivers may be.
#[derive(Debug)]
pub enum DestinationsProblem {
    /// An entry of `allow_networks`, and why it is refused.
    Network { entry: String, reason: String },
    /// Why `proxy` is refused (the text never repeats the URL, which may hold a password).
    Proxy(String),
}

/// The `[coordination]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationEntry {
    /// Workers with more active clients than this are flagged (default 50).
    #[serde(default = "default_worker_threshold")]
    pub worker_threshold: usize,
    /// A released client without a case manager or probation officer for longer than this
    /// many days raises an alert (default 7).
    #[serde(default = "default_unassigned_after_days")]
    pub unassigned_after_days: u32,
}

impl Default for CoordinationEntry {
    fn default() -> Self {
        Self {
            worker_threshold: default_worker_threshold(),
            unassigned_after_days: default_unassigned_after_days(),
        }
    }
}

fn default_worker_threshold() -> usize {
    travelmap_projections::coordination::Rules::default().worker_threshold
}

fn default_unassigned_after_days() -> u32 {
    travelmap_projections::coordination::Rules::default()
        .unassigned_after
        .num_days() as u32
}

impl CoordinationEntry {
    pub fn rules(&self) -> travelmap_projections::coordination::Rules {
        travelmap_projections::coordination::Rules {
            worker_threshold: self.worker_threshold,
            unassigned_after: chrono::Duration::days(i64::from(self.unassigned_after_days)),
        }
    }
}

/// The `[jwt]` table: which identity provider's tokens are accepted, and how they are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtEntry {
    /// The provider's key set, as a file ...
    pub jwks_file: Option<PathBuf>,
    /// ... or at a URL (fetched on start and every `refresh_minutes`).
    pub jwks_url: Option<String>,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must include.
    pub audience: String,
    /// The claim naming the agency (default `travelmap_agency`).
    #[serde(default = "default_agency_claim")]
    pub agency_claim: String,
    /// The claim listing the roles (default `travelmap_roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// How often the key set is read again, in minutes (default 10).
    #[serde(default = "default_refresh_minutes")]
    pub refresh_minutes: u64,
}

fn default_agency_claim() -> String {
    "travelmap_agency".into()
}

fn default_roles_claim() -> String {
    "travelmap_roles".into()
}

fn default_refresh_minutes() -> u64 {
    10
}

/// One `[[agencies]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyEntry {
    /// What credentials name in `agency`, and what is recorded with every event.
    pub id: String,
    /// prison, probation, employment_bureau, ngo, municipality, housing, health, court or other:
    /// decides which event types the agency's credentials may post.
    pub kind: AgencyKind,
    /// A display name.
    pub name: Option<String>,
}

/// One `[[credentials]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialEntry {
    /// Shown in logs and recorded with every event the credential posts.
    pub id: String,
    /// The agency the credential acts for; recorded as the event's agency.
    pub agency: String,
    /// What it may do.
    pub roles: Vec<Role>,
    /// Hex SHA-256 of the bearer key (`travelmap credential new` prints one).
    pub key_sha256: String,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Said without the offending line, which TOML's own message quotes: it may hold a
    /// password (`[webhooks] proxy`).
    #[error("config file {path} is invalid{at}: {message}")]
    Parse {
        path: PathBuf,
        /// ` at line L, column C`, where the parser knows.
        at: String,
        message: String,
    },
    #[error("config file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: travelmap_api::auth::CredentialError,
    },
    #[error("config file {0} declares no [[credentials]]; nobody could call the API")]
    NoCredentials(PathBuf),
    #[error(
        "config file {path}: credential `{credential}` acts for agency `{agency}`, which no [[agencies]] entry declares (add one with its id and kind)"
    )]
    UndeclaredAgency {
        path: PathBuf,
        credential: String,
        agency: String,
    },
    #[error("config file {path}: [webhooks] allow_networks: `{entry}` {reason}")]
    Network {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("config file {path}: [webhooks] proxy {reason}")]
    Proxy { path: PathBuf, reason: String },
    #[error("config file {path}: [webhooks] max_attempts may be at most {most}")]
    TooManyAttempts { path: PathBuf, most: u32 },
    #[error("config file {path}: {setting} must be at least 1")]
    Zero {
        path: PathBuf,
        setting: &'static str,
    },
    #[error("config file {path}: {setting} may be at most {most}")]
    TooLarge {
        path: PathBuf,
        setting: &'static str,
        most: u64,
    },
    #[error(
        "config file {path}: [webhooks] retry_base_ms (the first pause) is longer than \
         retry_cap_seconds (the longest)"
    )]
    BaseOverCap { path: PathBuf },
    #[error("config file {path}: agency `{agency}` is declared twice")]
    AgencyTwice { path: PathBuf, agency: String },
    #[error(
        "config file {0}: an [[agencies]] entry has a blank id, or one with surrounding spaces or control characters"
    )]
    BlankAgency(PathBuf),
    #[error("config file {path}: [jwt] needs exactly one of jwks_file and jwks_url")]
    JwksSource { path: PathBuf },
    #[error("config file {path}: [jwt] {detail}")]
    JwtSetting { path: PathBuf, detail: String },
    #[error("local admin key at {path}: {source}")]
    LocalKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit checkpoint signing key at {path}: {source}")]
    SigningKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master keys from {from}: {detail}")]
    MasterKeys { from: String, detail: String },
}

/// The longest a break-glass grant may be configured to last: a week.
pub const MAX_BREAK_GLASS_MINUTES: u64 = 7 * 24 * 60;

/// The longest a released client may go without a case manager before the alert: ten years.
/// Beyond that the alert means nothing, and far beyond it the alert's due date overflows the
/// calendar.
pub const MAX_UNASSIGNED_AFTER_DAYS: u32 = 3650;

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|error| Error::Parse {
            path: path.to_owned(),
            at: error
                .span()
                .map(|span| {
                    let mut start = span.start.min(text.len());
                    while !text.is_char_boundary(start) {
                        start -= 1;
                    }
                    let before = &text[..start];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default(),
            message: without_quoted_strings(error.message().trim_end()),
        })?;
        match config.webhooks.destinations() {
            Ok(_) => {}
            Err(DestinationsProblem::Network { entry, reason }) => {
                return Err(Error::Network {
                    path: path.to_owned(),
                    entry,
                    reason,
                });
            }
            Err(DestinationsProblem::Proxy(reason)) => {
                return Err(Error::Proxy {
                    path: path.to_owned(),
                    reason,
                });
            }
        }
        // The count of attempts is read back from the delivery log, which keeps this many.
        let most = travelmap_store::webhooks::ATTEMPTS_KEPT as u32;
        if config.webhooks.max_attempts.is_some_and(|max| max > most) {
            return Err(Error::TooManyAttempts {
                path: path.to_owned(),
                most,
            });
        }
        // A zero would make grants expire as they are given, a receiver time out at once, or
        // deliveries retry without pause: no setting anyone means.
        let webhooks = &config.webhooks;
        let zero = [
            ("break_glass_minutes", config.break_glass_minutes == Some(0)),
            ("[webhooks] max_attempts", webhooks.max_attempts == Some(0)),
            (
                "[webhooks] timeout_seconds",
                webhooks.timeout_seconds == Some(0),
            ),
            (
                "[webhooks] retry_base_ms",
                webhooks.retry_base_ms == Some(0),
            ),
            (
                "[webhooks] retry_cap_seconds",
                webhooks.retry_cap_seconds == Some(0),
            ),
            (
                "[jwt] refresh_minutes",
                config
                    .jwt
                    .as_ref()
                    .is_some_and(|jwt| jwt.refresh_minutes == 0),
            ),
        ];
        if let Some((setting, _)) = zero.into_iter().find(|(_, is_zero)| *is_zero) {
            return Err(Error::Zero {
                path: path.to_owned(),
                setting,
            });
        }
        // Break-glass access is for an emergency, not a standing grant (and minutes beyond
        // this would overflow the clock's arithmetic).
        if config
            .break_glass_minutes
            .is_some_and(|minutes| minutes > MAX_BREAK_GLASS_MINUTES)
        {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                setting: "break_glass_minutes",
                most: MAX_BREAK_GLASS_MINUTES,
            });
        }
        if config.coordination.unassigned_after_days > MAX_UNASSIGNED_AFTER_DAYS {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                setting: "[coordination] unassigned_after_days",
                most: u64::from(MAX_UNASSIGNED_AFTER_DAYS),
            });
        }
        let policy = webhooks.policy();
        if policy.backoff.base > policy.backoff.cap {
            return Err(Error::BaseOverCap {
                path: path.to_owned(),
            });
        }
        Ok(config)
    }

    pub fn authenticator(&self, path: &Path) -> Result<Authenticator, Error> {
        if self.credentials.is_empty() {
            return Err(Error::NoCredentials(path.to_owned()));
        }
        let mut kinds = std::collections::HashMap::new();
        for agency in &self.agencies {
            if agency.id.trim().is_empty() || !travelmap_api::auth::plain_id(&agency.id) {
                return Err(Error::BlankAgency(path.to_owned()));
            }
            if kinds.insert(agency.id.as_str(), agency.kind).is_some() {
                return Err(Error::AgencyTwice {
                    path: path.to_owned(),
                    agency: agency.id.clone(),
                });
            }
        }
        let mut entries = Vec::with_capacity(self.credentials.len());
        for entry in &self.credentials {
            let Some(&kind) = kinds.get(entry.agency.as_str()) else {
                return Err(Error::UndeclaredAgency {
                    path: path.to_owned(),
                    credential: entry.id.clone(),
                    agency: entry.agency.clone(),
                });
            };
            entries.push((
                entry.key_sha256.clone(),
                Credential {
                    id: entry.id.clone(),
                    agency: entry.agency.clone(),
                    agency_kind: Some(kind),
                    roles: entry.roles.clone(),
                },
            ));
        }
        Authenticator::new(entries)
            .map(|authenticator| {
                authenticator.with_agencies(self.agencies.iter().map(|agency| agency.id.clone()))
            })
            .map_err(|source| Error::Credentials {
                path: path.to_owned(),
                source,
            })
    }

    /// The JWT settings, if tokens are configured: the source of the key set and how to check
    /// tokens.
    pub fn jwt(&self, path: &Path) -> Result<Option<(JwksSource, JwtSettings)>, Error> {
        let Some(jwt) = &self.jwt else {
            return Ok(None);
        };
        let invalid = |detail: &str| Error::JwtSetting {
            path: path.to_owned(),
            detail: detail.to_owned(),
        };
        // Blank, either would let a token through that names no issuer or no audience.
        if jwt.issuer.trim().is_empty() {
            return Err(invalid("issuer must name the identity provider"));
        }
        if jwt.audience.trim().is_empty() {
            return Err(invalid(
                "audience must name this service, as tokens for it do",
            ));
        }
        let source = match (&jwt.jwks_file, &jwt.jwks_url) {
            (Some(file), None) => JwksSource::File(file.clone()),
            (None, Some(url)) => {
                // The key set decides whose tokens are believed: fetched in the clear, anyone
                // on the way could hand in their own keys. Plain HTTP only to this machine, by
                // the rule webhooks follow.
                let parsed = reqwest::Url::parse(url).ok();
                let secure = parsed.as_ref().is_some_and(|parsed| {
                    parsed.scheme() == "https"
                        || (parsed.scheme() == "http"
                            && travelmap_webhooks::registration::on_this_machine(parsed))
                });
                if !secure {
                    return Err(invalid(
                        "jwks_url must be an https:// URL (plain http:// only to this machine)",
                    ));
                }
                // A password in it would be printed with every error that names the URL, and
                // a fragment is never sent.
                if parsed.as_ref().is_some_and(|parsed| {
                    !parsed.username().is_empty()
                        || parsed.password().is_some()
                        || parsed.fragment().is_some()
                }) {
                    return Err(invalid(
                        "jwks_url must not carry a user name, password or fragment",
                    ));
                }
                JwksSource::Url(url.clone())
            }
            _ => {
                return Err(Error::JwksSource {
                    path: path.to_owned(),
                });
            }
        };
        let settings = JwtSettings {
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            agency_claim: jwt.agency_claim.clone(),
            roles_claim: jwt.roles_claim.clone(),
            agencies: self
                .agencies
                .iter()
                .map(|agency| (agency.id.clone(), agency.kind))
                .collect(),
        };
        Ok(Some((source, settings)))
    }
}

/// Where the identity provider's key set is read from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    /// Reads the key set's JSON.
    pub async fn read(&self) -> anyhow::Result<String> {
        use anyhow::Context;
        match self {
            JwksSource::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the JWKS {}", path.display())),
            JwksSource::Url(url) => {
                let response = reqwest::Client::new()
                    .get(url)
                    .timeout(std::time::Duration::from_secs(10))
                    .send()
                    .await
                    .with_context(|| format!("fetching the JWKS {url}"))?
                    .error_for_status()
                    .with_context(|| format!("fetching the JWKS {url}"))?;
                response
                    .text()
                    .await
                    .with_context(|| format!("reading the JWKS {url}"))
            }
        }
    }
}

/// The credential used when no configuration is given: every role, for one local user.
pub fn local_admin() -> Credential {
    Credential {
        id: "local-admin".into(),
        agency: "local".into(),
        agency_kind: None,
        roles: vec![
            Role::Admin,
            Role::Writer,
            Role::Coordinator,
            Role::Auditor,
            Role::Dpo,
        ],
    }
}

/// What happened to the local admin key.
pub enum LocalKey {
    /// A new key was generated and written to this file.
    Generated(PathBuf),
    /// An existing key was found in this file.
    Existing(PathBuf),
}

/// Reads the local admin key from the data directory, generating it on first use. The file is
/// created readable by its owner only; the key never appears in logs.
pub fn local_admin_key(data_dir: &Path) -> Result<(String, LocalKey), Error> {
    let path = data_dir.join(LOCAL_ADMIN_KEY_FILE);
    let error = |source| Error::LocalKey {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => {
            warn_if_readable_by_others(&path, "the local admin key");
            return Ok((key.trim().to_owned(), LocalKey::Existing(path)));
        }
        Ok(_) => {}
        Err(read) if read.kind() == std::io::ErrorKind::NotFound => {}
        Err(read) => return Err(error(read)),
    }
    create_data_dir(data_dir).map_err(error)?;
    let key = new_key();
    write_private(&path, &format!("{key}\n")).map_err(error)?;
    Ok((key, LocalKey::Generated(path)))
}

/// Logs a warning if users other than the owner may read the key file at `path`: whoever reads
/// the master keys opens every sealed field, and whoever reads the signing key can sign
/// checkpoints of a rewritten trail.
fn warn_if_readable_by_others(path: &Path, what: &str) {
    if let Some(mode) = travelmap_store::sqlite::shared_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "other users of this machine may read {what}; restrict the file to the service's \
             user (chmod 600)"
        );
    }
}

/// A fresh random bearer key: 32 bytes from the operating system's generator, hex-encoded.
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("tm_{}", hex::encode(bytes))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// The data directory and the parents of it this process created, the data directory first
/// (see [`remove_created_data_dir`]).
static CREATED_DATA_DIR: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
/// The checkpoint-signing key file this process generated, if it did (see
/// [`discard_generated_signing_key`]).
static GENERATED_SIGNING_KEY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Creates the data directory (readable by the owner only) if it is missing, remembering that
/// this process made it.
fn create_data_dir(data_dir: &Path) -> std::io::Result<()> {
    let missing: Vec<PathBuf> = data_dir
        .ancestors()
        .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
        .map(Path::to_owned)
        .collect();
    travelmap_store::sqlite::create_private_dir(data_dir)?;
    if !missing.is_empty() {
        let _ = CREATED_DATA_DIR.set(missing);
    }
    Ok(())
}

/// The checkpoint-signing key file this process generated, if it did.
pub fn generated_signing_key() -> Option<&'static Path> {
    GENERATED_SIGNING_KEY.get().map(PathBuf::as_path)
}

/// Removes the checkpoint-signing key this process generated, for a start that failed before
/// serving (so before signing anything): kept, it would pass for the deployment's key on the
/// next start. Returns its path.
pub fn discard_generated_signing_key() -> Option<PathBuf> {
    let path = GENERATED_SIGNING_KEY.get()?;
    std::fs::remove_file(path).ok()?;
    Some(path.clone())
}

/// Removes the data directory this process created, if it is empty again (a failed start whose
/// generated keys were removed), and the parents of it this process created, while they are
/// empty. Returns the data directory's path if it was removed.
pub fn remove_created_data_dir() -> Option<PathBuf> {
    let created = CREATED_DATA_DIR.get()?;
    for dir in created {
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
    let data_dir = created.first()?;
    (!data_dir.exists()).then(|| data_dir.clone())
}

/// The file in the data directory holding the generated checkpoint-signing key.
pub const AUDIT_SIGNING_KEY_FILE: &str = "audit-signing.key";

/// The key that signs audit checkpoints: from `configured` if given, else from the data
/// directory (generated there, readable by the owner only, on first use).
pub fn checkpoint_key(
    configured: Option<&Path>,
    data_dir: &Path,
) -> Result<ed25519_dalek::SigningKey, Error> {
    let path = configured.map_or_else(|| data_dir.join(AUDIT_SIGNING_KEY_FILE), Path::to_owned);
    let error = |source| Error::SigningKey {
        path: path.clone(),
        source,
    };
    let invalid = |detail: &str| {
        error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{detail} (expected 64 hex digits, the key's 32-byte seed)"),
        ))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            warn_if_readable_by_others(&path, "the audit checkpoint signing key");
            let seed = hex::decode(text.trim()).map_err(|_| invalid("not hex"))?;
            let seed: [u8; 32] = seed.try_into().map_err(|_| invalid("not 32 bytes"))?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
        Err(read) if read.kind() == std::io::ErrorKind::NotFound && configured.is_none() => {
            create_data_dir(data_dir).map_err(error)?;
            let seed: [u8; 32] = rand::random();
            write_private(&path, &format!("{}\n", hex::encode(seed))).map_err(error)?;
            let _ = GENERATED_SIGNING_KEY.set(path.clone());
            Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
        Err(read) => Err(error(read)),
    }
}

/// Chooses the store: a `postgres://` URL if one is given, else the embedded store in `data_dir`.
pub fn store_location(
    store: Option<String>,
    data_dir: &Path,
) -> Result<travelmap_store::Location, String> {
    match store {
        None => Ok(travelmap_store::Location::Embedded(data_dir.to_owned())),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(travelmap_store::Location::Postgres(url))
        }
        Some(other) => Err(format!(
            "--store takes a postgres:// URL (got `{}`); the embedded store is chosen with --data-dir",
            other.split(':').next().unwrap_or_default()
        )),
    }
}

/// The file in the data directory holding the generated master key.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The environment variable that gives the master keys directly.
pub const MASTER_KEYS_ENV: &str = "TRAVELMAP_MASTER_KEYS";

/// The master key file this process generated, if it did (see [`discard_generated_master_key`]).
static GENERATED_MASTER_KEY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Whether a key store was opened with this process's master keys, after which a key this
/// process generated may wrap keys (the store's lookup key, at least) and must stay.
static MASTER_KEY_USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that a key store was opened with the master keys (see
/// [`discard_generated_master_key`]).
pub fn master_key_used() {
    MASTER_KEY_USED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Removes the master key file this process generated, if it did and no key store was opened
/// with it: for a command that failed before (a PostgreSQL database that could not be reached,
/// or whose keys are wrapped under another master key, which the data directory cannot show).
/// Left there, the new key would be read on the next start as if it were the deployment's, and
/// the right one, once put back, would have to be told apart from it. Returns its path.
pub fn discard_generated_master_key() -> Option<PathBuf> {
    if MASTER_KEY_USED.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    let path = GENERATED_MASTER_KEY.get()?;
    std::fs::remove_file(path).ok()?;
    Some(path.clone())
}

/// The master keys: from `TRAVELMAP_MASTER_KEYS`, else the configured file, else `master.key` in
/// the data directory (generated there, readable by the owner only, on first use).
pub fn master_keys(
    configured: Option<&Path>,
    data_dir: &Path,
) -> Result<travelmap_store::MasterKeys, Error> {
    // Set but empty counts as not set, as for every other setting (an empty line in an
    // environment file).
    if let Ok(text) = std::env::var(MASTER_KEYS_ENV)
        && !text.trim().is_empty()
    {
        return travelmap_store::MasterKeys::parse(&text).map_err(|detail| Error::MasterKeys {
            from: MASTER_KEYS_ENV.to_owned(),
            detail,
        });
    }
    let path = configured.map_or_else(|| data_dir.join(MASTER_KEY_FILE), Path::to_owned);
    let failed = |detail: String| Error::MasterKeys {
        from: path.display().to_string(),
        detail,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            warn_if_readable_by_others(&path, "the master keys");
            travelmap_store::MasterKeys::parse(&text).map_err(failed)
        }
        Err(read) if read.kind() == std::io::ErrorKind::NotFound && configured.is_none() => {
            // A key is made only while the key store holds none. Beside keys wrapped under
            // another master key, a new one would open nothing, and would have to be found and
            // removed before the right one could be put back.
            let keys = data_dir.join("keys.sqlite");
            if travelmap_store::sqlite::SqliteKeyStore::holds_wrapped_keys(&keys)
                .map_err(|error| failed(format!("reading {}: {error}", keys.display())))?
            {
                return Err(failed(format!(
                    "missing, but {} holds keys wrapped under a master key: put that key back \
                     (or name it with master_key_file or TRAVELMAP_MASTER_KEYS); see \
                     docs/operations.md",
                    data_dir.display()
                )));
            }
            create_data_dir(data_dir).map_err(|error| failed(error.to_string()))?;
            // The date says when it was made; the suffix keeps two keys made on one day apart,
            // so that the wrong one is reported by its id rather than as a key that fails.
            let suffix = format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff);
            let key = travelmap_store::MasterKey::generate(format!(
                "k{}-{suffix}",
                chrono::Utc::now().format("%Y%m%d")
            ));
            let text = format!(
                "# Travelmap master key: wraps the keys that seal personal data. Keep a copy\n# apart from backups of the data; see docs/operations.md.\n{}:{}\n",
                key.id,
                key.to_hex()
            );
            write_private(&path, &text).map_err(|error| failed(error.to_string()))?;
            let _ = GENERATED_MASTER_KEY.set(path.clone());
            tracing::warn!(
                path = %path.display(),
                "generated a master key in the data directory; for a real deployment keep it elsewhere (master_key_file or TRAVELMAP_MASTER_KEYS)"
            );
            Ok(travelmap_store::MasterKeys::new(key, Vec::new()))
        }
        Err(read) => Err(failed(read.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/travelmap.example.toml"
        ));
        let file = ConfigFile::load(path).unwrap();
        assert_eq!(file.credentials.len(), 2);
        assert_eq!(file.listen, Some("127.0.0.1:8080".parse().unwrap()));
        file.authenticator(path).unwrap();
    }

    #[test]
    fn unknown_keys_and_empty_credentials_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("travelmap.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
        let error = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(error.contains("listen_port"), "{error}");

        std::fs::write(&path, "listen = \"127.0.0.1:1\"\n").unwrap();
        let file = ConfigFile::load(&path).unwrap();
        assert!(matches!(
            file.authenticator(&path),
            Err(Error::NoCredentials(_))
        ));
    }

    #[test]
    fn identity_provider_settings_that_would_let_any_token_through_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("travelmap.toml");
        let jwt = |lines: &str| {
            std::fs::write(&path, format!("[jwt]\n{lines}\n")).unwrap();
            ConfigFile::load(&path)
                .unwrap()
                .jwt(&path)
                .map(|settings| settings.is_some())
        };
        let refused = [
            (
                "jwks_file = \"k.json\"\nissuer = \"https://idp\"\naudience = \"\"",
                "audience",
            ),
            (
                "jwks_file = \"k.json\"\nissuer = \" \"\naudience = \"tm\"",
                "issuer",
            ),
            (
                "jwks_url = \"http://idp.example/keys\"\nissuer = \"https://idp\"\naudience = \"tm\"",
                "https://",
            ),
        ];
        for (lines, named) in refused {
            let error = jwt(lines).unwrap_err().to_string();
            assert!(error.contains(named), "{lines}: {error}");
        }
        for url in [
            "https://idp.example/keys",
            "http://127.0.0.1:8081/keys",
            "http://localhost/k",
            // The loopback rule webhooks follow, so the two agree on what is this machine.
            "http://127.1/k",
            "http://[::1]:9000/k",
        ] {
            let lines =
                format!("jwks_url = \"{url}\"\nissuer = \"https://idp\"\naudience = \"tm\"");
            assert!(jwt(&lines).unwrap(), "{url}");
        }
        for url in [
            "http://localhost.evil.example/k",
            "https://user:secret@idp.example/k",
            "https://idp.example/k#keys",
        ] {
            let lines = format!("jwks_url = \"{url}\"\nissuer = \"i\"\naudience = \"tm\"");
            let error = jwt(&lines).unwrap_err().to_string();
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn every_credential_acts_for_a_declared_agency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("travelmap.toml");
        let credential = format!(
            "[[credentials]]\nid = \"c\"\nagency = \"prison-opava\"\nroles = [\"writer\"]\nkey_sha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        std::fs::write(&path, &credential).unwrap();
        let error = ConfigFile::load(&path)
            .unwrap()
            .authenticator(&path)
            .unwrap_err();
        assert!(
            matches!(&error, Error::UndeclaredAgency { agency, .. } if agency == "prison-opava"),
            "{error}"
        );
        let agency = "[[agencies]]\nid = \"prison-opava\"\nkind = \"prison\"\n";
        std::fs::write(&path, format!("{agency}{agency}{credential}")).unwrap();
        let error = ConfigFile::load(&path)
            .unwrap()
            .authenticator(&path)
            .unwrap_err();
        assert!(matches!(error, Error::AgencyTwice { .. }), "{error}");
        std::fs::write(&path, format!("{agency}{credential}")).unwrap();
        ConfigFile::load(&path)
            .unwrap()
            .authenticator(&path)
            .unwrap();
        std::fs::write(
            &path,
            format!("[[agencies]]\nid = \"x\"\nkind = \"bakery\"\n{credential}"),
        )
        .unwrap();
        let error = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(error.contains("bakery"), "{error}");
        // Blank names would be recorded as if they named someone.
        std::fs::write(
            &path,
            format!("[[agencies]]\nid = \" \"\nkind = \"prison\"\n{agency}{credential}"),
        )
        .unwrap();
        let error = ConfigFile::load(&path)
            .unwrap()
            .authenticator(&path)
            .unwrap_err();
        assert!(matches!(error, Error::BlankAgency(_)), "{error}");
        std::fs::write(
            &path,
            format!("{agency}{}", credential.replace("id = \"c\"", "id = \"\"")),
        )
        .unwrap();
        let error = ConfigFile::load(&path)
            .unwrap()
            .authenticator(&path)
            .unwrap_err();
        assert!(error.to_string().contains("blank id"), "{error}");
        std::fs::write(
            &path,
            format!(
                "{agency}{}",
                credential.replace("id = \"c\"", "id = \" c\"")
            ),
        )
        .unwrap();
        let error = ConfigFile::load(&path)
            .unwrap()
            .authenticator(&path)
            .unwrap_err();
        assert!(error.to_string().contains("surrounding spaces"), "{error}");
        std::fs::write(
            &path,
            format!(
                "{agency}{}",
                credential.replace("id = \"c\"", "id = \"jwt:c\"")
            ),
        )
        .unwrap();
        let error = ConfigFile::load(&path)
            .unwrap()
            .authenticator(&path)
            .unwrap_err();
        assert!(error.to_string().contains("starts with `jwt:`"), "{error}");
    }

    #[test]
    fn the_webhooks_table_overrides_the_delivery_defaults() {
        let file: ConfigFile =
            toml::from_str("[webhooks]\nretry_base_ms = 50\nmax_attempts = 4\n").unwrap();
        let policy = file.webhooks.policy();
        assert_eq!(policy.backoff.base, std::time::Duration::from_millis(50));
        assert_eq!(policy.max_attempts, 4);
        assert_eq!(
            policy.timeout,
            travelmap_webhooks::Policy::default().timeout
        );
        assert_eq!(
            ConfigFile::default().webhooks.policy(),
            travelmap_webhooks::Policy::default()
        );
        assert!(toml::from_str::<ConfigFile>("[webhooks]\nretries = 3\n").is_err());
    }

    #[test]
    fn allowed_networks_are_read_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("travelmap.toml");
        std::fs::write(
            &path,
            "[webhooks]\nallow_networks = [\"10.20.0.0/16\", \"127.0.0.1\", \"fd00::/8\"]\n",
        )
        .unwrap();
        let destinations = ConfigFile::load(&path)
            .unwrap()
            .webhooks
            .destinations()
            .unwrap();
        let permits = |address: &str| destinations.permits(address.parse().unwrap());
        assert!(permits("10.20.1.2"));
        assert!(permits("127.0.0.1"));
        assert!(permits("fd00::5"));
        assert!(!permits("127.0.0.2"));
        assert!(!permits("10.21.0.1"));
        assert!(!permits("192.168.0.1"));
        assert_eq!(
            ConfigFile::default().webhooks.destinations().unwrap(),
            travelmap_webhooks::Destinations::public_only()
        );
        // Everything, if the operator says so.
        std::fs::write(
            &path,
            "[webhooks]\nallow_networks = [\"0.0.0.0/0\", \"::/0\"]\n",
        )
        .unwrap();
        let everything = ConfigFile::load(&path)
            .unwrap()
            .webhooks
            .destinations()
            .unwrap();
        for address in [
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(everything.permits(address.parse().unwrap()), "{address}");
        }
        for (wrong, why) in [
            ("10.0.0.0/33", "neither a network"),
            ("intranet", "neither a network"),
            ("10.0.0.0/8/1", "neither a network"),
            ("", "neither a network"),
            (" 127.0.0.1", "neither a network"),
            ("10.20.0.1/16", "`10.20.0.0/16`"),
            ("::ffff:127.0.0.1", "write the IPv4 network"),
            ("::ffff:10.0.0.0/104", "write the IPv4 network"),
            ("64:ff9b::/96", "write the IPv4 network"),
            ("2002::/16", "write the IPv4 network"),
        ] {
            std::fs::write(
                &path,
                format!("[webhooks]\nallow_networks = [\"{wrong}\"]\n"),
            )
            .unwrap();
            let error = ConfigFile::load(&path).unwrap_err();
            assert!(
                matches!(&error, Error::Network { entry, .. } if entry == wrong),
                "{error}"
            );
            assert!(error.to_string().contains("allow_networks"), "{error}");
            assert!(error.to_string().contains(why), "{wrong}: {error}");
        }
    }

    #[test]
    fn a_webhook_proxy_is_read_and_its_password_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("travelmap.toml");
        std::fs::write(
            &path,
            "[webhooks]\nproxy = \"http://deliveries:s3cret@proxy.internal:3128\"\n",
        )
        .unwrap();
        let config = ConfigFile::load(&path).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
        let destinations = config.webhooks.destinations().unwrap();
        let proxy = destinations.proxy().expect("the proxy is configured");
        assert_eq!(proxy.shown(), "http://proxy.internal:3128/");
        assert_ne!(
            destinations,
            travelmap_webhooks::Destinations::public_only()
        );
        std::fs::write(
            &path,
            "[webhooks]\nproxy = \"http://deliveries:s3cret@proxy.internal:3128/squid\"\n",
        )
        .unwrap();
        let error = ConfigFile::load(&path).unwrap_err();
        assert!(matches!(error, Error::Proxy { .. }), "{error}");
        let shown = error.to_string();
        assert!(shown.contains("[webhooks] proxy must be"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        // Nor does TOML's own error quote it.
        for wrong in [
            "proxy_url = \"http://deliveries:s3cret@proxy.internal:3128\"",
            "proxy = \"http://deliveries:s3\\cret@proxy.internal:3128\"",
        ] {
            std::fs::write(&path, format!("[webhooks]\n{wrong}\n")).unwrap();
            let shown = ConfigFile::load(&path).unwrap_err().to_string();
            assert!(shown.contains("is invalid at line 2, column "), "{shown}");
            assert!(!shown.contains("s3"), "{shown}");
        }
        // Nor serde's, where the value is of the wrong type for its key.
        std::fs::write(
            &path,
            "[webhooks]\ntimeout_seconds = \"http://u:s3\\\"cret@proxy:3128\"\n",
        )
        .unwrap();
        let shown = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(
            shown.contains("invalid type: string (not shown), expected"),
            "{shown}"
        );
        assert!(!shown.contains("s3") && !shown.contains("cret"), "{shown}");
        std::fs::write(
            &path,
            "[webhooks]\nallow_networks = [\"http://u:s3cret@proxy:3128\"]\n",
        )
        .unwrap();
        let shown = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(shown.contains("an entry holding @, not shown"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        // Nor serde's, where the value is none of a setting's choices.
        std::fs::write(
            &path,
            "[[credentials]]\nid = \"x\"\nagency = \"a\"\nroles = [\"u:s3cret`, expected\"]\nkey_sha256 = \"00\"\n",
        )
        .unwrap();
        let shown = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(
            shown.contains("unknown variant (not shown), expected one of `writer`"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        std::fs::write(&path, "[webhooks]\nproxy = \"http://localhost:3128\"\n").unwrap();
        let shown = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(shown.contains("by its address"), "{shown}");
    }

    #[test]
    fn more_attempts_than_the_delivery_log_keeps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("travelmap.toml");
        std::fs::write(&path, "[webhooks]\nmax_attempts = 1001\n").unwrap();
        let error = ConfigFile::load(&path).unwrap_err();
        assert!(
            matches!(error, Error::TooManyAttempts { most: 1000, .. }),
            "{error}"
        );
        std::fs::write(&path, "[webhooks]\nmax_attempts = 1000\n").unwrap();
        assert_eq!(
            ConfigFile::load(&path).unwrap().webhooks.max_attempts,
            Some(1000)
        );
    }

    #[test]
    fn settings_of_zero_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("travelmap.toml");
        for (text, setting) in [
            ("break_glass_minutes = 0\n", "break_glass_minutes"),
            ("[webhooks]\nmax_attempts = 0\n", "[webhooks] max_attempts"),
            (
                "[webhooks]\ntimeout_seconds = 0\n",
                "[webhooks] timeout_seconds",
            ),
            (
                "[webhooks]\nretry_base_ms = 0\n",
                "[webhooks] retry_base_ms",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = ConfigFile::load(&path).unwrap_err();
            assert!(
                matches!(error, Error::Zero { setting: named, .. } if named == setting),
                "{error}"
            );
        }
        std::fs::write(&path, "[coordination]\nunassigned_after_days = 3651\n").unwrap();
        assert!(matches!(
            ConfigFile::load(&path).unwrap_err(),
            Error::TooLarge { most: 3650, .. }
        ));
        std::fs::write(&path, "[coordination]\nunassigned_after_days = 3650\n").unwrap();
        assert!(ConfigFile::load(&path).is_ok());
        std::fs::write(&path, "break_glass_minutes = 1\n").unwrap();
        assert!(ConfigFile::load(&path).is_ok());
        std::fs::write(&path, "break_glass_minutes = 10081\n").unwrap();
        assert!(matches!(
            ConfigFile::load(&path).unwrap_err(),
            Error::TooLarge { most: 10080, .. }
        ));
        std::fs::write(
            &path,
            "[webhooks]\nretry_base_ms = 5000\nretry_cap_seconds = 2\n",
        )
        .unwrap();
        assert!(matches!(
            ConfigFile::load(&path).unwrap_err(),
            Error::BaseOverCap { .. }
        ));
    }

    #[test]
    fn the_local_admin_key_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let (key, origin) = local_admin_key(dir.path()).unwrap();
        assert!(matches!(origin, LocalKey::Generated(_)));
        assert_eq!(key.len(), 3 + 64);
        let (again, origin) = local_admin_key(dir.path()).unwrap();
        assert!(matches!(origin, LocalKey::Existing(_)));
        assert_eq!(again, key);
    }

    #[test]
    fn a_postgres_url_selects_postgresql_and_anything_else_is_refused() {
        let dir = Path::new("data");
        assert_eq!(
            store_location(None, dir),
            Ok(travelmap_store::Location::Embedded(dir.to_owned()))
        );
        for url in [
            "postgres://db/travelmap",
            "postgresql://u@db:5433/t?sslmode=require",
        ] {
            assert_eq!(
                store_location(Some(url.into()), dir),
                Ok(travelmap_store::Location::Postgres(url.into()))
            );
        }
        let refused = store_location(Some("mysql://secret@db/x".into()), dir).unwrap_err();
        assert!(
            refused.contains("`mysql`") && !refused.contains("secret"),
            "{refused}"
        );
    }
}
