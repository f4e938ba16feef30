//! Authentication and roles. A bearer key is hashed (SHA-256) and looked up among the configured
//! credentials; only hashes are ever configured or kept. The credential decides the agency an
//! event is recorded for, whatever the body says.

use std::collections::HashMap;
use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use travelmap_domain::{AgencyKind, JourneyEvent, Provenance};

use crate::AppState;
use crate::error::{ApiError, Code};

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Posts journey events.
    Writer,
    /// Reads travel maps and histories of clients.
    Coordinator,
    /// Replays histories and reads the global feed.
    Auditor,
    /// Administers the service (configuration); reads the global feed.
    Admin,
    /// The data-protection officer: reads the audit trail and reviews break-glass access;
    /// erasure and restriction are theirs.
    Dpo,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Role::Writer => "writer",
            Role::Coordinator => "coordinator",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Dpo => "dpo",
        };
        f.write_str(name)
    }
}

/// A configured credential (the key itself is never held, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Shown in logs and recorded with every event.
    pub id: String,
    /// The agency this credential acts for.
    pub agency: String,
    /// The kind of that agency, which decides the event types it may post. `None` only for the
    /// local admin of a start without configuration: a sandbox for one local user, who may post
    /// every type to try the service out.
    pub agency_kind: Option<AgencyKind>,
    pub roles: Vec<Role>,
}

/// Why a set of credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential `{0}`: key_sha256 must be 64 hex digits (the SHA-256 of the bearer key)")]
    BadHash(String),
    #[error("credentials `{0}` and `{1}` have the same key")]
    SameKey(String, String),
    #[error("credential id `{0}` is used twice")]
    SameId(String),
    #[error("credential `{0}` has no roles")]
    NoRoles(String),
    #[error("a credential has a blank id")]
    BlankId,
    #[error("credential `{0}` acts for a blank agency")]
    BlankAgency(String),
    #[error("credential id or agency {0:?} has surrounding spaces or control characters")]
    Unreadable(String),
    #[error(
        "credential id `{0}` starts with `jwt:`, which names identity-provider tokens (`jwt:<sub>`)"
    )]
    TokenNamespace(String),
}

/// Whether an id reads as what it is wherever it is shown (logs, recorded events, the trail):
/// no surrounding spaces and no control characters.
pub fn plain_id(id: &str) -> bool {
    id.trim() == id && !id.chars().any(|c| c.is_control() || is_invisible_format(c))
}

/// Unicode format characters that change how text around them is shown without showing
/// themselves: bidirectional overrides and isolates (which can make `jwt:\u{202e}mda` read as
/// `jwt:adm`), zero-width spaces and joiners, the soft hyphen and the byte order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// Finds the credential for a bearer key, or verifies a bearer JWT when tokens are configured.
#[derive(Default, Clone)]
pub struct Authenticator {
    by_hash: HashMap<[u8; 32], Credential>,
    jwt: Option<std::sync::Arc<crate::jwt::JwtVerifier>>,
    /// The agencies the configuration declares; `None` where it declares none (the no-config
    /// local admin), and then any agency may be named.
    agencies: Option<std::collections::HashSet<String>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.by_hash.len())
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Builds the table from `(key_sha256 hex, credential)` pairs, refusing ambiguous setups.
    pub fn new(
        entries: impl IntoIterator<Item = (String, Credential)>,
    ) -> Result<Self, CredentialError> {
        let mut by_hash: HashMap<[u8; 32], Credential> = HashMap::new();
        for (hash_hex, credential) in entries {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(hash_hex.trim().to_ascii_lowercase(), &mut hash)
                .map_err(|_| CredentialError::BadHash(credential.id.clone()))?;
            // Blank names would be recorded in events and the trail as if they named someone.
            if credential.id.trim().is_empty() {
                return Err(CredentialError::BlankId);
            }
            if credential.agency.trim().is_empty() {
                return Err(CredentialError::BlankAgency(credential.id));
            }
            for id in [&credential.id, &credential.agency] {
                if !plain_id(id) {
                    return Err(CredentialError::Unreadable(id.clone()));
                }
            }
            // Tokens act as `jwt:<sub>`: a configured id of that form would be taken for the
            // token's subject in the log, the trail and break-glass grants.
            if credential.id.starts_with("jwt:") {
                return Err(CredentialError::TokenNamespace(credential.id));
            }
            if credential.roles.is_empty() {
                return Err(CredentialError::NoRoles(credential.id));
            }
            if let Some(other) = by_hash.values().find(|other| other.id == credential.id) {
                return Err(CredentialError::SameId(other.id.clone()));
            }
            if let Some(other) = by_hash.get(&hash) {
                return Err(CredentialError::SameKey(other.id.clone(), credential.id));
            }
            by_hash.insert(hash, credential);
        }
        Ok(Self {
            by_hash,
            jwt: None,
            agencies: None,
        })
    }

    /// Only `agencies` may be named by the involvements and consents recorded (see
    /// [`Self::check_named_agency`]).
    pub fn with_agencies(mut self, agencies: impl IntoIterator<Item = String>) -> Self {
        self.agencies = Some(agencies.into_iter().collect());
        self
    }

    /// Whether the configuration declares `agency` (every agency does where it declares none).
    pub fn declares(&self, agency: &str) -> bool {
        self.agencies
            .as_ref()
            .is_none_or(|agencies| agencies.contains(agency))
    }

    /// Whether `agency` may be asked about: one the configuration declares (any where it
    /// declares none). A misspelt agency in a caseload or alert query would otherwise read as
    /// an agency with nothing to do.
    pub fn check_agency(&self, agency: &str, field: &str) -> Result<(), ApiError> {
        if self.declares(agency) {
            return Ok(());
        }
        Err(ApiError::new(
            Code::NotFound,
            format!(
                "no agency `{agency}` takes part: the configuration's [[agencies]] do not declare it"
            ),
        )
        .with_field(field))
    }

    /// Refuses an involvement or consent that names an agency the configuration does not
    /// declare: it would open or end access for an agency that does not take part (a typo, or
    /// an invented one), and need-to-know is decided from exactly these events.
    pub fn check_named_agency(&self, event: &JourneyEvent) -> Result<(), ApiError> {
        let Some((named, field)) = event.named_agency() else {
            return Ok(());
        };
        if self.declares(named) {
            return Ok(());
        }
        Err(ApiError::new(
            Code::ValidationFailed,
            format!(
                "no agency `{named}` takes part: the configuration's [[agencies]] do not declare it"
            ),
        )
        .with_field(field))
    }

    /// Also accepts JWTs checked by `verifier`.
    pub fn with_jwt(mut self, verifier: std::sync::Arc<crate::jwt::JwtVerifier>) -> Self {
        self.jwt = Some(verifier);
        self
    }

    /// The caller behind a bearer value: a configured key, or (if configured) a valid JWT,
    /// which is valid until it expires.
    pub fn authenticate(&self, bearer: &str) -> Result<Caller, ApiError> {
        if let Some(verifier) = &self.jwt
            && bearer.matches('.').count() == 2
        {
            return verifier
                .verify(bearer)
                .map(|(credential, expires)| Caller(credential, Some(expires)))
                .map_err(|error| {
                    tracing::info!(%error, "bearer token refused");
                    ApiError::new(Code::Unauthorized, error.to_string())
                });
        }
        self.find(bearer)
            .cloned()
            .map(|credential| Caller(credential, None))
            .ok_or_else(|| ApiError::new(Code::Unauthorized, "the bearer key is not valid"))
    }

    /// The hex SHA-256 of a key, as written in the configuration.
    pub fn hash_key(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    fn find(&self, key: &str) -> Option<&Credential> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&hash)
    }
}

/// The authenticated caller of a request, and when its authentication ends (a token's expiry;
/// none for a configured key). Extracting it answers 401 when the key is missing or unknown.
#[derive(Debug, Clone)]
pub struct Caller(pub Credential, pub Option<chrono::DateTime<chrono::Utc>>);

impl Caller {
    /// Passes when the caller's agency may post events of `event_type`; otherwise 403.
    pub fn may_post(&self, event_type: &str) -> Result<(), ApiError> {
        // Erasure, restriction and retention have their own endpoints, which also destroy keys
        // and check the data-protection officer's role; posting their events would record a
        // decision without carrying it out.
        if travelmap_domain::personal::is_lifecycle(event_type) {
            return Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "`{event_type}` is recorded by the service itself, through the data-protection endpoints (DELETE /v1/clients/{{id}}/personal-data, POST and DELETE /v1/clients/{{id}}/restriction) and the retention run"
                ),
            )
            .with_field("type"));
        }
        let Some(kind) = self.0.agency_kind else {
            return Ok(());
        };
        if travelmap_domain::agency::may_post(kind, event_type) {
            return Ok(());
        }
        let allowed: Vec<&str> = travelmap_domain::agency::posted_by(event_type)
            .unwrap_or_default()
            .iter()
            .map(|kind| kind.as_str())
            .collect();
        Err(ApiError::new(
            Code::Forbidden,
            format!(
                "agency `{}` is of kind {kind}; `{event_type}` events may only be posted by: {}",
                self.0.agency,
                allowed.join(", ")
            ),
        )
        .with_field("type"))
    }

    /// Passes when the caller holds at least one of `roles`; otherwise 403.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.0.roles.iter().any(|held| roles.contains(held)) {
            return Ok(());
        }
        let wanted: Vec<String> = roles.iter().map(ToString::to_string).collect();
        Err(ApiError::new(
            Code::Forbidden,
            format!(
                "credential `{}` needs one of the roles: {}",
                self.0.id,
                wanted.join(", ")
            ),
        ))
    }

    pub fn provenance(&self) -> Provenance {
        Provenance {
            agency: self.0.agency.clone(),
            credential: self.0.id.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Two keys are no identity: which one counts would depend on which the server read.
        if parts.headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
            return Err(ApiError::new(
                Code::Unauthorized,
                "send one `Authorization: Bearer <key>` header, not several",
            ));
        }
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::new(Code::Unauthorized, "send `Authorization: Bearer <key>`"))?
            .to_str()
            .unwrap_or_default();
        // The scheme's name is case-insensitive (RFC 9110, section 11.1).
        let key = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    Code::Unauthorized,
                    "the Authorization header must be `Bearer <key>`",
                )
            })?;
        let caller = state.authenticator.authenticate(key)?;
        tracing::Span::current().record("credential", caller.0.id.as_str());
        Ok(caller)
    }
}
