//! The audit trail for auditors: who did what to a client's data, the whole log in order, and
//! its head for checkpoints. Reading the trail is itself logged.

use axum::Json;
use axum::extract::State;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use travelmap_domain::ClientId;
use travelmap_domain::audit::{AuditEntry, Operation, Outcome, hex};
use travelmap_domain::payloads::Purpose;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::audit::{self, Logged, RequestContext};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Problem};
use crate::extract::{self, Path, Query};

/// The most entries one page of `GET /v1/audit/entries` returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// One entry of the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// When it happened.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The credential that acted (for a disclosure, the recipient).
    pub credential: String,
    pub agency: String,
    /// The sender's reference to the worker, for recorded events that name one.
    pub actor: Option<String>,
    /// collection, alteration, consultation, disclosure, combination or erasure.
    pub operation: String,
    pub client_id: Option<uuid::Uuid>,
    /// The purpose stated with the request (`X-Purpose`).
    pub purpose: Option<String>,
    /// The justification stated with the request (`X-Justification`).
    pub justification: Option<String>,
    /// allowed or denied.
    pub outcome: String,
    /// What was done, e.g. `GET /v1/clients/{client_id}/events`.
    pub action: String,
    /// What was returned or recorded: event ids, or their count and digest.
    pub returned: Option<String>,
    /// The request id, as in the service's logs.
    pub request_id: Option<String>,
    /// The entry's hash, chaining it to the one before (hex SHA-256).
    pub hash: String,
}

impl From<&AuditEntry> for AuditEntryView {
    fn from(entry: &AuditEntry) -> Self {
        let record = &entry.record;
        Self {
            seq: entry.seq,
            at: record.at,
            credential: record.credential.clone(),
            agency: record.agency.clone(),
            actor: record.actor.clone(),
            operation: record.operation.as_str().to_owned(),
            client_id: record.client_id.map(|id| id.0),
            purpose: record.purpose.clone(),
            justification: record.justification.clone(),
            outcome: record.outcome.as_str().to_owned(),
            action: record.action.clone(),
            returned: record.returned.clone(),
            request_id: record.request_id.clone(),
            hash: hex(&entry.hash),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntries {
    pub entries: Vec<AuditEntryView>,
    /// For paging: pass as `after` to get the next page (equal to `after` when none followed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// The head of the trail, signed, to keep elsewhere and check later with `travelmap audit verify
/// --checkpoint FILE --public-key KEY`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditCheckpoint {
    pub seq: u64,
    /// Hex SHA-256 of entry `seq`.
    pub hash: String,
    /// The service's checkpoint key (hex ed25519 public key).
    pub public_key: String,
    /// Hex ed25519 signature over `travelmap audit checkpoint v1\nseq={seq}\nhash={hash}\n`.
    pub signature: String,
}

const AUDITORS: &[Role] = &[Role::Auditor, Role::Dpo];

/// Who did what to a client's data, when and why.
#[utoipa::path(
    get, path = "/v1/audit/clients/{client_id}", tag = "audit",
    params(("client_id" = uuid::Uuid, Path, description = "The client"), ("X-Purpose" = String, Header, description = "Why you read: `audit` (or `subject_access`)")),
    responses(
        (status = 200, description = "The client's entries, in order", body = AuditEntries),
        (status = 400, description = "No `X-Purpose` of `audit` or `subject_access` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the auditor or dpo role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn client_entries(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(client_id): Path<String>,
) -> Result<Json<AuditEntries>, ApiError> {
    let client = ClientId(extract::client_id(&client_id)?);
    let logged = |returned| Logged {
        operation: Operation::Consultation,
        client: Some(client),
        action: "GET /v1/audit/clients/{client_id}",
        returned,
    };
    audit::require(&state, &caller, &context, AUDITORS, logged(None)).await?;
    trail_purpose(&state, &caller, &context, logged(None)).await?;
    let entries = state
        .audit
        .read_client(client)
        .await
        .map_err(ApiError::store)?;
    let returned = Some(format!("{} audit entries", entries.len()));
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(returned),
    )
    .await?;
    Ok(Json(AuditEntries {
        entries: entries.iter().map(AuditEntryView::from).collect(),
        next_after: None,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    /// Entries after this sequence number (default 0: from the start).
    #[serde(default, deserialize_with = "extract::query_position")]
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<u64>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The whole trail, in order, page by page.
#[utoipa::path(
    get, path = "/v1/audit/entries", tag = "audit",
    params(EntriesQuery, ("X-Purpose" = String, Header, description = "Why you read: `audit` (or `subject_access`)")),
    responses(
        (status = 200, description = "A page of entries", body = AuditEntries),
        (status = 400, description = "Malformed parameter, or no `X-Purpose` of `audit` or `subject_access` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the auditor or dpo role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn entries(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    query: Result<Query<EntriesQuery>, ApiError>,
) -> Result<Json<AuditEntries>, ApiError> {
    let logged = |returned| Logged {
        operation: Operation::Consultation,
        client: None,
        action: "GET /v1/audit/entries",
        returned,
    };
    audit::require(&state, &caller, &context, AUDITORS, logged(None)).await?;
    trail_purpose(&state, &caller, &context, logged(None)).await?;
    let parsed = query.and_then(|Query(query)| {
        let limit = crate::extract::limit(query.limit, 100, MAX_AUDIT_PAGE)?;
        Ok((query.after.unwrap_or(0), limit))
    });
    let (after, limit) = audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    let entries = state
        .audit
        .read_after(after, limit)
        .await
        .map_err(ApiError::store)?;
    // A cursor past the last entry (mistyped, or kept from a trail since restored from an older
    // backup) would be answered with empty pages for good, skipping what comes next.
    if entries.is_empty() {
        let (last, _) = state.audit.head().await.map_err(ApiError::store)?;
        if after > last {
            let past = Err(ApiError::invalid_parameter(
                "after",
                format!("after is past the trail's last entry ({last})"),
            ));
            return audit::parameters(&state, &caller, &context, past, logged(None)).await;
        }
    }
    let next_after = entries.last().map_or(after, |entry| entry.seq);
    let returned = Some(format!("audit entries {} to {next_after}", after + 1));
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(returned),
    )
    .await?;
    Ok(Json(AuditEntries {
        entries: entries.iter().map(AuditEntryView::from).collect(),
        next_after: Some(next_after),
    }))
}

/// The trail's current head (including the entry logging this request).
#[utoipa::path(
    get, path = "/v1/audit/checkpoint", tag = "audit",
    responses(
        (status = 200, description = "The head", body = AuditCheckpoint),
        (status = 400, description = "A query parameter, which this endpoint takes none of, or an `X-Purpose` or `X-Justification` sent twice, not UTF-8, or (a justification) over 2,000 characters (invalid_parameter)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the auditor or dpo role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn checkpoint(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
) -> Result<Json<AuditCheckpoint>, ApiError> {
    let logged = Logged {
        operation: Operation::Consultation,
        client: None,
        action: "GET /v1/audit/checkpoint",
        returned: None,
    };
    audit::require(&state, &caller, &context, AUDITORS, logged.clone()).await?;
    audit::log(&state, &caller, &context, Outcome::Allowed, logged).await?;
    let (seq, hash) = state.audit.head().await.map_err(ApiError::store)?;
    let hash = hex(&hash);
    let message = travelmap_domain::audit::checkpoint_message(seq, &hash);
    let signature = state.checkpoint_key.sign(message.as_bytes());
    Ok(Json(AuditCheckpoint {
        seq,
        hash,
        public_key: hex(state.checkpoint_key.verifying_key().as_bytes()),
        signature: hex(&signature.to_bytes()),
    }))
}

/// One break-glass grant, for review.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakGlassGrant {
    /// The audit entry that records the grant.
    #[serde(flatten)]
    pub entry: AuditEntryView,
    /// When the grant ends (or ended).
    pub until: chrono::DateTime<chrono::Utc>,
    /// Whether it is still in force.
    pub active: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakGlassGrants {
    pub grants: Vec<BreakGlassGrant>,
}

/// Every break-glass grant, oldest first, for review.
#[utoipa::path(
    get, path = "/v1/audit/break-glass", tag = "audit",
    params(("X-Purpose" = String, Header, description = "Why you read: `audit` (or `subject_access`)")),
    responses(
        (status = 200, description = "The grants", body = BreakGlassGrants),
        (status = 400, description = "No `X-Purpose` of `audit` or `subject_access` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the auditor or dpo role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn break_glass(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
) -> Result<Json<BreakGlassGrants>, ApiError> {
    let logged = |returned| Logged {
        operation: Operation::Consultation,
        client: None,
        action: "GET /v1/audit/break-glass",
        returned,
    };
    audit::require(&state, &caller, &context, AUDITORS, logged(None)).await?;
    trail_purpose(&state, &caller, &context, logged(None)).await?;
    let entries = state
        .audit
        .read_action(audit::BREAK_GLASS)
        .await
        .map_err(ApiError::store)?;
    let grants = audit::grants(&entries, state.break_glass);
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(Some(format!("{} grants", grants.len()))),
    )
    .await?;
    let now = chrono::Utc::now();
    let grants = grants
        .into_iter()
        .map(|(entry, until)| BreakGlassGrant {
            entry: AuditEntryView::from(entry),
            until,
            active: until > now,
        })
        .collect();
    Ok(Json(BreakGlassGrants { grants }))
}

/// The trail is read to audit, or for a subject access request, and for nothing else.
async fn trail_purpose(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    logged: Logged<'_>,
) -> Result<Purpose, ApiError> {
    audit::purpose_among(
        state,
        caller,
        context,
        audit::TRAIL_PURPOSES,
        "an audit trail read",
        logged,
    )
    .await
}

/// The most events of the log one page of `GET /v1/audit/access-changes` examines: each client
/// with an involvement, consent or rectification among them is folded from its stream.
pub const MAX_ACCESS_SCAN: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccessChangesQuery {
    /// Examine the log's events with a position greater than this (default 0: from the start).
    #[serde(default, deserialize_with = "extract::query_position")]
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<u64>,
    /// Examine at most this many events of the log (1 to 1000, default 1000); the page lists
    /// those among them that changed which agencies may read a client.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// What a recorded event did to agencies' access to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessEffect {
    /// An involvement or consent that gave access.
    Opens,
    /// An involvement's closing or a consent's withdrawal that ended access.
    Ends,
    /// A correction or retraction that gave or took access, or an event that did both.
    Changes,
}

/// One event that changed which agencies may read a client.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessChange {
    /// The event's position in the global feed.
    pub position: u64,
    pub event_id: uuid::Uuid,
    pub client_id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub effect: AccessEffect,
    /// The agencies that could read the client for a purpose they could not before.
    pub opens_for: Vec<String>,
    /// The agencies that could no longer read the client for a purpose they could before.
    pub ends_for: Vec<String>,
    /// The agency that recorded the event (from its credential).
    pub recorded_by: String,
    /// The credential that recorded it.
    pub credential: String,
    /// The recording agency gave access to itself: it vouched for its own need to know, which
    /// nobody else confirmed.
    pub own_access: bool,
    /// For a correction or retraction, the event it corrects or retracts.
    pub target_event_id: Option<uuid::Uuid>,
    /// For a correction or retraction, the type of that event.
    pub target_type: Option<&'static str>,
    pub occurred_at: chrono::DateTime<chrono::FixedOffset>,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

impl AccessChange {
    fn new(
        event: &travelmap_domain::RecordedEvent,
        moved: travelmap_projections::access_changes::AccessMove,
    ) -> Self {
        let effect = match (
            &moved.target,
            moved.opens_for.is_empty(),
            moved.ends_for.is_empty(),
        ) {
            (None, false, true) => AccessEffect::Opens,
            (None, true, false) => AccessEffect::Ends,
            _ => AccessEffect::Changes,
        };
        let recorded_by = event.provenance.agency.clone();
        Self {
            position: event.meta.position,
            event_id: event.draft.id.0,
            client_id: event.draft.client_id.0,
            event_type: event.draft.event.event_type(),
            effect,
            own_access: moved.opens_for.contains(&recorded_by),
            opens_for: moved.opens_for,
            ends_for: moved.ends_for,
            recorded_by,
            credential: event.provenance.credential.clone(),
            target_event_id: moved.target.map(|(id, _)| id.0),
            target_type: moved.target.map(|(_, event_type)| event_type),
            occurred_at: event.draft.occurred_at,
            recorded_at: event.meta.recorded_at,
        }
    }
}

/// A page of access changes.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessChanges {
    pub changes: Vec<AccessChange>,
    /// The position of the last event examined: pass it as `after` for the next page. Equal to
    /// `after` once the end of the log is reached.
    pub next_after: u64,
    /// How many events of the log this page examined.
    pub examined: usize,
}

/// Every recorded event that changed which agencies may read a client, in the log's order, page
/// by page: for the data-protection officer's review of who vouched for whose need to know.
#[utoipa::path(
    get, path = "/v1/audit/access-changes", tag = "audit",
    params(AccessChangesQuery, ("X-Purpose" = String, Header, description = "Why you read: `audit` (or `subject_access`)")),
    responses(
        (status = 200, description = "The access changes among the events examined", body = AccessChanges),
        (status = 400, description = "Malformed parameter, a position past the end of the log, or no `X-Purpose` of `audit` or `subject_access` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the auditor or dpo role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn access_changes(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    query: Result<Query<AccessChangesQuery>, ApiError>,
) -> Result<Json<AccessChanges>, ApiError> {
    use travelmap_projections::access_changes::{access_moves, may_move_access};
    const ACTION: &str = "GET /v1/audit/access-changes";
    let logged = |returned| Logged {
        operation: Operation::Consultation,
        client: None,
        action: ACTION,
        returned,
    };
    audit::require(&state, &caller, &context, AUDITORS, logged(None)).await?;
    trail_purpose(&state, &caller, &context, logged(None)).await?;
    let parsed = query.and_then(|Query(query)| {
        let limit = crate::extract::limit(query.limit, MAX_ACCESS_SCAN, MAX_ACCESS_SCAN)?;
        Ok((query.after.unwrap_or(0), limit))
    });
    let (after, limit) = audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    let page = state.journeys.feed(after, limit).await?;
    if page.is_empty() {
        let within = super::events::within_feed(&state, after, "after").await;
        audit::parameters(&state, &caller, &context, within, logged(None)).await?;
    }
    let examined = page.len();
    let next_after = page.last().map_or(after, |event| event.meta.position);
    // Only events that may move access are judged, each from its client's whole stream: what an
    // event did depends on what came before it (the involvement a closing ends, the event a
    // correction replaces).
    let candidates: Vec<_> = page
        .into_iter()
        .filter(|event| may_move_access(&event.draft.event))
        .collect();
    let mut clients: Vec<ClientId> = candidates
        .iter()
        .map(|event| event.draft.client_id)
        .collect();
    clients.sort_unstable_by_key(|client| client.0);
    clients.dedup();
    let mut moves = std::collections::HashMap::new();
    for client in clients {
        moves.extend(access_moves(
            client,
            state.journeys.history(client, None).await?,
        ));
    }
    let changes: Vec<AccessChange> = candidates
        .iter()
        .filter_map(|event| Some(AccessChange::new(event, moves.remove(&event.draft.id)?)))
        .collect();

    let ids: Vec<String> = changes
        .iter()
        .map(|change| change.event_id.to_string())
        .collect();
    let returned = travelmap_domain::audit::returned_ids(ids.iter().map(String::as_str));
    let per_client = audit::by_client(
        "events",
        changes
            .iter()
            .map(|change| (ClientId(change.client_id), change.event_id.to_string())),
    );
    audit::log_spanning(&state, &caller, &context, logged(returned), per_client).await?;
    Ok(Json(AccessChanges {
        changes,
        next_after,
        examined,
    }))
}
