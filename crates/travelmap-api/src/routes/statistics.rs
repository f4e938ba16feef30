//! Outcome statistics: aggregate counts only, with small cells suppressed, so that no individual
//! can be recognised from them.

use axum::Json;
use axum::extract::State;
use travelmap_domain::audit::{Operation, Outcome};
use travelmap_projections::statistics::{Cell, OutcomeQuery, OutcomeReport};

use crate::AppState;
use crate::audit::{self, Logged, RequestContext};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Problem};
use crate::extract::Query;

/// Outcome statistics per programme, prison, municipality or quarter of enrolment: entered,
/// completed, dropped out, retraining courses completed, debt cases closed, job within 6 months
/// of release, housing secured, re-offence within 12 months. Counts from 1 to 9 are shown as
/// `"suppressed"`, and further cells are suppressed where a suppressed one could otherwise be
/// worked out from the total (see docs/data-protection.md).
#[utoipa::path(
    get, path = "/v1/statistics/outcomes", tag = "statistics",
    params(OutcomeQuery, ("X-Purpose" = String, Header, description = "Must be `statistics`")),
    responses(
        (status = 200, description = "The aggregate counts", body = OutcomeReport),
        (status = 400, description = "Malformed parameter, `from` after `to`, or no `X-Purpose: statistics` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the coordinator, auditor or dpo role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn outcomes(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    query: Result<Query<OutcomeQuery>, ApiError>,
) -> Result<Json<OutcomeReport>, ApiError> {
    let logged = |returned| Logged {
        operation: Operation::Combination,
        client: None,
        action: "GET /v1/statistics/outcomes",
        returned,
    };
    audit::require(
        &state,
        &caller,
        &context,
        &[Role::Coordinator, Role::Auditor, Role::Dpo],
        logged(None),
    )
    .await?;
    audit::purpose_among(
        &state,
        &caller,
        &context,
        audit::STATISTICS_PURPOSES,
        "a statistics report",
        logged(None),
    )
    .await?;
    let parsed = query.and_then(|Query(query)| match (query.from, query.to) {
        (Some(from), Some(to)) if from > to => Err(ApiError::invalid_parameter(
            "from",
            "from must not be after to",
        )),
        _ => Ok(query),
    });
    let query = audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    let report = state.journeys.outcome_statistics(&query).await?;
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(Some(counts_for(&query, &report))),
    )
    .await?;
    Ok(Json(report))
}

/// What a statistics entry says was returned: the counts and the query they answered. Suppression
/// protects each table on its own; telling two near-identical queries apart (a date range moved
/// by a day around one person's enrolment) is left to the trail's reviewers, who need the query
/// for it. The programme is text the caller typed, and the trail could not blank it later: it
/// is kept only when it matched someone (it then names a programme in the data), as `unlisted`
/// otherwise (such a query returned nothing but zeros).
fn counts_for(query: &OutcomeQuery, report: &OutcomeReport) -> String {
    let mut logged = query.clone();
    if logged.programme.is_some() && report.total.cells.entered == Cell::Count(0) {
        logged.programme = Some("unlisted".to_owned());
    }
    let filter = serde_urlencoded::to_string(&logged).unwrap_or_default();
    if filter.is_empty() {
        "aggregate counts, no filter".to_owned()
    } else {
        format!("aggregate counts for {filter}")
    }
}
