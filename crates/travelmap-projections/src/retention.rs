//! The retention schedule: how long each category of a client's personal data is kept, counted
//! from the end of the client's involvement with the agencies, and which categories are due.
//!
//! **The end of involvement** is when the last open involvement of the client closed. While any
//! involvement is open, nothing is due. A client who never had an involvement is counted from
//! their last recorded fact. A category is counted from the later of that end and the last
//! fact of the category (a client who comes back without an involvement keeps what was
//! recorded of them then for the full period). It is due on the anniversary, `years` later;
//! its personal fields are then shredded (their keys destroyed) and `retention.applied` is
//! recorded.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, NaiveDate, Utc};
use serde::Serialize;
use travelmap_domain::personal::{self, Category};

use crate::ClientState;

/// The longest retention period, in years. Longer ones mean nothing for people, and far longer
/// ones would overflow the calendar's arithmetic.
pub const MAX_YEARS: u32 = 200;

/// Retention periods in whole years, per category. A category without a period is kept until
/// erased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub years: BTreeMap<Category, u32>,
}

impl Schedule {
    /// From `category = years` pairs, as in the configuration file.
    pub fn from_config(entries: &BTreeMap<String, u32>) -> Result<Self, String> {
        let mut years = BTreeMap::new();
        for (name, &period) in entries {
            let category = Category::parse(name).ok_or_else(|| {
                format!(
                    "retention: `{name}` is not a category (identity, justice, support, needs, consent)"
                )
            })?;
            if category == Category::DataProtection {
                return Err(
                    "retention: the data_protection record holds no personal data and is kept"
                        .to_owned(),
                );
            }
            if period == 0 {
                return Err(format!("retention: {name} must be kept at least one year"));
            }
            if period > MAX_YEARS {
                return Err(format!(
                    "retention: {name} may be kept at most {MAX_YEARS} years (leave it out to \
                     keep it until erasure)"
                ));
            }
            years.insert(category, period);
        }
        Ok(Self { years })
    }

    pub fn is_empty(&self) -> bool {
        self.years.is_empty()
    }
}

/// One category's retention for a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub category: Category,
    /// The period, in years.
    pub years: u32,
    /// The day it ends, or `None` while the client still has an open involvement.
    pub due_on: Option<NaiveDate>,
}

impl ClientState {
    /// When the client's involvement ended, or `None` while an involvement is still open.
    pub fn involvement_ended(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let map = self.travel_map_without_steps(now);
        if map.involvements.is_empty() {
            return self
                .facts
                .iter()
                .filter(|fact| !travelmap_domain::personal::is_lifecycle(fact.event.event_type()))
                .map(|fact| fact.occurred_at.with_timezone(&Utc))
                .max();
        }
        if map
            .involvements
            .iter()
            .any(|involvement| involvement.to.is_none())
        {
            return None;
        }
        map.involvements
            .iter()
            .filter_map(|involvement| involvement.to)
            .map(|to| to.with_timezone(&Utc))
            .max()
    }

    /// The retention of each scheduled category for this client, as it stands at `now`.
    pub fn retention(&self, schedule: &Schedule, now: DateTime<Utc>) -> Vec<Retention> {
        let ended = self.involvement_ended(now);
        schedule
            .years
            .iter()
            .map(|(&category, &years)| Retention {
                category,
                years,
                due_on: ended.and_then(|ended| {
                    // A client who comes back (a new prison number, a needs assessment) without
                    // an involvement being opened: what was recorded of the category then is
                    // kept its full period too, not shredded at the next run for a period that
                    // ran out before it was recorded.
                    let from = self
                        .last_fact_of(category, now)
                        .map_or(ended, |last| last.max(ended));
                    from.date_naive()
                        .checked_add_months(Months::new(years.checked_mul(12)?))
                }),
            })
            .collect()
    }

    /// When the last fact of `category` occurred, of those recorded by `now`. A correction or a
    /// retraction of a fact counts as a fact of its category when it was recorded: its fields
    /// (a replacement, a reason) are sealed under that category's key, and a clock that
    /// ignored it would shred a rectification posted yesterday of a fact years old.
    fn last_fact_of(&self, category: Category, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.facts
            .iter()
            .filter(|fact| fact.recorded_at <= now)
            .filter(|fact| personal::category(fact.event.event_type()) == Some(category))
            .flat_map(|fact| {
                let corrected = fact
                    .corrections
                    .iter()
                    .map(|correction| correction.recorded_at)
                    .filter(|at| *at <= now);
                std::iter::once(fact.occurred_at.with_timezone(&Utc)).chain(corrected)
            })
            .chain(
                self.retractions
                    .iter()
                    .filter(|retraction| retraction.recorded_at <= now)
                    .filter(|retraction| {
                        personal::category(&retraction.event_type) == Some(category)
                    })
                    .map(|retraction| retraction.recorded_at),
            )
            .max()
    }

    /// The categories due at `now`, with the earliest due day among them.
    pub fn due(
        &self,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Option<(Vec<Category>, NaiveDate)> {
        let today = now.date_naive();
        let due: Vec<Retention> = self
            .retention(schedule, now)
            .into_iter()
            .filter(|retention| retention.due_on.is_some_and(|day| day <= today))
            .collect();
        let since = due.iter().filter_map(|retention| retention.due_on).min()?;
        Some((
            due.into_iter()
                .map(|retention| retention.category)
                .collect(),
            since,
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use travelmap_domain::{
        ClientId, EventDraft, EventId, JourneyEvent, Provenance, RecordMeta, RecordedEvent,
    };
    use uuid::Uuid;

    use super::*;

    fn fact(position: u64, at: &str, event_type: &str, data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            draft: EventDraft {
                id: EventId(Uuid::from_u128(position as u128)),
                client_id: ClientId(Uuid::from_u128(1)),
                occurred_at: at.parse().unwrap(),
                actor: None,
                event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
            },
            provenance: Provenance {
                agency: "ngo".into(),
                credential: "ngo".into(),
            },
            meta: RecordMeta {
                version: position,
                position,
                recorded_at: at.parse().unwrap(),
            },
            personal: Default::default(),
        }
    }

    fn schedule() -> Schedule {
        Schedule::from_config(&BTreeMap::from([
            ("needs".to_owned(), 2),
            ("identity".to_owned(), 5),
        ]))
        .unwrap()
    }

    #[test]
    fn nothing_is_due_while_an_involvement_is_open() {
        let state = ClientState::from_history(
            ClientId(Uuid::from_u128(1)),
            [fact(
                1,
                "2020-01-01T10:00:00Z",
                "involvement.opened",
                json!({"role": "mentor"}),
            )],
        );
        let now = "2040-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(state.due(&schedule(), now), None);
        assert!(
            state
                .retention(&schedule(), now)
                .iter()
                .all(|r| r.due_on.is_none())
        );
    }

    #[test]
    fn categories_fall_due_years_after_the_last_involvement_closed() {
        let state = ClientState::from_history(
            ClientId(Uuid::from_u128(1)),
            [
                fact(
                    1,
                    "2020-01-01T10:00:00Z",
                    "involvement.opened",
                    json!({"role": "mentor"}),
                ),
                fact(
                    2,
                    "2021-03-15T10:00:00Z",
                    "involvement.closed",
                    json!({"role": "mentor"}),
                ),
            ],
        );
        let before = "2023-03-14T12:00:00Z".parse().unwrap();
        assert_eq!(state.due(&schedule(), before), None);
        let needs_due = "2023-03-15T12:00:00Z".parse().unwrap();
        assert_eq!(
            state.due(&schedule(), needs_due),
            Some((
                vec![Category::Needs],
                NaiveDate::from_ymd_opt(2023, 3, 15).unwrap()
            ))
        );
        let both_due = "2026-03-15T12:00:00Z".parse().unwrap();
        assert_eq!(
            state.due(&schedule(), both_due).unwrap().0,
            vec![Category::Identity, Category::Needs]
        );
    }

    /// A client whose involvement ended in 2012, with a needs assessment of then and a
    /// rectification of it recorded in November 2026: needs are not yet due in December 2026,
    /// only two years after the rectification; identity long since.
    fn needs_kept_from_november_2026(assessed: RecordedEvent, rectification: RecordedEvent) {
        let state = ClientState::from_history(
            ClientId(Uuid::from_u128(1)),
            [
                fact(
                    1,
                    "2010-01-02T10:00:00Z",
                    "involvement.opened",
                    json!({"role": "mentor"}),
                ),
                fact(
                    2,
                    "2012-01-02T10:00:00Z",
                    "involvement.closed",
                    json!({"role": "mentor"}),
                ),
                assessed,
                rectification,
            ],
        );
        let now = "2026-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            state.due(&schedule(), now).unwrap().0,
            vec![Category::Identity]
        );
        let later = "2028-11-02T12:00:00Z".parse().unwrap();
        assert_eq!(
            state.due(&schedule(), later).unwrap().0,
            vec![Category::Identity, Category::Needs]
        );
    }

    #[test]
    fn a_correction_restarts_the_clock_of_the_category_it_corrects() {
        let assessed = fact(
            3,
            "2012-01-01T10:00:00Z",
            "need.assessed",
            json!({"area": "housing", "status": "in_progress", "note": "old"}),
        );
        let mut corrected = fact(
            4,
            "2026-11-01T10:00:00Z",
            "event.corrected",
            json!({"event_id": assessed.draft.id.0, "reason": "typo",
                   "data": {"area": "housing", "status": "in_progress", "note": "new"}}),
        );
        corrected.draft.occurred_at = "2012-01-01T10:00:00Z".parse().unwrap();
        // The correction's fields are sealed under the needs key: needs are kept two years from
        // when it was recorded, though it is dated (and corrects a fact) years before.
        needs_kept_from_november_2026(assessed, corrected);
    }

    #[test]
    fn a_retraction_restarts_the_clock_of_the_category_it_retracts() {
        let assessed = fact(
            3,
            "2012-01-01T10:00:00Z",
            "need.assessed",
            json!({"area": "housing", "status": "in_progress"}),
        );
        let retracted = fact(
            4,
            "2026-11-01T10:00:00Z",
            "event.retracted",
            json!({"event_id": assessed.draft.id.0, "reason": "wrong client"}),
        );
        // The retraction's reason is sealed under the needs key; the fact it retracts is gone.
        needs_kept_from_november_2026(assessed, retracted);
    }

    #[test]
    fn a_category_recorded_after_the_involvement_ended_is_counted_from_then() {
        let state = ClientState::from_history(
            ClientId(Uuid::from_u128(1)),
            [
                fact(
                    1,
                    "2010-01-02T10:00:00Z",
                    "involvement.opened",
                    json!({"role": "mentor"}),
                ),
                fact(
                    2,
                    "2012-01-02T10:00:00Z",
                    "involvement.closed",
                    json!({"role": "mentor"}),
                ),
                fact(
                    3,
                    "2026-11-01T10:00:00Z",
                    "need.assessed",
                    json!({"area": "housing", "status": "in_progress"}),
                ),
            ],
        );
        // Needs are kept two years from the assessment, not from 2012; identity, of which
        // nothing new was recorded, is due five years after the involvement ended.
        let now = "2026-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            state.due(&schedule(), now),
            Some((
                vec![Category::Identity],
                NaiveDate::from_ymd_opt(2017, 1, 2).unwrap()
            ))
        );
        let later = "2028-11-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            state.due(&schedule(), later).unwrap().0,
            vec![Category::Identity, Category::Needs]
        );
    }

    #[test]
    fn the_schedule_names_real_categories_only() {
        assert!(Schedule::from_config(&BTreeMap::from([("health".to_owned(), 2)])).is_err());
        assert!(
            Schedule::from_config(&BTreeMap::from([("data_protection".to_owned(), 2)])).is_err()
        );
        assert!(Schedule::from_config(&BTreeMap::from([("needs".to_owned(), 0)])).is_err());
        // A period that would wrap round in months (357,913,942 years is 8 months modulo 2^32)
        // is refused, not turned into a short one.
        for years in [MAX_YEARS + 1, 357_913_942] {
            assert!(Schedule::from_config(&BTreeMap::from([("needs".to_owned(), years)])).is_err());
        }
        assert!(Schedule::from_config(&BTreeMap::from([("needs".to_owned(), MAX_YEARS)])).is_ok());
    }
}
