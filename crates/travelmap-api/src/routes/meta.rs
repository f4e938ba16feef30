//! The catalogue, health, the OpenAPI document and problem-type pages.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;
use crate::error::{ApiError, CODES, Problem};
use crate::extract::Path;
use crate::wire::{Catalogue, CatalogueEntry};

/// The event catalogue: every type with its schema version, description and `data` schema.
#[utoipa::path(
    get, path = "/v1/event-types", tag = "catalogue",
    responses(
        (status = 200, description = "The catalogue", body = Catalogue),
        (status = 400, description = "A query parameter, which this endpoint takes none of (invalid_parameter)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn event_types() -> Json<Catalogue> {
    let event_types = travelmap_domain::catalogue::event_types()
        .iter()
        .map(|info| CatalogueEntry {
            event_type: info.event_type.to_owned(),
            schema_version: info.schema_version,
            description: info.description.to_owned(),
            personal_fields: info
                .personal_fields
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            posted_by: info
                .posted_by
                .iter()
                .map(|kind| kind.as_str().to_owned())
                .collect(),
            data: info.data.clone(),
        })
        .collect();
    Json(Catalogue { event_types })
}

/// Liveness and a glimpse of progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the service answers.
    pub status: &'static str,
    /// The highest committed global position.
    pub head: u64,
    /// The position the travel-map projection has reached.
    pub projection: u64,
    /// The position the caseloads and alerts reflect.
    pub coordination: u64,
}

/// Health check.
#[utoipa::path(
    get, path = "/healthz", tag = "meta",
    responses(
        (status = 200, description = "The service is up", body = Health),
        (status = 400, description = "A query parameter, which this endpoint takes none of (invalid_parameter)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let head = *state.journeys.log().head().borrow();
    let projection = *state.journeys.projector().progress().borrow();
    Json(Health {
        status: "ok",
        head,
        projection,
        coordination: *state.coordination.progress().borrow(),
    })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"),
        (status = 400, description = "A query parameter, which this endpoint takes none of (invalid_parameter)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn openapi() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/json")],
        crate::ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serialises"),
    )
}

/// What a problem type means (the target of a problem's `type` URI).
#[utoipa::path(
    get, path = "/problems/{code}", tag = "meta",
    params(("code" = String, Path, description = "A problem code, e.g. validation_failed")),
    responses(
        (status = 200, description = "The problem type", body = Problem),
        (status = 400, description = "A query parameter, which this endpoint takes none of (invalid_parameter)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such problem type", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn problem_type(Path(code): Path<String>) -> Result<Json<Problem>, ApiError> {
    let (code, _) = CODES
        .iter()
        .find(|(_, name)| *name == code)
        .ok_or_else(|| ApiError::not_found(format!("no problem type `{code}`")))?;
    let example = ApiError::new(
        *code,
        "this is the description of a problem type, not an occurrence",
    );
    Ok(Json(example.problem()))
}
