//! Outcome statistics without identification, for `GET /v1/statistics/outcomes`.
//!
//! [`outcomes`] reads the states of many clients, counts outcomes per group (programme, prison,
//! municipality or quarter of enrolment) and suppresses small counts before anything leaves this
//! module. It is pure: states in, report out, no I/O.
//!
//! ## What is counted
//! The unit is a *participation*: one `programme.enrolled` fact of a client, in the programme
//! asked for (any, when none is given) and enrolled on a date from `from` to `to` (both
//! inclusive, each optional). A client who enrols twice is two participations.
//!
//! A participation's *span* is its client's facts from the moment of enrolment up to, not
//! including, the client's next enrolment in the same programme. Outcomes are read from the span
//! only: what happened before enrolment is not the programme's doing, and a re-enrolment starts
//! a count of its own rather than counting the same course or job twice.
//!
//! *The release* of a participation is the first `client.released` in its span (the usual case:
//! enrolled in prison, then released), or failing that the latest release before enrolment (the
//! client enrolled after release). The job and re-offence measures run their clocks from its date;
//! without one they cannot be met, and the municipality is `unknown`.
//!
//! Every measure counts participations, or facts of participations (courses, debt cases), so the
//! groups of any grouping share out the participations and each total is the sum of its column.
//! The exact definitions are on the fields of [`OutcomeCells`]. Dates are the local dates of
//! `occurred_at` as the sender gave it, with its UTC offset.
//!
//! Only facts that identify nobody are read: event types, dates, the programme, the prison and
//! the municipality. Names, birth dates, identifiers, notes, workers and agencies are never looked
//! at, so erasing a client's personal data changes no figure.
//!
//! ## Small-cell suppression (the rule, for the data-protection officer)
//! The threshold is [`SUPPRESSION_THRESHOLD`], 10. Every cell of the report (each group's count
//! for each measure, and each total) is published as a number or replaced by `"suppressed"`:
//!
//! 1. **Primary.** A count from 1 to 9 is suppressed, in a group and in the total alike; 0 and
//!    counts of 10 or more are published. This holds for every measure, including those that
//!    count courses or debt cases rather than people (three courses may all be one person's).
//! 2. **Secondary, per measure (column).** The total of a column is the sum of its group cells,
//!    so when the total is published anyone can compute what the suppressed cells of the column
//!    hold together (the total minus the published cells). The suppressed cells are *safe* when
//!    - there are at least two of them (one alone is simply that difference),
//!    - together they hold 10 or more (their sum is itself no small count), and
//!    - none can be narrowed down to a single value, even by someone who knows, beyond what the
//!      report says, which of them are small (so 1 to 9) and which were suppressed to protect
//!      those (so 10 or more, and no larger than any cell still published, since the smallest
//!      is taken first).
//!
//!    While they are not safe, the smallest published non-zero cell of the column is suppressed
//!    too (on a tie, the first group by key); when none is left, the total is suppressed.
//! 3. **Across the measures of a group.** The measures of one group (and the totals) bound each
//!    other: entered ≥ completed + dropped out, and entered ≥ each count of participations with
//!    a job, housing or a re-offence. A suppressed cell's range above is cut by what its group
//!    publishes beside it; where that pins a cell of the column, what bounds the cells
//!    suppressed to protect others is suppressed too (or, with nothing left, the total); and a
//!    suppressed cell that its group alone would pin to one value (for a total: with what its
//!    column tells of it) has what bounds it suppressed. Rules 2 and 3 repeat until neither
//!    suppresses more.
//! 4. **The whole table at once.** Rules 2 and 3 judge a cell by its column and its group, but
//!    summed over several groups, the totals and the inequalities of rule 3 can still pin a
//!    count (entered 1, 9 and 3 beside housing 0, 9 and 3, with totals 13 and 12: the last two
//!    groups entered at least 12, so the first exactly 1). So each suppressed small count's
//!    least and greatest possible value is computed over *every* published cell together, by
//!    linear programming (`table_audit`), with the knowledge of rule 2 (which hidden cells are
//!    small). While one is pinned, one more cell is suppressed: of its column, smallest first,
//!    its column's total, its group's measures, the other totals, then any other, the first that
//!    frees it alone (or the first of them, and the check goes on); then rules 2 and 3 run
//!    again. Most cells are freed together: the greatest and the least sum of the open cells
//!    put many at a value other than their own, which frees them; the rest are solved one by
//!    one. On random tables whose rows are tight (housing secured by everyone who entered, say),
//!    it took about 1.5 ms for 10 groups, 9 ms for 100, 29 ms for 250 and 67 ms for 400 on the
//!    development machine, and 11, 47 and 152 ms for tables of 100, 250 and 400 municipalities
//!    of 1 to 25 participants each; each cell that is pinned adds solves. Reports are made one
//!    at a time.
//!
//! For example, dropouts of 12, 11, 7, 14 and 0 in five prisons, total 44: the 7 is suppressed,
//! and alone it would be 44 − 12 − 14 − 0. So the 11 is suppressed with it. Together they hold
//! 18; the small one is 7 or 8 and the other 10 or 11, as far as anyone can tell.
//!
//! So no suppressed small count can be worked out exactly from the report, not even with the
//! knowledge above (rule 4 assumes it too: which hidden cells are small, and that a cell hidden
//! to protect a small one is no larger than the cells of its column still published): it can at most be narrowed to a range, as in the example. A suppressed cell
//! is never 0. A property test checks this on random tables, column by column and row by row by
//! trial, and over the whole table with whole-number variables (the rule's own check allows
//! fractions, whose ranges hold the whole-number ones).
//!
//! What the rule does *not* cover, and access control and the audit log of the endpoint must:
//! - **Differences between queries.** Each table is protected on its own. Two queries that differ
//!   a little (date ranges a day apart, or one grouped by prison and one by quarter) can be
//!   subtracted from each other and may expose a small count.
//! - **Replaying the rule's decisions.** Someone who re-runs this rule on every table that could
//!   have produced the report (asking, say, why a second protecting cell was needed) can, in rare
//!   tables, narrow a suppressed cell further than the ranges above, sometimes to one value.
//!   Closing that needs another method, such as rounding or perturbing counts.
//! - **Which groups exist.** A group is listed only when someone in it took part, so the list of
//!   keys says that a prison or municipality had at least one participant.
//! - **Knowledge beyond the report and rule 2's.** The ranges are those the published cells,
//!   the columns' sums and the inequalities between measures allow; someone who knows more
//!   about the participants (that a prison had no drop-outs, say) knows more than the table.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize, Serializer};
use travelmap_domain::{JourneyEvent, Text};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::travel_map::{ClientState, Fact};

mod table_audit;

use table_audit::{Place, Published};

/// Counts from 1 to `SUPPRESSION_THRESHOLD - 1` are never published (see the module doc).
pub const SUPPRESSION_THRESHOLD: u64 = 10;

/// "Within 6 months of release": a job placed 0 to this many days after the release date.
pub const JOB_WINDOW_DAYS: i64 = 183;

/// "Within 12 months of release": an offence 0 to this many days after the release date.
pub const REOFFENCE_WINDOW_DAYS: i64 = 365;

/// The group key for a prison or municipality that the facts do not name.
pub const UNKNOWN_KEY: &str = "unknown";

/// The key of the only group when the query has no `group_by`.
pub const ALL_KEY: &str = "all";

/// What to count and how to group it; the query string of the endpoint, echoed in the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OutcomeQuery {
    /// Count only enrolments in this programme (exact name, e.g. `vol-mentoring`); all when
    /// absent.
    pub programme: Option<String>,
    /// Count only enrolments on or after this date (YYYY-MM-DD, in the years 1900 to 2199).
    #[serde(default, deserialize_with = "strict_date")]
    pub from: Option<NaiveDate>,
    /// Count only enrolments on or before this date (YYYY-MM-DD, in the years 1900 to 2199).
    #[serde(default, deserialize_with = "strict_date")]
    pub to: Option<NaiveDate>,
    /// How to split the participations into groups; one group `all` when absent.
    pub group_by: Option<GroupBy>,
}

/// A date in exactly the form events' dates take (`2026-01-05`, not `2026-1-5`), so that the
/// API reads dates one way wherever they appear.
fn strict_date<'de, D>(deserializer: D) -> std::result::Result<Option<NaiveDate>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|text| travelmap_domain::dates::check_date(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// How participations are split into groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// By programme name.
    Programme,
    /// By the prison of the client's latest `sentence.started` at or before enrolment
    /// (`unknown` when there is none).
    Prison,
    /// By the municipality of the participation's release (`unknown` when there is no release or
    /// it names none).
    Municipality,
    /// By the quarter of the enrolment date, e.g. `2025-Q3`.
    Quarter,
}

/// One published figure: a count, or `"suppressed"` when publishing it could identify someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Published: 0, or at least [`SUPPRESSION_THRESHOLD`].
    Count(u64),
    /// Hidden: from 1 to 9, or hidden so that another hidden count cannot be worked out.
    Suppressed,
}

impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(count) => serializer.serialize_u64(*count),
            Self::Suppressed => serializer.serialize_str("suppressed"),
        }
    }
}

impl PartialSchema for Cell {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .description(Some(
                        "The count (0, or at least the suppression threshold).",
                    )),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["suppressed"]))
                    .description(Some(
                        "The count is hidden: it is from 1 to 9, or hiding it protects another \
                         hidden count (of the same measure, or of its group beside it).",
                    )),
            )
            .description(Some(
                "A count, or the string `suppressed` when publishing it could identify someone.",
            ))
            .into()
    }
}

impl ToSchema for Cell {}

/// The measures of one group (or of the total). Each is a count, or `"suppressed"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OutcomeCells {
    /// Participations: `programme.enrolled` facts matching the query. A client enrolled twice
    /// counts twice.
    pub entered: Cell,
    /// Participations ended by a `programme.completed` of the same programme. The first
    /// completion or dropout of that programme in the span decides, so a participation is
    /// completed or dropped out, never both (and neither while it is still running).
    pub completed: Cell,
    /// Participations ended by a `programme.dropped_out` of the same programme (decided as for
    /// `completed`).
    pub dropped_out: Cell,
    /// `retraining.completed` facts during the participation: in the span, and no later than
    /// the completion or dropout that ended it, if one did. Courses, not people. A course
    /// completed while the client takes part in two programmes counts for each participation,
    /// so a total over programmes counts it twice.
    pub retraining_completed: Cell,
    /// `debt_case.closed` facts during the participation, as for courses: cases, not people
    /// (once per participation the closing falls in).
    pub debt_cases_closed: Cell,
    /// Participations with a `job.placed` in the span dated 0 to 183 days after the release
    /// date. No release, no job counted.
    pub job_within_6_months: Cell,
    /// Participations with at least one `housing.secured` in the span.
    pub housing_secured: Cell,
    /// Participations with a `reoffence.recorded` in the span whose offence date (or, when the
    /// sender gave none, the date it was recorded as happening) is 0 to 365 days after the
    /// release date.
    pub reoffence_within_12_months: Cell,
}

/// One group of participations and its measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OutcomeGroup {
    /// The programme, prison, municipality or quarter (`2025-Q3`); `unknown` when the facts do
    /// not say; `all` when the query has no `group_by`.
    pub key: String,
    pub cells: OutcomeCells,
}

/// The measures over all groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OutcomeTotal {
    pub cells: OutcomeCells,
}

/// Outcome statistics: aggregates only, small counts suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OutcomeReport {
    /// The query these figures answer.
    pub query: OutcomeQuery,
    /// Counts from 1 to one less than this are suppressed, and further counts are suppressed so
    /// that no hidden count can be recovered by subtraction.
    pub suppression_threshold: u64,
    /// The groups, sorted by key.
    pub groups: Vec<OutcomeGroup>,
    /// All groups together (each measure is the sum of its groups, suppressed or not).
    pub total: OutcomeTotal,
}

/// Counts the outcomes of the participations matching `query` and suppresses small counts.
pub fn outcomes<'a>(
    clients: impl IntoIterator<Item = &'a ClientState>,
    query: &OutcomeQuery,
) -> OutcomeReport {
    let groups = tally(clients, query);
    let rows: Vec<[u64; MEASURES]> = groups.values().map(Counts::as_columns).collect();
    let (group_cells, total_cells) = suppress_table(&rows);
    OutcomeReport {
        query: query.clone(),
        suppression_threshold: SUPPRESSION_THRESHOLD,
        groups: groups
            .into_keys()
            .zip(group_cells)
            .map(|(key, cells)| OutcomeGroup {
                key,
                cells: OutcomeCells::from_columns(cells),
            })
            .collect(),
        total: OutcomeTotal {
            cells: OutcomeCells::from_columns(total_cells),
        },
    }
}

// ----- counting ------------------------------------------------------------------------------

/// How many measures a row has; the order of [`Counts::as_columns`] and
/// [`OutcomeCells::from_columns`].
const MEASURES: usize = 8;

/// The raw (unsuppressed) measures of a group. Never leaves this module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    entered: u64,
    completed: u64,
    dropped_out: u64,
    retraining_completed: u64,
    debt_cases_closed: u64,
    job_within_6_months: u64,
    housing_secured: u64,
    reoffence_within_12_months: u64,
}

impl Counts {
    fn add(&mut self, other: &Self) {
        let (mine, theirs) = (self.as_columns(), other.as_columns());
        *self = Self::from_columns(std::array::from_fn(|measure| {
            mine[measure] + theirs[measure]
        }));
    }

    fn as_columns(&self) -> [u64; MEASURES] {
        [
            self.entered,
            self.completed,
            self.dropped_out,
            self.retraining_completed,
            self.debt_cases_closed,
            self.job_within_6_months,
            self.housing_secured,
            self.reoffence_within_12_months,
        ]
    }

    fn from_columns(columns: [u64; MEASURES]) -> Self {
        let [
            entered,
            completed,
            dropped_out,
            retraining_completed,
            debt_cases_closed,
            job_within_6_months,
            housing_secured,
            reoffence_within_12_months,
        ] = columns;
        Self {
            entered,
            completed,
            dropped_out,
            retraining_completed,
            debt_cases_closed,
            job_within_6_months,
            housing_secured,
            reoffence_within_12_months,
        }
    }
}

impl OutcomeCells {
    fn from_columns(columns: [Cell; MEASURES]) -> Self {
        let [
            entered,
            completed,
            dropped_out,
            retraining_completed,
            debt_cases_closed,
            job_within_6_months,
            housing_secured,
            reoffence_within_12_months,
        ] = columns;
        Self {
            entered,
            completed,
            dropped_out,
            retraining_completed,
            debt_cases_closed,
            job_within_6_months,
            housing_secured,
            reoffence_within_12_months,
        }
    }
}

impl OutcomeQuery {
    fn admits(&self, participation: &Participation<'_>) -> bool {
        let enrolled_on = participation.enrolled_on;
        self.programme
            .as_deref()
            .is_none_or(|wanted| wanted == participation.programme)
            && self.from.is_none_or(|from| from <= enrolled_on)
            && self.to.is_none_or(|to| enrolled_on <= to)
    }
}

/// The raw counts per group key, sorted by key. Without `group_by` there is always the one group
/// `all`, even when empty, so the report has the same shape whatever the data.
fn tally<'a>(
    clients: impl IntoIterator<Item = &'a ClientState>,
    query: &OutcomeQuery,
) -> BTreeMap<String, Counts> {
    let mut groups = BTreeMap::new();
    if query.group_by.is_none() {
        groups.insert(ALL_KEY.to_owned(), Counts::default());
    }
    for state in clients {
        for participation in participations(state) {
            if !query.admits(&participation) {
                continue;
            }
            let release = participation.release();
            let key = match query.group_by {
                None => ALL_KEY.to_owned(),
                Some(GroupBy::Programme) => participation.programme.to_owned(),
                Some(GroupBy::Prison) => participation.prison().unwrap_or(UNKNOWN_KEY).to_owned(),
                Some(GroupBy::Municipality) => release
                    .as_ref()
                    .and_then(|release| release.municipality)
                    .unwrap_or(UNKNOWN_KEY)
                    .to_owned(),
                Some(GroupBy::Quarter) => quarter(participation.enrolled_on),
            };
            groups
                .entry(key)
                .or_default()
                .add(&participation.counts(release.as_ref()));
        }
    }
    groups
}

/// `2025-Q3` for a date in July to September 2025.
fn quarter(date: NaiveDate) -> String {
    format!("{}-Q{}", date.year(), date.month0() / 3 + 1)
}

/// One enrolment of a client, with the facts that bear on it.
struct Participation<'s> {
    programme: &'s str,
    enrolled_on: NaiveDate,
    /// The client's facts up to and including the moment of enrolment.
    until_enrolment: &'s [Fact],
    /// The client's facts from the moment of enrolment up to, not including, their next
    /// enrolment in the same programme.
    span: &'s [Fact],
}

/// The release a participation's clocks run from.
struct Release<'s> {
    on: NaiveDate,
    municipality: Option<&'s str>,
}

/// How a participation ended, when it has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Completed,
    DroppedOut,
}

fn participations(state: &ClientState) -> impl Iterator<Item = Participation<'_>> {
    let facts = state.facts.as_slice();
    facts.iter().enumerate().filter_map(move |(index, fact)| {
        let JourneyEvent::ProgrammeEnrolled(enrolled) = &fact.event else {
            return None;
        };
        let programme = enrolled.programme.as_str();
        let enrolled_at = fact.occurred_at;
        // Facts are sorted by the moment they happened, so both bounds are partition points.
        // Comparing moments rather than indexes puts a fact of the same moment but recorded
        // earlier on the enrolment's side, where it belongs.
        let span_start = facts.partition_point(|other| other.occurred_at < enrolled_at);
        let until_end = facts.partition_point(|other| other.occurred_at <= enrolled_at);
        let span_end = facts[index + 1..]
            .iter()
            .position(|later| matches!(&later.event, JourneyEvent::ProgrammeEnrolled(next) if next.programme.as_str() == programme))
            .map_or(facts.len(), |offset| index + 1 + offset);
        Some(Participation {
            programme,
            enrolled_on: enrolled_at.date_naive(),
            until_enrolment: &facts[..until_end],
            span: &facts[span_start..span_end],
        })
    })
}

impl<'s> Participation<'s> {
    /// The prison of the latest sentence started at or before enrolment.
    fn prison(&self) -> Option<&'s str> {
        self.until_enrolment
            .iter()
            .rev()
            .find_map(|fact| match &fact.event {
                JourneyEvent::SentenceStarted(sentence) => Some(sentence.prison.as_str()),
                _ => None,
            })
    }

    /// The first release in the span, or else the latest one before enrolment.
    fn release(&self) -> Option<Release<'s>> {
        fn as_release(fact: &Fact) -> Option<Release<'_>> {
            match &fact.event {
                JourneyEvent::ClientReleased(released) => Some(Release {
                    on: fact.occurred_at.date_naive(),
                    municipality: released.municipality.as_ref().map(Text::as_str),
                }),
                _ => None,
            }
        }
        self.span
            .iter()
            .find_map(as_release)
            .or_else(|| self.until_enrolment.iter().rev().find_map(as_release))
    }

    fn counts(&self, release: Option<&Release<'_>>) -> Counts {
        let within_days_of_release = |date: NaiveDate, days: i64| {
            release.is_some_and(|release| (0..=days).contains(&(date - release.on).num_days()))
        };
        let mut counts = Counts {
            entered: 1,
            ..Counts::default()
        };
        let mut ending = None;
        // When the participation ended; courses and debt cases after it are not its doing (the
        // job, housing and re-offence measures look past it, from the release).
        let mut ended_at = None;
        let during =
            |fact: &Fact, ended_at: Option<_>| ended_at.is_none_or(|end| fact.occurred_at <= end);
        let mut job = false;
        let mut housing = false;
        let mut reoffence = false;
        for fact in self.span {
            let on = fact.occurred_at.date_naive();
            match &fact.event {
                JourneyEvent::ProgrammeCompleted(completed)
                    if ending.is_none() && completed.programme.as_str() == self.programme =>
                {
                    ending = Some(Ending::Completed);
                    ended_at = Some(fact.occurred_at);
                }
                JourneyEvent::ProgrammeDroppedOut(dropped)
                    if ending.is_none() && dropped.programme.as_str() == self.programme =>
                {
                    ending = Some(Ending::DroppedOut);
                    ended_at = Some(fact.occurred_at);
                }
                JourneyEvent::RetrainingCompleted(_) if during(fact, ended_at) => {
                    counts.retraining_completed += 1;
                }
                JourneyEvent::DebtCaseClosed(_) if during(fact, ended_at) => {
                    counts.debt_cases_closed += 1;
                }
                JourneyEvent::JobPlaced(_) => job |= within_days_of_release(on, JOB_WINDOW_DAYS),
                JourneyEvent::HousingSecured(_) => housing = true,
                JourneyEvent::ReoffenceRecorded(reoffence_recorded) => {
                    let offence_on = reoffence_recorded.offence_date.unwrap_or(on);
                    reoffence |= within_days_of_release(offence_on, REOFFENCE_WINDOW_DAYS);
                }
                _ => {}
            }
        }
        counts.completed = u64::from(ending == Some(Ending::Completed));
        counts.dropped_out = u64::from(ending == Some(Ending::DroppedOut));
        counts.job_within_6_months = u64::from(job);
        counts.housing_secured = u64::from(housing);
        counts.reoffence_within_12_months = u64::from(reoffence);
        counts
    }
}

// ----- suppression ---------------------------------------------------------------------------

/// A count that primary suppression hides.
fn is_small(count: u64) -> bool {
    (1..SUPPRESSION_THRESHOLD).contains(&count)
}

/// One measure after suppression: its group cells, in the order given, and its total.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SuppressedColumn {
    groups: Vec<Cell>,
    total: Cell,
}

/// Suppresses one measure given its group counts; the total is their sum (the groups share out
/// the participations). Primary and secondary suppression as in the module doc.
#[cfg(test)]
fn suppress_column(values: &[u64]) -> SuppressedColumn {
    let hidden = vec![false; values.len()];
    let unbounded = vec![Bound::NONE; values.len()];
    suppress_column_with(values, &hidden, &hidden, &unbounded, false)
}

/// What the published measures beside a hidden cell, in its group, tell of it (see
/// [`row_bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bound {
    least: u64,
    most: u64,
}

impl Bound {
    const NONE: Bound = Bound {
        least: 0,
        most: u64::MAX,
    };

    fn cut(self, range: RangeInclusive<u64>) -> RangeInclusive<u64> {
        (*range.start()).max(self.least)..=(*range.end()).min(self.most)
    }
}

/// [`suppress_column`], with the cells `hidden` already hidden (by earlier rounds of
/// [`suppress_table`]; `for_row` those hidden because they pinned a measure of their row, not to
/// protect a small cell of this column), each cell's [`Bound`] from its group, and the total
/// hidden too if `total_hidden`.
fn suppress_column_with(
    values: &[u64],
    hidden: &[bool],
    for_row: &[bool],
    bounds: &[Bound],
    total_hidden: bool,
) -> SuppressedColumn {
    let total: u64 = values.iter().sum();
    let mut hidden: Vec<bool> = values
        .iter()
        .zip(hidden)
        .map(|(&value, &hidden)| is_small(value) || hidden)
        .collect();
    let mut total_hidden = total_hidden || is_small(total);
    // With the total published, the hidden cells' sum is public. Hide more until no hidden cell
    // can be narrowed down to one value and the sum is no small count itself. Each pass hides one
    // more cell or the total, so this ends.
    while !total_hidden && !hidden_cells_are_safe(values, &hidden, for_row, bounds, false) {
        // Zeros stay published: hiding one adds nothing to the hidden sum, so protects nothing.
        let smallest_published = values
            .iter()
            .enumerate()
            .filter(|&(index, &value)| !hidden[index] && value > 0)
            .min_by_key(|&(index, &value)| (value, index))
            .map(|(index, _)| index);
        match smallest_published {
            Some(index) => hidden[index] = true,
            // Nothing left to hide with them, as in `9, 9, 0`: a published 18 would give both
            // 9s away, so the total goes.
            None => total_hidden = true,
        }
    }
    let cell = |value: u64, is_hidden: bool| {
        if is_hidden {
            Cell::Suppressed
        } else {
            Cell::Count(value)
        }
    };
    SuppressedColumn {
        groups: values
            .iter()
            .zip(hidden)
            .map(|(&value, is_hidden)| cell(value, is_hidden))
            .collect(),
        total: cell(total, total_hidden),
    }
}

/// Whether the hidden cells of a column with a published total are safe: none hidden, or
/// together at least the threshold with none narrowed to a single value by
/// [`attacker_ranges`]. (A single hidden cell always is: it is the total minus the rest.)
fn hidden_cells_are_safe(
    values: &[u64],
    hidden: &[bool],
    for_row: &[bool],
    bounds: &[Bound],
    bound_protectors: bool,
) -> bool {
    let hidden_sum: u64 = values
        .iter()
        .zip(hidden)
        .filter_map(|(&value, &is_hidden)| is_hidden.then_some(value))
        .sum();
    let ranges = attacker_ranges(values, hidden, for_row, bounds, bound_protectors);
    ranges.is_empty()
        || (hidden_sum >= SUPPRESSION_THRESHOLD
            && ranges.iter().all(|(_, range)| range.start() < range.end()))
}

/// What someone could narrow each hidden cell down to (index, inclusive range), knowing the
/// total, the published cells and this rule. To err on the safe side they are assumed to know
/// even which hidden cells are small (so from 1 to 9) and which were hidden to protect others
/// (so at least 10, and no more than any cell still published, since the smallest was taken),
/// or for their row (`for_row`: at least 10). Each range is cut by what the cell's group
/// publishes beside it (`bounds`), then by the sum of the hidden cells (the total minus the
/// published cells) and the ranges of the others.
fn attacker_ranges(
    values: &[u64],
    hidden: &[bool],
    for_row: &[bool],
    bounds: &[Bound],
    bound_protectors: bool,
) -> Vec<(usize, RangeInclusive<u64>)> {
    let total: u64 = values.iter().sum();
    let published_nonzero: Vec<(usize, u64)> = values
        .iter()
        .enumerate()
        .filter(|&(index, &value)| !hidden[index] && value > 0)
        .map(|(index, &value)| (index, value))
        .collect();
    let own_range = |index: usize| {
        if is_small(values[index]) {
            return bounds[index].cut(1..=SUPPRESSION_THRESHOLD - 1);
        }
        if for_row[index] {
            return bounds[index].cut(SUPPRESSION_THRESHOLD..=total);
        }
        // Taken as the smallest by (value, index): no larger than a later published cell,
        // smaller than an earlier one. Its row's bound is left out while the column picks its
        // protecting cells, and then applied (see `suppress_table`).
        let most = protector_most(index, published_nonzero.iter().copied())
            .map_or(total, |most| most.min(total));
        let range = SUPPRESSION_THRESHOLD..=most;
        if bound_protectors {
            bounds[index].cut(range)
        } else {
            range
        }
    };
    let own: Vec<(usize, RangeInclusive<u64>)> = (0..values.len())
        .filter(|&index| hidden[index])
        .map(|index| (index, own_range(index)))
        .collect();
    let hidden_sum: u64 = own.iter().map(|(index, _)| values[*index]).sum();
    let least_of_all: u64 = own.iter().map(|(_, range)| *range.start()).sum();
    let most_of_all: u64 = own.iter().map(|(_, range)| *range.end()).sum();
    own.iter()
        .map(|(index, range)| {
            let least_of_others = least_of_all - range.start();
            let most_of_others = most_of_all - range.end();
            let least = (*range.start()).max(hidden_sum.saturating_sub(most_of_others));
            let most = (*range.end()).min(hidden_sum.saturating_sub(least_of_others));
            (*index, least..=most)
        })
        .collect()
}

/// The most a cell rule 2 took to protect a small one may hold, from the published non-zero
/// cells of its column (group index, count): the smallest was taken first, and on a tie the
/// first group, so it is no larger than any cell of a later group and smaller than any of an
/// earlier one. `None` with nothing published.
fn protector_most(
    index: usize,
    published_nonzero: impl Iterator<Item = (usize, u64)>,
) -> Option<u64> {
    published_nonzero
        .map(|(other, value)| if index < other { value } else { value - 1 })
        .min()
}

/// Where the measures of a group sit in its row.
const ENTERED: usize = 0;
const COMPLETED: usize = 1;
const DROPPED_OUT: usize = 2;
/// The measures that count participations with some property, so each is at most `entered` of
/// its group: jobs within 6 months, housing secured, re-offences within 12 months. (`completed`
/// and `dropped_out` are too, and together, since a participation ends one way; the courses and
/// debt cases are counted as such and bound nothing.)
const AT_MOST_ENTERED: [usize; 3] = [5, 6, 7];

/// What the published measures of a row tell of its hidden measure `measure`: `entered` is at
/// least the published `completed` plus `dropped_out`, and at least each published count of
/// participations; those are at most the published `entered` (less the other way of ending, for
/// `completed` and `dropped_out`).
fn row_bound(
    row: &[u64; MEASURES],
    published: impl Fn(usize) -> bool,
    known: impl Fn(usize) -> RangeInclusive<u64>,
    measure: usize,
) -> Bound {
    let shown = |measure: usize| published(measure).then_some(row[measure]);
    // What is known of a measure at the least and at the most: its count, or, hidden, what its
    // column tells (a hidden small `entered` is at most 9, and so is all it bounds).
    let least = |measure: usize| shown(measure).unwrap_or_else(|| *known(measure).start());
    let most = |measure: usize| shown(measure).unwrap_or_else(|| *known(measure).end());
    let mut bound = Bound::NONE;
    match measure {
        ENTERED => {
            let ended = least(COMPLETED) + least(DROPPED_OUT);
            bound.least = AT_MOST_ENTERED
                .iter()
                .map(|&measure| least(measure))
                .fold(ended, u64::max);
        }
        COMPLETED | DROPPED_OUT => {
            let other = if measure == COMPLETED {
                DROPPED_OUT
            } else {
                COMPLETED
            };
            bound.most = most(ENTERED).saturating_sub(least(other));
        }
        _ if AT_MOST_ENTERED.contains(&measure) => {
            bound.most = most(ENTERED);
        }
        _ => {}
    }
    bound
}

/// What anyone knows of a group's hidden cell of `count` from the rule alone: zeros are never
/// hidden, a small count is 1 to 9, any other 10 or more.
fn known_of_group_cell(count: u64) -> RangeInclusive<u64> {
    if count == 0 {
        0..=0
    } else if is_small(count) {
        1..=SUPPRESSION_THRESHOLD - 1
    } else {
        SUPPRESSION_THRESHOLD..=u64::MAX
    }
}

/// What anyone knows of the hidden total of a column from its published cells and the rule:
/// the published cells plus at least one per small hidden cell and ten per other, and at most
/// nine per small one if none is large; cut by what the total's own size says.
fn known_of_total(column: impl Iterator<Item = (u64, bool)>, total: u64) -> RangeInclusive<u64> {
    let (mut least, mut most) = (0u64, 0u64);
    for (count, hidden) in column {
        let known = if hidden {
            known_of_group_cell(count)
        } else {
            count..=count
        };
        least += known.start();
        most = most.saturating_add(*known.end());
    }
    let own = known_of_group_cell(total);
    least.max(*own.start())..=most.min(*own.end())
}

/// The published measures that give a hidden `measure` its [`row_bound`]: hiding them lifts it.
fn bounding(measure: usize) -> &'static [usize] {
    match measure {
        ENTERED => &[COMPLETED, DROPPED_OUT, 5, 6, 7],
        COMPLETED => &[ENTERED, DROPPED_OUT],
        DROPPED_OUT => &[ENTERED, COMPLETED],
        5..=7 => &[ENTERED],
        _ => &[],
    }
}

/// Suppresses every measure (column) of a table of group rows; returns the rows and the total.
///
/// Each column is suppressed as in [`suppress_column`], but the measures of a group bound each
/// other ([`row_bound`]): a hidden `entered` of 44 beside a published 24 completed and 20
/// dropped out is known to be 44, and a small cell it protects with it. So a column's check
/// cuts each hidden cell's range by its row's bound, and a hidden cell that its row alone pins
/// to one value (the column total hidden or not) has the published measures that bound it
/// hidden as well. Rounds repeat until nothing changes: each hides at least one more cell.
fn suppress_table(rows: &[[u64; MEASURES]]) -> (Vec<[Cell; MEASURES]>, [Cell; MEASURES]) {
    let (group_cells, total_cells, _) = suppress_table_explained(rows);
    (group_cells, total_cells)
}

/// [`suppress_table`], and which group cells were hidden for their row (see
/// [`hide_what_pins`]) rather than to protect a small cell of their column.
#[allow(clippy::type_complexity)]
fn suppress_table_explained(
    rows: &[[u64; MEASURES]],
) -> (
    Vec<[Cell; MEASURES]>,
    [Cell; MEASURES],
    Vec<[bool; MEASURES]>,
) {
    let mut for_row = vec![[false; MEASURES]; rows.len()];
    let mut total_for_row = [false; MEASURES];
    let mut hidden: Vec<[bool; MEASURES]> = rows.iter().map(|row| row.map(is_small)).collect();
    let totals: [u64; MEASURES] =
        std::array::from_fn(|measure| rows.iter().map(|row| row[measure]).sum());
    let mut total_hidden = totals.map(is_small);
    let mut cleared = BTreeSet::new();
    // Rules 1 to 3 until they hide nothing more, then the whole table's check (rule 4): while
    // it finds a small count pinned, hide one more cell and go round again.
    loop {
        loop {
            let before = (hidden.clone(), total_hidden);
            for measure in 0..MEASURES {
                let values: Vec<u64> = rows.iter().map(|row| row[measure]).collect();
                let column_hidden: Vec<bool> = hidden.iter().map(|row| row[measure]).collect();
                let column_for_row: Vec<bool> = for_row.iter().map(|row| row[measure]).collect();
                let bounds: Vec<Bound> = rows
                    .iter()
                    .zip(&hidden)
                    .map(|(row, hidden)| {
                        row_bound(
                            row,
                            |other| !hidden[other],
                            |other| known_of_group_cell(row[other]),
                            measure,
                        )
                    })
                    .collect();
                let column = suppress_column_with(
                    &values,
                    &column_hidden,
                    &column_for_row,
                    &bounds,
                    total_hidden[measure],
                );
                for (row, cell) in hidden.iter_mut().zip(&column.groups) {
                    row[measure] = *cell == Cell::Suppressed;
                }
                total_hidden[measure] = column.total == Cell::Suppressed;
                // A protecting cell must not be read off the published measures beside it either:
                // if its row's bound pins a hidden cell of the column, what bounds the protecting
                // cells is hidden too (or, with nothing left to hide, the total).
                if !total_hidden[measure] {
                    let hidden_now: Vec<bool> = hidden.iter().map(|row| row[measure]).collect();
                    let for_row_now: Vec<bool> = for_row.iter().map(|row| row[measure]).collect();
                    if !hidden_cells_are_safe(&values, &hidden_now, &for_row_now, &bounds, true) {
                        let mut freed = false;
                        for ((row, hidden), for_row) in
                            rows.iter().zip(&mut hidden).zip(&mut for_row)
                        {
                            let protecting =
                                hidden[measure] && !is_small(row[measure]) && !for_row[measure];
                            if !protecting {
                                continue;
                            }
                            for &other in bounding(measure) {
                                if row[other] > 0 && !hidden[other] {
                                    hidden[other] = true;
                                    for_row[other] = true;
                                    freed = true;
                                }
                            }
                        }
                        if !freed {
                            total_hidden[measure] = true;
                        }
                    }
                }
            }
            for (row, (hidden, for_row)) in
                rows.iter().zip(hidden.iter_mut().zip(for_row.iter_mut()))
            {
                let known = |measure: usize| known_of_group_cell(row[measure]);
                for pinning in pinning_measures(row, hidden, &known) {
                    hidden[pinning] = true;
                    for_row[pinning] = true;
                }
            }
            // A hidden total that its published cells add up to hides nothing: it counts as shown.
            for (measure, total_hidden) in total_hidden.iter_mut().enumerate() {
                if *total_hidden && hidden.iter().all(|row| !row[measure]) {
                    *total_hidden = false;
                }
            }
            let known_total = |measure: usize| {
                known_of_total(
                    rows.iter()
                        .zip(&hidden)
                        .map(|(row, hidden)| (row[measure], hidden[measure])),
                    totals[measure],
                )
            };
            for pinning in pinning_measures(&totals, &total_hidden, &known_total) {
                if hidden.iter().all(|row| !row[pinning]) {
                    // Its cells would give it away: hide the smallest of them instead (the column's
                    // own rule then protects it).
                    if let Some(row) = (0..rows.len())
                        .filter(|&row| rows[row][pinning] > 0)
                        .min_by_key(|&row| (rows[row][pinning], row))
                    {
                        hidden[row][pinning] = true;
                        for_row[row][pinning] = true;
                    }
                } else {
                    total_hidden[pinning] = true;
                    total_for_row[pinning] = true;
                }
            }
            if (hidden.clone(), total_hidden) == before {
                break;
            }
        }
        let published = Published {
            rows,
            totals: &totals,
            hidden: &hidden,
            total_hidden: &total_hidden,
            for_row: &for_row,
        };
        let Some(pinned) = published.first_pinned_but(false, &mut cleared) else {
            break;
        };
        // Nothing left to hide cannot happen while a small count is pinned (with every non-zero
        // cell hidden, the ranges of small ones stay 1 to 9), but if it did, what is hidden
        // stays hidden and nothing more can be done.
        let Some(next) = table_audit::what_to_hide(&published, pinned) else {
            break;
        };
        // Hidden to protect another cell, like a cell hidden for its row: known only to be at
        // least 10, not the smallest of its column.
        match next {
            Place::Group(row, measure) => {
                hidden[row][measure] = true;
                for_row[row][measure] = true;
            }
            Place::Total(measure) => {
                total_hidden[measure] = true;
                total_for_row[measure] = true;
            }
        }
    }
    let cell = |value: u64, hidden: bool| {
        if hidden {
            Cell::Suppressed
        } else {
            Cell::Count(value)
        }
    };
    let group_cells = rows
        .iter()
        .zip(&hidden)
        .map(|(row, hidden)| std::array::from_fn(|measure| cell(row[measure], hidden[measure])))
        .collect();
    let total_cells = std::array::from_fn(|measure| cell(totals[measure], total_hidden[measure]));
    (group_cells, total_cells, for_row)
}

/// The published measures of one row (a group's or the totals) that pin one of its hidden
/// measures to a single value by [`row_bound`], given what the columns tell of each (`known`).
fn pinning_measures(
    row: &[u64; MEASURES],
    hidden: &[bool; MEASURES],
    known: &dyn Fn(usize) -> RangeInclusive<u64>,
) -> Vec<usize> {
    let mut pinning = Vec::new();
    for measure in (0..MEASURES).filter(|&measure| hidden[measure]) {
        let bound = row_bound(row, |other| !hidden[other], known, measure);
        let range = bound.cut(known(measure));
        if range.start() >= range.end() {
            pinning.extend(
                bounding(measure)
                    .iter()
                    .filter(|&&other| row[other] > 0 && !hidden[other]),
            );
        }
    }
    pinning.sort_unstable();
    pinning.dedup();
    pinning
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::iter::once;

    use chrono::{DateTime, Duration, FixedOffset, Utc};
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use travelmap_domain::{ClientId, EventDraft, EventId, Provenance, RecordMeta, RecordedEvent};
    use uuid::Uuid;

    use super::*;

    const VOL: &str = "vol-mentoring";
    const RUBIKON: &str = "rubikon-mentoring";

    /// What VOL Mentoring reported (seed 004; /work/shared/domain.md, "Figures from the seeds").
    /// "Over 100 jobs after release" is read as 101 clients with a job within 6 months.
    struct SeedFigures {
        entered: u64,
        completed: u64,
        dropped_out: u64,
        retraining_courses: u64,
        debt_cases_closed: u64,
        jobs_within_6_months: u64,
    }

    const VOL_SEED: SeedFigures = SeedFigures {
        entered: 178,
        completed: 134,
        dropped_out: 44,
        retraining_courses: 64,
        debt_cases_closed: 65,
        jobs_within_6_months: 101,
    };

    /// Members of a group who take courses. Course `c` goes to member `c % COURSE_TAKERS`, so
    /// some members finish two or three: the statistics must count courses, not people.
    const COURSE_TAKERS: u64 = 10;

    // ----- generating a cohort -------------------------------------------------------------

    /// Builds one client's recorded history an event at a time, as the store would record it.
    struct Journal {
        client_id: ClientId,
        events: Vec<RecordedEvent>,
    }

    impl Journal {
        fn new(client_number: u64) -> Self {
            Self {
                client_id: ClientId(Uuid::from_u128(u128::from(client_number) + 1)),
                events: Vec::new(),
            }
        }

        fn record(&mut self, on: NaiveDate, event_type: &str, data: Value) -> EventId {
            let version = self.events.len() as u64 + 1;
            let id = EventId(Uuid::from_u128(
                (self.client_id.0.as_u128() << 32) | u128::from(version),
            ));
            let occurred_at: DateTime<FixedOffset> =
                format!("{on}T09:00:00+01:00").parse().unwrap();
            let event = JourneyEvent::decode(event_type, 1, &data)
                .unwrap_or_else(|error| panic!("{event_type} {data}: {error:?}"));
            self.events.push(RecordedEvent {
                draft: EventDraft {
                    id,
                    client_id: self.client_id,
                    occurred_at,
                    actor: Some(Text::try_from("worker-17").unwrap()),
                    event,
                },
                provenance: Provenance {
                    agency: "vol".into(),
                    credential: "vol-key".into(),
                },
                meta: RecordMeta {
                    version,
                    position: version,
                    recorded_at: occurred_at.with_timezone(&Utc),
                },
                personal: Default::default(),
            });
            id
        }

        fn state(self) -> ClientState {
            ClientState::from_history(self.client_id, self.events)
        }
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn days(count: u64) -> Duration {
        Duration::days(i64::try_from(count).unwrap())
    }

    /// A group of clients to generate: where they were, and how many of them reach each
    /// outcome (in the order of the measures).
    struct CohortRow {
        programme: &'static str,
        prison: &'static str,
        municipality: &'static str,
        planned: Counts,
    }

    fn row(
        programme: &'static str,
        prison: &'static str,
        municipality: &'static str,
        planned: [u64; MEASURES],
    ) -> CohortRow {
        CohortRow {
            programme,
            prison,
            municipality,
            planned: Counts::from_columns(planned),
        }
    }

    /// One generated client, with what the generator meant their history to count for.
    struct GeneratedClient {
        state: ClientState,
        programme: &'static str,
        prison: &'static str,
        municipality: &'static str,
        enrolled_on: NaiveDate,
        expected: Counts,
    }

    /// VOL Mentoring over five prisons, split so that the sums are the seed's figures, with one
    /// small cell (7 dropouts at Mirov) among otherwise publishable dropout counts; and a small
    /// RUBIKON group, so that the programme filter has something to keep out.
    fn cohort() -> Vec<GeneratedClient> {
        // entered, completed, dropped out, courses, debt cases closed, jobs ≤ 6 months,
        // housing secured, re-offences ≤ 12 months
        generate(&[
            row(VOL, "Hermanice", "Ostrava", [52, 40, 12, 20, 18, 30, 35, 9]),
            row(VOL, "Karvina", "Karvina", [41, 30, 11, 15, 16, 24, 28, 6]),
            row(VOL, "Mirov", "Sumperk", [38, 31, 7, 14, 12, 22, 25, 5]),
            row(VOL, "Opava", "Opava", [30, 16, 14, 9, 11, 15, 20, 4]),
            row(VOL, "Vinarice", "Kladno", [17, 17, 0, 6, 8, 10, 12, 0]),
            row(RUBIKON, "Opava", "Opava", [12, 8, 2, 3, 2, 5, 6, 1]),
        ])
    }

    fn generate(rows: &[CohortRow]) -> Vec<GeneratedClient> {
        let mut clients = Vec::new();
        for row in rows {
            let first = clients.len();
            for member in 0..row.planned.entered {
                let number = clients.len() as u64;
                clients.push(generate_member(row, member, number));
            }
            // The generator must do what the row says, or the tests below prove nothing.
            let generated = sum(clients[first..].iter().map(|client| client.expected));
            assert_eq!(
                generated, row.planned,
                "{} at {}",
                row.programme, row.prison
            );
        }
        clients
    }

    fn generate_member(row: &CohortRow, member: u64, number: u64) -> GeneratedClient {
        let plan = &row.planned;
        // Enrolments over 2024 and 2025 in a scrambled order (37 and 730 are coprime, so every
        // client gets a day of their own), so quarters and date filters cut across prisons.
        let enrolled_on = date("2024-01-08") + days(number * 37 % 730);
        let sentenced_on = enrolled_on - days(60);
        let released_on = enrolled_on + days(150);
        let after_release = |count: i64| released_on + Duration::days(count);
        let mut journal = Journal::new(number);
        let mut expected = Counts {
            entered: 1,
            ..Counts::default()
        };

        journal.record(
            sentenced_on,
            "client.registered",
            json!({
                "identifiers": [{"type": "prison_number", "value": format!("P-{number}")}],
                "personal": {"given_name": "Jan", "family_name": format!("Novák {number}"),
                             "birth_date": "1990-05-17"},
            }),
        );
        journal.record(
            sentenced_on,
            "sentence.started",
            json!({"prison": row.prison, "start_date": sentenced_on}),
        );
        journal.record(
            enrolled_on,
            "programme.enrolled",
            json!({"programme": row.programme}),
        );
        journal.record(
            enrolled_on,
            "need.assessed",
            json!({"area": "finance", "status": "support_required",
                   "note": "Owes rent to his brother in Opava"}),
        );
        journal.record(
            released_on,
            "client.released",
            json!({"release_kind": "conditional", "supervision": true,
                   "municipality": row.municipality}),
        );
        if member.is_multiple_of(2) {
            journal.record(
                after_release(20),
                "family_contact.restored",
                json!({"note": "Sees his daughter on Sundays"}),
            );
        }

        // The first `completed` members complete, the next `dropped_out` drop out, and any
        // others are still in the programme.
        if member < plan.completed {
            journal.record(
                after_release(180),
                "programme.completed",
                json!({"programme": row.programme}),
            );
            expected.completed = 1;
        } else if member < plan.completed + plan.dropped_out {
            journal.record(
                after_release(45),
                "programme.dropped_out",
                json!({"programme": row.programme, "reason": "moved away"}),
            );
            expected.dropped_out = 1;
        }

        let course_takers = COURSE_TAKERS.min(plan.entered);
        for course in
            (0..plan.retraining_completed).filter(|course| course % course_takers == member)
        {
            journal.record(
                enrolled_on + days(20 + course),
                "retraining.completed",
                json!({"course": "welding", "certificate": true}),
            );
            expected.retraining_completed += 1;
        }
        // A course finished before enrolment is not the programme's outcome.
        if member == 0 {
            journal.record(
                enrolled_on - days(10),
                "retraining.completed",
                json!({"course": "forklift"}),
            );
        }

        if member < plan.debt_cases_closed {
            let case = json!(format!("D-{number}"));
            journal.record(
                enrolled_on + days(10),
                "debt_case.opened",
                json!({"case_ref": case}),
            );
            journal.record(
                after_release(40),
                "debt_case.closed",
                json!({"case_ref": case, "outcome": "repayment_plan"}),
            );
            expected.debt_cases_closed = 1;
        }

        // From the day of release to the last day of the window counts; a job on the day after
        // the window, or prison work before release, does not.
        if member < plan.job_within_6_months {
            let day = [0, 45, 120, JOB_WINDOW_DAYS][usize::try_from(member % 4).unwrap()];
            journal.record(
                after_release(day),
                "job.placed",
                json!({"kind": "full_time"}),
            );
            expected.job_within_6_months = 1;
        } else if member.is_multiple_of(2) {
            journal.record(after_release(JOB_WINDOW_DAYS + 1), "job.placed", json!({}));
        } else {
            journal.record(
                after_release(-30),
                "job.placed",
                json!({"kind": "supported_employment"}),
            );
        }

        if member < plan.housing_secured {
            journal.record(
                after_release(2),
                "housing.secured",
                json!({"kind": "social_housing"}),
            );
            expected.housing_secured = 1;
        }

        // The offence date decides when given: recorded late but committed on the last day of
        // the window counts; committed before release does not, nor does one recorded the day
        // after the window without an offence date.
        if member < plan.reoffence_within_12_months {
            journal.record(
                after_release(REOFFENCE_WINDOW_DAYS + 20),
                "reoffence.recorded",
                json!({"offence_date": after_release(REOFFENCE_WINDOW_DAYS)}),
            );
            expected.reoffence_within_12_months = 1;
        } else if member.is_multiple_of(3) {
            journal.record(
                after_release(100),
                "reoffence.recorded",
                json!({"offence_date": after_release(-20)}),
            );
        } else if member % 3 == 1 {
            journal.record(
                after_release(REOFFENCE_WINDOW_DAYS + 1),
                "reoffence.recorded",
                json!({}),
            );
        }

        GeneratedClient {
            state: journal.state(),
            programme: row.programme,
            prison: row.prison,
            municipality: row.municipality,
            enrolled_on,
            expected,
        }
    }

    // ----- helpers ---------------------------------------------------------------------------

    fn sum(counts: impl IntoIterator<Item = Counts>) -> Counts {
        counts
            .into_iter()
            .fold(Counts::default(), |mut total, counts| {
                total.add(&counts);
                total
            })
    }

    fn states(clients: &[GeneratedClient]) -> impl Iterator<Item = &ClientState> {
        clients.iter().map(|client| &client.state)
    }

    /// What the generator meant, summed per group key, for the clients `admitted`.
    fn expected_by(
        clients: &[GeneratedClient],
        admitted: impl Fn(&GeneratedClient) -> bool,
        key: impl Fn(&GeneratedClient) -> String,
    ) -> BTreeMap<String, Counts> {
        let mut groups: BTreeMap<String, Counts> = BTreeMap::new();
        for client in clients.iter().filter(|client| admitted(client)) {
            groups.entry(key(client)).or_default().add(&client.expected);
        }
        groups
    }

    fn query(programme: Option<&str>, group_by: Option<GroupBy>) -> OutcomeQuery {
        OutcomeQuery {
            programme: programme.map(str::to_owned),
            group_by,
            ..OutcomeQuery::default()
        }
    }

    fn cells_as_columns(cells: &OutcomeCells) -> [Cell; MEASURES] {
        [
            cells.entered,
            cells.completed,
            cells.dropped_out,
            cells.retraining_completed,
            cells.debt_cases_closed,
            cells.job_within_6_months,
            cells.housing_secured,
            cells.reoffence_within_12_months,
        ]
    }

    fn all_published(counts: Counts) -> OutcomeCells {
        OutcomeCells::from_columns(counts.as_columns().map(Cell::Count))
    }

    // ----- the cohort ------------------------------------------------------------------------

    #[test]
    fn the_vol_cohort_reproduces_the_seed_figures() {
        let clients = cohort();
        let vol = query(Some(VOL), None);
        let expected = expected_by(
            &clients,
            |client| client.programme == VOL,
            |_| ALL_KEY.into(),
        );
        let counted = tally(states(&clients), &vol);
        assert_eq!(counted, expected);

        let total = counted[ALL_KEY];
        assert_eq!(total.entered, VOL_SEED.entered);
        assert_eq!(total.completed, VOL_SEED.completed);
        assert_eq!(total.dropped_out, VOL_SEED.dropped_out);
        assert_eq!(total.retraining_completed, VOL_SEED.retraining_courses);
        assert_eq!(total.debt_cases_closed, VOL_SEED.debt_cases_closed);
        assert_eq!(total.job_within_6_months, VOL_SEED.jobs_within_6_months);

        // Every VOL total is 0 or at least 10, so all of them are published.
        let report = outcomes(states(&clients), &vol);
        assert_eq!(report.total.cells, all_published(total));
        assert_eq!(report.groups.len(), 1);
        assert_eq!(report.groups[0].key, ALL_KEY);
        assert_eq!(report.groups[0].cells, report.total.cells);
    }

    #[test]
    fn grouping_by_prison_adds_up_and_suppresses_small_cells() {
        let clients = cohort();
        let by_prison = query(Some(VOL), Some(GroupBy::Prison));
        let expected = expected_by(
            &clients,
            |client| client.programme == VOL,
            |client| client.prison.into(),
        );
        assert_eq!(expected.len(), 5, "VOL worked in five prisons");
        assert_eq!(tally(states(&clients), &by_prison), expected);

        let report = outcomes(states(&clients), &by_prison);
        let keys: Vec<&str> = report
            .groups
            .iter()
            .map(|group| group.key.as_str())
            .collect();
        assert_eq!(
            keys,
            expected.keys().map(String::as_str).collect::<Vec<_>>()
        );
        let total = sum(expected.values().copied());
        // Every total is published but the drop-outs' (see the end of this test).
        let mut totals_published = all_published(total);
        totals_published.dropped_out = Cell::Suppressed;
        assert_eq!(report.total.cells, totals_published);

        let published: Vec<[Cell; MEASURES]> = report
            .groups
            .iter()
            .map(|group| cells_as_columns(&group.cells))
            .collect();
        for (row, counts) in published.iter().zip(expected.values()) {
            for (cell, value) in row.iter().zip(counts.as_columns()) {
                match cell {
                    Cell::Count(count) => assert_eq!(*count, value),
                    Cell::Suppressed => assert!(value > 0, "a zero is never hidden"),
                }
                if is_small(value) {
                    assert_eq!(*cell, Cell::Suppressed, "{value} must be hidden");
                }
            }
        }

        // Dropouts: one prison has a small count. Hiding it alone would be pointless (total
        // minus the other prisons gives it back), so the next smallest count is hidden too, and
        // what would bound that one in its own prison's row.
        let dropouts: Vec<u64> = expected.values().map(|counts| counts.dropped_out).collect();
        let dropout_cells: Vec<Cell> = published.iter().map(|row| row[2]).collect();
        let small: Vec<usize> = (0..dropouts.len())
            .filter(|&index| is_small(dropouts[index]))
            .collect();
        assert_eq!(small.len(), 1, "the cohort has one small dropout count");
        assert_eq!(dropouts[small[0]], 7);
        let partner = (0..dropouts.len())
            .filter(|&index| index != small[0] && dropouts[index] > 0)
            .min_by_key(|&index| dropouts[index])
            .unwrap();
        assert!(dropouts[partner] >= SUPPRESSION_THRESHOLD);
        for index in [small[0], partner] {
            assert_eq!(
                dropout_cells[index],
                Cell::Suppressed,
                "prison {}",
                keys[index]
            );
        }
        let hidden_dropouts: u64 = (0..dropouts.len())
            .filter(|&index| dropout_cells[index] == Cell::Suppressed)
            .map(|index| dropouts[index])
            .sum();
        assert!(hidden_dropouts >= SUPPRESSION_THRESHOLD);
        // The partner's own group does not give it away: whatever bounds it beside it (its
        // prison's entered and completed) is hidden too.
        for measure in bounding(DROPPED_OUT) {
            let value = expected.values().nth(partner).unwrap().as_columns()[*measure];
            assert!(
                value == 0 || published[partner][*measure] == Cell::Suppressed,
                "measure {measure} of prison {}",
                keys[partner]
            );
        }
        // The whole table: the prison with 7 drop-outs publishes 38 entered and 31 completed,
        // so it had at most 7; the two prisons hiding their entered and completed counts (93 and
        // 70 together by the totals) had at most 23 drop-outs between them, and the one with 14
        // at most 30 - 16, so with a total of 44 the small prison had at least 7. The total goes.
        assert_eq!(report.total.cells.dropped_out, Cell::Suppressed);
        let rows: Vec<[u64; MEASURES]> = expected.values().map(|c| c.as_columns()).collect();
        let hidden: Vec<[bool; MEASURES]> = published
            .iter()
            .map(|cells| cells.map(|cell| cell == Cell::Suppressed))
            .collect();
        let with_the_total = Published {
            rows: &rows,
            totals: &totals_of(&rows),
            hidden: &hidden,
            total_hidden: &[false; MEASURES],
            for_row: &vec![[true; MEASURES]; rows.len()],
        };
        let before_the_whole_table_check = with_the_total.first_pinned(true);
        assert_eq!(
            before_the_whole_table_check,
            Some(Place::Group(small[0], DROPPED_OUT)),
            "with the total published, the 7 is pinned"
        );
    }

    #[test]
    fn every_grouping_shares_out_the_same_participations() {
        type KeyOf = fn(&GeneratedClient) -> String;
        let clients = cohort();
        let everyone = tally(states(&clients), &query(None, None))[ALL_KEY];
        assert_eq!(everyone, sum(clients.iter().map(|client| client.expected)));

        let keys: [(GroupBy, KeyOf); 4] = [
            (GroupBy::Programme, |client| client.programme.into()),
            (GroupBy::Prison, |client| client.prison.into()),
            (GroupBy::Municipality, |client| client.municipality.into()),
            (GroupBy::Quarter, |client| quarter(client.enrolled_on)),
        ];
        for (group_by, key) in keys {
            let counted = tally(states(&clients), &query(None, Some(group_by)));
            assert_eq!(
                counted,
                expected_by(&clients, |_| true, key),
                "{group_by:?}"
            );
            assert_eq!(sum(counted.values().copied()), everyone, "{group_by:?}");
        }
    }

    #[test]
    fn quarters_are_named_by_year_and_number() {
        assert_eq!(quarter(date("2024-01-01")), "2024-Q1");
        assert_eq!(quarter(date("2024-03-31")), "2024-Q1");
        assert_eq!(quarter(date("2025-08-14")), "2025-Q3");
        assert_eq!(quarter(date("2025-12-31")), "2025-Q4");
    }

    #[test]
    fn dates_limit_enrolments_inclusively() {
        let clients = cohort();
        let mut enrolled: Vec<NaiveDate> = clients
            .iter()
            .filter(|client| client.programme == VOL)
            .map(|client| client.enrolled_on)
            .collect();
        enrolled.sort();
        // Bounds on days someone enrolled, so that inclusiveness is tested at both ends.
        let (from, to) = (enrolled[30], enrolled[120]);
        let ranges = [
            (Some(from), Some(to)),
            (Some(from), None),
            (None, Some(to)),
            (Some(to), Some(from)),
        ];
        for (from, to) in ranges {
            let dated = OutcomeQuery {
                from,
                to,
                ..query(Some(VOL), None)
            };
            let expected = expected_by(
                &clients,
                |client| {
                    client.programme == VOL
                        && from.is_none_or(|from| from <= client.enrolled_on)
                        && to.is_none_or(|to| client.enrolled_on <= to)
                },
                |_| ALL_KEY.into(),
            );
            let expected = expected.get(ALL_KEY).copied().unwrap_or_default();
            assert_eq!(tally(states(&clients), &dated)[ALL_KEY], expected);
        }
    }

    #[test]
    fn the_programme_filter_keeps_other_programmes_out() {
        let clients = cohort();
        for programme in [VOL, RUBIKON] {
            let expected = expected_by(
                &clients,
                |client| client.programme == programme,
                |_| ALL_KEY.into(),
            );
            assert_eq!(
                tally(states(&clients), &query(Some(programme), None)),
                expected
            );
        }
        let nobody = outcomes(states(&clients), &query(Some("no-such-programme"), None));
        assert_eq!(nobody.groups.len(), 1);
        assert_eq!(nobody.total.cells, all_published(Counts::default()));

        let by_programme = outcomes(states(&clients), &query(None, Some(GroupBy::Programme)));
        let keys: Vec<&str> = by_programme
            .groups
            .iter()
            .map(|group| group.key.as_str())
            .collect();
        assert_eq!(keys, [RUBIKON, VOL]);
    }

    /// The state as it would read with the client's personal data erased, the way the store
    /// reads it once the keys are gone (every personal field as its erased placeholder), and
    /// with workers and agencies blanked too, to show the figures never depend on them.
    fn erased(state: &ClientState, new_id: u128) -> ClientState {
        let mut erased = state.clone();
        erased.client_id = ClientId(Uuid::from_u128(new_id));
        for fact in &mut erased.facts {
            if let Some(split) = travelmap_domain::personal::split(&fact.event) {
                let event_type = fact.event.event_type();
                fact.event = travelmap_domain::personal::join(
                    event_type,
                    fact.event.schema_version(),
                    &split.public,
                    None,
                    &split.fields(),
                )
                .unwrap_or_else(|error| panic!("{event_type} erased: {error:?}"));
            }
            fact.actor = None;
            fact.agency = "erased".into();
        }
        erased
    }

    #[test]
    fn erased_personal_data_changes_no_figure() {
        let clients = cohort();
        let erased_states: Vec<ClientState> = clients
            .iter()
            .enumerate()
            .map(|(index, client)| erased(&client.state, 1 << 100 | index as u128))
            .collect();
        assert!(
            clients
                .iter()
                .zip(&erased_states)
                .all(|(client, erased)| client.state.facts != erased.facts),
            "every client had personal data to erase"
        );
        let groupings = [
            None,
            Some(GroupBy::Programme),
            Some(GroupBy::Prison),
            Some(GroupBy::Municipality),
            Some(GroupBy::Quarter),
        ];
        for group_by in groupings {
            let grouped = query(None, group_by);
            assert_eq!(
                outcomes(&erased_states, &grouped),
                outcomes(states(&clients), &grouped),
                "{group_by:?}"
            );
        }
    }

    // ----- participations, spans and releases ------------------------------------------------

    #[test]
    fn a_re_enrolment_starts_a_new_participation_and_programmes_are_kept_apart() {
        let mut journal = Journal::new(1);
        journal.record(
            date("2024-01-01"),
            "sentence.started",
            json!({"prison": "Opava", "start_date": "2024-01-01"}),
        );
        journal.record(
            date("2024-02-01"),
            "programme.enrolled",
            json!({"programme": VOL}),
        );
        journal.record(
            date("2024-03-01"),
            "retraining.completed",
            json!({"course": "cook"}),
        );
        journal.record(
            date("2024-04-01"),
            "programme.dropped_out",
            json!({"programme": VOL, "reason": "transferred"}),
        );
        journal.record(
            date("2024-04-15"),
            "programme.enrolled",
            json!({"programme": RUBIKON}),
        );
        journal.record(
            date("2024-05-01"),
            "programme.enrolled",
            json!({"programme": VOL}),
        );
        journal.record(
            date("2024-06-01"),
            "programme.completed",
            json!({"programme": RUBIKON}),
        );
        journal.record(
            date("2024-06-02"),
            "retraining.completed",
            json!({"course": "weld"}),
        );
        journal.record(
            date("2024-07-01"),
            "client.released",
            json!({"release_kind": "parole", "supervision": true}),
        );
        journal.record(date("2024-08-01"), "job.placed", json!({}));
        journal.record(
            date("2024-12-01"),
            "programme.completed",
            json!({"programme": VOL}),
        );
        let state = journal.state();

        let counted = tally([&state], &query(None, Some(GroupBy::Programme)));
        // VOL: the first participation dropped out with one course and no release in its span
        // (and none before it), the second completed with one course and a job after release.
        let vol = Counts {
            entered: 2,
            completed: 1,
            dropped_out: 1,
            retraining_completed: 2,
            job_within_6_months: 1,
            ..Counts::default()
        };
        // RUBIKON ends with its own completion; VOL's dropout before it is not its outcome, nor
        // is the course completed the day after it ended (the job after release is).
        let rubikon = Counts {
            entered: 1,
            completed: 1,
            job_within_6_months: 1,
            ..Counts::default()
        };
        assert_eq!(
            counted,
            BTreeMap::from([(RUBIKON.to_owned(), rubikon), (VOL.to_owned(), vol)])
        );
    }

    #[test]
    fn prison_and_release_are_the_ones_around_the_enrolment() {
        // Enrolled in the community after release: the clocks run from the earlier release and
        // the prison is the one they were released from, not a later sentence's.
        let mut after_release = Journal::new(1);
        after_release.record(
            date("2023-01-01"),
            "sentence.started",
            json!({"prison": "Mirov", "start_date": "2023-01-01"}),
        );
        after_release.record(
            date("2023-06-01"),
            "client.released",
            json!({"release_kind": "end_of_sentence", "supervision": false,
                   "municipality": "Sumperk"}),
        );
        after_release.record(
            date("2023-09-01"),
            "programme.enrolled",
            json!({"programme": VOL}),
        );
        after_release.record(date("2023-10-01"), "job.placed", json!({}));
        after_release.record(
            date("2024-06-01"),
            "reoffence.recorded",
            json!({"offence_date": "2024-05-01"}),
        );
        after_release.record(
            date("2024-07-01"),
            "sentence.started",
            json!({"prison": "Opava", "start_date": "2024-07-01"}),
        );
        // Neither sentence nor release: unknown on both, and a job that cannot be timed.
        let mut unknown = Journal::new(2);
        unknown.record(
            date("2024-02-01"),
            "programme.enrolled",
            json!({"programme": VOL}),
        );
        unknown.record(date("2024-03-01"), "job.placed", json!({}));
        let states = [after_release.state(), unknown.state()];

        let known = Counts {
            entered: 1,
            job_within_6_months: 1,
            reoffence_within_12_months: 1,
            ..Counts::default()
        };
        let untimed = Counts {
            entered: 1,
            ..Counts::default()
        };
        for (group_by, key) in [
            (GroupBy::Prison, "Mirov"),
            (GroupBy::Municipality, "Sumperk"),
        ] {
            assert_eq!(
                tally(&states, &query(None, Some(group_by))),
                BTreeMap::from([(key.to_owned(), known), (UNKNOWN_KEY.to_owned(), untimed)])
            );
        }
    }

    #[test]
    fn corrections_and_retractions_are_respected() {
        let mut corrected = Journal::new(1);
        let sentence = corrected.record(
            date("2024-01-01"),
            "sentence.started",
            json!({"prison": "Opava", "start_date": "2024-01-01"}),
        );
        corrected.record(
            date("2024-02-01"),
            "programme.enrolled",
            json!({"programme": VOL}),
        );
        corrected.record(
            date("2024-02-02"),
            "event.corrected",
            json!({"event_id": sentence, "reason": "wrong prison",
                   "data": {"prison": "Mirov", "start_date": "2024-01-01"}}),
        );
        let mut retracted = Journal::new(2);
        let enrolment = retracted.record(
            date("2024-02-01"),
            "programme.enrolled",
            json!({"programme": VOL}),
        );
        retracted.record(
            date("2024-02-03"),
            "event.retracted",
            json!({"event_id": enrolment, "reason": "wrong client"}),
        );
        let counted = tally(
            &[corrected.state(), retracted.state()],
            &query(None, Some(GroupBy::Prison)),
        );
        let one = Counts {
            entered: 1,
            ..Counts::default()
        };
        assert_eq!(counted, BTreeMap::from([("Mirov".to_owned(), one)]));
    }

    // ----- the published shape ---------------------------------------------------------------

    #[test]
    fn columns_map_to_the_measures_of_the_same_name() {
        let counts = Counts::from_columns(std::array::from_fn(|measure| 10 + measure as u64));
        let json = serde_json::to_value(all_published(counts)).unwrap();
        assert_eq!(
            json,
            json!({
                "entered": counts.entered,
                "completed": counts.completed,
                "dropped_out": counts.dropped_out,
                "retraining_completed": counts.retraining_completed,
                "debt_cases_closed": counts.debt_cases_closed,
                "job_within_6_months": counts.job_within_6_months,
                "housing_secured": counts.housing_secured,
                "reoffence_within_12_months": counts.reoffence_within_12_months,
            })
        );
    }

    #[test]
    fn the_report_is_json_with_numbers_or_suppressed() {
        let clients = cohort();
        let by_prison = OutcomeQuery {
            from: Some(date("2024-01-01")),
            ..query(Some(VOL), Some(GroupBy::Prison))
        };
        let report = outcomes(states(&clients), &by_prison);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["query"],
            json!({"programme": VOL, "from": "2024-01-01", "to": null, "group_by": "prison"})
        );
        assert_eq!(json["suppression_threshold"], SUPPRESSION_THRESHOLD);
        let dropouts: Vec<&Value> = json["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|group| &group["cells"]["dropped_out"])
            .collect();
        assert!(dropouts.contains(&&json!("suppressed")));
        assert!(dropouts.iter().any(|cell| cell.is_u64()));
        let entered = clients
            .iter()
            .filter(|client| client.programme == VOL && client.enrolled_on >= date("2024-01-01"))
            .count();
        assert_eq!(json["total"]["cells"]["entered"], json!(entered));

        let back: OutcomeQuery = serde_json::from_value(json["query"].clone()).unwrap();
        assert_eq!(back, by_prison);
    }

    #[test]
    fn the_schema_says_number_or_suppressed() {
        let schema = serde_json::to_value(Cell::schema()).unwrap();
        assert_eq!(schema["oneOf"][0]["type"], "integer");
        assert_eq!(schema["oneOf"][1]["type"], "string");
        assert_eq!(schema["oneOf"][1]["enum"], json!(["suppressed"]));

        let group_by = serde_json::to_value(GroupBy::schema()).unwrap();
        assert_eq!(
            group_by["enum"],
            json!(["programme", "prison", "municipality", "quarter"])
        );
        let parameters: Vec<String> = OutcomeQuery::into_params(|| None)
            .into_iter()
            .map(|parameter| parameter.name)
            .collect();
        assert_eq!(parameters, ["programme", "from", "to", "group_by"]);

        let mut schemas = Vec::new();
        OutcomeReport::schemas(&mut schemas);
        let names: Vec<&str> = schemas.iter().map(|(name, _)| name.as_str()).collect();
        for name in ["Cell", "OutcomeCells", "OutcomeQuery", "GroupBy"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    // ----- suppression -----------------------------------------------------------------------

    fn column(groups: &[Option<u64>], total: Option<u64>) -> SuppressedColumn {
        let cell = |value: &Option<u64>| value.map_or(Cell::Suppressed, Cell::Count);
        SuppressedColumn {
            groups: groups.iter().map(cell).collect(),
            total: cell(&total),
        }
    }

    #[test]
    fn suppression_hides_small_counts_and_what_would_give_them_away() {
        // A lone small cell takes the next smallest non-zero cell with it.
        assert_eq!(
            suppress_column(&[7, 11, 12, 14, 0]),
            column(&[None, None, Some(12), Some(14), Some(0)], Some(44))
        );
        // Two hidden cells whose sum is small (both would be known to be 1) take a third.
        assert_eq!(
            suppress_column(&[1, 1, 30, 40]),
            column(&[None, None, None, Some(40)], Some(72))
        );
        // Two hidden cells holding 10 or more between them are safe as they are.
        assert_eq!(
            suppress_column(&[4, 6, 30]),
            column(&[None, None, Some(30)], Some(40))
        );
        // A small total is hidden itself; zeros are always shown.
        assert_eq!(
            suppress_column(&[3, 0, 0]),
            column(&[None, Some(0), Some(0)], None)
        );
        assert_eq!(
            suppress_column(&[0, 0]),
            column(&[Some(0), Some(0)], Some(0))
        );
        assert_eq!(suppress_column(&[5]), column(&[None], None));
        // Ten hidden 1s hold 10 together, but a sum of 10 over ten cells says each is 1.
        let mut ten_ones = vec![1; 10];
        ten_ones.push(40);
        assert_eq!(suppress_column(&ten_ones), column(&[None; 11], Some(50)));
        // Two 9s and nothing else to hide with them: a published 18 would give both away.
        assert_eq!(
            suppress_column(&[9, 9, 0]),
            column(&[None, None, Some(0)], None)
        );
        // A protecting cell tied with the next published one would be known exactly (10, so
        // the small one is 5): a second protecting cell is taken.
        assert_eq!(
            suppress_column(&[10, 10, 5, 30]),
            column(&[None, None, None, Some(30)], Some(55))
        );
        assert_eq!(
            suppress_column(&[10, 25]),
            column(&[Some(10), Some(25)], Some(35))
        );
    }

    /// Every value each hidden cell could take, for the attacker of the module doc: someone who
    /// knows the published total and cells, which hidden cells are small (1 to 9), and that the
    /// others are at least 10 and were each the smallest published cell, by value and then key,
    /// when taken. Found by trying values, independently of the interval arithmetic of
    /// [`attacker_ranges`].
    fn possible_values(
        values: &[u64],
        for_row: &[bool],
        bounds: &[Bound],
        published: &SuppressedColumn,
    ) -> Vec<(usize, Vec<u64>)> {
        let Cell::Count(total) = published.total else {
            return Vec::new();
        };
        let published_counts: Vec<(usize, u64)> = published
            .groups
            .iter()
            .enumerate()
            .filter_map(|(index, cell)| match cell {
                Cell::Count(count) => Some((index, *count)),
                Cell::Suppressed => None,
            })
            .collect();
        let hidden_sum = total - published_counts.iter().map(|(_, count)| count).sum::<u64>();
        let hidden: Vec<usize> = (0..values.len())
            .filter(|&index| published.groups[index] == Cell::Suppressed)
            .collect();
        let could_be = |index: usize| -> Vec<u64> {
            let bound = bounds[index];
            let within = move |value: &u64| (bound.least..=bound.most).contains(value);
            if is_small(values[index]) {
                return (1..SUPPRESSION_THRESHOLD).filter(within).collect();
            }
            if for_row[index] {
                return (SUPPRESSION_THRESHOLD..=hidden_sum)
                    .filter(within)
                    .collect();
            }
            (SUPPRESSION_THRESHOLD..=hidden_sum)
                .filter(within)
                .filter(|&value| {
                    published_counts
                        .iter()
                        .filter(|(_, count)| *count > 0)
                        .all(|&(other, count)| (value, index) < (count, other))
                })
                .collect()
        };
        hidden
            .iter()
            .map(|&index| {
                let mut sums_of_others = BTreeSet::from([0]);
                for &other in hidden.iter().filter(|&&other| other != index) {
                    sums_of_others = sums_of_others
                        .iter()
                        .flat_map(|sum| could_be(other).into_iter().map(move |value| sum + value))
                        .filter(|&sum| sum <= hidden_sum)
                        .collect();
                }
                let possible = could_be(index)
                    .into_iter()
                    .filter(|&value| {
                        value <= hidden_sum && sums_of_others.contains(&(hidden_sum - value))
                    })
                    .collect();
                (index, possible)
            })
            .collect()
    }

    fn check_column(
        values: &[u64],
        for_row: &[bool],
        bounds: &[Bound],
        published: &SuppressedColumn,
    ) -> Result<(), TestCaseError> {
        let total: u64 = values.iter().sum();
        let cells = values
            .iter()
            .zip(&published.groups)
            .chain(once((&total, &published.total)));
        for (&value, &cell) in cells {
            match cell {
                Cell::Count(count) => {
                    prop_assert_eq!(count, value, "a published count is the true count");
                    prop_assert!(!is_small(count), "{} published", count);
                }
                Cell::Suppressed => prop_assert!(value > 0, "a zero is never hidden"),
            }
        }
        if published.total == Cell::Suppressed {
            return Ok(());
        }
        // The brief's property: with the total published, never exactly one hidden cell, and
        // the hidden cells' sum (total minus published) is no small count either.
        let hidden: Vec<u64> = (0..values.len())
            .filter(|&index| published.groups[index] == Cell::Suppressed)
            .map(|index| values[index])
            .collect();
        prop_assert!(
            hidden.is_empty()
                || (hidden.len() >= 2 && hidden.iter().sum::<u64>() >= SUPPRESSION_THRESHOLD),
            "total published with hidden cells {:?} of {:?}",
            hidden,
            values
        );
        // And the stronger one: not even the attacker of the module doc pins a hidden cell.
        for (index, possible) in possible_values(values, for_row, bounds, published) {
            prop_assert!(possible.contains(&values[index]), "the truth is possible");
            prop_assert!(
                possible.len() >= 2,
                "cell {} of {:?} can only be {:?} given {:?}",
                index,
                values,
                possible,
                published
            );
        }
        Ok(())
    }

    fn totals_of(rows: &[[u64; MEASURES]]) -> [u64; MEASURES] {
        std::array::from_fn(|measure| rows.iter().map(|row| row[measure]).sum())
    }

    #[test]
    fn a_hidden_entered_cannot_be_read_off_the_published_outcomes_beside_it() {
        // 44 participations in one programme (24 completed, 20 dropped out), one in another.
        let mut busy = [0; MEASURES];
        (busy[0], busy[1], busy[2]) = (44, 24, 20);
        let mut lone = [0; MEASURES];
        lone[0] = 1;
        let (groups, total) = suppress_table(&[busy, lone]);
        assert_eq!(total[0], Cell::Count(45));
        assert_eq!(groups[0][0], Cell::Suppressed, "protects the lone 1");
        // Were 24 and 20 published, the busy programme would hold at least 44 and the lone one
        // at most 1: exactly the count the suppression hides.
        assert_eq!(groups[0][1], Cell::Suppressed);
        assert_eq!(groups[0][2], Cell::Suppressed);
    }

    #[test]
    fn measures_beside_a_protecting_cell_stay_published_when_they_pin_nothing() {
        let mut busy = [0; MEASURES];
        (busy[0], busy[1], busy[2]) = (30, 12, 10);
        let mut small = [0; MEASURES];
        small[0] = 5;
        let (groups, total) = suppress_table(&[busy, small]);
        assert_eq!(groups[0][0], Cell::Suppressed, "protects the 5");
        // 30 entered beside 12 completed and 10 dropped out: at least 22, nowhere near pinned.
        assert_eq!(groups[0][1], Cell::Count(12));
        assert_eq!(groups[0][2], Cell::Count(10));
        assert_eq!((total[1], total[2]), (Cell::Count(12), Cell::Count(10)));
    }

    #[test]
    fn a_hidden_total_is_not_read_off_the_totals_beside_it() {
        // Three groups of 9 entered, 5 completed and 4 dropped out: every entered is small, so
        // the total is hidden; published totals of 15 and 12 would say it is at least 27, and
        // three small cells hold at most 27.
        let mut row = [0; MEASURES];
        (row[0], row[1], row[2]) = (9, 5, 4);
        let (_, total) = suppress_table(&[row, row, row]);
        assert_eq!(total[0], Cell::Suppressed);
        assert!(
            total[1] == Cell::Suppressed || total[2] == Cell::Suppressed,
            "{total:?}"
        );
    }

    /// Counts as they come: many zeros and small ones, some publishable.
    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), 1u64..10, 10u64..30]
    }

    /// A group's measures as participations make them: `entered` at least the participations
    /// that ended either way, and at least each count of participations with a property.
    fn group_row() -> impl Strategy<Value = [u64; MEASURES]> {
        (prop::array::uniform8(count()), 0u64..10).prop_map(|(mut row, in_progress)| {
            let ended = row[COMPLETED] + row[DROPPED_OUT] + in_progress;
            row[ENTERED] = AT_MOST_ENTERED
                .iter()
                .map(|&measure| row[measure])
                .fold(ended.max(row[ENTERED]), u64::max);
            row
        })
    }

    proptest! {
        #[test]
        fn no_suppressed_cell_can_be_recovered_from_its_column(
            rows in prop::collection::vec(group_row(), 1..13)
        ) {
            check_table(&rows)?;
        }
    }

    #[test]
    fn tables_that_once_gave_a_count_away() {
        let row = |entered, completed, dropped_out| {
            let mut row = [0; MEASURES];
            (row[ENTERED], row[COMPLETED], row[DROPPED_OUT]) = (entered, completed, dropped_out);
            row
        };
        // One participant in a prison beside 19 in another, 18 of whom completed and one
        // dropped out: a hidden drop-out is at least 1, so 19 was at least 19, and the lone
        // participant exactly 1.
        let tables = [
            vec![row(1, 0, 0), row(19, 18, 1)],
            vec![[16, 8, 8, 3, 27, 16, 0, 3], [2, 1, 1, 0, 0, 0, 0, 0]],
            vec![[1, 0, 1, 0, 0, 0, 0, 1], row(18, 17, 1)],
            vec![row(9, 5, 4), row(9, 5, 4), row(9, 5, 4)],
            vec![row(44, 24, 20), row(1, 0, 0)],
            vec![row(9, 8, 1), row(20, 9, 0)],
            // Entered 1, 9 and 3 beside housing secured 0, 9 and 3: with totals of 13 and 12,
            // the last two groups entered at least 12 between them, so the first exactly 1.
            vec![
                [1, 0, 0, 0, 0, 0, 0, 0],
                [9, 0, 0, 0, 0, 0, 9, 0],
                [3, 0, 0, 0, 0, 0, 3, 0],
            ],
        ];
        for rows in tables {
            check_table(&rows).unwrap_or_else(|error| panic!("{rows:?}: {error}"));
        }
    }

    /// Checks the suppression of one table against the attacker of the module doc, column by
    /// column, row by row, and over the whole table at once in whole numbers.
    fn check_table(rows: &[[u64; MEASURES]]) -> Result<(), TestCaseError> {
        let rows = rows.to_vec();
        {
            let (group_cells, total_cells, for_row) = suppress_table_explained(&rows);
            let hidden: Vec<[bool; MEASURES]> = group_cells
                .iter()
                .map(|cells| cells.map(|cell| cell == Cell::Suppressed))
                .collect();
            let whole_table = Published {
                rows: &rows,
                totals: &totals_of(&rows),
                hidden: &hidden,
                total_hidden: &total_cells.map(|cell| cell == Cell::Suppressed),
                for_row: &for_row,
            };
            let pinned = whole_table.first_pinned(true);
            prop_assert!(
                pinned.is_none(),
                "{:?} of {:?} pinned by the whole table: {:?} {:?}",
                pinned,
                rows,
                group_cells,
                total_cells
            );
            // A total that its published cells add up to is shown: hiding it protects nothing.
            for (measure, total) in total_cells.iter().enumerate() {
                if group_cells
                    .iter()
                    .all(|cells| cells[measure] != Cell::Suppressed)
                {
                    prop_assert_ne!(
                        *total,
                        Cell::Suppressed,
                        "measure {} of {:?}",
                        measure,
                        rows
                    );
                }
            }
            // What the published measures of each row tell of its hidden ones.
            // What the columns tell of the hidden totals: the published cells, plus at least one
            // per small hidden cell and ten per other, and (if all hidden ones are small) at
            // most nine each; and of a hidden group cell, whether it is small.
            let column_knows = |measure: usize| {
                let (mut least, mut most) = (0u64, 0u64);
                for (cells, values) in group_cells.iter().zip(&rows) {
                    match (cells[measure], is_small(values[measure])) {
                        (Cell::Count(count), _) => {
                            least += count;
                            most = most.saturating_add(count);
                        }
                        (Cell::Suppressed, true) => {
                            least += 1;
                            most = most.saturating_add(SUPPRESSION_THRESHOLD - 1);
                        }
                        (Cell::Suppressed, false) => {
                            least += SUPPRESSION_THRESHOLD;
                            most = u64::MAX;
                        }
                    }
                }
                least..=most
            };
            let size_of = |count: u64| {
                if is_small(count) {
                    1..=SUPPRESSION_THRESHOLD - 1
                } else {
                    SUPPRESSION_THRESHOLD..=u64::MAX
                }
            };
            let known_of = |is_total: bool, values: &[u64; MEASURES], measure: usize| {
                let size = size_of(values[measure]);
                let column = if is_total {
                    column_knows(measure)
                } else {
                    0..=u64::MAX
                };
                (*size.start()).max(*column.start())..=(*size.end()).min(*column.end())
            };
            let bounds_of = |is_total: bool, cells: &[Cell; MEASURES], values: &[u64; MEASURES]| {
                let published = |measure: usize| cells[measure] != Cell::Suppressed;
                std::array::from_fn::<Bound, MEASURES, _>(|measure| {
                    row_bound(
                        values,
                        published,
                        |other| known_of(is_total, values, other),
                        measure,
                    )
                })
            };
            let bounds: Vec<[Bound; MEASURES]> = group_cells
                .iter()
                .zip(&rows)
                .map(|(cells, values)| bounds_of(false, cells, values))
                .collect();
            for (measure, &total) in total_cells.iter().enumerate() {
                let values: Vec<u64> = rows.iter().map(|row| row[measure]).collect();
                let column_bounds: Vec<Bound> = bounds.iter().map(|row| row[measure]).collect();
                let column_for_row: Vec<bool> = for_row.iter().map(|row| row[measure]).collect();
                let published = SuppressedColumn {
                    groups: group_cells.iter().map(|row| row[measure]).collect(),
                    total,
                };
                check_column(&values, &column_for_row, &column_bounds, &published)?;
            }
            // A row alone (a group's or the totals) pins none of its hidden measures.
            let totals = totals_of(&rows);
            let rows_of_cells = group_cells
                .iter()
                .zip(&rows)
                .chain(once((&total_cells, &totals)));
            let last = rows.len();
            for (row_index, (cells, values)) in rows_of_cells.enumerate() {
                let is_total = row_index == last;
                let bounds = bounds_of(is_total, cells, values);
                for measure in 0..MEASURES {
                    if cells[measure] != Cell::Suppressed {
                        continue;
                    }
                    let range = bounds[measure].cut(known_of(is_total, values, measure));
                    prop_assert!(range.contains(&values[measure]), "the truth is possible");
                    prop_assert!(
                        range.start() < range.end(),
                        "measure {} of {:?} pinned by its row: {:?}",
                        measure,
                        values,
                        cells
                    );
                }
            }
        }
        Ok(())
    }
}
