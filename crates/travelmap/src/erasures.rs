//! Finishing erasures cut short. An erasure destroys the client's keys first and records
//! `personal_data.erased` after (so that a failure in between leaves the data gone, not kept).
//! When the request is cut short between the two, by a database failure or a crash, the sealed
//! fields are unreadable but the views go on showing the plaintext until the decision is
//! recorded and folded. The data-protection officer was told to retry and may never do so; the
//! server finishes such erasures itself, soon after it starts and then every hour, on behalf of
//! the service, and audits each one.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use travelmap_api::audit::Deferred;
use travelmap_domain::Provenance;
use travelmap_domain::audit::{AuditRecord, Operation, Outcome};
use travelmap_service::Journeys;
use travelmap_service::health::Reporter;
use travelmap_store::AuditLog;

/// Who records an erasure the server finishes: the service itself, not a person.
pub const RECOVERY_CREDENTIAL: &str = "travelmap-recovery";
/// How often the server looks for erasures cut short, after its first look.
pub const HOURLY: Duration = Duration::from_secs(60 * 60);
/// How long after start the server first looks: long enough for the projector to have started
/// (the finishing waits until the views are purged), short enough that a restart after the
/// failure is what finishes it.
const FIRST_LOOK_AFTER: Duration = Duration::from_secs(1);

/// Finishes the erasures cut short, auditing each one this process recorded. Returns how many.
/// An entry the trail does not take is handed to `deferred`, which goes on trying: the
/// decision is recorded, and no later look would list the client again.
pub async fn finish(
    journeys: &Journeys,
    audit: &Arc<dyn AuditLog>,
    deferred: &Deferred,
) -> anyhow::Result<usize> {
    let provenance = Provenance {
        agency: crate::retention::RETENTION_AGENCY.to_owned(),
        credential: RECOVERY_CREDENTIAL.to_owned(),
    };
    let mut recorded = 0;
    for client_id in journeys.unfinished_erasures().await? {
        let outcome = journeys.finish_erasure(&provenance, client_id).await?;
        // Another process finished this one meanwhile, and audited it.
        if outcome.created {
            recorded += 1;
            // Audited as soon as it is in the log, before the wait for the views' purge.
            let entry = vec![AuditRecord {
                at: Utc::now(),
                credential: RECOVERY_CREDENTIAL.to_owned(),
                agency: crate::retention::RETENTION_AGENCY.to_owned(),
                actor: None,
                operation: Operation::Erasure,
                client_id: Some(client_id),
                purpose: None,
                justification: Some(
                    "the client's keys were destroyed by an erasure cut short before its record"
                        .to_owned(),
                ),
                request_id: None,
                outcome: Outcome::Allowed,
                action: "erasure finished".to_owned(),
                returned: Some(outcome.receipt.id.to_string()),
            }];
            // A refused entry is kept trying in the background (and logged there): the erasure
            // is recorded, and the finishing goes on to purge the views.
            let _ = deferred.append_or_keep_trying(audit, entry).await;
        }
        journeys
            .wait_for_projection(outcome.receipt.position)
            .await?;
    }
    Ok(recorded)
}

/// Runs [`finish`] soon after start and then every `every`, until `stop`.
pub async fn periodically(
    journeys: Arc<Journeys>,
    audit: Arc<dyn AuditLog>,
    deferred: Arc<Deferred>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    health: Reporter,
) {
    health.running();
    let mut wait = FIRST_LOOK_AFTER.min(every);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = every;
        match finish(&journeys, &audit, &deferred).await {
            Ok(0) => health.running(),
            Ok(finished) => {
                health.running();
                tracing::warn!(finished, "finished erasures that were cut short");
            }
            Err(error) => {
                // The views may still show data whose keys are gone: a failure to report.
                health.failing();
                tracing::error!(%error, "could not finish erasures cut short; trying again");
                wait = every.min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use serde_json::json;
    use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent};
    use travelmap_service::Submission;
    use travelmap_store::{Location, MasterKey, MasterKeys, Store};
    use uuid::Uuid;

    use super::*;

    /// The entry of an erasure the server finishes is written as soon as the decision is
    /// recorded: a finishing whose wait for the views' purge fails (here no projector runs, as
    /// when the process stops during the wait) leaves the erasure audited all the same.
    #[tokio::test]
    async fn a_finished_erasure_is_audited_before_the_views_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Embedded(dir.path().to_owned()))
            .await
            .unwrap();
        let masters = MasterKeys::new(MasterKey::new("test", [7; 32]), Vec::new());
        let keyring = store.keyring(masters).await.unwrap();
        let journeys = Journeys::new(store.log(), store.views(), Some(keyring.clone()))
            .await
            .unwrap();
        let client = ClientId(Uuid::new_v4());
        let registered = Submission {
            draft: EventDraft {
                id: EventId(Uuid::new_v4()),
                client_id: client,
                occurred_at: DateTime::parse_from_rfc3339("2026-01-05T09:00:00+01:00").unwrap(),
                actor: None,
                event: JourneyEvent::decode(
                    "client.registered",
                    1,
                    &json!({"personal": {"given_name": "Jarmila"}}),
                )
                .unwrap(),
            },
            expected_version: None,
        };
        let provenance = Provenance {
            agency: "prison-opava".into(),
            credential: "opava-prison-system".into(),
        };
        journeys.record(&provenance, &[registered]).await.unwrap();
        // Cut short: the keys are gone, the decision is not recorded.
        keyring.destroy(client, None).await.unwrap();

        let audit = store.audit();
        let deferred = Deferred::default();
        let finished = finish(&journeys, &audit, &deferred).await;
        assert!(
            finished.is_err(),
            "the views were never purged: {finished:?}"
        );
        let entries = audit.read_after(0, 100).await.unwrap();
        let erasures: Vec<_> = entries
            .iter()
            .filter(|entry| entry.record.action == "erasure finished")
            .collect();
        assert_eq!(erasures.len(), 1, "{entries:?}");
        assert_eq!(erasures[0].record.client_id, Some(client));
        store.close().await;
    }
}
