//! The coordinators' views: caseloads per agency and worker, one agency's active clients, and
//! the alerts someone must act on.
//!
//! Caseload counts name agencies and workers, not clients, so every coordinator may read them.
//! Lists that name clients (an agency's caseload, alerts) are scoped: a coordinator sees the
//! clients its own agency carries and the alerts its agency is expected to act on; auditors,
//! data-protection officers and administrators see all. Every read is logged.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use travelmap_domain::ClientId;
use travelmap_domain::audit::{Operation, Outcome};
use travelmap_projections::coordination::{AgencyCaseload, Alert, AlertKind, CaseEntry};
use travelmap_service::coordination::AlertFilter;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::audit::{self, Logged, RequestContext};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Code, Problem};
use crate::extract::{self, Path, Query};

const READERS: [Role; 4] = [Role::Coordinator, Role::Auditor, Role::Dpo, Role::Admin];

/// How long a read waits for the case files to reflect a `min_position`.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the caller reads across agencies (reviewers, administrators, the local sandbox
/// admin) rather than for its own agency only.
pub(crate) fn reads_all_agencies(caller: &Caller) -> bool {
    caller.0.agency_kind.is_none()
        || caller
            .0
            .roles
            .iter()
            .any(|role| matches!(role, Role::Auditor | Role::Dpo | Role::Admin))
}

/// Waits until the case files reflect `min_position`; 503 if they do not in time.
async fn wait_for(state: &AppState, min_position: Option<u64>) -> Result<(), ApiError> {
    if state
        .coordination
        .wait_for(min_position.unwrap_or(0), MAX_WAIT)
        .await
    {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::Unavailable,
            "the caseloads are still catching up with the log; retry shortly",
        ))
    }
}

/// Read consistency for the coordinators' views.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// Wait (up to 5 s) until the view reflects the event at this position, e.g. the `position`
    /// of a receipt just received.
    #[serde(default, deserialize_with = "extract::query_position")]
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub min_position: Option<u64>,
}

/// Every agency's caseload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Caseloads {
    /// Workers with more active clients than this are flagged `over_threshold`.
    pub worker_threshold: usize,
    /// Released clients without a case manager or probation officer for longer than this many
    /// days raise a `no_case_manager` alert.
    pub unassigned_after_days: i64,
    pub agencies: Vec<AgencyCaseload>,
    /// The moment the counts were made for.
    pub as_of: chrono::DateTime<chrono::Utc>,
}

/// Caseloads per agency: active clients (an open involvement), by role and by worker, per stage
/// (in custody, released under or over 30 days), involvements opened, closed and handed over in
/// the last 30 days, and open alerts. Workers above the threshold (default 50) are flagged.
/// Clients under a restriction of processing are not counted.
#[utoipa::path(
    get, path = "/v1/caseloads", tag = "coordination",
    params(ConsistencyQuery, ("X-Purpose" = String, Header, description = "Why you read: e.g. `case_management`")),
    responses(
        (status = 200, description = "The caseloads", body = Caseloads),
        (status = 400, description = "Malformed parameter, or no valid `X-Purpose` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the coordinator, auditor, dpo or admin role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The case files did not reach `min_position` in time", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn caseloads(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    query: Result<Query<ConsistencyQuery>, ApiError>,
) -> Result<Json<Caseloads>, ApiError> {
    let logged = |returned| Logged {
        operation: Operation::Combination,
        client: None,
        action: "GET /v1/caseloads",
        returned,
    };
    audit::require(&state, &caller, &context, &READERS, logged(None)).await?;
    audit::spanning_purpose(
        &state,
        &caller,
        &context,
        audit::Reach::Counts,
        logged(None),
    )
    .await?;
    let Query(query) = audit::parameters(&state, &caller, &context, query, logged(None)).await?;
    wait_for(&state, query.min_position).await?;
    let agencies = state.coordination.caseloads();
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(Some("aggregate counts".to_owned())),
    )
    .await?;
    let rules = state.coordination.rules();
    Ok(Json(Caseloads {
        worker_threshold: rules.worker_threshold,
        unassigned_after_days: rules.unassigned_after.num_days(),
        agencies,
        as_of: state.coordination.now(),
    }))
}

/// One agency's active clients.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgencyCaseloadPage {
    pub agency: String,
    pub clients: Vec<CaseEntry>,
    pub as_of: chrono::DateTime<chrono::Utc>,
}

/// The agency's active clients (an open involvement), longest released first, with stage, days
/// since release, how the agency works with each (role, worker, hand-over), the next appointment
/// and the kinds of open alerts. A coordinator reads its own agency's; reviewers and
/// administrators any.
#[utoipa::path(
    get, path = "/v1/agencies/{agency}/caseload", tag = "coordination",
    params(
        ("agency" = String, Path, description = "The agency id, e.g. `probation-opava`"),
        ConsistencyQuery,
        ("X-Purpose" = String, Header, description = "Why you read: e.g. `case_management`"),
    ),
    responses(
        (status = 200, description = "The agency's active clients", body = AgencyCaseloadPage),
        (status = 400, description = "Malformed parameter, or no valid `X-Purpose` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another agency's caseload, or a role that may not read caseloads", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An agency no `[[agencies]]` entry declares (not_found, `field`: `agency`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The case files did not reach `min_position` in time", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn agency_caseload(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(agency): Path<String>,
    query: Result<Query<ConsistencyQuery>, ApiError>,
) -> Result<Json<AgencyCaseloadPage>, ApiError> {
    let logged = |returned| Logged {
        operation: Operation::Consultation,
        client: None,
        action: "GET /v1/agencies/{agency}/caseload",
        returned,
    };
    audit::require(&state, &caller, &context, &READERS, logged(None)).await?;
    audit::spanning_purpose(
        &state,
        &caller,
        &context,
        audit::Reach::Clients,
        logged(None),
    )
    .await?;
    let parsed = query.and_then(|Query(query)| {
        state.authenticator.check_agency(&agency, "agency")?;
        Ok(query)
    });
    let query = audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    if !reads_all_agencies(&caller) && caller.0.agency != agency {
        audit::log(&state, &caller, &context, Outcome::Denied, logged(None)).await?;
        return Err(ApiError::new(
            Code::Forbidden,
            format!(
                "agency `{}` may read its own caseload, not that of `{agency}`",
                caller.0.agency
            ),
        ));
    }
    wait_for(&state, query.min_position).await?;
    let clients = state.coordination.agency_caseload(&agency);
    let per_client = clients
        .iter()
        .map(|entry| (entry.client_id, Some(format!("caseload entry of {agency}"))))
        .collect();
    audit::log_spanning(
        &state,
        &caller,
        &context,
        logged(audit::returned_clients(
            clients.iter().map(|entry| entry.client_id),
        )),
        per_client,
    )
    .await?;
    Ok(Json(AgencyCaseloadPage {
        agency,
        clients,
        as_of: state.coordination.now(),
    }))
}

/// Which alerts to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Only alerts this agency is expected to act on. A coordinator reads its own agency's
    /// (the default for one).
    pub agency: Option<String>,
    /// Only alerts of this kind: `no_first_day_contact`, `release_unprepared`,
    /// `appointments_missed`, `job_lost`, `housing_lost`, `dropped_out`, `no_case_manager`.
    #[param(value_type = Option<AlertKind>)]
    pub kind: Option<String>,
    /// Only this client's alerts.
    pub client_id: Option<uuid::Uuid>,
    /// `open` (default) or `all`, which adds cleared alerts: the history.
    #[param(pattern = "^(open|all)?$")]
    pub status: Option<String>,
    /// Wait (up to 5 s) until the alerts reflect the event at this position.
    #[serde(default, deserialize_with = "extract::query_position")]
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub min_position: Option<u64>,
}

/// Alerts, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
    pub as_of: chrono::DateTime<chrono::Utc>,
}

/// What coordinators must act on: released without an attended contact within 24 hours, release in 14 days
/// unprepared, two appointments missed in a row, job or housing lost in the last 7 days, dropped
/// out, released without a case manager. Each names the client, since when, and the agency
/// expected to act; cleared alerts keep when and by which event. Time-based alerts appear when
/// they fall due, without a new event.
#[utoipa::path(
    get, path = "/v1/alerts", tag = "coordination",
    params(AlertQuery, ("X-Purpose" = String, Header, description = "Why you read: e.g. `case_management`")),
    responses(
        (status = 200, description = "The alerts", body = AlertList),
        (status = 400, description = "Malformed parameter (e.g. an unknown `kind`), or no valid `X-Purpose` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another agency's alerts, a role that may not read alerts, or, for a coordinator, a `client_id` its agency has no alert of and no reason to know", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An agency no `[[agencies]]` entry declares (not_found, `field`: `agency`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The alerts did not reach `min_position` in time", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    query: Result<Query<AlertQuery>, ApiError>,
) -> Result<Json<AlertList>, ApiError> {
    // The client a well-formed query names: its entry goes to that client's trail.
    let named_client = query
        .as_ref()
        .ok()
        .and_then(|Query(query)| query.client_id.filter(|id| !id.is_nil()).map(ClientId));
    let logged = |returned| Logged {
        operation: Operation::Consultation,
        client: named_client,
        action: "GET /v1/alerts",
        returned,
    };
    audit::require(&state, &caller, &context, &READERS, logged(None)).await?;
    let purpose = audit::spanning_purpose(
        &state,
        &caller,
        &context,
        audit::Reach::Clients,
        logged(None),
    )
    .await?;
    let parsed = query.and_then(|Query(query)| {
        let filter = alert_filter(&state, &caller, &query)?;
        Ok((query, filter))
    });
    let (query, filter) =
        audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    if !reads_all_agencies(&caller) && filter.agency.as_deref() != Some(caller.0.agency.as_str()) {
        audit::log(&state, &caller, &context, Outcome::Denied, logged(None)).await?;
        return Err(ApiError::new(
            Code::Forbidden,
            format!(
                "agency `{}` may read the alerts it is expected to act on, not those of another agency",
                caller.0.agency
            ),
        ));
    }
    wait_for(&state, query.min_position).await?;
    let alerts = state.coordination.alerts(&filter);
    if let Some(client) = filter.client {
        // Alerts addressed to the caller's agency are its to read, whoever they are about; the
        // agency's alerts of the client in any kind or status, not only those asked for, so
        // that the answer does not turn on the filter.
        if alerts.is_empty() && !reads_all_agencies(&caller) {
            let any = state.coordination.alerts(&AlertFilter {
                kind: None,
                include_cleared: true,
                ..filter.clone()
            });
            if any.is_empty() {
                audit::alerts_of_client_in_scope(
                    &state,
                    &caller,
                    &context,
                    client,
                    purpose,
                    logged(None),
                )
                .await?;
            }
        }
        // One client's alerts: the read's own entry names them.
        let ids: Vec<String> = alerts.iter().map(|alert| alert.id.to_string()).collect();
        let whole = logged(audit::returned_named("alerts", &ids));
        audit::log(&state, &caller, &context, Outcome::Allowed, whole).await?;
    } else {
        let per_client = audit::by_client(
            "alerts",
            alerts
                .iter()
                .map(|alert| (alert.client_id, alert.id.to_string())),
        );
        let whole = logged(audit::returned_clients(
            alerts.iter().map(|alert| alert.client_id),
        ));
        audit::log_spanning(&state, &caller, &context, whole, per_client).await?;
    }
    Ok(Json(AlertList {
        alerts,
        as_of: state.coordination.now(),
    }))
}

/// The filter a query asks for, with a coordinator's agency filled in (an agency the
/// configuration does not declare is `404`).
pub(crate) fn alert_filter(
    state: &AppState,
    caller: &Caller,
    query: &AlertQuery,
) -> Result<AlertFilter, ApiError> {
    let kind = query
        .kind
        .as_deref()
        .map(|kind| {
            AlertKind::parse(kind).ok_or_else(|| {
                ApiError::invalid_parameter(
                    "kind",
                    format!(
                        "`{kind}` is not an alert kind; one of {}",
                        AlertKind::ALL.map(AlertKind::as_str).join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    // No client has the nil UUID (events naming it are refused), so a filter naming it is a
    // mistake, not a client with no alerts.
    if query.client_id.is_some_and(|client| client.is_nil()) {
        return Err(ApiError::invalid_parameter(
            "client_id",
            "must not be the nil UUID",
        ));
    }
    let include_cleared = match query.status.as_deref() {
        None | Some("open") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::invalid_parameter(
                "status",
                format!("`{other}` is not a status; `open` or `all`"),
            ));
        }
    };
    let agency = match &query.agency {
        Some(agency) => {
            state.authenticator.check_agency(agency, "agency")?;
            Some(agency.clone())
        }
        None if !reads_all_agencies(caller) => Some(caller.0.agency.clone()),
        None => None,
    };
    Ok(AlertFilter {
        agency,
        kind,
        client: query.client_id.map(ClientId),
        include_cleared,
    })
}
