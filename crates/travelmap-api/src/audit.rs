//! Writing the audit trail from the handlers. Every operation on a client's personal data is
//! logged (allowed or denied) before its answer leaves: if the entry cannot be written, the
//! operation fails rather than go unlogged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use travelmap_domain::ClientId;
use travelmap_domain::RecordedEvent;
use travelmap_domain::audit::{
    AuditEntry, AuditRecord, Operation, Outcome, returned_ids, returned_things,
};
use travelmap_domain::payloads::Purpose;
use travelmap_projections::Access;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, Code};

/// What a request says about itself for the audit trail: its id (set by the request-id layer),
/// and the purpose and justification the caller states.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: Option<String>,
    pub purpose: Option<String>,
    /// The stated purpose as the trail keeps it: one from the list by its name; anything else,
    /// which may be any text a caller typed (personal data included), as [`UNLISTED_PURPOSE`],
    /// since the purpose enters the hash chain as it is and could not be blanked later (and a
    /// digest of short text can be confirmed by guessing).
    pub recorded_purpose: Option<String>,
    pub justification: Option<String>,
    /// What is wrong with a read's purpose or justification headers (sent twice, not UTF-8, a
    /// justification too long): the read is refused when it asks for its purpose, or for the
    /// caller's role where it states none, so that the refusal is logged like any other, under
    /// the caller and the client (see [`Self::purpose`] and [`require`]). A break-glass attempt
    /// with a reason too long leaves its trace too.
    pub refused: Option<ApiError>,
}

/// How the trail records a stated purpose that is not on the list.
pub const UNLISTED_PURPOSE: &str = "unlisted";

/// The longest justification kept; a longer one is refused rather than cut.
pub const MAX_JUSTIFICATION_CHARS: usize = 2000;

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // UTF-8, not only ASCII: a justification is written in the caseworker's language. Bytes
        // that are not UTF-8 are refused rather than taken for no header at all.
        let header = |name: &'static str| -> Result<Option<&str>, ApiError> {
            let Some(value) = parts.headers.get(name) else {
                return Ok(None);
            };
            let text = std::str::from_utf8(value.as_bytes()).map_err(|_| {
                ApiError::invalid_parameter(name, format!("{name} must be UTF-8 text"))
            })?;
            Ok(Some(text.trim()).filter(|text| !text.is_empty()))
        };
        // Bounded, so that a header cannot flood the log.
        let request_id = header("X-Request-Id")?.map(|id| id.chars().take(200).collect());
        let repeated = ["X-Purpose", "X-Justification"]
            .into_iter()
            .find(|name| parts.headers.get_all(*name).iter().nth(1).is_some());
        let justification = header("X-Justification").and_then(|text| match text {
            Some(text) if text.chars().count() > MAX_JUSTIFICATION_CHARS => {
                Err(ApiError::invalid_parameter(
                    "X-Justification",
                    format!("a justification is at most {MAX_JUSTIFICATION_CHARS} characters"),
                ))
            }
            text => Ok(text),
        });
        let refused = repeated
            .map(repeated_header)
            .or_else(|| justification.clone().err())
            .or_else(|| header("X-Purpose").err());
        if let Some(refusal) = refused {
            // A read states its purpose, and a refused read is logged by the handler, which
            // knows the caller and the client; a write states none, so it is refused here.
            if parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD {
                // The purpose, when it was sent once and readable, is kept for the entry of the
                // refusal; otherwise it is recorded as `unlisted`.
                let (purpose, recorded_purpose) = match (repeated, header("X-Purpose")) {
                    // Sent, but not once or not as text: stated, though not as one of the list.
                    (Some("X-Purpose"), _) | (_, Err(_)) => {
                        (None, Some(UNLISTED_PURPOSE.to_owned()))
                    }
                    (_, Ok(purpose)) => (
                        purpose.map(str::to_owned),
                        purpose.map(|stated| recorded(Some(stated))),
                    ),
                };
                return Ok(Self {
                    request_id,
                    recorded_purpose,
                    purpose,
                    justification: None,
                    refused: Some(refusal),
                });
            }
            return Err(refusal);
        }
        let justification = justification?;
        let purpose = header("X-Purpose")?.map(str::to_owned);
        // A purpose not on the list is recorded as `unlisted` (see `recorded_purpose`); worked
        // out once here, not for every entry a read writes.
        let recorded_purpose = purpose.as_deref().map(|stated| recorded(Some(stated)));
        Ok(Self {
            request_id,
            purpose,
            recorded_purpose,
            justification: justification.map(str::to_owned),
            refused: None,
        })
    }
}

/// A stated purpose as the trail keeps it (see [`RequestContext::recorded_purpose`]).
fn recorded(stated: Option<&str>) -> String {
    match stated {
        Some(stated) if parse_purpose(stated).is_some() => stated.to_owned(),
        _ => UNLISTED_PURPOSE.to_owned(),
    }
}

fn repeated_header(name: &'static str) -> ApiError {
    ApiError::invalid_parameter(name, format!("send one {name} header, not several"))
}

/// One entry's worth of facts about an operation.
#[derive(Debug, Clone)]
pub struct Logged<'a> {
    pub operation: Operation,
    pub client: Option<ClientId>,
    pub action: &'a str,
    pub returned: Option<String>,
}

impl RequestContext {
    pub fn record(&self, caller: &Caller, outcome: Outcome, logged: Logged<'_>) -> AuditRecord {
        AuditRecord {
            at: now(),
            credential: caller.0.id.clone(),
            agency: caller.0.agency.clone(),
            actor: None,
            operation: logged.operation,
            client_id: logged.client,
            purpose: self.recorded_purpose.clone(),
            justification: self.justification.clone(),
            request_id: self.request_id.clone(),
            outcome,
            action: logged.action.to_owned(),
            returned: logged.returned,
        }
    }
}

/// Writes entries, turning a failure into an answer that discloses nothing.
pub async fn write(state: &AppState, records: Vec<AuditRecord>) -> Result<(), ApiError> {
    if records.is_empty() {
        return Ok(());
    }
    state.audit.append(records).await.map_err(|error| {
        tracing::error!(%error, "could not write the audit trail");
        if matches!(error, travelmap_store::Error::TrailReplaced) {
            return ApiError::new(
                Code::Unavailable,
                "the audit trail cannot be written until the service is restarted (logged for \
                 the operator), so nothing is done",
            );
        }
        ApiError::new(
            Code::Unavailable,
            "the audit trail cannot be written just now, so nothing is done; retry shortly",
        )
    })?;
    Ok(())
}

/// How long the entries of what happened whatever the trail did (a decision carried out, a
/// resent write answered with its receipts) are retried before the request is answered `503`.
pub const RECORDING_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes an operation's entries in one attempt: a write's beside its commit, which the log
/// makes only if they are written (see `Journeys::record_logged`), or a decision's once it is
/// carried out. The entries come back if it fails, for [`settle_recorded`] to retry once the
/// client's turn is given up, so that a trail in trouble does not hold up every write of the
/// same clients (nor, for a write, the log's other commits).
pub async fn try_recorded(
    state: &AppState,
    records: Vec<AuditRecord>,
    written: Option<travelmap_store::EntriesSignal>,
) -> Result<(), Unrecorded> {
    if records.is_empty() {
        if let Some(written) = written {
            written.written();
        }
        return Ok(());
    }
    let since = tokio::time::Instant::now();
    let attempt = match &written {
        // Told by the trail's writer itself, as soon as they are committed; given up no later
        // than the log gives up waiting for them, since the write is refused then anyway.
        Some(signal) => tokio::time::timeout(
            travelmap_store::handshake::ENTRIES_PATIENCE,
            state
                .audit
                .append_signalling(records.clone(), signal.clone()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(travelmap_store::Error::Unavailable(
                "the audit trail did not answer in time".to_owned(),
            ))
        }),
        // What these entries log happened whatever the trail does: the attempt is waited for,
        // since an entry still queued when given up would be written again by the retries.
        None => state.audit.append(records.clone()).await,
    };
    match attempt {
        Ok(_) => Ok(()),
        // The trail's writer told them written just before the attempt was given up: they
        // are, and the log commits the events.
        Err(_) if written.as_ref().is_some_and(|signal| signal.give_up()) => Ok(()),
        Err(error) => {
            tracing::warn!(%error, "could not write an operation's audit entries");
            Err(Unrecorded {
                records,
                since,
                error,
            })
        }
    }
}

/// A write's entries [`try_recorded`] could not write: when it began trying, and why it failed.
pub struct Unrecorded {
    records: Vec<AuditRecord>,
    since: tokio::time::Instant,
    error: travelmap_store::Error,
}

/// Settles what [`try_recorded`] left where what the entries log happened whatever the trail
/// did (a decision carried out; a write all of whose events were recorded before, answered
/// with their receipts), so the entries must follow it. They are retried until
/// [`RECORDING_PATIENCE`] has passed since the first attempt began; past that the request is
/// answered `503` and they are handed to [`Deferred`], which goes on trying. (A first attempt
/// that a store which stopped answering gave up on after its own timeout has used the patience
/// up: the request is not kept waiting for another such attempt, nor is a server told to
/// stop.)
pub async fn settle_recorded(
    state: &AppState,
    tried: Result<(), Unrecorded>,
) -> Result<(), ApiError> {
    let Err(Unrecorded {
        records,
        since,
        error,
    }) = tried
    else {
        return Ok(());
    };
    let patience = RECORDING_PATIENCE.saturating_sub(since.elapsed());
    let attempt = if patience.is_zero() {
        Err((error, records))
    } else {
        travelmap_store::append_patiently(state.audit.as_ref(), records, patience).await
    };
    let Err((error, records)) = attempt else {
        return Ok(());
    };
    let lost = matches!(error, travelmap_store::Error::TrailReplaced);
    state
        .deferred
        .keep_trying(state.audit.clone(), records, &error);
    if lost {
        return Err(ApiError::new(
            Code::Unavailable,
            "the audit trail cannot be written until the service is restarted (logged for the \
             operator); the events may have been recorded without their entries",
        ));
    }
    Err(ApiError::new(
        Code::Unavailable,
        "the audit trail cannot be written just now; the events may have been recorded, and if \
         so their entries are written as soon as the trail can be: retry the request, which is \
         answered with the original receipts once recorded",
    ))
}

/// How often deferred entries are tried again while the service runs.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How often deferred entries are tried again once the service is stopping.
const RETRY_WHILE_STOPPING: std::time::Duration = std::time::Duration::from_millis(250);

/// Entries of decisions carried out (and of resent writes answered with their receipts) that
/// the trail refused for longer than a request waits. Each set is retried in the background
/// until written. When the service stops, [`Deferred::drain`]
/// tries them again at once and waits for them (up to a limit) before the store is closed:
/// without that, a stop in the minutes after a trail failure would lose entries of events that
/// are recorded.
#[derive(Default)]
pub struct Deferred {
    retries: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// The events each set still waiting names, by set, for the log if they are given up.
    waiting: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Vec<String>>>>,
    next: std::sync::atomic::AtomicU64,
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Deferred {
    /// Appends `records` for a decision already carried out (keys destroyed, a shredding or an
    /// erasure recorded), retrying for up to [`RECORDING_PATIENCE`]; if the trail still refuses
    /// them, hands them on to [`Self::keep_trying`] and returns the error, for the caller to
    /// report: no later run would find the decision to be made again.
    pub async fn append_or_keep_trying(
        &self,
        audit: &std::sync::Arc<dyn travelmap_store::AuditLog>,
        records: Vec<AuditRecord>,
    ) -> Result<(), travelmap_store::Error> {
        match travelmap_store::append_patiently(audit.as_ref(), records, RECORDING_PATIENCE).await {
            Ok(_) => Ok(()),
            Err((error, records)) => {
                self.keep_trying(audit.clone(), records, &error);
                Err(error)
            }
        }
    }

    /// Retries `records` in the background until the trail takes them.
    pub fn keep_trying(
        &self,
        audit: std::sync::Arc<dyn travelmap_store::AuditLog>,
        records: Vec<AuditRecord>,
        error: &travelmap_store::Error,
    ) {
        let named: Vec<String> = records
            .iter()
            .filter_map(|record| record.returned.clone())
            .collect();
        // A trail whose file is gone takes nothing until a restart: no use retrying.
        if matches!(error, travelmap_store::Error::TrailReplaced) {
            tracing::error!(%error, events = ?named, "audit entries cannot be written until the service is restarted (the trail's file is gone): what they log was done without them");
            return;
        }
        tracing::error!(%error, events = ?named, "a write's audit entries are not written yet; retrying in the background");
        let set = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.waiting
            .lock()
            .expect("deferred entries lock")
            .insert(set, named.clone());
        let waiting = self.waiting.clone();
        let mut stopping = self.stopping.subscribe();
        let mut retries = self.retries.lock().expect("deferred retries lock");
        // Sets written since are let go of here, so the handles do not pile up while the
        // service runs.
        while retries.try_join_next().is_some() {}
        retries.spawn(async move {
                loop {
                    let pause = if *stopping.borrow_and_update() {
                        RETRY_WHILE_STOPPING
                    } else {
                        RETRY_EVERY
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopping.changed() => {}
                    }
                    match audit.append(records.clone()).await {
                        Ok(_) => {
                            tracing::info!(events = ?named, "a write's delayed audit entries are written");
                            waiting.lock().expect("deferred entries lock").remove(&set);
                            return;
                        }
                        // Given up in `drain`, which logs what is still waiting.
                        Err(travelmap_store::Error::Closed) => return,
                        // A trail whose file is gone takes nothing until a restart.
                        Err(error @ travelmap_store::Error::TrailReplaced) => {
                            tracing::error!(%error, events = ?named, "audit entries cannot be written until the service is restarted (the trail's file is gone): what they log was done without them");
                            waiting.lock().expect("deferred entries lock").remove(&set);
                            return;
                        }
                        Err(error) => {
                            tracing::error!(%error, events = ?named, "a write's audit entries are still not written");
                        }
                    }
                }
            });
    }

    /// Tries every deferred set again at once and waits up to `patience` for them; logs the
    /// events of any set still not written then. Called when the service stops, before its
    /// store is closed.
    pub async fn drain(&self, patience: std::time::Duration) {
        let mut retries = std::mem::take(&mut *self.retries.lock().expect("deferred retries lock"));
        if retries.is_empty() {
            return;
        }
        let _ = self.stopping.send(true);
        tracing::info!(
            sets = retries.len(),
            "writing the audit entries deferred by a trail failure before stopping"
        );
        let finished = tokio::time::timeout(patience, async {
            while retries.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            retries.abort_all();
        }
        for named in self.waiting.lock().expect("deferred entries lock").values() {
            tracing::error!(events = ?named, "the service stopped before a write's audit entries could be written");
        }
    }
}

/// Logs one operation, with its outcome.
pub async fn log(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    outcome: Outcome,
    logged: Logged<'_>,
) -> Result<(), ApiError> {
    write(state, vec![context.record(caller, outcome, logged)]).await
}

/// Logs a read that spans clients (a feed page, a caseload, alerts): one entry for the read as a
/// whole, and one for each client it named, saying what of theirs it returned, so that each
/// client's own trail and subject access report show who received their data. All are written
/// in one commit, before the answer leaves.
pub async fn log_spanning(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    whole: Logged<'_>,
    per_client: Vec<(ClientId, Option<String>)>,
) -> Result<(), ApiError> {
    write(state, spanning_records(caller, context, whole, per_client)).await
}

/// The entries [`log_spanning`] writes: the whole read first, then each client's.
pub fn spanning_records(
    caller: &Caller,
    context: &RequestContext,
    whole: Logged<'_>,
    per_client: Vec<(ClientId, Option<String>)>,
) -> Vec<AuditRecord> {
    let mut records = Vec::with_capacity(per_client.len() + 1);
    records.push(context.record(caller, Outcome::Allowed, whole.clone()));
    records.extend(per_client.into_iter().map(|(client, returned)| {
        context.record(
            caller,
            Outcome::Allowed,
            Logged {
                client: Some(client),
                returned,
                ..whole.clone()
            },
        )
    }));
    records
}

/// Groups the ids of `things` a read returned by the client they belong to, in the order each
/// client first appears, and names each client's share as [`returned_things`] does (events by
/// their ids alone, as [`returned_ids`]; other things prefixed with their name when few).
pub fn by_client(
    things: &str,
    items: impl IntoIterator<Item = (ClientId, String)>,
) -> Vec<(ClientId, Option<String>)> {
    grouped(items)
        .into_iter()
        .map(|(client, ids)| (client, returned_named(things, &ids)))
        .collect()
}

/// `items`' values grouped by key, each key once, in the order keys first appear.
fn grouped<K: Copy + Eq + std::hash::Hash, V>(
    items: impl IntoIterator<Item = (K, V)>,
) -> Vec<(K, Vec<V>)> {
    let mut groups: Vec<(K, Vec<V>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (key, value) in items {
        let at = *index.entry(key).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(value);
    }
    groups
}

/// Names the ids of `things` a read returned: events by their ids alone (as [`returned_ids`]),
/// other things (`alerts`) prefixed with their name when few, and many as their count and digest.
pub fn returned_named(things: &str, ids: &[String]) -> Option<String> {
    let named = returned_things(things, ids.iter().map(String::as_str));
    match named {
        Some(named) if ids.len() <= 10 && things != "events" => Some(format!("{things} {named}")),
        named => named,
    }
}

/// Corrections and retractions alter what was recorded; everything else is collected.
pub fn operation_of(submission: &travelmap_service::Submission) -> Operation {
    match submission.draft.event.event_type() {
        "event.corrected" | "event.retracted" => Operation::Alteration,
        _ => Operation::Collection,
    }
}

/// What a write records, for its entries: one per client and operation (see [`operation_of`]),
/// naming the events, in order of first appearance.
pub fn recorded_by_client(
    submissions: &[travelmap_service::Submission],
) -> Vec<(ClientId, Operation, Option<String>)> {
    grouped(submissions.iter().map(|submission| {
        let key = (submission.draft.client_id, operation_of(submission));
        (key, submission.draft.id.to_string())
    }))
    .into_iter()
    .map(|((client, operation), ids)| (client, operation, returned_named("events", &ids)))
    .collect()
}

/// The submission a refused write was about, when the refusal is logged: every refusal that
/// depends on what is stored (a closed record, a type the agency may not post or rectify, an
/// event a correction names that the client lacks, a version conflict, a taken id). Each tells
/// the sender something about the stream, so a run of them is what a review looks for: logged
/// as denied under the client, like a refused read. Refusals of the submission's own shape
/// (invalid data, an id repeated in the batch) say nothing about the store and are not logged.
pub fn denied_submission<'a>(
    error: &travelmap_service::Error,
    submissions: &'a [travelmap_service::Submission],
) -> Option<&'a travelmap_service::Submission> {
    use travelmap_service::Error as E;
    match error {
        // A dated fact is checked when deciding (so that a retry of a stored event is told
        // apart), but the refusal is of the submission's own content and tells nothing stored.
        E::Refused {
            source: travelmap_domain::journey::Error::FactAfterEvent(_),
            ..
        } => None,
        E::Refused { index, .. }
        | E::VersionConflict { index, .. }
        | E::DuplicateConflict { index, .. }
        | E::Unmatchable { index, .. } => submissions.get(*index),
        E::Store(travelmap_store::Error::ClientErased(client)) => submissions
            .iter()
            .find(|submission| submission.draft.client_id == *client),
        _ => None,
    }
}

/// What a read returned, for its entry: the ids of `events`.
pub fn returned_events(events: &[RecordedEvent]) -> Option<String> {
    let ids: Vec<String> = events
        .iter()
        .map(|event| event.draft.id.to_string())
        .collect();
    returned_ids(ids.iter().map(String::as_str))
}

/// What a read returned, for its entry: the clients it named, each once.
pub fn returned_clients(clients: impl IntoIterator<Item = ClientId>) -> Option<String> {
    let mut ids: Vec<String> = clients
        .into_iter()
        .map(|client| client.to_string())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    returned_named("clients", &ids)
}

/// Checks the caller's roles; a refusal is logged as a denied `logged` operation.
pub async fn require(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    roles: &[Role],
    logged: Logged<'_>,
) -> Result<(), ApiError> {
    if let Err(refused) = caller.require(roles) {
        log(state, caller, context, Outcome::Denied, logged).await?;
        return Err(refused);
    }
    // Headers refused when the request was read (a repeated purpose, a justification too long)
    // are refused here too, for reads that state no purpose: otherwise such a read would be
    // answered, and logged with a purpose or reason it was not given.
    if let Some(refused) = &context.refused {
        log(state, caller, context, Outcome::Denied, logged).await?;
        return Err(refused.clone());
    }
    Ok(())
}

/// The purpose the caller states (see [`RequestContext::purpose`]); a read without a valid one
/// is refused, and the refusal logged as a denied `logged` operation, like every other refusal.
pub async fn purpose(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    logged: Logged<'_>,
) -> Result<Purpose, ApiError> {
    match context.purpose() {
        Ok(purpose) => Ok(purpose),
        Err(refused) => {
            log(state, caller, context, Outcome::Denied, logged).await?;
            Err(refused)
        }
    }
}

/// Whether the caller may state an oversight purpose (`audit`, `subject_access`): an auditor,
/// the data-protection officer or an administrator, or the no-config local admin.
fn oversees(caller: &Caller) -> bool {
    caller.0.agency_kind.is_none()
        || caller
            .0
            .roles
            .iter()
            .any(|role| matches!(role, Role::Auditor | Role::Dpo | Role::Admin))
}

/// What a read returns, which decides the purposes it may be made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// One client's data (history, travel map).
    OneClient,
    /// Data of several clients, each named (the global feed, a caseload's clients, alerts,
    /// identifier searches).
    Clients,
    /// Counts that name no client (the caseload counts).
    Counts,
}

/// Why `purpose` is not one the caller may state for this read, if it is not: the oversight
/// purposes belong to the roles that oversee, break-glass is a read of one client, and
/// statistics are made of aggregates only (`GET /v1/statistics/outcomes`, the caseload counts),
/// never of a client's own data.
fn unfit(caller: &Caller, purpose: Purpose, reach: Reach) -> Option<String> {
    if let Some(why) = misfit(purpose, reach) {
        return Some(why.to_owned());
    }
    match purpose {
        Purpose::Audit | Purpose::SubjectAccess if !oversees(caller) => Some(format!(
            "X-Purpose: {} is stated by auditors, the data-protection officer and administrators",
            purpose.as_str()
        )),
        _ => None,
    }
}

/// Why `purpose` is stated for a read of this reach by no one, whatever their roles, if it is:
/// break-glass is a read of one client, and statistics are made of counts only.
fn misfit(purpose: Purpose, reach: Reach) -> Option<&'static str> {
    match purpose {
        Purpose::Emergency if reach != Reach::OneClient => {
            Some("break-glass (X-Purpose: emergency, with X-Justification) is a read of one client")
        }
        Purpose::Statistics if reach != Reach::Counts => Some(
            "statistics are given as aggregates only (GET /v1/statistics/outcomes); data that \
             names clients is not read for statistics",
        ),
        _ => None,
    }
}

/// Whether `purpose` may be stated for a read of this reach by someone (whose roles may still
/// rule it out); see [`misfit`].
pub fn fits(purpose: Purpose, reach: Reach) -> bool {
    misfit(purpose, reach).is_none()
}

/// How far the read of `path` reaches, for the reads that check their purpose against it.
pub fn reach_of(path: &str) -> Option<Reach> {
    match path {
        "/v1/clients/{client_id}/events" | "/v1/clients/{client_id}/travel-map" => {
            Some(Reach::OneClient)
        }
        "/v1/caseloads" => Some(Reach::Counts),
        "/v1/clients" | "/v1/alerts" | "/v1/agencies/{agency}/caseload" | "/v1/events" => {
            Some(Reach::Clients)
        }
        _ => None,
    }
}

/// Passes a read's parsed parameters on, logging the read as denied first if they were refused:
/// a read of a client refused for its parameters (an `as_of` in the future, an unknown
/// parameter) is still an attempt on that client's data, which the client's trail shows.
pub async fn parameters<T>(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    parsed: Result<T, ApiError>,
    logged: Logged<'_>,
) -> Result<T, ApiError> {
    if parsed.is_err() {
        log(state, caller, context, Outcome::Denied, logged).await?;
    }
    parsed
}

/// [`purpose`] for a read that spans clients (the global feed, caseloads, alerts, identifier
/// searches; `reach` says whether it names them): refuses, and logs as denied, a purpose unfit
/// for it (see [`unfit`]).
pub async fn spanning_purpose(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    reach: Reach,
    logged: Logged<'_>,
) -> Result<Purpose, ApiError> {
    let purpose = purpose(state, caller, context, logged.clone()).await?;
    if let Some(why) = unfit(caller, purpose, reach) {
        log(state, caller, context, Outcome::Denied, logged).await?;
        return Err(ApiError::new(Code::PurposeRequired, why).with_field("X-Purpose"));
    }
    Ok(purpose)
}

/// [`purpose`], refusing (and logging as denied) any purpose but `allowed`, which `what`
/// names in the answer ("an audit trail read").
pub async fn purpose_among(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    allowed: &[Purpose],
    what: &str,
    logged: Logged<'_>,
) -> Result<Purpose, ApiError> {
    let purpose = purpose(state, caller, context, logged.clone()).await?;
    if allowed.contains(&purpose) {
        return Ok(purpose);
    }
    log(state, caller, context, Outcome::Denied, logged).await?;
    let names: Vec<String> = allowed
        .iter()
        .map(|purpose| format!("X-Purpose: {}", purpose.as_str()))
        .collect();
    Err(ApiError::new(
        Code::PurposeRequired,
        format!("{what} is made only with {}", names.join(" or ")),
    )
    .with_field("X-Purpose"))
}

/// The server's clock to the microsecond (what the stores keep).
fn now() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap_or_else(|_| Utc::now())
}

/// The purpose named `stated`, if it is one of the list.
fn parse_purpose(stated: &str) -> Option<Purpose> {
    serde_json::from_value(serde_json::Value::String(stated.to_owned())).ok()
}

/// The purposes an audit trail read may state: it is made to audit, or for a subject access
/// request, and for nothing else.
pub const TRAIL_PURPOSES: &[Purpose] = &[Purpose::Audit, Purpose::SubjectAccess];
/// The one purpose of a subject access report.
pub const SUBJECT_ACCESS_PURPOSES: &[Purpose] = &[Purpose::SubjectAccess];
/// The one purpose of a statistics report.
pub const STATISTICS_PURPOSES: &[Purpose] = &[Purpose::Statistics];

/// The purposes a read may state in `X-Purpose`.
pub const PURPOSES: &str =
    "case_management, supervision, service_delivery, audit, statistics, subject_access, emergency";

impl RequestContext {
    /// The stated purpose: every read of personal data must give one from the fixed list.
    pub fn purpose(&self) -> Result<Purpose, ApiError> {
        if let Some(refusal) = &self.refused {
            return Err(refusal.clone());
        }
        let Some(stated) = &self.purpose else {
            return Err(ApiError::new(
                Code::PurposeRequired,
                format!("state why you read this data in the X-Purpose header: one of {PURPOSES}"),
            )
            .with_field("X-Purpose"));
        };
        parse_purpose(stated).ok_or_else(|| {
            ApiError::new(
                Code::PurposeRequired,
                format!("X-Purpose `{stated}` is not one of {PURPOSES}"),
            )
            .with_field("X-Purpose")
        })
    }
}

/// Whether the caller reads as an auditor auditing (role `auditor`, purpose `audit` or
/// `subject_access`): the one reader who sees a restricted client's personal fields in the
/// feeds that span clients.
pub fn audits(caller: &Caller, purpose: Purpose) -> bool {
    matches!(purpose, Purpose::Audit | Purpose::SubjectAccess)
        && caller.0.roles.contains(&Role::Auditor)
}

/// Passes a client read's result on, logging it first if it found no such client: the attempt
/// is what a review looks for (someone probing which client ids exist), though nothing was
/// returned.
pub async fn found<T>(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    read: Result<T, travelmap_service::Error>,
    logged: Logged<'_>,
) -> Result<T, ApiError> {
    match &read {
        // No agency has need-to-know of a client never recorded, so a scoped reader asking for
        // one is logged as refused: a reviewer looking for id probing filters on `denied`.
        Err(travelmap_service::Error::UnknownClient(_)) => {
            let outcome = if unscoped(caller) {
                Outcome::Allowed
            } else {
                Outcome::Denied
            };
            log(state, caller, context, outcome, logged).await?;
        }
        Err(travelmap_service::Error::NotYetRecorded(_)) => {
            log(state, caller, context, Outcome::Allowed, logged).await?;
        }
        _ => {}
    }
    Ok(read?)
}

/// Auditors and data-protection officers read for review, across clients.
fn is_reviewer(caller: &Caller) -> bool {
    caller
        .0
        .roles
        .iter()
        .any(|role| matches!(role, Role::Auditor | Role::Dpo))
}

/// Whether need-to-know does not scope the caller: a reviewer, or the no-config local admin
/// (no agency kind), one local user trying the service out.
fn unscoped(caller: &Caller) -> bool {
    is_reviewer(caller) || caller.0.agency_kind.is_none()
}

/// The action under which break-glass grants are logged.
pub const BREAK_GLASS: &str = "break-glass";

/// Decides whether the caller may read `client`'s data for the stated purpose, and logs a
/// refusal. Auditors and data-protection officers read for review and are not scoped; everyone
/// else needs an open involvement of their agency, a consent or legal basis covering it for the
/// purpose, or break-glass: purpose `emergency` with a written `X-Justification`, which grants
/// the credential access to this client for a limited time (logged as a `break-glass` entry and
/// listed for review). Returns the purpose.
pub async fn need_to_know(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    client: ClientId,
    logged: Logged<'_>,
) -> Result<Purpose, ApiError> {
    purpose(state, caller, context, logged.clone()).await?;
    let access = state.journeys.access(client).await?;
    need_to_know_given(state, caller, context, client, access.as_ref(), logged).await
}

/// [`need_to_know`] before a read waits for the projection (`min_position`): a caller who would
/// be refused is refused (and logged) at once, rather than after the wait, while one who would
/// be let in is decided on again, and any break-glass grant logged, when the read is made.
pub async fn need_to_know_before_waiting(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    client: ClientId,
    logged: Logged<'_>,
) -> Result<(), ApiError> {
    purpose(state, caller, context, logged.clone()).await?;
    let access = state.journeys.access(client).await?;
    decide(
        state,
        caller,
        context,
        client,
        access.as_ref(),
        logged,
        Grant::Later,
    )
    .await?;
    Ok(())
}

/// Whether a decision that lets a caller in under break-glass logs the grant now, or leaves that
/// to the decision made when the read is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grant {
    Now,
    Later,
}

/// [`need_to_know`] with the client's access already decided (by a read that loaded the client
/// anyway, see `Journeys::consult`).
pub async fn need_to_know_given(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    client: ClientId,
    access: Option<&Access>,
    logged: Logged<'_>,
) -> Result<Purpose, ApiError> {
    decide(state, caller, context, client, access, logged, Grant::Now).await
}

async fn decide(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    client: ClientId,
    access: Option<&Access>,
    logged: Logged<'_>,
    grant: Grant,
) -> Result<Purpose, ApiError> {
    let purpose = purpose(state, caller, context, logged.clone()).await?;
    if let Some(why) = unfit(caller, purpose, Reach::OneClient) {
        log(state, caller, context, Outcome::Denied, logged).await?;
        return Err(ApiError::new(Code::PurposeRequired, why).with_field("X-Purpose"));
    }
    let reviewer = is_reviewer(caller);
    // A restriction binds everyone, reviewers included: only an audit or a subject access
    // request may read restricted data, and only a reviewer makes those. It is told only to
    // those who could read the client otherwise: that a client contests their data or has a
    // legal claim is itself something an agency without need-to-know must not learn.
    let restricted = access.as_ref().is_some_and(|access| access.restricted);
    let refuse_restricted = || async {
        log(state, caller, context, Outcome::Denied, logged.clone()).await?;
        Err(ApiError::new(
            Code::Restricted,
            "processing of this client's data is restricted: it may be read only by an auditor or data-protection officer with X-Purpose audit or subject_access",
        ))
    };
    if unscoped(caller) {
        if restricted && !(reviewer && matches!(purpose, Purpose::Audit | Purpose::SubjectAccess)) {
            return refuse_restricted().await;
        }
        // Need-to-know does not scope this caller, so `emergency` grants nothing here; but a
        // read logged under it must still say why, as break-glass reads do, or the review of
        // emergency reads would list one with no reason.
        if purpose == Purpose::Emergency && context.justification.is_none() {
            return refuse_unexplained_emergency(state, caller, context, logged).await;
        }
        return Ok(purpose);
    }
    // A client id never recorded is refused like any client out of scope: that an id is known
    // here says its person has been in prison, which an agency without need-to-know must not
    // learn by trying ids. An emergency read with its reason still looks (the handler answers
    // 404 and logs the read, with the reason, as denied), but grants nothing: a grant taken
    // for an id before anyone recorded it would open the person's record once someone did,
    // without a reason given for them.
    let Some(access) = access else {
        if purpose == Purpose::Emergency && context.justification.is_some() {
            return Ok(purpose);
        }
        return refuse_out_of_scope(state, caller, context, purpose, logged).await;
    };
    if access.allows(&caller.0.agency, purpose) {
        if restricted {
            return refuse_restricted().await;
        }
        // An agency in scope needs no grant, but a read it states as an emergency says why, as
        // everyone's do (within a grant, the reason given for the grant counts).
        if purpose == Purpose::Emergency
            && context.justification.is_none()
            && !active_grant(state, caller, client).await?
        {
            return refuse_unexplained_emergency(state, caller, context, logged).await;
        }
        return Ok(purpose);
    }
    if purpose == Purpose::Emergency {
        if context.justification.is_some() {
            if restricted {
                return refuse_restricted().await;
            }
            if grant == Grant::Later {
                return Ok(purpose);
            }
            let grant = Logged {
                operation: Operation::Consultation,
                client: Some(client),
                action: BREAK_GLASS,
                returned: Some(grant_text(state.break_glass)),
            };
            log(state, caller, context, Outcome::Allowed, grant).await?;
            return Ok(purpose);
        }
        if active_grant(state, caller, client).await? {
            if restricted {
                return refuse_restricted().await;
            }
            return Ok(purpose);
        }
    }
    refuse_out_of_scope(state, caller, context, purpose, logged).await
}

/// For alerts asked of one client by an agency's coordinator when the agency has no alert of
/// the client, at all: refuses a caller whose agency has no reason to know the client, and
/// logs the attempt as denied under the client. An empty answer logged as allowed would put the
/// agency in the client's trail (and in a subject access answer) as having consulted them, and
/// an answer that differed for ids never recorded would tell which ids are known.
pub async fn alerts_of_client_in_scope(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    client: ClientId,
    purpose: Purpose,
    logged: Logged<'_>,
) -> Result<(), ApiError> {
    let access = state.journeys.access(client).await?;
    if access.is_some_and(|access| access.allows(&caller.0.agency, purpose)) {
        return Ok(());
    }
    log(state, caller, context, Outcome::Denied, logged).await?;
    Err(ApiError::new(
        Code::Forbidden,
        format!(
            "agency `{}` has no alert of this client to act on, and no open involvement with \
             the client or consent covering the purpose",
            caller.0.agency
        ),
    ))
}

/// Logs a read stated as an emergency without a written reason as denied, and says why.
async fn refuse_unexplained_emergency(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    logged: Logged<'_>,
) -> Result<Purpose, ApiError> {
    log(state, caller, context, Outcome::Denied, logged).await?;
    Err(ApiError::new(
        Code::PurposeRequired,
        "X-Purpose: emergency needs a written reason in X-Justification",
    )
    .with_field("X-Justification"))
}

/// Logs a read of a client outside the caller's scope as denied, and says why.
async fn refuse_out_of_scope(
    state: &AppState,
    caller: &Caller,
    context: &RequestContext,
    purpose: Purpose,
    logged: Logged<'_>,
) -> Result<Purpose, ApiError> {
    log(state, caller, context, Outcome::Denied, logged).await?;
    let hint = if purpose == Purpose::Emergency {
        "break-glass access needs a written reason in X-Justification (an earlier grant has expired or there is none)"
    } else {
        "in an emergency, read with X-Purpose: emergency and a written reason in X-Justification"
    };
    Err(ApiError::new(
        Code::Forbidden,
        format!(
            "agency `{}` has no open involvement with this client and no consent or legal basis covering `{}`; {hint}",
            caller.0.agency,
            serde_json::to_value(purpose)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default()
        ),
    ))
}

/// Whether the caller holds an unexpired break-glass grant for the client.
async fn active_grant(
    state: &AppState,
    caller: &Caller,
    client: ClientId,
) -> Result<bool, ApiError> {
    let entries = state
        .audit
        .read_client(client)
        .await
        .map_err(ApiError::store)?;
    let now = Utc::now();
    Ok(grants(&entries, state.break_glass)
        .into_iter()
        .any(|(grant, until)| {
            until > now
                && grant.record.credential == caller.0.id
                // A token's subject may act for another agency in its next token: the grant was
                // for the agency that justified it.
                && grant.record.agency == caller.0.agency
        }))
}

/// The break-glass grants among `entries` (a client's trail, or every break-glass entry), each
/// with when it ends as the trail records it: the length its entry states, or the end a server
/// started with a shorter setting recorded for it (see [`end_grants_a_setting_shortens`]), so
/// that raising the setting again neither revives nor lengthens a grant. Access and the review
/// both follow this: every process on one store agrees whatever its own setting, which decides
/// only how long the grants it gives last, and a reviewer sees the access a grant gave. A grant
/// whose entry states no length (logged before grants stated theirs) ends where `configured`
/// puts it.
pub fn grants(
    entries: &[AuditEntry],
    configured: std::time::Duration,
) -> Vec<(&AuditEntry, DateTime<Utc>)> {
    grants_ending(entries, |grant| {
        grant_until(
            grant,
            stated_length(grant).map_or(configured, |_| std::time::Duration::MAX),
        )
    })
}

/// The grants among `entries` with their ends: `end` of each grant's entry, or the earliest
/// end recorded for it early, whichever comes first.
fn grants_ending(
    entries: &[AuditEntry],
    end: impl Fn(&AuditEntry) -> DateTime<Utc>,
) -> Vec<(&AuditEntry, DateTime<Utc>)> {
    let (given, ended): (Vec<&AuditEntry>, Vec<&AuditEntry>) = entries
        .iter()
        .filter(|entry| entry.record.action == BREAK_GLASS)
        .partition(|entry| entry.record.outcome == Outcome::Allowed);
    // The earliest end each grant was given early, by the grant's `seq`.
    let mut ended_early: std::collections::HashMap<u64, DateTime<Utc>> = Default::default();
    for (until, grant) in ended.into_iter().filter_map(ended_at) {
        ended_early
            .entry(grant)
            .and_modify(|earliest| *earliest = (*earliest).min(until))
            .or_insert(until);
    }
    given
        .into_iter()
        .map(|grant| {
            let until = end(grant);
            let until = ended_early
                .get(&grant.seq)
                .map_or(until, |early| until.min(*early));
            (grant, until)
        })
        .collect()
}

/// How an entry ending a grant early states the end and the grant it ends (`returned`,
/// written by [`ending_text`]): `access until 2026-12-06T12:00:00.000000Z (grant 42 ended
/// early: break-glass grants now last 5 minutes)`.
fn ended_at(entry: &AuditEntry) -> Option<(DateTime<Utc>, u64)> {
    let text = entry
        .record
        .returned
        .as_deref()?
        .strip_prefix(ENDING_PREFIX)?;
    let (at, why) = text.split_once(" (grant ")?;
    let (grant, _) = why.split_once(' ')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    Some((at, grant.parse().ok()?))
}

/// How an entry ending a grant early begins.
const ENDING_PREFIX: &str = "access until ";

/// The `returned` of an entry ending the grant logged as entry `grant` at `until`, because
/// grants now last `configured`.
fn ending_text(until: DateTime<Utc>, grant: u64, configured: std::time::Duration) -> String {
    let length = grant_text(configured);
    let length = length.strip_prefix(GRANT_PREFIX).unwrap_or(&length);
    format!(
        "{ENDING_PREFIX}{} (grant {grant} ended early: break-glass grants now last {length})",
        until.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

/// Records, for each break-glass grant still running that `configured` ends sooner than it was
/// given for, when it now ends: a denied `break-glass` entry for the grant's credential, agency
/// and client. Run when a server starts, so that a setting lowered to cut grants short keeps
/// them cut after it is raised again (the setting alone is read afresh by each process). Returns
/// how many grants it ended early.
pub async fn end_grants_a_setting_shortens(
    audit: &dyn travelmap_store::AuditLog,
    configured: std::time::Duration,
) -> travelmap_store::Result<usize> {
    let entries = audit.read_action(BREAK_GLASS).await?;
    let now = now();
    let ends: Vec<AuditRecord> = grants(&entries, std::time::Duration::MAX)
        .into_iter()
        // A grant whose entry states no length (logged before grants stated theirs) has always
        // ended where the setting in force puts it: there is nothing to keep.
        .filter(|(grant, _)| stated_length(grant).is_some())
        .filter_map(|(grant, until)| {
            let cut = grant_until(grant, configured).max(now);
            (until > now && cut < until).then(|| AuditRecord {
                at: now,
                credential: grant.record.credential.clone(),
                agency: grant.record.agency.clone(),
                // The service ends it, not the grant's holder, whose credential and agency the
                // entry names as those of the grant.
                actor: Some(GRANT_ENDER.to_owned()),
                operation: grant.record.operation,
                client_id: grant.record.client_id,
                purpose: grant.record.purpose.clone(),
                justification: None,
                request_id: None,
                outcome: Outcome::Denied,
                action: BREAK_GLASS.to_owned(),
                returned: Some(ending_text(cut, grant.seq, configured)),
            })
        })
        .collect();
    let count = ends.len();
    if count > 0 {
        audit.append(ends).await?;
    }
    Ok(count)
}

/// How a break-glass grant's entry states its length (`returned`), which is what the grant was
/// given for.
fn grant_text(length: std::time::Duration) -> String {
    let seconds = length.as_secs();
    let (count, unit) = if seconds.is_multiple_of(60) {
        (seconds / 60, "minute")
    } else {
        (seconds, "second")
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{GRANT_PREFIX}{count} {unit}{plural}")
}

/// How a grant's entry states its length (`returned`), before the length.
const GRANT_PREFIX: &str = "access for ";

/// The length a break-glass grant's entry states it was given for (`access for 60 minutes`).
fn stated_length(entry: &AuditEntry) -> Option<std::time::Duration> {
    let text = entry
        .record
        .returned
        .as_deref()?
        .strip_prefix(GRANT_PREFIX)?;
    let (count, unit) = text.split_once(' ')?;
    let count: u64 = count.parse().ok()?;
    let seconds = match unit {
        "minutes" | "minute" => count.checked_mul(60)?,
        "seconds" | "second" => count,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(seconds))
}

/// The `actor` of the entries by which the service ends break-glass grants early.
pub const GRANT_ENDER: &str = "travelmap (break_glass_minutes)";

/// When a break-glass grant ends: the length its entry states, or the configured one if that is
/// shorter now (a shortened setting ends running grants early; a lengthened one never revives
/// or extends a grant already given).
pub fn grant_until(entry: &AuditEntry, configured: std::time::Duration) -> DateTime<Utc> {
    let length = stated_length(entry).map_or(configured, |stated| stated.min(configured));
    TimeDelta::from_std(length)
        .ok()
        .and_then(|length| entry.record.at.checked_add_signed(length))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, minute: i64, outcome: Outcome, returned: String) -> AuditEntry {
        AuditEntry {
            seq,
            record: AuditRecord {
                at: "2026-12-06T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
                    + TimeDelta::minutes(minute),
                credential: "ngo-desk".into(),
                agency: "ngo-opava".into(),
                actor: None,
                operation: Operation::Consultation,
                client_id: Some(ClientId(uuid::Uuid::from_u128(7))),
                purpose: Some("emergency".into()),
                justification: None,
                request_id: None,
                outcome,
                action: BREAK_GLASS.into(),
                returned: Some(returned),
            },
            hash: [0; 32],
        }
    }

    /// A grant's length is written as read (one minute, not "1 minutes"), and read back
    /// whichever way an entry wrote it.
    #[test]
    fn a_grant_length_reads_back_as_written() {
        for seconds in [1, 2, 60, 90, 3600] {
            let length = std::time::Duration::from_secs(seconds);
            let written = entry(1, 0, Outcome::Allowed, grant_text(length));
            assert_eq!(stated_length(&written), Some(length), "{seconds}");
        }
        assert_eq!(
            grant_text(std::time::Duration::from_secs(60)),
            "access for 1 minute"
        );
        let older = entry(1, 0, Outcome::Allowed, "access for 1 minutes".into());
        assert_eq!(
            stated_length(&older),
            Some(std::time::Duration::from_secs(60))
        );
    }

    /// An entry ending a grant early ends that grant only: another grant of the same credential
    /// for the same client keeps its own end.
    #[test]
    fn an_early_end_ends_only_its_own_grant() {
        let hour = std::time::Duration::from_secs(3600);
        let five = std::time::Duration::from_secs(300);
        let first = entry(1, 0, Outcome::Allowed, grant_text(hour));
        let second = entry(2, 30, Outcome::Allowed, grant_text(hour));
        let ends_first = entry(
            3,
            31,
            Outcome::Denied,
            ending_text(first.record.at + TimeDelta::minutes(31), 1, five),
        );
        let entries = [first.clone(), second.clone(), ends_first];
        let ends: Vec<DateTime<Utc>> = grants(&entries, hour)
            .into_iter()
            .map(|(_, until)| until)
            .collect();
        assert_eq!(
            ends,
            [
                first.record.at + TimeDelta::minutes(31),
                second.record.at + TimeDelta::minutes(60)
            ]
        );
    }

    /// A setting shorter than a grant's length, in a process that did not cut the grant short
    /// when it started (it started before the grant, or after the grant ran its course), moves
    /// no grant's end: access and the review follow the trail.
    #[test]
    fn a_grant_ends_where_the_trail_says_whatever_the_setting_now() {
        let hour = std::time::Duration::from_secs(3600);
        let minute = std::time::Duration::from_secs(60);
        let cut = entry(1, 0, Outcome::Allowed, grant_text(hour));
        let ran = entry(2, 0, Outcome::Allowed, grant_text(hour));
        // A server started five minutes into the grants, with grants of one minute, ended the
        // first then (the second had already been cut by another means in this example).
        let ends_cut = entry(
            3,
            5,
            Outcome::Denied,
            ending_text(cut.record.at + TimeDelta::minutes(5), 1, minute),
        );
        let entries = [cut.clone(), ran.clone(), ends_cut];
        let ends = |listed: Vec<(&AuditEntry, DateTime<Utc>)>| -> Vec<DateTime<Utc>> {
            listed.into_iter().map(|(_, until)| until).collect()
        };
        assert_eq!(
            ends(grants(&entries, minute)),
            [
                cut.record.at + TimeDelta::minutes(5),
                ran.record.at + TimeDelta::minutes(60)
            ]
        );
    }
}
