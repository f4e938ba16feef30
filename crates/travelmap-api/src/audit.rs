//! Writing the audit trail from the handlers. Every operation on a client's personal data is
//! logged (allowed or denied) before its answer leaves: if the entry cannot be written, the
//! operation fails rather than go unlogged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use travelmap_domain::ClientId;
use travelmap_domain::audit::{AuditRecord, Operation, Outcome};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Code};

/// What a request says about itself for the audit trail: its id (set by the request-id layer),
/// and the purpose and justification the caller states.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: Option<String>,
    pub purpose: Option<String>,
    pub justification: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty())
                // Bounded, so that a header cannot flood the log.
                .map(|value| value.chars().take(500).collect::<String>())
        };
        Ok(Self {
            request_id: header("x-request-id"),
            purpose: header("x-purpose"),
            justification: header("x-justification"),
        })
    }
}

/// One entry's worth of facts about an operation.
pub struct Logged<'a> {
    pub operation: Operation,
    pub client: Option<ClientId>,
    pub action: &'a str,
    pub returned: Option<String>,
}

impl RequestContext {
    pub fn record(&self, caller: &Caller, outcome: Outcome, logged: Logged<'_>) -> AuditRecord {
        AuditRecord {
            at: now(),
            credential: caller.0.id.clone(),
            agency: caller.0.agency.clone(),
            actor: None,
            operation: logged.operation,
            client_id: logged.client,
            purpose: self.purpose.clone(),
            justification: self.justification.clone(),
            request_id: self.request_id.clone(),
            outcome,
            action: logged.action.to_owned(),
            returned: logged.returned,
        }
    }
}

/// Writes entries, turning a failure into an answer that discloses nothing.
pub async fn write(state: &AppState, records: Vec<AuditRecord>) -> Result<(), ApiError> {
    if records.is_empty() {
        return Ok(());
    }
    state.audit.append(records).await.map_err(|error| {
        tracing::error!(%error, "could not write the audit trail");
        ApiError::new(
            Code::Unavailable,
            "the audit trail cannot be written just now, so nothing is done; retry shortly",
        )
    })?;
    Ok(())
}

/// Checks the caller's roles; a refusal is logged as a denied `logged` operation.
pub async fn require(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    roles: &[Role],
    logged: Logged<'_>,
) -> Result<(), ApiError> {
    if let Err(refused) = caller.require(roles) {
        write(state, vec![context.record(caller, Outcome::Denied, logged)]).await?;
        return Err(refused);
    }
    Ok(())
}

/// The server's clock to the microsecond (what the stores keep).
fn now() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap_or_else(|_| Utc::now())
}
