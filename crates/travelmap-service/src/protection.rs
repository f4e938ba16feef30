//! Data-protection use cases: erasure (crypto-shredding), restriction of processing and the
//! retention schedule. Each records its decision as an event in the client's stream, so the
//! record shows what was decided, when and by whom, and projections react to it like to any
//! other event.

use chrono::{NaiveDate, SubsecRound, Utc};
use travelmap_domain::payloads::{
    PersonalDataErased, ProcessingRestricted, RestrictionLifted, RetentionApplied,
};
use travelmap_domain::personal::Category;
use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance, Text};
use uuid::Uuid;

use travelmap_store::Outline;

use crate::{Alongside, Error, Journeys, Outcome, Result, Submission};

/// How often a decision is made again when another request made it (or undid it) between its
/// reading and its recording.
const DECISION_ATTEMPTS: usize = 8;

impl Journeys {
    /// Destroys every data key of the client (so the sealed fields can never be opened again,
    /// wherever the log was copied) and records `personal_data.erased`. Erasing twice answers
    /// with the first erasure. The views still hold the plaintext until the projector folds the
    /// receipt's position ([`Self::wait_for_projection`]): a caller that audits the erasure
    /// does so in between, so that the trail names it as soon as it is in the log.
    pub async fn record_erasure(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
        reason: Text,
    ) -> Result<Outcome> {
        let keyring = self.keyring.as_ref().ok_or(Error::NoKeyring)?;
        for _ in 0..DECISION_ATTEMPTS {
            let recorded = self.recorded(client_id).await?;
            if crate::journey_from(&recorded).is_erased()
                && let Some(done) = self.decided(&recorded, "personal_data.erased").await?
            {
                // Finishes an erasure that was cut short between its event and its second
                // sweep, or that another request made meanwhile.
                keyring.destroy(client_id, None).await?;
                return Ok(done);
            }
            // Keys first: should the event fail to be recorded, the data is gone all the same
            // and a retry records the event. Keys again afterwards: a request in another process
            // that was sealing under a newly created key while this one ran is swept up, and
            // after the event nothing more is accepted for the client.
            keyring.destroy(client_id, None).await?;
            // Recorded on whatever the stream holds by then: with the keys destroyed there is no
            // going back, so writes the client's record takes meanwhile (events without personal
            // fields need no key) must not make the decision wait for a quiet moment. Two
            // erasures at once are told apart by the journey, which refuses a second.
            let outcome = match self
                .record_decision(
                    provenance,
                    client_id,
                    JourneyEvent::PersonalDataErased(PersonalDataErased {
                        reason: reason.clone(),
                    }),
                )
                .await
            {
                Ok(outcome) => outcome,
                // Another request recorded the erasure meanwhile: its record answers.
                Err(Error::Refused {
                    source: travelmap_domain::journey::Error::Erased,
                    ..
                }) => continue,
                Err(error) => return Err(error),
            };
            keyring.destroy(client_id, None).await?;
            return Ok(outcome);
        }
        Err(Error::Contention)
    }

    /// Clients whose keys an erasure destroyed without its `personal_data.erased` being
    /// recorded: the request was cut short between the two (a database failure, a crash). Their
    /// sealed fields are gone, but the views go on showing the plaintext (names, identifiers,
    /// notes) until the decision is recorded and folded, which [`Self::finish_erasure`] does.
    pub async fn unfinished_erasures(&self) -> Result<Vec<ClientId>> {
        let Some(keyring) = &self.keyring else {
            return Ok(Vec::new());
        };
        let erased = keyring.store().erased().await?;
        if erased.is_empty() {
            return Ok(erased);
        }
        let recorded = self.log.outlines(erased.clone()).await?;
        let mut unfinished: Vec<ClientId> = erased
            .into_iter()
            // A client with no events in this log (a log restored from an older backup than
            // its key store) has nothing to fold and nothing to record a decision in.
            .filter(|client| {
                recorded
                    .get(client)
                    .is_some_and(|outlines| !crate::journey_from(outlines).is_erased())
            })
            .collect();
        unfinished.sort_unstable_by_key(|client| client.0);
        Ok(unfinished)
    }

    /// Finishes an erasure cut short (see [`Self::unfinished_erasures`]): records its decision,
    /// on behalf of `provenance` (the service itself: whoever asked first got an error and may
    /// never ask again). Like [`Self::record_erasure`] it does not wait for the views' purge:
    /// the caller audits the decision first. One another process finished meanwhile answers as
    /// not created.
    pub async fn finish_erasure(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
    ) -> Result<Outcome> {
        let reason = Text::try_from(
            "finishing an erasure that destroyed the keys but was cut short before its record",
        )
        .expect("a valid reason");
        self.record_erasure(provenance, client_id, reason).await
    }

    /// Restricts processing of the client's data. Restricting a restricted client answers with
    /// the restriction in force.
    pub async fn restrict(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
        reason: Text,
    ) -> Result<Outcome> {
        self.set_restriction(provenance, client_id, true, || {
            JourneyEvent::ProcessingRestricted(ProcessingRestricted {
                reason: reason.clone(),
            })
        })
        .await
    }

    /// Lifts a restriction. Lifting again answers with the last lifting; lifting where there
    /// never was a restriction is refused.
    pub async fn lift_restriction(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
        reason: Text,
    ) -> Result<Outcome> {
        self.set_restriction(provenance, client_id, false, || {
            JourneyEvent::RestrictionLifted(RestrictionLifted {
                reason: reason.clone(),
            })
        })
        .await
    }

    /// Records `decision` (a restriction when `restricted`, its lifting otherwise) unless the
    /// client's processing is already so, in which case the decision that made it so answers
    /// (also when another request made it so between the reading and the recording).
    async fn set_restriction(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
        restricted: bool,
        decision: impl Fn() -> JourneyEvent,
    ) -> Result<Outcome> {
        for _ in 0..DECISION_ATTEMPTS {
            let recorded = self.recorded(client_id).await?;
            if crate::journey_from(&recorded).is_restricted() == restricted {
                let (made_so, never) = if restricted {
                    ("processing.restricted", Error::UnknownClient(client_id))
                } else {
                    ("restriction.lifted", Error::NotRestricted(client_id))
                };
                return self.decided(&recorded, made_so).await?.ok_or(never);
            }
            // Recorded on whatever the stream holds by then, so that writes the client's record
            // takes meanwhile do not starve the decision; the journey refuses it if another
            // request made processing so meanwhile, and that request's record then answers.
            match self
                .record_decision(provenance, client_id, decision())
                .await
            {
                Ok(outcome) => return Ok(outcome),
                Err(Error::Refused {
                    source:
                        travelmap_domain::journey::Error::Restricted
                        | travelmap_domain::journey::Error::NotRestricted,
                    ..
                }) => continue,
                // An erased record takes a lifting only while it is restricted: refused as
                // erased, a lifting lost to one made meanwhile, which answers.
                Err(Error::Refused {
                    source: travelmap_domain::journey::Error::Erased,
                    ..
                }) if !restricted => continue,
                Err(error) => return Err(error),
            }
        }
        Err(Error::Contention)
    }

    /// Shreds categories of a client's personal data whose retention period has ended, as
    /// decided on the client's stream at version `decided_on`: destroys their keys and records
    /// `retention.applied`. Returns how many keys were destroyed (0 when an earlier run destroyed
    /// them and could not record it) and the event recorded; `None`, with nothing done, when
    /// the stream moved since the decision, which must then be made again on what was added:
    /// an event recorded meanwhile may restart a category's clock, and was sealed under a key
    /// this would destroy.
    pub async fn shred_due(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
        categories: Vec<Category>,
        due_since: NaiveDate,
        decided_on: u64,
    ) -> Result<Option<(usize, Outcome)>> {
        let keyring = self.keyring.as_ref().ok_or(Error::NoKeyring)?;
        let destroyed = {
            // With the client's turn held, no write of this process is between sealing under
            // a key and committing; writes of other processes are waited for by the key store.
            let turn = self.client_turns[crate::stripe_of(client_id)].lock();
            let Ok(_turn) = tokio::time::timeout(crate::TURN_PATIENCE, turn).await else {
                return Err(Error::Contention);
            };
            let current = self.log.stream_versions(vec![client_id]).await?;
            if current.get(&client_id).copied().unwrap_or(0) != decided_on {
                return Ok(None);
            }
            // Keys first, then the record: if recording fails, the keys are gone all the same
            // and the next run finds them destroyed but unrecorded (see `unrecorded_shredding`)
            // and records them then, which is also what makes the projector purge its copy.
            match keyring
                .destroy_at(client_id, categories.clone(), decided_on)
                .await?
            {
                Some(destroyed) => destroyed,
                None => return Ok(None),
            }
        };
        let decision = || {
            JourneyEvent::RetentionApplied(RetentionApplied {
                categories: categories.clone(),
                due_since,
            })
        };
        // Recorded on the version decided on, so that of two runs that decided alike (processes
        // beside each other), one records it.
        if let Some(outcome) = self
            .record_decision_on(provenance, client_id, decision(), decided_on)
            .await?
        {
            return Ok(Some((destroyed, outcome)));
        }
        if destroyed == 0 {
            // Another run recorded first, or something else moved the stream: decide again.
            return Ok(None);
        }
        // This run destroyed keys, and only its record makes the projector purge their data.
        let outcome = self
            .record_decision(provenance, client_id, decision())
            .await?;
        Ok(Some((destroyed, outcome)))
    }

    /// The categories for which the client has live keys: what retention could still shred.
    pub async fn live_categories(&self, client_id: ClientId) -> Result<Vec<Category>> {
        let Some(keyring) = &self.keyring else {
            return Ok(Vec::new());
        };
        let mut categories: Vec<Category> = keyring
            .store()
            .keys(vec![client_id])
            .await?
            .into_iter()
            .map(|key| key.category)
            .collect();
        categories.sort_unstable();
        Ok(categories)
    }

    /// Categories whose keys an earlier retention run destroyed without managing to record it:
    /// destroyed after the last `retention.applied` naming them (or with none at all).
    pub async fn unrecorded_shredding(
        &self,
        client_id: ClientId,
        state: &travelmap_projections::ClientState,
    ) -> Result<Vec<Category>> {
        let Some(keyring) = &self.keyring else {
            return Ok(Vec::new());
        };
        if keyring.store().is_erased(client_id).await? {
            return Ok(Vec::new());
        }
        let mut pending: Vec<Category> = Vec::new();
        for destroyed in keyring.store().destroyed(vec![client_id]).await? {
            let recorded = state.facts.iter().any(|fact| match &fact.event {
                JourneyEvent::RetentionApplied(applied) => {
                    applied.categories.contains(&destroyed.category)
                        && fact.recorded_at >= destroyed.destroyed_at
                }
                _ => false,
            });
            if !recorded && !pending.contains(&destroyed.category) {
                pending.push(destroyed.category);
            }
        }
        pending.sort_unstable();
        Ok(pending)
    }

    /// The outlines of the client's recorded events; a client with none is unknown.
    async fn recorded(&self, client_id: ClientId) -> Result<Vec<Outline>> {
        self.log
            .outlines(vec![client_id])
            .await?
            .remove(&client_id)
            .ok_or(Error::UnknownClient(client_id))
    }

    /// The latest recorded decision of a type among `recorded`, as an idempotent answer.
    async fn decided(&self, recorded: &[Outline], event_type: &str) -> Result<Option<Outcome>> {
        let Some(latest) = recorded.iter().rev().find(|o| o.event_type == event_type) else {
            return Ok(None);
        };
        Ok(self
            .log
            .lookup(vec![latest.id])
            .await?
            .into_iter()
            .next()
            .map(|existing| Outcome {
                receipt: existing.receipt,
                created: false,
            }))
    }

    /// Records a decision on the client's stream as it stands (erasure, restriction: the
    /// journey's own refusals keep them from being recorded twice).
    async fn record_decision(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
        event: JourneyEvent,
    ) -> Result<Outcome> {
        self.append_decision(provenance, client_id, event, None)
            .await
    }

    /// Records a decision made on `made_on`, the client's stream version as read (retention,
    /// whose decision depends on what the stream holds): `None` when another request changed
    /// the stream since, so that the decision must be made again.
    async fn record_decision_on(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
        event: JourneyEvent,
        made_on: u64,
    ) -> Result<Option<Outcome>> {
        match self
            .append_decision(provenance, client_id, event, Some(made_on))
            .await
        {
            Ok(outcome) => Ok(Some(outcome)),
            Err(Error::VersionConflict { .. }) => Ok(None),
            // A closed record is refused before its version is compared: a refusal on a stream
            // that moved since may come from what moved it (a restriction made meanwhile).
            Err(error @ Error::Refused { .. }) => {
                if self.recorded(client_id).await?.len() as u64 == made_on {
                    Err(error)
                } else {
                    Ok(None)
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Appends one decision, at `expected_version` if given, noting a store failure.
    async fn append_decision(
        &self,
        provenance: &Provenance,
        client_id: ClientId,
        event: JourneyEvent,
        expected_version: Option<u64>,
    ) -> Result<Outcome> {
        let draft = EventDraft {
            id: EventId(Uuid::new_v4()),
            client_id,
            // Kept to the microsecond, as posted events are.
            occurred_at: Utc::now().trunc_subsecs(6).fixed_offset(),
            actor: None,
            event,
        };
        let outcomes = self
            .record_events(
                provenance,
                None,
                &[Submission {
                    draft,
                    expected_version,
                }],
                // The decision's entry is written after it, by the caller.
                &mut Alongside::new(|_| std::future::ready(Ok::<(), std::convert::Infallible>(()))),
            )
            .await;
        self.note_write(&outcomes);
        Ok(outcomes?.remove(0))
    }
}
