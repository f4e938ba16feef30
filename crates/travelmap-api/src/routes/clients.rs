//! Reading a client's history and travel map, and finding clients by identifier.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use travelmap_domain::ClientId;
use travelmap_domain::audit::{Operation, Outcome};
use travelmap_domain::dates::{self, MomentRefused};
use travelmap_domain::payloads::Purpose;
use travelmap_projections::TravelMap;
use utoipa::IntoParams;

use crate::AppState;
use crate::audit::{self, Logged, RequestContext};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Problem};
use crate::extract::{self, Path, Query};
use crate::wire::{ClientMatch, ClientMatches, History, Recorded};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// RFC 3339 time: only what had been recorded by then. URL-encode a `+` offset as `%2B`,
    /// or use `Z`.
    #[param(format = DateTime)]
    pub as_of: Option<String>,
}

/// Parses an RFC 3339 query parameter (see [`dates::parse_moment`], which `replay --as-of`
/// shares, so that a moment reads the same in both).
fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    dates::parse_moment(raw)
        .map_err(|refused| {
            ApiError::invalid_parameter(
                name,
                match refused {
                    MomentRefused::NotRfc3339 => {
                        format!("{name} must be an RFC 3339 time, e.g. 2026-03-01T09:00:00+01:00")
                    }
                    MomentRefused::LeapSecond => {
                        format!("{name} has no such second (leap seconds are not taken)")
                    }
                },
            )
        })
        .and_then(|at| {
            // A moment still to come has no record yet: its map would show flags and overdue
            // appointments that have not happened, and change as later events arrive. Within
            // the clock skew allowed (a receipt's `recorded_at` may come from a process whose
            // clock runs ahead of this one's), a moment is taken as it is.
            if at > Utc::now() + dates::MAX_CLOCK_SKEW {
                return Err(ApiError::invalid_parameter(
                    name,
                    format!(
                        "{name} is in the future ({}): leave it out to read the current state",
                        at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                    ),
                ));
            }
            Ok(Some(at))
        })
}

/// A client's history as recorded, in stream order.
#[utoipa::path(
    get, path = "/v1/clients/{client_id}/events", tag = "clients",
    params(("client_id" = uuid::Uuid, Path, description = "The client"), HistoryQuery, ("X-Purpose" = String, Header, description = "Why you read: e.g. `case_management`, `supervision`, `service_delivery`; `emergency` with `X-Justification` for break-glass access"), ("X-Justification" = Option<String>, Header, description = "A written reason: required with `X-Purpose: emergency` (break-glass), logged with the read")),
    responses(
        (status = 200, description = "The history", body = History),
        (status = 400, description = "Malformed parameter, or no valid `X-Purpose` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the coordinator, auditor or dpo role; a coordinator also needs a reason to know the client (an open involvement, a consent for the purpose, or break-glass)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(client_id): Path<String>,
    query: Result<Query<HistoryQuery>, ApiError>,
) -> Result<Json<History>, ApiError> {
    let client_id = extract::client_id(&client_id)?;
    let logged = |returned| Logged {
        operation: Operation::Consultation,
        client: Some(ClientId(client_id)),
        action: "GET /v1/clients/{client_id}/events",
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
    // Checked before need-to-know, which may open a break-glass grant: a request refused for
    // its parameters must leave nothing behind but its denied entry.
    let parsed = query.and_then(|Query(query)| parse_time("as_of", query.as_of.as_deref()));
    let as_of = audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    audit::need_to_know(&state, &caller, &context, ClientId(client_id), logged(None)).await?;
    let events = state.journeys.history(ClientId(client_id), as_of).await;
    let events = audit::found(&state, &caller, &context, events, logged(None)).await?;
    let returned = audit::returned_events(&events);
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(returned),
    )
    .await?;
    Ok(Json(History {
        client_id,
        events: events.iter().map(Recorded::from).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TravelMapQuery {
    /// RFC 3339 time: the map as it stood then (folded from what had been recorded by then).
    #[param(format = DateTime)]
    pub as_of: Option<String>,
    /// Wait (up to 5 s) until the projection has reached this global position, e.g. the
    /// `position` of a receipt just received, to read your own writes.
    #[serde(default, deserialize_with = "extract::query_position")]
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub min_position: Option<u64>,
}

/// A client's travel map.
#[utoipa::path(
    get, path = "/v1/clients/{client_id}/travel-map", tag = "clients",
    params(("client_id" = uuid::Uuid, Path, description = "The client"), TravelMapQuery, ("X-Purpose" = String, Header, description = "Why you read: e.g. `case_management`, `supervision`, `service_delivery`; `emergency` with `X-Justification` for break-glass access"), ("X-Justification" = Option<String>, Header, description = "A written reason: required with `X-Purpose: emergency` (break-glass), logged with the read")),
    responses(
        (status = 200, description = "The travel map", body = TravelMap),
        (status = 400, description = "Malformed parameter, or no valid `X-Purpose` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the coordinator, auditor or dpo role; a coordinator also needs a reason to know the client (an open involvement, a consent for the purpose, or break-glass)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (or none yet at `as_of`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The projection did not reach `min_position` in time", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn travel_map(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    Path(client_id): Path<String>,
    query: Result<Query<TravelMapQuery>, ApiError>,
) -> Result<Json<TravelMap>, ApiError> {
    let client_id = extract::client_id(&client_id)?;
    let logged = |returned| Logged {
        operation: Operation::Consultation,
        client: Some(ClientId(client_id)),
        action: "GET /v1/clients/{client_id}/travel-map",
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
    let parsed = query.and_then(|Query(query)| {
        let as_of = parse_time("as_of", query.as_of.as_deref())?;
        Ok((as_of, query.min_position))
    });
    let (as_of, min_position) =
        audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
    let map = match as_of {
        Some(_) => {
            audit::need_to_know(&state, &caller, &context, ClientId(client_id), logged(None))
                .await?;
            let map = state
                .journeys
                .travel_map(ClientId(client_id), as_of, min_position)
                .await;
            audit::found(&state, &caller, &context, map, logged(None)).await?
        }
        // The current map: the client is loaded once, for the access decision and the answer.
        None => {
            let projected = *state.journeys.projector().progress().borrow();
            if min_position.is_some_and(|position| position > projected) {
                // Decided on the recorded history before waiting for the projection, so that a
                // refused caller is answered, and logged, at once rather than timing out
                // unlogged; the decision is made again on the map that is then read.
                audit::need_to_know_before_waiting(
                    &state,
                    &caller,
                    &context,
                    ClientId(client_id),
                    logged(None),
                )
                .await?;
            } else {
                audit::purpose(&state, &caller, &context, logged(None)).await?;
            }
            let consultation = state
                .journeys
                .consult(ClientId(client_id), min_position)
                .await?;
            audit::need_to_know_given(
                &state,
                &caller,
                &context,
                ClientId(client_id),
                consultation.access.as_ref(),
                logged(None),
            )
            .await?;
            audit::found(&state, &caller, &context, consultation.map, logged(None)).await?
        }
    };
    let returned = Some(format!("travel map at stream version {}", map.version));
    audit::log(
        &state,
        &caller,
        &context,
        Outcome::Allowed,
        logged(returned),
    )
    .await?;
    Ok(Json(map))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// `TYPE:VALUE`, e.g. `prison_number:OP-2024-117`.
    #[param(required = true, pattern = r"^[a-z][a-z0-9_]{0,63}:.*\S")]
    pub identifier: Option<String>,
}

/// Find clients by an agency identifier.
#[utoipa::path(
    get, path = "/v1/clients", tag = "clients",
    params(SearchQuery, ("X-Purpose" = String, Header, description = "Why you read: e.g. `case_management`")),
    responses(
        (status = 200, description = "The matching clients (possibly none)", body = ClientMatches),
        (status = 400, description = "Missing or malformed `identifier`, or no valid `X-Purpose` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the writer, coordinator, auditor or dpo role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    query: Result<Query<SearchQuery>, ApiError>,
) -> Result<Json<ClientMatches>, ApiError> {
    // The identifier's value is itself personal data: the entry names only its type.
    const ACTION: &str = "GET /v1/clients?identifier=";
    let logged = |client, returned| Logged {
        operation: Operation::Consultation,
        client,
        action: ACTION,
        returned,
    };
    audit::require(
        &state,
        &caller,
        &context,
        &[Role::Writer, Role::Coordinator, Role::Auditor, Role::Dpo],
        logged(None, None),
    )
    .await?;
    let purpose = audit::spanning_purpose(
        &state,
        &caller,
        &context,
        audit::Reach::Clients,
        logged(None, None),
    )
    .await?;
    let parsed = query.and_then(|Query(query)| {
        let identifier = query.identifier.ok_or_else(|| {
            ApiError::invalid_parameter("identifier", "give `identifier=TYPE:VALUE`")
        })?;
        let (kind, value) = identifier
            .split_once(':')
            .filter(|(kind, value)| !kind.is_empty() && !value.trim().is_empty())
            .ok_or_else(|| {
                ApiError::invalid_parameter("identifier", "identifier must be `TYPE:VALUE`")
            })?;
        // The kind goes into the audit entry: only a well-formed kind, never free text.
        travelmap_domain::payloads::IdentifierKind::try_from(kind.to_owned()).map_err(
            |message| {
                ApiError::invalid_parameter("identifier", format!("identifier type: {message}"))
            },
        )?;
        Ok((kind.to_owned(), value.trim().to_owned()))
    });
    let (kind, value) =
        audit::parameters(&state, &caller, &context, parsed, logged(None, None)).await?;
    let mut clients = state.journeys.find_by_identifier(&kind, &value).await?;
    // A restricted client is found only by an audit or a subject access request.
    let reviewing = matches!(purpose, Purpose::Audit | Purpose::SubjectAccess)
        && caller
            .0
            .roles
            .iter()
            .any(|role| matches!(role, Role::Auditor | Role::Dpo));
    // Withheld clients are named in denied entries of their own, so that their trails show
    // who looked them up by an identifier, as a refused read of theirs would.
    let mut withheld = Vec::new();
    if !reviewing {
        let mut usable = Vec::with_capacity(clients.len());
        for client in clients {
            let access = state.journeys.access(client).await?;
            if access.is_some_and(|access| access.restricted) {
                withheld.push(client);
            } else {
                usable.push(client);
            }
        }
        clients = usable;
    }
    // A coordinator finds only the clients it may see; writers find any (they need the id to
    // record what they know), reviewers any.
    let scoped = caller.0.agency_kind.is_some()
        && !caller
            .0
            .roles
            .iter()
            .any(|role| matches!(role, Role::Writer | Role::Auditor | Role::Dpo));
    if scoped {
        let mut visible = Vec::with_capacity(clients.len());
        for client in clients {
            let access = state.journeys.access(client).await?;
            if access.is_some_and(|access| access.allows(&caller.0.agency, purpose)) {
                visible.push(client);
            } else {
                withheld.push(client);
            }
        }
        clients = visible;
    }
    let mut entries: Vec<_> = if clients.is_empty() {
        vec![context.record(
            &caller,
            Outcome::Allowed,
            logged(None, Some(format!("no client returned by {kind}"))),
        )]
    } else {
        clients
            .iter()
            .map(|&client| {
                let returned = Some(format!("found by {kind}"));
                context.record(&caller, Outcome::Allowed, logged(Some(client), returned))
            })
            .collect()
    };
    entries.extend(
        withheld
            .into_iter()
            .map(|client| context.record(&caller, Outcome::Denied, logged(Some(client), None))),
    );
    audit::write(&state, entries).await?;
    Ok(Json(ClientMatches {
        clients: clients
            .into_iter()
            .map(|client| ClientMatch {
                client_id: client.0,
            })
            .collect(),
    }))
}
