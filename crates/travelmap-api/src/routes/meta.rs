//! The catalogue, health, the OpenAPI document and problem-type pages.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use travelmap_service::health::{Condition, STALLED_AFTER, Seen};

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

/// Whether this process can do its work: every background task that keeps the travel maps,
/// caseloads and alerts current is running, and how far each has got.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`; `degraded` when a task is failing or stalled (it retries or hangs; the service still takes events
    /// and answers, though what the task keeps current stops moving; while `audit_writes` fails,
    /// though, so do requests that must be logged) or a task the service can do
    /// without (webhook delivery, the live feed, the retention schedule, the finishing of
    /// erasures) has stopped;
    /// `starting` while the travel-map projection first catches up or the caseloads and alerts
    /// are first loaded; `failing` when the projection or the coordination index has stopped
    /// (a bug: it will not recover without a restart); `stopping` once the server has been told
    /// to stop; `misconfigured` when the projection or the coordination index fails for a
    /// fault of this process's configuration (a master key it lacks; the process then stops,
    /// so that one with the key takes over); also `failing` when the audit trail cannot be
    /// written until a restart (see `audit_trail`). `starting`, `failing`, `misconfigured` and
    /// `stopping` answer `503`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// The highest committed global position.
    pub head: u64,
    /// Each background task.
    pub tasks: Vec<TaskReadiness>,
    /// `lost` when the embedded store's audit trail file (or its write-ahead log) was removed
    /// or replaced under the process: it records no events and answers no request that must be
    /// logged until it is restarted. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "lost")]
    pub audit_trail: Option<&'static str>,
}

/// One background task in the readiness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskReadiness {
    /// `projection`, `coordination`, `live_feed`, `webhooks`, `erasures`, `store` (a probe of
    /// the event log), `audit_writes` (whether the last attempt to write audit entries was
    /// written) or `retention` (only with a retention schedule).
    pub name: &'static str,
    /// Whether the process is out of rotation (`503`) while this task is starting or has
    /// stopped.
    pub essential: bool,
    /// `starting`, `running` (its last attempt worked), `failing` (its attempts fail; it retries,
    /// and the server's log says why), `misconfigured` (its attempts fail for a fault of this
    /// process's configuration, such as a master key it lacks), `stalled` (it reports no failure, yet has stayed behind the
    /// head without moving for a minute or more: it hangs) or `stopped` (it has ended: the server
    /// is stopping, or the task met a bug).
    pub state: &'static str,
    /// When its attempts began to fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Since when it has been behind the head without moving, as far as this endpoint has seen
    /// (state `stalled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<chrono::DateTime<chrono::Utc>>,
    /// The position its work reflects (projection and coordination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// How many positions it is behind the head (projection and coordination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind: Option<u64>,
}

/// Readiness check, for load balancers and orchestrators: `200` while this process can do its
/// work, `503` while it cannot. Unlike `/healthz` (the process answers), it says whether what
/// it answers is kept current. Why a task fails is in the server's log, not here: this endpoint
/// is public.
#[utoipa::path(
    get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "Ready, or degraded: the service takes events and answers, though a task fails and retries (what it keeps current stops moving until it recovers), or one it can do without has stopped", body = Readiness),
        (status = 503, description = "Starting, failing, misconfigured or stopping: the travel maps, caseloads or alerts are not loaded yet, or will not be kept current without a restart (with the right settings, when misconfigured), or the audit trail cannot be written until a restart (`audit_trail`), or the server is stopping", body = Readiness),
        (status = 400, description = "A query parameter, which this endpoint takes none of (invalid_parameter)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readiness(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let head = *state.journeys.log().head().borrow();
    let position_of = |name: &str| match name {
        "projection" => Some(*state.journeys.projector().progress().borrow()),
        "coordination" => Some(*state.coordination.progress().borrow()),
        _ => None,
    };
    let (now, wall_now) = (std::time::Instant::now(), chrono::Utc::now());
    let tasks: Vec<TaskReadiness> = state
        .tasks
        .iter()
        .map(|task| {
            let (label, failing_since) = match task.seen() {
                Seen::Reported(Condition::Starting) => ("starting", None),
                Seen::Reported(Condition::Running) => ("running", None),
                Seen::Reported(Condition::Failing { since }) => ("failing", Some(since)),
                Seen::Reported(Condition::Misconfigured { since }) => {
                    ("misconfigured", Some(since))
                }
                Seen::Stopped => ("stopped", None),
            };
            let position = position_of(task.name);
            let behind = position.map(|position| head.saturating_sub(position));
            // A task that hangs reports nothing; its position not moving while behind says it.
            let behind_since = position.zip(behind).and_then(|(position, behind)| {
                state.stalls.behind_since(task.name, position, behind, now)
            });
            let (label, stalled_since) = match stalled_for(label, behind_since, now) {
                Some(stalled_for) => (
                    "stalled",
                    chrono::Duration::from_std(stalled_for)
                        .ok()
                        .map(|stalled_for| wall_now - stalled_for),
                ),
                None => (label, None),
            };
            TaskReadiness {
                name: task.name,
                essential: task.essential,
                state: label,
                failing_since,
                stalled_since,
                position,
                behind,
            }
        })
        .collect();
    // A trail that can take no entries until a restart (its file removed under the process)
    // leaves this process unable to answer or record anything: out of rotation.
    let audit_trail = state.audit.out_of_service().then_some("lost");
    let status = match status_of(*state.stopping.borrow(), &tasks) {
        "stopping" => "stopping",
        _ if audit_trail.is_some() => "failing",
        status => status,
    };
    let code = match status {
        "ready" | "degraded" => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        code,
        Json(Readiness {
            status,
            head,
            tasks,
            audit_trail,
        }),
    )
}

/// How long a task in `state`, behind the head at one position since `behind_since`, has
/// stalled: `None` unless it reports running and has not moved for [`STALLED_AFTER`] (one that
/// reports a failure or has not begun says so already).
fn stalled_for(
    state: &str,
    behind_since: Option<std::time::Instant>,
    now: std::time::Instant,
) -> Option<std::time::Duration> {
    behind_since
        .map(|since| now.saturating_duration_since(since))
        .filter(|behind_for| state == "running" && *behind_for >= STALLED_AFTER)
}

/// The readiness status of a process with these tasks.
///
/// Only what will not get better by itself, or has not begun, takes the process out of
/// rotation. A task that fails and retries (a database that went away) leaves it serving: writes
/// still work, and sending every request elsewhere, or nowhere when every process meets the same
/// failure, would be worse than views that stop moving for a while.
fn status_of(stopping: bool, tasks: &[TaskReadiness]) -> &'static str {
    let essential_is = |state: &str| {
        tasks
            .iter()
            .any(|task| task.essential && task.state == state)
    };
    if stopping {
        "stopping"
    } else if essential_is("stopped") {
        "failing"
    } else if essential_is("misconfigured") {
        // This process cannot do its part until it is restarted with the right settings;
        // another process on the same store may: take this one out of rotation.
        "misconfigured"
    } else if essential_is("starting") {
        "starting"
    } else if tasks.iter().any(|task| {
        matches!(
            task.state,
            "failing" | "stalled" | "stopped" | "misconfigured"
        )
    }) {
        "degraded"
    } else {
        "ready"
    }
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
    // The problem a code stands for, its `detail` saying what it means: a description of the
    // type, not an occurrence (this answer itself is a 200).
    let described = ApiError::new(*code, code.meaning());
    Ok(Json(described.problem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &'static str, essential: bool, state: &'static str) -> TaskReadiness {
        TaskReadiness {
            name,
            essential,
            state,
            failing_since: None,
            stalled_since: None,
            position: None,
            behind: None,
        }
    }

    #[test]
    fn only_what_has_not_begun_or_will_not_mend_takes_a_process_out_of_rotation() {
        let with = |projection, webhooks| {
            vec![
                task("projection", true, projection),
                task("coordination", true, "running"),
                task("webhooks", false, webhooks),
            ]
        };
        assert_eq!(status_of(false, &with("running", "running")), "ready");
        assert_eq!(status_of(false, &with("failing", "running")), "degraded");
        assert_eq!(status_of(false, &with("running", "failing")), "degraded");
        assert_eq!(status_of(false, &with("running", "stopped")), "degraded");
        assert_eq!(status_of(false, &with("stalled", "running")), "degraded");
        assert_eq!(status_of(false, &with("starting", "running")), "starting");
        assert_eq!(status_of(false, &with("stopped", "running")), "failing");
        assert_eq!(status_of(true, &with("running", "running")), "stopping");
    }

    #[test]
    fn a_running_task_behind_without_moving_for_a_minute_has_stalled() {
        let now = std::time::Instant::now();
        let ago = |seconds| now - std::time::Duration::from_secs(seconds);
        assert_eq!(stalled_for("running", None, now), None, "not behind");
        assert_eq!(stalled_for("running", Some(ago(59)), now), None);
        assert_eq!(
            stalled_for("running", Some(ago(61)), now),
            Some(std::time::Duration::from_secs(61))
        );
        assert_eq!(
            stalled_for("failing", Some(ago(61)), now),
            None,
            "a failing task is reported as failing"
        );
        assert_eq!(stalled_for("starting", Some(ago(600)), now), None);
    }
}
