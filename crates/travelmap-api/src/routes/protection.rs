//! The data-protection officer's endpoints: erasure, restriction of processing, and subject
//! access (everything held about a client, as JSON or as a readable HTML document).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use travelmap_domain::audit::{Operation, Outcome};
use travelmap_domain::{ClientId, Provenance, Text};
use travelmap_projections::ClientState;
use utoipa::ToSchema;

use crate::AppState;
use crate::audit::{self, Logged, RequestContext};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Code, Problem};
use crate::extract::{self, JsonBody, Path};
use crate::wire::{Receipt, Recorded};

/// Why the data-protection officer acts; recorded with the decision and in the audit trail.
/// It must not itself hold personal data.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Not blank; at most 2,000 characters; no control characters (tab, line feed and carriage
    /// return excepted).
    // The pattern is `travelmap_domain::TEXT_PATTERN` (the attribute takes only a literal; a
    // test checks they agree).
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*[^\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub reason: String,
}

fn reason(body: &serde_json::Value) -> Result<Text, ApiError> {
    // Checked as an event's strings are: the reason is stored with the decision and in the
    // audit trail, whose PostgreSQL columns refuse NUL.
    crate::extract::require_object(body, "{\"reason\": \"...\"}")?;
    crate::wire::refuse_control_characters(body)?;
    let request: DecisionRequest = travelmap_domain::catalogue::deserialize_with_path(body)
        .map_err(|invalid| {
            ApiError::new(Code::ValidationFailed, invalid.message).with_field(invalid.field)
        })?;
    Text::try_from(request.reason)
        .map_err(|message| ApiError::new(Code::ValidationFailed, message).with_field("reason"))
}

/// Runs one data-protection decision: dpo only, audited with the reason as justification.
#[allow(clippy::too_many_arguments)]
async fn decide<F, Fut>(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    client_id: ClientId,
    operation: Operation,
    action: &'static str,
    body: Result<JsonBody, ApiError>,
    run: F,
) -> Result<(StatusCode, Json<Receipt>), ApiError>
where
    F: FnOnce(Provenance, Text) -> Fut,
    Fut: std::future::Future<Output = Result<travelmap_service::Outcome, travelmap_service::Error>>,
{
    let logged = |returned| Logged {
        operation,
        client: Some(client_id),
        action,
        returned,
    };
    // The role first: a refused caller is logged whatever body it sent (none, not JSON).
    audit::require(state, caller, context, &[Role::Dpo], logged(None)).await?;
    let JsonBody(body) = body?;
    let reason = reason(&body)?;
    let provenance = Provenance {
        agency: caller.0.agency.clone(),
        credential: caller.0.id.clone(),
    };
    let record_of = |outcome, returned| {
        let mut record = context.record(caller, outcome, logged(returned));
        record.justification = Some(reason.to_string());
        record
    };
    match run(provenance, reason.clone()).await {
        Ok(outcome) => {
            // The decision is recorded whatever the trail does now: its entry is retried, and
            // handed on to be written later, as a write's entries are.
            let entry = record_of(Outcome::Allowed, Some(outcome.receipt.id.to_string()));
            let tried = audit::try_recorded(state, vec![entry], None).await;
            audit::settle_recorded(state, tried).await?;
            // An erasure is answered once the views no longer hold the data; it is audited
            // before that wait, as soon as it is in the log, so that a process stopped during
            // the wait leaves no erasure the trail does not name.
            if operation == Operation::Erasure {
                state
                    .journeys
                    .wait_for_projection(outcome.receipt.position)
                    .await
                    .map_err(|error| ApiError::from(error).at_index(None))?;
            }
            let status = if outcome.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(Receipt::from(&outcome))))
        }
        Err(error) => {
            audit::write(state, vec![record_of(Outcome::Denied, None)]).await?;
            Err(ApiError::from(error).at_index(None))
        }
    }
}

/// Erases the client's personal data (crypto-shredding): destroys the keys that seal its
/// personal fields and records `personal_data.erased`. Journey facts stay. Answers once the
/// travel maps no longer hold the erased data. Erasing again answers with the first erasure.
#[utoipa::path(
    delete, path = "/v1/clients/{client_id}/personal-data", tag = "data protection",
    params(("client_id" = uuid::Uuid, Path, description = "The client")),
    request_body = DecisionRequest,
    responses(
        (status = 201, description = "Erased", body = Receipt),
        (status = 200, description = "Already erased: the first erasure's receipt", body = Receipt),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the dpo role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn erase(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(client_id): Path<String>,
    body: Result<JsonBody, ApiError>,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    let client_id = ClientId(extract::client_id(&client_id)?);
    let journeys = state.journeys.clone();
    decide(
        &state,
        &caller,
        &context,
        client_id,
        Operation::Erasure,
        "DELETE /v1/clients/{client_id}/personal-data",
        body,
        |provenance, reason| async move {
            journeys
                .record_erasure(&provenance, client_id, reason)
                .await
        },
    )
    .await
}

/// Restricts processing of the client's data: it stays stored, reads need purpose `audit` or
/// `subject_access` (and the auditor or dpo role), and no events but the lifting of the
/// restriction are accepted.
#[utoipa::path(
    post, path = "/v1/clients/{client_id}/restriction", tag = "data protection",
    params(("client_id" = uuid::Uuid, Path, description = "The client")),
    request_body = DecisionRequest,
    responses(
        (status = 201, description = "Restricted", body = Receipt),
        (status = 200, description = "Already restricted: the restriction in force", body = Receipt),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the dpo role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The client was erased (client_erased)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn restrict(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(client_id): Path<String>,
    body: Result<JsonBody, ApiError>,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    let client_id = ClientId(extract::client_id(&client_id)?);
    let journeys = state.journeys.clone();
    decide(
        &state,
        &caller,
        &context,
        client_id,
        Operation::Alteration,
        "POST /v1/clients/{client_id}/restriction",
        body,
        |provenance, reason| async move { journeys.restrict(&provenance, client_id, reason).await },
    )
    .await
}

/// Lifts a restriction of processing.
#[utoipa::path(
    delete, path = "/v1/clients/{client_id}/restriction", tag = "data protection",
    params(("client_id" = uuid::Uuid, Path, description = "The client")),
    request_body = DecisionRequest,
    responses(
        (status = 201, description = "Lifted", body = Receipt),
        (status = 200, description = "Already lifted: the last lifting", body = Receipt),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the dpo role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "There never was a restriction (not_restricted)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn lift_restriction(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(client_id): Path<String>,
    body: Result<JsonBody, ApiError>,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    let client_id = ClientId(extract::client_id(&client_id)?);
    let journeys = state.journeys.clone();
    decide(
        &state,
        &caller,
        &context,
        client_id,
        Operation::Alteration,
        "DELETE /v1/clients/{client_id}/restriction",
        body,
        |provenance, reason| async move {
            journeys
                .lift_restriction(&provenance, client_id, reason)
                .await
        },
    )
    .await
}

/// Everything held about a client, for a subject access request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubjectAccess {
    pub client_id: uuid::Uuid,
    pub generated_at: DateTime<Utc>,
    /// Processing is restricted.
    pub restricted: bool,
    /// The personal data was erased (events show erased fields as `[erased]`).
    pub erased: bool,
    /// Every event, with personal fields decrypted (or shown as erased).
    pub events: Vec<Recorded>,
    /// The agencies that recorded data about the client.
    pub recorded_by: Vec<RecordedBy>,
    /// Who consulted, received or changed the data, from the audit trail.
    pub processed_by: Vec<Processing>,
    /// When each category of the data is due to be shredded (empty: no schedule configured).
    pub retention: Vec<RetentionDate>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordedBy {
    pub agency: String,
    pub events: usize,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Processing {
    pub at: DateTime<Utc>,
    pub agency: String,
    /// collection, alteration, consultation, disclosure, combination, erasure.
    pub operation: String,
    pub purpose: Option<String>,
    /// The written reason given, where one was (a break-glass read's justification, the
    /// reason of a data-protection decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    pub action: String,
    /// allowed or denied.
    pub outcome: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetentionDate {
    pub category: String,
    pub years: u32,
    /// The day the period ends; absent while an involvement is still open.
    pub due_on: Option<chrono::NaiveDate>,
}

/// How to answer a subject access request.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubjectAccessQuery {
    /// `html` for the readable document, `json` for JSON whatever `Accept` says; without it,
    /// `Accept: text/html` asks for the document.
    #[param(pattern = "^(json|html)$")]
    pub format: Option<String>,
}

/// Subject access: everything held about the client — events with personal fields decrypted,
/// which agencies recorded and which consulted or received the data, retention dates. JSON, or a
/// readable HTML document when the request asks for `text/html` (or `?format=html`).
#[utoipa::path(
    get, path = "/v1/clients/{client_id}/subject-access", tag = "data protection",
    params(
        ("client_id" = uuid::Uuid, Path, description = "The client"),
        SubjectAccessQuery,
        ("X-Purpose" = String, Header, description = "Must be `subject_access`"),
    ),
    responses(
        (status = 200, description = "The report (as JSON; as a readable `text/html` page with `?format=html` or `Accept: text/html`)", content(
            (SubjectAccess = "application/json"),
            (String = "text/html"),
        )),
        (status = 400, description = "No `X-Purpose: subject_access` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the dpo role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn subject_access(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    query: Result<extract::Query<SubjectAccessQuery>, ApiError>,
) -> Result<Response, ApiError> {
    let client_id = ClientId(extract::client_id(&client_id)?);
    let logged = |returned| Logged {
        operation: Operation::Disclosure,
        client: Some(client_id),
        action: "GET /v1/clients/{client_id}/subject-access",
        returned,
    };
    audit::require(&state, &caller, &context, &[Role::Dpo], logged(None)).await?;
    audit::purpose_among(
        &state,
        &caller,
        &context,
        audit::SUBJECT_ACCESS_PURPOSES,
        "a subject access report",
        logged(None),
    )
    .await?;
    let parsed = query.and_then(|extract::Query(query)| match query.format.as_deref() {
        None => Ok(None),
        Some("html") => Ok(Some(true)),
        Some("json") => Ok(Some(false)),
        Some(other) => Err(ApiError::invalid_parameter(
            "format",
            format!("`{other}` is not a format of the report; `json` or `html`"),
        )),
    });
    let html = audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    let events = state.journeys.history(client_id, None).await;
    let events = audit::found(&state, &caller, &context, events, logged(None)).await?;
    let now = Utc::now();
    let mut recorded_by: BTreeMap<String, RecordedBy> = BTreeMap::new();
    for event in &events {
        let at = event.meta.recorded_at;
        recorded_by
            .entry(event.provenance.agency.clone())
            .and_modify(|entry| {
                entry.events += 1;
                entry.last = entry.last.max(at);
                entry.first = entry.first.min(at);
            })
            .or_insert(RecordedBy {
                agency: event.provenance.agency.clone(),
                events: 1,
                first: at,
                last: at,
            });
    }
    let processed_by = state
        .audit
        .read_client(client_id)
        .await
        .map_err(ApiError::store)?
        .into_iter()
        .map(|entry| Processing {
            at: entry.record.at,
            agency: entry.record.agency,
            operation: entry.record.operation.as_str().to_owned(),
            purpose: entry.record.purpose,
            justification: entry.record.justification,
            action: entry.record.action,
            outcome: entry.record.outcome.as_str().to_owned(),
        })
        .collect();
    let folded = ClientState::from_history(client_id, events.iter().cloned());
    let access = folded.access(now);
    let retention = folded
        .retention(&state.retention, now)
        .into_iter()
        .map(|retention| RetentionDate {
            category: retention.category.as_str().to_owned(),
            years: retention.years,
            due_on: retention.due_on,
        })
        .collect();
    let report = SubjectAccess {
        client_id: client_id.0,
        generated_at: now,
        restricted: access.restricted,
        erased: access.erased,
        events: events.iter().map(Recorded::from).collect(),
        recorded_by: recorded_by.into_values().collect(),
        processed_by,
        retention,
    };
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(audit::returned_events(&events)),
    )
    .await?;
    let wants_html = html.unwrap_or_else(|| {
        headers
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .is_some_and(prefers_html)
    });
    if wants_html {
        Ok(Html(render_html(&report)).into_response())
    } else {
        Ok(Json(report).into_response())
    }
}

/// The report as a self-contained HTML page a client can read (and print).
fn render_html(report: &SubjectAccess) -> String {
    let mut page = String::new();
    let e = escape;
    page.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str(&format!(
        "<title>Subject access report: client {}</title>",
        report.client_id
    ));
    page.push_str("<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}table{border-collapse:collapse;width:100%;margin-bottom:1.5em}th,td{border:1px solid #999;padding:.3em .5em;text-align:left;vertical-align:top}th{background:#eee}pre{margin:0;white-space:pre-wrap}</style></head><body>");
    page.push_str(&format!(
        "<h1>Subject access report</h1><p>Client <code>{}</code>, produced {}.</p>",
        report.client_id,
        report.generated_at.to_rfc3339()
    ));
    if report.restricted {
        page.push_str("<p><strong>Processing of this data is restricted.</strong></p>");
    }
    if report.erased {
        page.push_str(
            "<p><strong>The personal data was erased;</strong> erased fields show as [erased].</p>",
        );
    }
    page.push_str("<h2>Who recorded data about you</h2><table><tr><th>Agency</th><th>Events</th><th>First</th><th>Last</th></tr>");
    for agency in &report.recorded_by {
        page.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e(&agency.agency),
            agency.events,
            agency.first.to_rfc3339(),
            agency.last.to_rfc3339()
        ));
    }
    page.push_str("</table><h2>What was recorded</h2><table><tr><th>When it happened</th><th>What</th><th>Recorded by</th><th>Details</th></tr>");
    for event in &report.events {
        let details = serde_json::to_string_pretty(&event.data).unwrap_or_default();
        page.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            event.occurred_at.to_rfc3339(),
            e(&event.event_type),
            e(&event.agency),
            e(&details)
        ));
    }
    page.push_str("</table><h2>Who used the data, and why</h2><table><tr><th>When</th><th>Agency</th><th>Operation</th><th>What</th><th>Purpose</th><th>Reason given</th><th>Outcome</th></tr>");
    for processing in &report.processed_by {
        page.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            processing.at.to_rfc3339(),
            e(&processing.agency),
            e(&processing.operation),
            e(&processing.action),
            e(processing.purpose.as_deref().unwrap_or("")),
            e(processing.justification.as_deref().unwrap_or("")),
            e(&processing.outcome)
        ));
    }
    page.push_str("</table><h2>How long it is kept</h2>");
    if report.retention.is_empty() {
        page.push_str("<p>No retention schedule is configured: the data is kept until erased.</p>");
    } else {
        page.push_str(
            "<table><tr><th>Category</th><th>Kept for</th><th>Due to be erased</th></tr>",
        );
        for retention in &report.retention {
            page.push_str(&format!(
                "<tr><td>{}</td><td>{} years after the last involvement ends</td><td>{}</td></tr>",
                e(&retention.category),
                retention.years,
                retention
                    .due_on
                    .map_or("not yet (an involvement is open)".to_owned(), |day| day
                        .to_string())
            ));
        }
        page.push_str("</table>");
    }
    page.push_str("</body></html>");
    page
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Whether an `Accept` header asks for HTML rather than JSON: `text/html` acceptable (a quality
/// above 0) and preferred over `application/json` (JSON on a tie, being the default). Media
/// types are compared without regard to case.
fn prefers_html(accept: &str) -> bool {
    let (mut html, mut json) = (None, None);
    for item in accept.split(',') {
        let mut parameters = item.split(';');
        let media = parameters.next().unwrap_or_default().trim();
        let quality = parameters
            .filter_map(|parameter| {
                let (name, value) = parameter.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| value.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        if media.eq_ignore_ascii_case("text/html") {
            html = Some(quality);
        } else if media.eq_ignore_ascii_case("application/json") {
            json = Some(quality);
        }
    }
    html.is_some_and(|html| html > 0.0 && html > json.unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::prefers_html;

    #[test]
    fn html_is_chosen_only_when_acceptable_and_preferred() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(browser));
        assert!(prefers_html("TEXT/HTML"));
        assert!(!prefers_html("application/json, text/html;q=0.1"));
        assert!(!prefers_html("text/html;q=0, application/json"));
        assert!(!prefers_html("text/html, application/json"));
        assert!(!prefers_html("*/*"));
        assert!(!prefers_html("application/json"));
    }
}
