//! Writing events and reading the global feed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use travelmap_domain::ClientId;
use travelmap_domain::audit::{Operation, Outcome};
use utoipa::IntoParams;

use crate::AppState;
use crate::audit::{self, Logged, RequestContext};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Code, Problem};
use crate::extract::{self, JsonBody, Query};
use crate::wire::{self, BatchReceipts, BatchRequest, EventRequest, FeedPage, Receipt, Recorded};

/// Record one journey event.
#[utoipa::path(
    post, path = "/v1/events", tag = "events",
    request_body = EventRequest,
    responses(
        (status = 201, description = "Recorded", body = Receipt),
        (status = 200, description = "Already recorded with the same content: the original receipt", body = Receipt),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The credential lacks the writer role, or its agency's kind may not post this event type (or, for a correction or retraction, the type of the event it names)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "duplicate_conflict, version_conflict, or the client's record is restricted (client_restricted) or erased (client_erased)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body not declared as JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "validation_failed or unknown_event_type", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn post_event(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    const ACTION: &str = "POST /v1/events";
    let denied = |client| Logged {
        operation: Operation::Collection,
        client,
        action: ACTION,
        returned: None,
    };
    // A refused write is logged under the client it names, so that the client's own trail
    // shows the attempt; the body is not checked first, since the caller may not write at all.
    let named = named_clients(std::slice::from_ref(&body))
        .into_iter()
        .next();
    audit::require(&state, &caller, &context, &[Role::Writer], denied(named)).await?;
    if let Some(refused) = refused_type(&caller, &body) {
        audit::log(&state, &caller, &context, Outcome::Denied, denied(named)).await?;
        return Err(refused);
    }
    let submission = wire::parse_event(&body)?;
    let client = submission.draft.client_id;
    state
        .authenticator
        .check_named_agency(&submission.draft.event)?;
    let operation = audit::operation_of(&submission);
    let id = submission.draft.id;
    let actor = submission
        .draft
        .actor
        .as_ref()
        .map(|actor| actor.as_str().to_owned());
    let mut entry = context.record(
        &caller,
        Outcome::Allowed,
        Logged {
            operation,
            client: Some(client),
            action: ACTION,
            returned: Some(id.to_string()),
        },
    );
    entry.actor = actor;
    // The entry is written beside the commit (see `Journeys::record_logged`).
    let submissions = [submission];
    let recorded = state
        .journeys
        .record_logged(
            &caller.provenance(),
            caller.0.agency_kind,
            &submissions,
            |written| audit::try_recorded(&state, vec![entry], written),
        )
        .await;
    let (outcomes, logged) = match recorded {
        Ok(recorded) => recorded,
        Err(error) => {
            log_denied_write(&state, &caller, &context, ACTION, &error, &submissions).await?;
            return Err(ApiError::from(error).at_index(None));
        }
    };
    audit::settle_recorded(&state, logged).await?;
    let outcome = &outcomes[0];
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(Receipt::from(outcome))))
}

/// Record up to 1000 events, all or nothing.
#[utoipa::path(
    post, path = "/v1/events/batch", tag = "events",
    request_body = BatchRequest,
    responses(
        (status = 201, description = "Recorded (events already recorded with the same content keep their original receipts)", body = BatchReceipts),
        (status = 200, description = "Every event was already recorded with the same content", body = BatchReceipts),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The credential lacks the writer role, or its agency's kind may not post this event type (or, for a correction or retraction, the type of the event it names)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "duplicate_conflict, version_conflict, client_restricted or client_erased; `index` names the event", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An event is invalid (`index` names it) or the batch is empty or too large", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn post_batch(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<BatchReceipts>), ApiError> {
    const ACTION: &str = "POST /v1/events/batch";
    let logged = |client, returned| Logged {
        operation: Operation::Collection,
        client,
        action: ACTION,
        returned,
    };
    if let Err(refused) = caller.require(&[Role::Writer]) {
        // One entry for the attempt, and one for each client it named (see `post_event`): no
        // more than a batch may hold, or one refused request could write any number.
        let events = body["events"]
            .as_array()
            .filter(|events| events.len() <= wire::MAX_BATCH)
            .map_or(&[][..], Vec::as_slice);
        let records = std::iter::once(None)
            .chain(named_clients(events).into_iter().map(Some))
            .map(|client| context.record(&caller, Outcome::Denied, logged(client, None)))
            .collect();
        audit::write(&state, records).await?;
        return Err(refused);
    }
    extract::require_object(&body, "{\"events\": [...]}")?;
    let batch: BatchRequest =
        travelmap_domain::catalogue::deserialize_with_path(&body).map_err(|invalid| {
            let error = ApiError::new(Code::ValidationFailed, invalid.message);
            if invalid.field.is_empty() {
                error
            } else {
                error.with_field(invalid.field)
            }
        })?;
    if batch.events.is_empty() {
        return Err(
            ApiError::new(Code::ValidationFailed, "a batch holds at least one event")
                .with_field("events"),
        );
    }
    if batch.events.len() > wire::MAX_BATCH {
        return Err(ApiError::new(
            Code::BatchTooLarge,
            format!(
                "a batch holds at most {} events; this one has {}",
                wire::MAX_BATCH,
                batch.events.len()
            ),
        )
        .with_field("events"));
    }
    let refused = batch
        .events
        .iter()
        .enumerate()
        .find_map(|(index, event)| Some((index, refused_type(&caller, event)?)));
    if let Some((index, refused)) = refused {
        // As for a caller without the role: one entry for the attempt, and one for each
        // client the batch named, as an import logs a refused type.
        let records = std::iter::once(None)
            .chain(named_clients(&batch.events).into_iter().map(Some))
            .map(|client| context.record(&caller, Outcome::Denied, logged(client, None)))
            .collect();
        audit::write(&state, records).await?;
        return Err(refused.at_index(Some(index)));
    }
    let submissions = batch
        .events
        .iter()
        .enumerate()
        .map(|(index, event)| wire::parse_event(event).map_err(|error| error.at_index(Some(index))))
        .collect::<Result<Vec<_>, _>>()?;
    for (index, submission) in submissions.iter().enumerate() {
        state
            .authenticator
            .check_named_agency(&submission.draft.event)
            .map_err(|invalid| invalid.at_index(Some(index)))?;
    }
    let entries = audit::recorded_by_client(&submissions)
        .into_iter()
        .map(|(client, operation, returned)| {
            context.record(
                &caller,
                Outcome::Allowed,
                Logged {
                    operation,
                    ..logged(Some(client), returned)
                },
            )
        })
        .collect();
    // The entries are written beside the commit (see `Journeys::record_logged`).
    let recorded = state
        .journeys
        .record_logged(
            &caller.provenance(),
            caller.0.agency_kind,
            &submissions,
            |written| audit::try_recorded(&state, entries, written),
        )
        .await;
    let (outcomes, logged) = match recorded {
        Ok(recorded) => recorded,
        Err(error) => {
            log_denied_write(&state, &caller, &context, ACTION, &error, &submissions).await?;
            return Err(error.into());
        }
    };
    audit::settle_recorded(&state, logged).await?;
    let status = if outcomes.iter().any(|outcome| outcome.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let receipts = outcomes.iter().map(Receipt::from).collect();
    Ok((status, Json(BatchReceipts { receipts })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Return events with a position greater than this (default 0: from the start).
    #[serde(default, deserialize_with = "extract::query_position")]
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<u64>,
    /// At most this many events (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The global feed, in commit order.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(FeedQuery, ("X-Purpose" = String, Header, description = "Why you read: e.g. `case_management`")),
    responses(
        (status = 200, description = "A page of the feed", body = FeedPage),
        (status = 400, description = "Malformed parameter, or no valid `X-Purpose` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the auditor or admin role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn feed(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    query: Result<Query<FeedQuery>, ApiError>,
) -> Result<Json<FeedPage>, ApiError> {
    let logged = |returned| Logged {
        operation: Operation::Disclosure,
        client: None,
        action: "GET /v1/events",
        returned,
    };
    audit::require(
        &state,
        &caller,
        &context,
        &[Role::Auditor, Role::Admin],
        logged(None),
    )
    .await?;
    let purpose = audit::spanning_purpose(
        &state,
        &caller,
        &context,
        audit::Reach::Clients,
        logged(None),
    )
    .await?;
    let parsed = query.and_then(|Query(query)| {
        let limit = crate::extract::limit(query.limit, 100, travelmap_service::MAX_FEED_PAGE)?;
        Ok((query.after.unwrap_or(0), limit))
    });
    let (after, limit) = audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    let events = state.journeys.feed(after, limit).await?;
    if events.is_empty() {
        let within = within_feed(&state, after, "after").await;
        audit::parameters(&state, &caller, &context, within, logged(None)).await?;
    }
    let next_after = events.last().map_or(after, |event| event.meta.position);
    let returned = audit::returned_events(&events);
    let per_client = audit::by_client(
        "events",
        events
            .iter()
            .map(|event| (event.draft.client_id, event.draft.id.to_string())),
    );
    audit::log_spanning(&state, &caller, &context, logged(returned), per_client).await?;
    // Restricted clients' events stay in the feed (a reader must see every position), with
    // their personal fields withheld unless this is an auditor's audit.
    let restricted = if audit::audits(&caller, purpose) {
        std::collections::HashSet::new()
    } else {
        let mut clients: Vec<_> = events.iter().map(|event| event.draft.client_id).collect();
        clients.sort_unstable_by_key(|client| client.0);
        clients.dedup();
        state.journeys.restricted(clients).await?
    };
    Ok(Json(FeedPage {
        events: events
            .iter()
            .map(|event| {
                if restricted.contains(&event.draft.client_id) {
                    Recorded::withheld(event)
                } else {
                    Recorded::from(event)
                }
            })
            .collect(),
        next_after,
    }))
}

/// How long a reader's position may wait for the log's head to reach it (another process's
/// commits are heard of within moments).
const HEAD_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// Refuses a position past the log's end, as the parameter `name`. Such a position was never
/// sent: following the feed from it would skip, with no word, whatever is recorded up to it
/// (after a restore that shortened the log, or from a mistyped cursor). Another process's newest
/// position may take a moment to be heard of here, so the head is given that moment.
pub(crate) async fn within_feed(state: &AppState, after: u64, name: &str) -> Result<(), ApiError> {
    let mut head = state.journeys.log().head();
    let reached = tokio::time::timeout(HEAD_CATCH_UP, async {
        head.wait_for(|head| *head >= after).await.is_ok()
    })
    .await
    .unwrap_or(false);
    if reached {
        return Ok(());
    }
    Err(ApiError::invalid_parameter(
        name,
        format!(
            "position {after} is past the end of the feed ({}); resume from a position you \
             were sent",
            *head.borrow()
        ),
    ))
}

/// Logs a write refused because its client's processing is restricted, its data erased, or the
/// agency may not rectify the event it names. Such an attempt is what a data-protection officer
/// reviews, unlike a write refused as invalid or conflicting, which logs nothing (nothing was
/// recorded, and the sender is told why).
async fn log_denied_write(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    action: &str,
    error: &travelmap_service::Error,
    submissions: &[travelmap_service::Submission],
) -> Result<(), ApiError> {
    let Some(submission) = audit::denied_submission(error, submissions) else {
        return Ok(());
    };
    let logged = Logged {
        operation: audit::operation_of(submission),
        client: Some(submission.draft.client_id),
        action,
        returned: None,
    };
    audit::log(state, caller, context, Outcome::Denied, logged).await
}

/// The distinct clients named by these events as posted, as far as their `client_id` can be
/// read without checking the rest: for logging a refusal that comes before any check.
/// Why the caller may not post the event's type, judged on the type as sent, before its data
/// is: an agency that may not post a type at all is told so (403), not what its data lacks. A
/// type outside the catalogue is left to validation, which names it unknown.
fn refused_type(caller: &Caller, event: &serde_json::Value) -> Option<ApiError> {
    let event_type = event.get("type")?.as_str()?;
    travelmap_domain::agency::posted_by(event_type)?;
    caller.may_post(event_type).err()
}

fn named_clients(events: &[serde_json::Value]) -> Vec<ClientId> {
    let mut named: Vec<ClientId> = events
        .iter()
        .filter_map(|event| event.get("client_id")?.as_str()?.parse().ok())
        .map(ClientId)
        .collect();
    named.sort_unstable_by_key(|client| client.0);
    named.dedup();
    named
}
