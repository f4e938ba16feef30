//! Webhook subscriptions: an agency registers a URL to which the events it may know of are
//! POSTed as they are recorded (see the `travelmap-webhooks` crate for delivery), lists and
//! deletes its webhooks, resumes a paused one, and reads each one's delivery log.
//!
//! A webhook belongs to the agency of the credential that registered it: every writer or
//! coordinator of that agency manages it, an administrator sees and deletes every agency's,
//! and anyone else is told it does not exist (404), so that ids reveal nothing across agencies.
//!
//! Registering, resuming and deleting are written to the audit trail: they start or stop a
//! standing disclosure of personal data, which a reviewer must be able to trace to a credential.
//! Listing webhooks and reading delivery logs are not: they show URLs, ids, positions and
//! statuses, never anyone's data.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use travelmap_domain::audit::{Operation, Outcome};
use travelmap_domain::payloads::Purpose;
use travelmap_store::webhooks::{self as stored, NewWebhook};
use travelmap_webhooks::registration;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::audit::{self, Logged, RequestContext};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Code, Problem};
use crate::extract::{JsonBody, Path, Query};

/// Who may register and manage their agency's webhooks.
const MANAGERS: &[Role] = &[Role::Writer, Role::Coordinator];
/// Who may read and delete webhooks: the agency's managers, and administrators (every agency's).
const READERS: &[Role] = &[Role::Writer, Role::Coordinator, Role::Admin];

/// A webhook to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where events are POSTed: an absolute `https` URL (plain `http` only to this machine),
    /// without user name, password or fragment; at most 2,048 characters. Its address must be
    /// on the public internet or in a network the operator allows.
    #[schema(
        example = "https://case-system.probation.example/travelmap/events",
        format = "uri",
        max_length = 2048
    )]
    pub url: String,
    /// Event types (`client.released`) or families of them (`job.*`) to receive; at least one,
    /// each from the catalogue (`GET /v1/event-types`), and none that is never sent to an
    /// agency (`processing.restricted`, `restriction.lifted`).
    #[schema(example = json!(["client.released", "job.*"]), min_items = 1, max_items = 100)]
    pub types: Vec<String>,
    /// Why the agency processes what it receives (default `case_management`): consents name the
    /// purposes they cover. One of case_management, supervision, service_delivery.
    #[serde(default)]
    #[schema(example = "case_management")]
    pub purpose: Option<String>,
}

/// A registered webhook.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    /// The agency whose need-to-know decides which events are delivered.
    pub agency: String,
    /// The credential that registered it; named as the recipient in the audit trail.
    pub credential: String,
    pub url: String,
    pub types: Vec<String>,
    pub purpose: String,
    /// `active`, or `paused` after an event kept failing (resume it to deliver from where it
    /// stopped).
    pub state: String,
    pub created_at: DateTime<Utc>,
    /// Every event for this webhook up to this feed position has been acknowledged by the
    /// receiver.
    pub delivered_up_to: u64,
    /// The key that signs deliveries (see `Travelmap-Signature`). Shown once, in the answer to
    /// the registration; keep it like a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl Webhook {
    fn without_secret(webhook: &stored::Webhook) -> Self {
        Self {
            id: webhook.id,
            agency: webhook.agency.clone(),
            credential: webhook.credential.clone(),
            url: webhook.url.clone(),
            types: webhook.types.clone(),
            purpose: purpose_name(webhook.purpose),
            state: webhook.state.as_str().to_owned(),
            created_at: webhook.created_at,
            delivered_up_to: webhook.cursor,
            secret: None,
        }
    }
}

/// The caller's agency's webhooks (an administrator's: every agency's).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// One attempt at delivering one event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    /// Sent as `Travelmap-Delivery-Id`.
    pub id: Uuid,
    /// Sent as `Travelmap-Event-Id`.
    pub event_id: Uuid,
    /// The event's position in the global feed.
    pub position: u64,
    /// 1 for the first attempt at the event, counting up while it fails.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why there was no answer (could not connect, timed out), when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// `delivered` (2xx), `retrying` (will be tried again) or `failed` (the last attempt: the
    /// webhook was paused).
    pub outcome: String,
}

/// A webhook's most recent delivery attempts, newest first. The last 1000 are kept.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryLog {
    pub webhook_id: Uuid,
    pub attempts: Vec<DeliveryAttempt>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// How many attempts (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The body of a webhook delivery: the event exactly as `GET /v1/events` shows it. The binary
/// hands this to the dispatcher, so that the two never drift apart.
pub fn delivery_body(event: &travelmap_domain::RecordedEvent) -> Vec<u8> {
    serde_json::to_vec(&crate::wire::Recorded::from(event)).expect("a recorded event serialises")
}

fn purpose_name(purpose: Purpose) -> String {
    serde_json::to_value(purpose)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn invalid(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
    ApiError::new(Code::ValidationFailed, detail).with_field(field)
}

/// Checks a registration request; errors name the offending field.
fn parse_request(body: &serde_json::Value) -> Result<(String, Vec<String>, Purpose), ApiError> {
    crate::extract::require_object(body, "{\"url\": \"...\", \"types\": [...]}")?;
    let request: WebhookRequest = travelmap_domain::catalogue::deserialize_with_path(body)
        .map_err(|invalid| {
            let error = ApiError::new(Code::ValidationFailed, invalid.message);
            if invalid.field.is_empty() {
                error
            } else {
                error.with_field(invalid.field)
            }
        })?;
    if let Some(problem) = registration::url_problem(&request.url) {
        return Err(invalid("url", problem));
    }
    let mut types = request.types;
    if let Some((index, problem)) = registration::types_problem(&types) {
        let field = index.map_or_else(|| "types".to_owned(), |index| format!("types[{index}]"));
        return Err(invalid(field, problem));
    }
    types.sort();
    types.dedup();
    let purpose = match request.purpose {
        None => registration::DEFAULT_PURPOSE,
        Some(name) => serde_json::from_value::<Purpose>(serde_json::Value::String(name.clone()))
            .ok()
            .filter(|purpose| registration::purpose_allowed(*purpose))
            .ok_or_else(|| {
                invalid(
                    "purpose",
                    format!(
                        "a webhook's purpose is one of {}, not `{name}`",
                        registration::ALLOWED_PURPOSES
                    ),
                )
            })?,
    };
    Ok((registration::normal_url(&request.url), types, purpose))
}

/// The scheme, host and port of a URL: enough to tell receivers apart in the audit trail,
/// without a path or query that may carry a token.
fn origin(url: &str) -> String {
    match url.find("://") {
        Some(start) => {
            let rest = &url[start + 3..];
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            format!("{}://{}", &url[..start], &rest[..end])
        }
        None => String::new(),
    }
}

/// The webhook `id` if the caller may see it; 404 otherwise (as if it did not exist).
async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<stored::Webhook, ApiError> {
    let id = Uuid::parse_str(id).map_err(|error| {
        ApiError::invalid_parameter("id", format!("id must be a UUID: {error}"))
    })?;
    let webhook = state
        .webhooks
        .get(id)
        .await
        .map_err(ApiError::store)?
        .filter(|webhook| {
            webhook.agency == caller.0.agency || caller.0.roles.contains(&Role::Admin)
        })
        .ok_or_else(|| ApiError::not_found(format!("no webhook {id}")))?;
    Ok(webhook)
}

/// [`visible`], for a change (a resume, a deletion): one refused because the webhook is not
/// the caller's agency's, or does not exist (the two are answered alike), is logged as denied,
/// like a refusal for the caller's role.
async fn changeable(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    id: &str,
    logged: Logged<'_>,
) -> Result<stored::Webhook, ApiError> {
    match visible(state, caller, id).await {
        Err(error) if error.code == Code::NotFound => {
            audit::log(state, caller, context, Outcome::Denied, logged).await?;
            Err(error)
        }
        other => other,
    }
}

/// How many webhooks one agency may have registered.
pub const MAX_WEBHOOKS_PER_AGENCY: usize = 20;

/// Register a webhook for the caller's agency.
#[utoipa::path(
    post, path = "/v1/subscriptions/webhooks", tag = "webhooks",
    request_body = WebhookRequest,
    params(("X-Purpose" = Option<String>, Header, description = "Optional; if sent, it must name the body's `purpose` (the purpose deliveries are made for), or the request is refused (invalid_parameter)")),
    responses(
        (status = 201, description = "Registered; the answer holds the signing secret, shown only this once. Delivery starts with the next event recorded.", body = Webhook,
         headers(("Location" = String, description = "The webhook's URL"))),
        (status = 400, description = "Malformed JSON, or an `X-Purpose` other than the body's `purpose` (invalid_parameter)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the writer or coordinator role", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body not declared as JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "validation_failed: `field` names the offending field (`url`, among others for an address outside the allowed networks; `types[1]`, `purpose`); without `field`, the agency already has the most webhooks it may have (20)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, HeaderMap, Json<Webhook>), ApiError> {
    const ACTION: &str = "POST /v1/subscriptions/webhooks";
    let logged = |returned| Logged {
        operation: Operation::Disclosure,
        client: None,
        action: ACTION,
        returned,
    };
    audit::require(&state, &caller, &context, MANAGERS, logged(None)).await?;
    let (url, types, purpose) = parse_request(&body)?;
    // An address outside the allowed networks is refused now; a name is judged when deliveries
    // resolve it (see `travelmap_webhooks::destinations`).
    if let Some(problem) = state.webhook_destinations.url_problem(&url) {
        return Err(invalid("url", problem));
    }
    // The purpose deliveries are made for is the body's `purpose`; a header naming another would
    // be dropped without a word, leaving the sender believing it had chosen.
    if let Some(stated) = &context.purpose
        && *stated != purpose_name(purpose)
    {
        return Err(ApiError::invalid_parameter(
            "X-Purpose",
            format!(
                "a webhook's purpose is the body's `purpose` (here `{}`); X-Purpose `{stated}` \
                 differs: send the purpose in the body",
                purpose_name(purpose)
            ),
        ));
    }
    // Each webhook is a task following the feed, an audit entry and a request per event: one
    // agency's credential must not multiply that without bound. (Two registrations at the same
    // moment may pass together: the bound is on the load, not a count to the unit.)
    let registered = state
        .webhooks
        .list(Some(caller.0.agency.clone()))
        .await
        .map_err(ApiError::store)?
        .len();
    if registered >= MAX_WEBHOOKS_PER_AGENCY {
        return Err(ApiError::new(
            Code::ValidationFailed,
            format!(
                "agency `{}` has {registered} webhooks, the most an agency may have; delete one it \
                 no longer needs first",
                caller.0.agency
            ),
        ));
    }
    let id = Uuid::new_v4();
    let mut entry = context.record(
        &caller,
        Outcome::Allowed,
        logged(Some(format!("webhook {id} to {}", origin(&url)))),
    );
    entry.purpose = Some(purpose_name(purpose));
    // Logged before the webhook exists, so that no delivery can precede its entry.
    audit::write(&state, vec![entry]).await?;
    let secret = registration::new_secret();
    // Delivery starts with the next event: a webhook is a subscription to what happens from now
    // on, not an export of the past.
    let head = *state.journeys.log().head().borrow();
    let webhook = state
        .webhooks
        .register(NewWebhook {
            id,
            agency: caller.0.agency.clone(),
            credential: caller.0.id.clone(),
            url,
            types,
            purpose,
            secret: secret.clone(),
            created_at: Utc::now(),
            cursor: head,
        })
        .await
        .map_err(ApiError::store)?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/subscriptions/webhooks/{id}")) {
        headers.insert(header::LOCATION, location);
    }
    let mut answer = Webhook::without_secret(&webhook);
    answer.secret = Some(secret);
    Ok((StatusCode::CREATED, headers, Json(answer)))
}

/// List the caller's agency's webhooks (an administrator's: every agency's), without secrets.
#[utoipa::path(
    get, path = "/v1/subscriptions/webhooks", tag = "webhooks",
    responses(
        (status = 200, description = "The webhooks, oldest first", body = WebhookList),
        (status = 400, description = "A query parameter, which this endpoint takes none of (invalid_parameter)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the writer, coordinator or admin role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<WebhookList>, ApiError> {
    caller.require(READERS)?;
    let agency = (!caller.0.roles.contains(&Role::Admin)).then(|| caller.0.agency.clone());
    let webhooks = state.webhooks.list(agency).await.map_err(ApiError::store)?;
    Ok(Json(WebhookList {
        webhooks: webhooks.iter().map(Webhook::without_secret).collect(),
    }))
}

/// One webhook, without its secret.
#[utoipa::path(
    get, path = "/v1/subscriptions/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The webhook")),
    responses(
        (status = 200, description = "The webhook", body = Webhook),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the writer, coordinator or admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook of the caller's agency", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    caller.require(READERS)?;
    let webhook = visible(&state, &caller, &id).await?;
    Ok(Json(Webhook::without_secret(&webhook)))
}

/// Delete a webhook: nothing more is delivered to it, and its delivery log goes with it.
#[utoipa::path(
    delete, path = "/v1/subscriptions/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The webhook")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the writer, coordinator or admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook of the caller's agency", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    const ACTION: &str = "DELETE /v1/subscriptions/webhooks/{id}";
    let logged = |returned| Logged {
        operation: Operation::Disclosure,
        client: None,
        action: ACTION,
        returned,
    };
    audit::require(&state, &caller, &context, READERS, logged(None)).await?;
    let webhook = changeable(
        &state,
        &caller,
        &context,
        &id,
        logged(Some(format!("no webhook {id} of the caller's agency"))),
    )
    .await?;
    state
        .webhooks
        .remove(webhook.id)
        .await
        .map_err(ApiError::store)?;
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(Some(format!("webhook {} deleted", webhook.id))),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resume a paused webhook: delivery starts again at the event that kept failing, and nothing
/// recorded meanwhile is skipped. Resuming an active webhook changes nothing.
#[utoipa::path(
    post, path = "/v1/subscriptions/webhooks/{id}/resume", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The webhook")),
    responses(
        (status = 200, description = "The webhook, active", body = Webhook),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the writer or coordinator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook of the caller's agency", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "validation_failed: the webhook's URL names an address outside the networks receivers may be in", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    const ACTION: &str = "POST /v1/subscriptions/webhooks/{id}/resume";
    let logged = |returned| Logged {
        operation: Operation::Disclosure,
        client: None,
        action: ACTION,
        returned,
    };
    audit::require(&state, &caller, &context, MANAGERS, logged(None)).await?;
    let webhook = changeable(
        &state,
        &caller,
        &context,
        &id,
        logged(Some(format!("no webhook {id} of the caller's agency"))),
    )
    .await?;
    // Resumed, it would only be refused again at every attempt until it is paused anew.
    if let Some(problem) = state.webhook_destinations.url_problem(&webhook.url) {
        return Err(ApiError::new(
            Code::ValidationFailed,
            format!("the webhook cannot be resumed: its {problem}"),
        ));
    }
    if webhook.state != stored::State::Active {
        let mut entry = context.record(
            &caller,
            Outcome::Allowed,
            logged(Some(format!("webhook {} resumed", webhook.id))),
        );
        entry.purpose = Some(purpose_name(webhook.purpose));
        audit::write(&state, vec![entry]).await?;
        state
            .webhooks
            .set_state(webhook.id, stored::State::Active)
            .await
            .map_err(ApiError::store)?;
    }
    let webhook = visible(&state, &caller, &id).await?;
    Ok(Json(Webhook::without_secret(&webhook)))
}

/// A webhook's delivery log: its most recent attempts, newest first.
#[utoipa::path(
    get, path = "/v1/subscriptions/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The webhook"), DeliveryQuery),
    responses(
        (status = 200, description = "The attempts, newest first", body = DeliveryLog),
        (status = 400, description = "The id is not a UUID, or `limit` is out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the writer, coordinator or admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook of the caller's agency", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<DeliveryQuery>,
) -> Result<Json<DeliveryLog>, ApiError> {
    caller.require(READERS)?;
    let limit = crate::extract::limit(query.limit, 100, stored::ATTEMPTS_KEPT)?;
    let webhook = visible(&state, &caller, &id).await?;
    let attempts = state
        .webhooks
        .attempts(webhook.id, limit)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(DeliveryLog {
        webhook_id: webhook.id,
        attempts: attempts
            .into_iter()
            .map(|attempt| DeliveryAttempt {
                id: attempt.id,
                event_id: attempt.event_id.0,
                position: attempt.position,
                attempt: attempt.attempt,
                at: attempt.at,
                status: attempt.status,
                error: attempt.error,
                duration_ms: attempt.duration_ms,
                outcome: attempt.outcome.as_str().to_owned(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_leaves_out_path_and_query() {
        assert_eq!(
            origin("https://hooks.example:8443/t/0ken?x=1"),
            "https://hooks.example:8443"
        );
        assert_eq!(origin("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
    }

    #[test]
    fn a_request_names_the_field_it_fails_on() {
        let field = |body: serde_json::Value| parse_request(&body).unwrap_err().field;
        let url = "https://a.example/hook";
        assert_eq!(
            field(serde_json::json!({"url": "ftp://a.example", "types": ["job.*"]})).as_deref(),
            Some("url")
        );
        assert_eq!(
            field(serde_json::json!({"url": url, "types": ["job.*", "job.stolen"]})).as_deref(),
            Some("types[1]")
        );
        // Types a webhook, always an agency's, would never deliver.
        for never in ["processing.restricted", "restriction.*"] {
            assert_eq!(
                field(serde_json::json!({"url": url, "types": ["job.*", never]})).as_deref(),
                Some("types[1]"),
                "{never}"
            );
        }
        assert_eq!(
            field(serde_json::json!({"url": url, "types": ["job.*"], "purpose": "emergency"}))
                .as_deref(),
            Some("purpose")
        );
        assert_eq!(
            field(serde_json::json!({"url": url, "types": ["job.*"], "agency": "x"})).as_deref(),
            Some("agency")
        );
        assert_eq!(
            field(serde_json::json!({"types": ["job.*"]})).as_deref(),
            Some("url")
        );
    }
}
