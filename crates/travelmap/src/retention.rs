//! The retention run: goes through every client, shreds the categories of personal data whose
//! retention period has ended (see `travelmap_projections::retention`), audits each shredding,
//! and reports what was due and what was done. `travelmap retention run` runs it once; the server
//! runs it daily.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tokio::sync::watch;
use travelmap_api::audit::Deferred;
use travelmap_domain::audit::{AuditRecord, Operation, Outcome};
use travelmap_domain::personal::{self, Category};
use travelmap_domain::{ClientId, EventId, PersonalData, Provenance, RecordedEvent};
use travelmap_projections::ClientState;
use travelmap_projections::retention::Schedule;
use travelmap_service::Journeys;
use travelmap_service::health::Reporter;
use travelmap_store::AuditLog;

/// Who records retention decisions: the service itself, not a person.
pub const RETENTION_CREDENTIAL: &str = "travelmap-retention";
/// The agency retention decisions are recorded for.
pub const RETENTION_AGENCY: &str = "travelmap";
/// How many stored views a page of the run reads.
const PAGE: usize = 500;
/// How often the server runs the schedule.
pub const DAILY: Duration = Duration::from_secs(24 * 60 * 60);
/// How long after start the server first runs it.
const FIRST_RUN_AFTER: Duration = Duration::from_secs(60);

/// What a run found and did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ran_at: DateTime<Utc>,
    /// Clients looked at.
    pub clients: usize,
    /// Clients with categories due, and which.
    pub due: Vec<Due>,
    /// Shreddings done.
    pub done: Vec<Done>,
    /// Clients with data due who are under a restriction of processing: kept until it is lifted.
    pub held: Vec<ClientId>,
    /// Clients that could not be handled, and why (they are tried again next run).
    pub failed: Vec<Failed>,
}

#[derive(Debug, Serialize)]
pub struct Due {
    pub client_id: ClientId,
    pub categories: Vec<Category>,
    pub due_since: NaiveDate,
}

#[derive(Debug, Serialize)]
pub struct Done {
    pub client_id: ClientId,
    pub categories: Vec<Category>,
    pub keys_destroyed: usize,
    /// Each shredded category's own due day, earliest first, for the audit entry (the event
    /// records the earliest).
    #[serde(skip)]
    due_on: Vec<(NaiveDate, Category)>,
    #[serde(skip)]
    event_id: EventId,
    pub position: u64,
}

#[derive(Debug, Serialize)]
pub struct Failed {
    pub client_id: ClientId,
    pub error: String,
}

/// How long a run waits, by default, for the server that writes the views to fold the log (a
/// run beside servers on PostgreSQL; see [`Projector::bring_to_head`]).
///
/// [`Projector::bring_to_head`]: travelmap_projections::Projector::bring_to_head
pub const VIEWS_PATIENCE: Duration = Duration::from_secs(600);

/// Runs the schedule once, at `now`, waiting at most `patience` each time the views must catch
/// up with the log. Returns the report of what was found and done, also when the run failed
/// part way (beside the error): a shredding done before the failure is irreversible, and the
/// operator must learn of it from the report, not only from the log.
pub async fn run(
    journeys: &Journeys,
    audit: &Arc<dyn AuditLog>,
    deferred: Option<&Deferred>,
    schedule: &Schedule,
    now: DateTime<Utc>,
    patience: Duration,
    action: &str,
) -> (Report, anyhow::Result<()>) {
    let mut report = Report {
        ran_at: now,
        ..Report::default()
    };
    if schedule.is_empty() {
        return (report, Ok(()));
    }
    if let Err(error) = journeys.projector().bring_to_head(patience).await {
        return (report, Err(error.into()));
    }
    let shredded = shred_what_is_due(
        journeys,
        audit,
        deferred,
        schedule,
        now,
        &mut report,
        action,
    )
    .await;
    if !report.done.is_empty() {
        // The views still hold what was shredded, in plaintext, until the projection folds the
        // `retention.applied` events; run offline, nothing else would fold them before the next
        // start, and a copy of the data directory taken meanwhile would keep the data. Also
        // when the run stopped early: what it did shred before is folded all the same. Beside
        // a server on PostgreSQL, the server folds them, and the run waits until it has.
        if let Err(error) = journeys.projector().bring_to_head(patience).await {
            return (report, Err(error.into()));
        }
    }
    (report, shredded)
}

/// Shreds what is due for each client, recording each shredding in `report` as it goes.
async fn shred_what_is_due(
    journeys: &Journeys,
    audit: &Arc<dyn AuditLog>,
    deferred: Option<&Deferred>,
    schedule: &Schedule,
    now: DateTime<Utc>,
    report: &mut Report,
    action: &str,
) -> anyhow::Result<()> {
    let provenance = Provenance {
        agency: RETENTION_AGENCY.to_owned(),
        credential: RETENTION_CREDENTIAL.to_owned(),
    };
    let mut after = None;
    loop {
        let page = journeys.views().scan(after, PAGE).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(*last);
        for (client_id, stored) in page {
            report.clients += 1;
            let state = journeys.state_of(client_id, &stored).await?;
            if state.due(schedule, now).is_none() {
                continue;
            }
            match shred_client(journeys, schedule, now, &provenance, client_id).await {
                Ok(Shredding::Done(due, done)) => {
                    report.due.push(due);
                    // A shredding the trail does not show must not be followed by more. Its
                    // entry is retried, and in a server handed on to be written once the trail
                    // takes entries again: the shredding is done, and no later run would find
                    // the client due.
                    let entry = vec![audited(&done, action)];
                    let audited = match deferred {
                        Some(deferred) => deferred.append_or_keep_trying(audit, entry).await,
                        None => travelmap_store::append_patiently(
                            audit.as_ref(),
                            entry,
                            travelmap_api::audit::RECORDING_PATIENCE,
                        )
                        .await
                        .map(drop)
                        .map_err(|(error, _)| error),
                    };
                    report.done.push(done);
                    audited?;
                }
                Ok(Shredding::Moving(due)) => {
                    report.due.push(due);
                    report.failed.push(Failed {
                        client_id,
                        error: "the client's record kept changing while its shredding was \
                                decided; it is decided again next run"
                            .to_owned(),
                    });
                }
                Ok(Shredding::Held) => report.held.push(client_id),
                Ok(Shredding::Nothing) => {}
                Err(error) => report.failed.push(Failed {
                    client_id,
                    error: error.to_string(),
                }),
            }
        }
    }
    Ok(())
}

/// What became of one client in a run.
enum Shredding {
    /// Nothing was due (any more).
    Nothing,
    /// Data is due, but the client is under a restriction of processing.
    Held,
    /// Data is due, but the decision could not be carried out: the stream kept moving.
    Moving(Due),
    /// Data was due and shredded.
    Done(Due, Done),
}

/// How often a client's shredding is decided again when the stream moved meanwhile.
const DECISION_ATTEMPTS: usize = 8;

/// Decides what of the client's data is due and shreds it, deciding again whenever the stream
/// moved between the decision and the shredding (an event recorded meanwhile may restart a
/// category's clock, and would be lost with the key it was sealed under).
async fn shred_client(
    journeys: &Journeys,
    schedule: &Schedule,
    now: DateTime<Utc>,
    provenance: &Provenance,
    client_id: ClientId,
) -> anyhow::Result<Shredding> {
    let mut last_due = None;
    for _ in 0..DECISION_ATTEMPTS {
        // Decided as of this moment (or the run's, if that is later): facts count only once
        // recorded by the moment a decision is made for, and the run's start would leave out
        // whatever was recorded since, though the decision is bound to the stream with it.
        let now = now.max(Utc::now());
        // Decide on the history as it is now, not on a view that may lag behind it: an
        // involvement opened a moment ago stops the clock.
        let history = journeys.history(client_id, None).await?;
        let decided_on = history.len() as u64;
        let holding = categories_holding_data(&history);
        let state = ClientState::from_history(client_id, history);
        if state.access(now).restricted {
            // Restricted data is kept as it is (GDPR Art. 18(1)(c): it may be needed for a
            // legal claim) until the restriction is lifted.
            return Ok(Shredding::Held);
        }
        let Some((categories, _)) = state.due(schedule, now) else {
            return Ok(Shredding::Nothing);
        };
        // Categories that still hold a key, and those shredded by an earlier run that could
        // not record it; what was shredded and recorded stays as it is.
        let live = journeys.live_categories(client_id).await?;
        let unrecorded = journeys.unrecorded_shredding(client_id, &state).await?;
        let categories: Vec<Category> = categories
            .into_iter()
            .filter(|category| {
                (live.contains(category) && holding.contains(category))
                    || unrecorded.contains(category)
            })
            .collect();
        // Since when is recorded for good (in the event and the audit trail): the earliest
        // due day of the categories shredded, not of every category due, some of which
        // the client may hold no data of.
        let mut due_on: Vec<(NaiveDate, Category)> = state
            .retention(schedule, now)
            .into_iter()
            .filter(|retention| categories.contains(&retention.category))
            .filter_map(|retention| Some((retention.due_on?, retention.category)))
            .collect();
        due_on.sort_unstable();
        let Some(&(due_since, _)) = due_on.first() else {
            return Ok(Shredding::Nothing);
        };
        let due = Due {
            client_id,
            categories: categories.clone(),
            due_since,
        };
        let Some((keys_destroyed, outcome)) = journeys
            .shred_due(
                provenance,
                client_id,
                categories.clone(),
                due_since,
                decided_on,
            )
            .await?
        else {
            last_due = Some(due);
            continue;
        };
        return Ok(Shredding::Done(
            due,
            Done {
                client_id,
                categories,
                keys_destroyed,
                due_on,
                event_id: outcome.receipt.id,
                position: outcome.receipt.position,
            },
        ));
    }
    Ok(last_due.map_or(Shredding::Nothing, Shredding::Moving))
}

/// The categories of which `history` holds personal fields that can still be read: sealed
/// under the category's key in force. A key in force that sealed nothing (one made for a
/// request that was then refused) holds nothing to shred, and no shredding of it is recorded.
/// Each event's category is the one the store sealed it under.
fn categories_holding_data(history: &[RecordedEvent]) -> HashSet<Category> {
    let types: HashMap<EventId, &str> = history
        .iter()
        .map(|event| (event.draft.id, event.draft.event.event_type()))
        .collect();
    history
        .iter()
        .filter(|event| event.personal == PersonalData::Clear)
        .map(|event| {
            personal::sealing_category(&event.draft.event, |target| types.get(&target).copied())
        })
        .collect()
}

/// The action of a server's shredding in the audit trail (`travelmap retention run` logs
/// [`crate::commands::RETENTION_ACTION`]).
pub const SERVER_ACTION: &str = "retention run";

/// The audit entry of a shredding.
fn audited(done: &Done, action: &str) -> AuditRecord {
    AuditRecord {
        at: Utc::now(),
        credential: RETENTION_CREDENTIAL.to_owned(),
        agency: RETENTION_AGENCY.to_owned(),
        actor: None,
        operation: Operation::Erasure,
        client_id: Some(done.client_id),
        purpose: None,
        justification: Some(justification(&done.due_on)),
        request_id: None,
        outcome: Outcome::Allowed,
        action: action.to_owned(),
        returned: Some(done.event_id.to_string()),
    }
}

/// "retention period ended 2004-01-01 for needs; 2011-01-01 for identity, justice": each
/// category under its own due day, so that none is said to be due before it was.
fn justification(due_on: &[(NaiveDate, Category)]) -> String {
    let mut days: Vec<(NaiveDate, Vec<Category>)> = Vec::new();
    for &(day, category) in due_on {
        match days.last_mut() {
            Some((last, categories)) if *last == day => categories.push(category),
            _ => days.push((day, vec![category])),
        }
    }
    let days: Vec<String> = days
        .iter()
        .map(|(day, categories)| format!("{day} for {}", names(categories)))
        .collect();
    format!("retention period ended {}", days.join("; "))
}

fn names(categories: &[Category]) -> String {
    categories
        .iter()
        .map(|category| category.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the schedule soon after start and then every `every` (daily in the binary), until `stop`.
pub async fn daily(
    journeys: Arc<Journeys>,
    audit: Arc<dyn AuditLog>,
    deferred: Arc<Deferred>,
    schedule: Schedule,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    health: Reporter,
) {
    if schedule.is_empty() {
        return;
    }
    health.running();
    // The first run waits a little, so that a restart loop does not shred on every start.
    let mut wait = FIRST_RUN_AFTER.min(every);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = every;
        // Of servers beside each other on PostgreSQL, the one that writes the views runs the
        // schedule (the others would shred the same clients again): wait to be that one.
        tokio::select! {
            led = journeys.views().lead() => if let Err(error) = led {
                health.failing();
                tracing::error!(%error, "retention run waits for the view lease; next try in a day");
                continue;
            },
            _ = stop.changed() => return,
        }
        // Having the lease, this process folds the views itself: nothing to wait for.
        match run(
            &journeys,
            &audit,
            Some(&deferred),
            &schedule,
            Utc::now(),
            VIEWS_PATIENCE,
            SERVER_ACTION,
        )
        .await
        {
            (report, Ok(())) => {
                // Clients that could not be handled keep data past its time until a run
                // handles them: that is a failure to report, though the run went on.
                if report.failed.is_empty() {
                    health.running();
                } else {
                    health.failing();
                }
                tracing::info!(
                    clients = report.clients,
                    due = report.due.len(),
                    done = report.done.len(),
                    failed = report.failed.len(),
                    "retention run"
                );
            }
            (report, Err(error)) => {
                health.failing();
                tracing::error!(
                    %error,
                    done = report.done.len(),
                    "retention run failed; next run in a day"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use travelmap_domain::personal::Category;

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn the_audit_entry_names_each_category_under_its_own_due_day() {
        assert_eq!(
            super::justification(&[
                (day("2004-01-01"), Category::Needs),
                (day("2011-01-01"), Category::Identity),
                (day("2011-01-01"), Category::Justice),
                (day("2025-01-01"), Category::Support),
            ]),
            "retention period ended 2004-01-01 for needs; 2011-01-01 for identity, justice; \
             2025-01-01 for support"
        );
        assert_eq!(
            super::justification(&[(day("2020-03-01"), Category::Consent)]),
            "retention period ended 2020-03-01 for consent"
        );
    }
}
