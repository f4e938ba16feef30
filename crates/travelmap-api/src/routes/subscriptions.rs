//! The live feed for agency systems: server-sent events of journey events (or alert notices),
//! scoped to what the subscriber's agency may know, resumable with `Last-Event-ID`.
//!
//! Journey events carry their global position as the event id, so a subscriber that reconnects
//! with the last id it saw continues exactly after it: nothing is lost and nothing repeated.
//! Alert notices carry `<epoch>-<seq>`; within one run of the service a reconnect resumes from
//! the kept notices, and otherwise (a restart, or too long away) the stream starts with a
//! snapshot of the open alerts (`change: "open"`), which subscribers de-duplicate by alert id.
//!
//! Every batch sent is logged as a disclosure before it leaves, like any other read, and each
//! client it sends is named in an entry of their own when the recipient's streams first send
//! their data and at least hourly after.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use travelmap_domain::ClientId;
use travelmap_domain::audit::{Operation, Outcome};
use travelmap_domain::payloads::Purpose;
use travelmap_projections::coordination::Alert;
use travelmap_service::coordination::{AlertFilter, AlertNotice};
use travelmap_service::subscriptions::{
    Batch, Scope, is_known_type_pattern, reaches_agencies_pattern,
};
use utoipa::{IntoParams, ToSchema};

use super::coordination::{AlertQuery, alert_filter, reads_all_agencies};
use super::events::within_feed;
use crate::AppState;
use crate::audit::{self, Logged, RequestContext};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Problem};
use crate::extract::{self, Query};
use crate::wire::Recorded;

/// How often an idle stream sends a heartbeat comment, so that proxies keep it open and the
/// subscriber can tell a quiet feed from a dead connection.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a stream gathers events after the first before sending (and logging) them together.
const LINGER: Duration = Duration::from_millis(50);
/// The longest a stream gathers while the audit trail is busy.
const MAX_LINGER: Duration = Duration::from_millis(500);

/// What to follow.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// `events` (default): journey events; `alerts`: alert notices.
    #[param(pattern = "^(events|alerts)?$")]
    pub stream: Option<String>,
    /// Journey events only: start after this position (default: the current head, i.e. only
    /// new events). `Last-Event-ID` takes precedence.
    #[serde(default, deserialize_with = "extract::query_position")]
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<u64>,
    /// Journey events only: comma-separated types or families (`client.released,job.*`);
    /// default every type. On an agency's stream (writer, coordinator), none that an agency is
    /// never sent (`processing.restricted`, `restriction.lifted`, their families).
    pub types: Option<String>,
    /// Alerts only: the agency expected to act (a coordinator's own by default).
    pub agency: Option<String>,
    /// Alerts only: one alert kind.
    #[param(value_type = Option<travelmap_projections::coordination::AlertKind>)]
    pub kind: Option<String>,
    /// Where to resume, for clients that cannot send the `Last-Event-ID` header (EventSource
    /// polyfills reconnect with it in the query); the header takes precedence.
    #[serde(rename = "lastEventId")]
    #[param(rename = "lastEventId")]
    pub last_event_id: Option<String>,
}

/// An alert notice as sent on the stream (`event: alert`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertMessage {
    /// `raised`, `cleared`, `withdrawn` (the event it arose from was retracted), or `open` in
    /// the snapshot a stream starts with when it cannot resume.
    pub change: &'static str,
    pub alert: Alert,
    pub noticed_at: chrono::DateTime<chrono::Utc>,
}

type Events = BoxStream<'static, Result<Event, Infallible>>;

/// Server-sent events for agency systems. `stream=events` sends `event: journey_event` with the
/// recorded event as data and its position as id; `stream=alerts` sends `event: alert` with an
/// [`AlertMessage`]. Writers and coordinators receive only clients their agency may know about
/// (an open involvement, or a consent covering the `X-Purpose`), and never clients under a
/// restriction of processing; auditors and administrators receive every client. Reconnect with
/// `Last-Event-ID` to resume. Idle streams get a `: heartbeat` comment every 15 seconds.
#[utoipa::path(
    get, path = "/v1/subscriptions/feed", tag = "subscriptions", operation_id = "subscription_feed",
    params(
        FeedQuery,
        ("X-Purpose" = String, Header, description = "Why you process the events: `case_management`, `supervision`, `service_delivery` or `statistics`, as for a webhook; also `audit` or `subject_access` for auditors, data-protection officers and administrators. Never `emergency`: break-glass is a read of one client"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received, to resume after it"),
    ),
    responses(
        (status = 200, description = "A stream of server-sent events", content_type = "text/event-stream", body = String),
        (status = 400, description = "Malformed parameter (an unknown type, a bad `Last-Event-ID`), or no valid `X-Purpose` (purpose_required)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A role that may not subscribe, or another agency's alerts", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An agency no `[[agencies]]` entry declares (not_found, `field`: `agency`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn feed(
    State(state): State<AppState>,
    caller: Caller,
    context: RequestContext,
    headers: HeaderMap,
    query: Result<Query<FeedQuery>, ApiError>,
) -> Result<Sse<axum::response::sse::KeepAliveStream<Events>>, ApiError> {
    let logged = |returned| Logged {
        operation: Operation::Disclosure,
        client: None,
        action: "GET /v1/subscriptions/feed",
        returned,
    };
    let caller_expiry = caller.1;
    audit::require(
        &state,
        &caller,
        &context,
        &[
            Role::Writer,
            Role::Coordinator,
            Role::Auditor,
            Role::Dpo,
            Role::Admin,
        ],
        logged(None),
    )
    .await?;
    let purpose = audit::purpose_among(
        &state,
        &caller,
        &context,
        &feed_purposes(&caller),
        "a live feed",
        logged(None),
    )
    .await?;
    if headers.get_all("last-event-id").iter().nth(1).is_some() {
        // Logged, as a repeated purpose is: which of two resume points counts is no answer
        // the trail should have to guess.
        audit::log(&state, &caller, &context, Outcome::Denied, logged(None)).await?;
        return Err(ApiError::invalid_parameter(
            "Last-Event-ID",
            "send one Last-Event-ID header, not several",
        ));
    }
    // A parameter refused from here on is logged as a denied attempt, like a refused purpose.
    let Query(query) = audit::parameters(&state, &caller, &context, query, logged(None)).await?;
    let from_header = headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .map(str::trim)
                .map_err(|_| ApiError::invalid_parameter("Last-Event-ID", "not readable text"))
        })
        .transpose();
    let from_header = audit::parameters(&state, &caller, &context, from_header, logged(None))
        .await?
        .filter(|value| !value.is_empty());
    // Named as sent, for the answers that refuse it.
    let (last_event_id, resume_from) = match from_header {
        Some(value) => (Some(value), "Last-Event-ID"),
        None => (query.last_event_id.as_deref().map(str::trim), "lastEventId"),
    };
    // A filter the chosen stream does not take would be dropped silently, sending more than
    // was asked for: refused instead, like any parameter an endpoint does not take.
    let chosen = match query.stream.as_deref() {
        None | Some("events") => Ok((
            Stream::Events,
            [
                ("agency", query.agency.is_some()),
                ("kind", query.kind.is_some()),
            ],
        )),
        Some("alerts") => Ok((
            Stream::Alerts,
            [
                ("types", query.types.is_some()),
                ("after", query.after.is_some()),
            ],
        )),
        Some(other) => Err(ApiError::invalid_parameter(
            "stream",
            format!("`{other}` is not a stream; `events` or `alerts`"),
        )),
    }
    .and_then(
        |(stream, not_taken)| match not_taken.into_iter().find(|(_, given)| *given) {
            Some((name, _)) => Err(ApiError::invalid_parameter(
                name,
                format!(
                    "`{name}` is not a filter of the `{}` stream",
                    query.stream.as_deref().unwrap_or("events")
                ),
            )),
            None => Ok(stream),
        },
    );
    let stream = audit::parameters(&state, &caller, &context, chosen, logged(None)).await?;
    let events = match stream {
        Stream::Events => {
            let agency = (!reads_all_agencies(&caller)).then(|| caller.0.agency.clone());
            let parsed = types(query.types.as_deref(), agency.is_some()).and_then(|chosen| {
                let after = match last_event_id {
                    Some(id) => extract::position(
                        resume_from,
                        id.parse::<u64>().map_err(|_| {
                            ApiError::invalid_parameter(
                                resume_from,
                                "a journey event stream's ids are positions (whole numbers)",
                            )
                        })?,
                    )?,
                    None => query
                        .after
                        .unwrap_or_else(|| *state.journeys.log().head().borrow()),
                };
                Ok((chosen, after))
            });
            let (types, after) =
                audit::parameters(&state, &caller, &context, parsed, logged(None)).await?;
            let scope = Scope {
                types,
                agency,
                purpose,
            };
            let name = if last_event_id.is_some() {
                resume_from
            } else {
                "after"
            };
            let within = within_feed(&state, after, name).await;
            audit::parameters(&state, &caller, &context, within, logged(None)).await?;
            audit::log(&state, &caller, &context, Outcome::Allowed, logged(None)).await?;
            journey_events(state.clone(), caller, context, scope, after)
        }
        Stream::Alerts => {
            // The same readers as `GET /v1/alerts`: coordinators, not agency systems.
            audit::require(
                &state,
                &caller,
                &context,
                &[Role::Coordinator, Role::Auditor, Role::Dpo, Role::Admin],
                logged(None),
            )
            .await?;
            let filter = alert_filter(
                &state,
                &caller,
                &AlertQuery {
                    agency: query.agency.clone(),
                    kind: query.kind.clone(),
                    client_id: None,
                    status: None,
                    min_position: None,
                },
            );
            let filter = audit::parameters(&state, &caller, &context, filter, logged(None)).await?;
            if !reads_all_agencies(&caller)
                && filter.agency.as_deref() != Some(caller.0.agency.as_str())
            {
                audit::log(&state, &caller, &context, Outcome::Denied, logged(None)).await?;
                return Err(ApiError::new(
                    crate::Code::Forbidden,
                    format!(
                        "agency `{}` may follow the alerts it is expected to act on, not those of another agency",
                        caller.0.agency
                    ),
                ));
            }
            audit::log(&state, &caller, &context, Outcome::Allowed, logged(None)).await?;
            alert_notices(state.clone(), caller, context, filter, last_event_id)
        }
    };
    let mut stopping = state.stopping.clone();
    // A token's stream ends when the token expires: what the caller may receive was decided by
    // an authentication that no longer holds. Its system reconnects with a fresh token, from
    // the last event it received.
    let expires = caller_expiry;
    let events = events
        .take_until(async move {
            let expired = async {
                match expires {
                    Some(at) => {
                        let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(left).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => {}
                () = expired => {}
            }
        })
        .boxed();
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")))
}

/// The type filter, each entry checked against the catalogue, and, for an agency's stream,
/// against what an agency is ever sent (as a webhook's types are).
fn types(
    list: Option<&str>,
    for_agency: bool,
) -> Result<std::collections::BTreeSet<String>, ApiError> {
    let mut types = std::collections::BTreeSet::new();
    for pattern in list
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|pattern| !pattern.is_empty())
    {
        if !is_known_type_pattern(pattern) {
            return Err(ApiError::invalid_parameter(
                "types",
                format!(
                    "`{pattern}` is not an event type in the catalogue, nor a family such as `job.*`"
                ),
            ));
        }
        if for_agency && !reaches_agencies_pattern(pattern) {
            return Err(ApiError::invalid_parameter(
                "types",
                format!(
                    "`{pattern}` is never sent to an agency's stream: a restriction and its \
                     lifting are the data-protection officer's decisions, and an agency learns of \
                     a restriction from the `403 restricted` its reads get"
                ),
            ));
        }
        types.insert(pattern.to_owned());
    }
    Ok(types)
}

/// Logs a batch about to be sent, with an entry for each client the stream names for the first
/// time lately (see [`NamedClients`]); false if it could not be logged (the stream then ends
/// rather than disclose unlogged).
async fn logged_batch(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    returned: Option<String>,
    per_client: Vec<(ClientId, Option<String>)>,
) -> bool {
    let logged = Logged {
        operation: Operation::Disclosure,
        client: None,
        action: "GET /v1/subscriptions/feed",
        returned,
    };
    audit::log_spanning(state, caller, context, logged, per_client)
        .await
        .is_ok()
}

/// How long a recipient's streams go before they name again, in an entry of their own, the
/// clients they keep sending.
const RENAME_AFTER: Duration = Duration::from_secs(3600);
/// The most clients remembered as named for one recipient and stream; past it, naming starts
/// afresh.
const MAX_NAMED: usize = 100_000;

/// The clients each recipient (a credential with a stated purpose, for journey events or for
/// alerts) has been named for lately, across all its streams. Every batch a stream sends has its
/// entry; a client gets an entry of their own (so that their trail and subject access report
/// show who receives their data, and why) in the first batch that sends the recipient their
/// data, and again at least once an hour while its streams go on sending it. An entry per client and batch, or per client and
/// stream, would be one per event and subscriber on a busy feed.
#[derive(Default)]
pub struct NamedRecipients(std::sync::Mutex<HashMap<Recipient, NamedClients>>);

/// Who receives a stream's data and why: its credential, the purpose it stated, and whether it
/// follows journey events or alerts.
type Recipient = (String, String, &'static str);

fn recipient(caller: &Caller, context: &RequestContext, things: &'static str) -> Recipient {
    (
        caller.0.id.clone(),
        context.purpose.clone().unwrap_or_default(),
        things,
    )
}

/// The two streams the live feed offers.
enum Stream {
    Events,
    Alerts,
}

impl NamedRecipients {
    /// [`NamedClients::fresh`] for the streams of `things` that `caller` follows for the purpose
    /// `context` states.
    fn fresh(
        &self,
        caller: &Caller,
        context: &RequestContext,
        things: &'static str,
        items: impl IntoIterator<Item = (ClientId, String)>,
    ) -> Vec<(ClientId, Option<String>)> {
        let now = Instant::now();
        let recipient = recipient(caller, context, things);
        let mut recipients = self.lock();
        if !recipients.contains_key(&recipient) {
            // A new recipient: forget those that have had nothing sent within the hour, so
            // that recipients that come and go (tokens, say) are not remembered for ever.
            recipients.retain(|_, named| now.duration_since(named.since) < RENAME_AFTER);
        }
        recipients
            .entry(recipient)
            .or_insert_with(|| NamedClients::new(now))
            .fresh(now, things, items)
    }

    /// Undoes [`Self::fresh`] for `named` when their entries could not be written: the next
    /// batch that sends their data names them again.
    fn forget(
        &self,
        caller: &Caller,
        context: &RequestContext,
        things: &'static str,
        named: &[(ClientId, Option<String>)],
    ) {
        let recipient = recipient(caller, context, things);
        if let Some(clients) = self.lock().get_mut(&recipient) {
            for (client, _) in named {
                clients.clients.remove(client);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Recipient, NamedClients>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The clients one recipient has been named for lately (see [`NamedRecipients`]).
struct NamedClients {
    since: Instant,
    clients: HashSet<ClientId>,
}

impl NamedClients {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            clients: HashSet::new(),
        }
    }

    /// Of a batch's `items` (client and thing id), those of clients not named lately, grouped
    /// per client (see [`audit::by_client`]); they count as named from `now` on.
    fn fresh(
        &mut self,
        now: Instant,
        things: &str,
        items: impl IntoIterator<Item = (ClientId, String)>,
    ) -> Vec<(ClientId, Option<String>)> {
        if now.duration_since(self.since) >= RENAME_AFTER || self.clients.len() >= MAX_NAMED {
            self.clients.clear();
            self.since = now;
        }
        let fresh = audit::by_client(
            things,
            items
                .into_iter()
                .filter(|(client, _)| !self.clients.contains(client)),
        );
        self.clients.extend(fresh.iter().map(|(client, _)| *client));
        fresh
    }
}

/// The purposes a caller may follow the live feed for: those of a standing subscription (as a
/// webhook's), and `audit` or `subject_access` for a reader of every client (an auditor, a
/// data-protection officer, an administrator). `emergency` is a break-glass read of one client,
/// never a stream.
pub fn feed_purposes(caller: &Caller) -> Vec<Purpose> {
    let reads_every_client = [Role::Auditor, Role::Dpo, Role::Admin]
        .iter()
        .any(|role| caller.0.roles.contains(role));
    Purpose::ALL
        .into_iter()
        .filter(|purpose| {
            travelmap_webhooks::registration::purpose_allowed(*purpose)
                || (reads_every_client
                    && matches!(purpose, Purpose::Audit | Purpose::SubjectAccess))
        })
        .collect()
}

fn journey_events(
    state: AppState,
    caller: Caller,
    context: RequestContext,
    scope: Scope,
    after: u64,
) -> Events {
    let auditing = audit::audits(&caller, scope.purpose);
    let subscription = state.hub.subscribe(scope, after);
    stream::unfold(
        (subscription, state, caller, context, LINGER),
        move |(mut subscription, state, caller, context, linger)| async move {
            let Batch { events, restricted } = match subscription.next_batch_within(linger).await {
                Ok(Some(batch)) => batch,
                Ok(None) => return None,
                Err(error) => {
                    tracing::error!(%error, "a feed subscription failed");
                    return None;
                }
            };
            let logging = std::time::Instant::now();
            let per_client = state.named.fresh(
                &caller,
                &context,
                "events",
                events
                    .iter()
                    .map(|event| (event.draft.client_id, event.draft.id.to_string())),
            );
            let returned = audit::returned_events(&events);
            if !logged_batch(&state, &caller, &context, returned, per_client.clone()).await {
                state.named.forget(&caller, &context, "events", &per_client);
                return None;
            }
            // A busy audit trail (many subscribers on a busy feed) makes the stream gather for
            // longer, so that it writes fewer, larger entries; an idle one keeps it prompt.
            let linger = (logging.elapsed() * 4).clamp(LINGER, MAX_LINGER);
            let sent: Vec<Result<Event, Infallible>> = events
                .iter()
                .map(|event| {
                    // As in the global feed: a restricted client's events keep their place, with
                    // their personal fields withheld unless an auditor audits.
                    let recorded = if restricted.contains(&event.draft.client_id) && !auditing {
                        Recorded::withheld(event)
                    } else {
                        Recorded::from(event)
                    };
                    Ok(Event::default()
                        .event("journey_event")
                        .id(event.meta.position.to_string())
                        .data(sse_json(&recorded)))
                })
                .collect();
            Some((
                stream::iter(sent),
                (subscription, state, caller, context, linger),
            ))
        },
    )
    .flatten()
    .boxed()
}

fn admits(filter: &AlertFilter, alert: &Alert) -> bool {
    filter.kind.is_none_or(|kind| alert.kind == kind)
        && filter
            .agency
            .as_deref()
            .is_none_or(|agency| alert.agency == agency)
}

/// One notice to send: its stream id, the change, the alert and when it was noticed.
type Outgoing = (String, &'static str, Alert, chrono::DateTime<chrono::Utc>);

fn alert_event((id, change, alert, noticed_at): Outgoing) -> Result<Event, Infallible> {
    let event = Event::default().event("alert");
    let event = if id.is_empty() { event } else { event.id(id) };
    Ok(event.data(sse_json(&AlertMessage {
        change,
        alert,
        noticed_at,
    })))
}

/// A message's JSON for an event's `data` field. Serialised to a string first: `json_data`
/// writes serde's output piece by piece through a writer that scans every piece for line
/// breaks, which was a tenth of all CPU with 200 subscribers following a busy feed. Compact
/// JSON holds no line break, so the field is the same.
fn sse_json(message: &impl serde::Serialize) -> String {
    serde_json::to_string(message).expect("stream messages serialise")
}

fn outgoing(epoch: &str, notice: AlertNotice) -> Outgoing {
    (
        format!("{epoch}-{}", notice.seq),
        notice.change.as_str(),
        notice.alert,
        notice.noticed_at,
    )
}

fn alert_notices(
    state: AppState,
    caller: Caller,
    context: RequestContext,
    filter: AlertFilter,
    last_event_id: Option<&str>,
) -> Events {
    let coordination = state.coordination.clone();
    let epoch = coordination.epoch().to_owned();
    let resumed = last_event_id
        .and_then(|id| id.split_once('-'))
        .filter(|(their_epoch, _)| *their_epoch == epoch)
        .and_then(|(_, seq)| seq.parse::<u64>().ok())
        .and_then(|seq| coordination.notices_after(seq));
    // Resuming within this run from kept notices, or else starting from the open alerts.
    let (first, receiver): (Vec<Outgoing>, broadcast::Receiver<AlertNotice>) = match resumed {
        Some((kept, receiver)) => (
            kept.into_iter()
                .filter(|notice| admits(&filter, &notice.alert))
                // Noticed while the client was restricted, or kept from before a restriction
                // that is in force: not to be processed.
                .filter(|notice| {
                    !notice.while_restricted && !coordination.is_restricted(notice.alert.client_id)
                })
                .map(|notice| outgoing(&epoch, notice))
                .collect(),
            receiver,
        ),
        None => {
            let (seq, receiver) = coordination.snapshot_point();
            let now = coordination.now();
            let open = coordination.alerts(&filter);
            let count = open.len();
            // Only the last snapshot message carries the id: a subscriber cut off halfway
            // through has no id to resume from, and gets the whole snapshot again.
            (
                open.into_iter()
                    .enumerate()
                    .map(|(n, alert)| {
                        let id = if n + 1 == count {
                            format!("{epoch}-{seq}")
                        } else {
                            String::new()
                        };
                        (id, "open", alert, now)
                    })
                    .collect(),
                receiver,
            )
        }
    };
    stream::unfold(
        (Some(first), receiver, state, caller, context, filter, epoch),
        |(mut first, mut receiver, state, caller, context, filter, epoch)| async move {
            let batch: Vec<Outgoing> = match first.take() {
                Some(first) => first,
                None => loop {
                    match receiver.recv().await {
                        // Not a restricted client's: their alerts are not to be processed
                        // (the notice that withdraws them on restriction included). An erased
                        // client's are sent: the `withdrawn` an erasure causes is the last word
                        // on them, and subscribers must hear it.
                        Ok(notice)
                            if admits(&filter, &notice.alert)
                                && !notice.while_restricted
                                && !state.coordination.is_restricted(notice.alert.client_id) =>
                        {
                            break vec![outgoing(&epoch, notice)];
                        }
                        Ok(_) => {}
                        // Fell behind the kept backlog: end the stream; the subscriber
                        // reconnects with its Last-Event-ID and resumes or gets a snapshot.
                        Err(_) => return None,
                    }
                },
            };
            if !batch.is_empty() {
                let ids: Vec<String> = batch
                    .iter()
                    .map(|(_, _, alert, _)| alert.id.to_string())
                    .collect();
                let returned = audit::returned_named("alerts", &ids);
                let per_client = state.named.fresh(
                    &caller,
                    &context,
                    "alerts",
                    batch
                        .iter()
                        .map(|(_, _, alert, _)| (alert.client_id, alert.id.to_string())),
                );
                if !logged_batch(&state, &caller, &context, returned, per_client.clone()).await {
                    state.named.forget(&caller, &context, "alerts", &per_client);
                    return None;
                }
            }
            Some((
                stream::iter(batch.into_iter().map(alert_event).collect::<Vec<_>>()),
                (first, receiver, state, caller, context, filter, epoch),
            ))
        },
    )
    .flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u128) -> ClientId {
        ClientId(uuid::Uuid::from_u128(n))
    }

    fn items(pairs: &[(u128, &str)]) -> Vec<(ClientId, String)> {
        pairs
            .iter()
            .map(|(n, id)| (client(*n), (*id).to_owned()))
            .collect()
    }

    #[test]
    fn a_stream_names_each_client_once_an_hour_with_all_it_sent_of_theirs() {
        let start = Instant::now();
        let mut named = NamedClients::new(start);
        let first = named.fresh(start, "events", items(&[(1, "a"), (2, "b"), (1, "c")]));
        assert_eq!(
            first,
            vec![
                (client(1), Some("a,c".to_owned())),
                (client(2), Some("b".to_owned()))
            ]
        );
        // Later batches name only clients not named lately.
        let later = start + RENAME_AFTER / 2;
        let second = named.fresh(later, "events", items(&[(2, "d"), (3, "e")]));
        assert_eq!(second, vec![(client(3), Some("e".to_owned()))]);
        assert!(named.fresh(later, "events", items(&[(1, "f")])).is_empty());
        // An hour on, the stream names them again.
        let again = named.fresh(start + RENAME_AFTER, "alerts", items(&[(1, "g")]));
        assert_eq!(again, vec![(client(1), Some("alerts g".to_owned()))]);
    }
}
