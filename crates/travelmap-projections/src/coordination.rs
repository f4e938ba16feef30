//! What coordinators act on: each client's case file (who carries the client, the phase, the
//! next appointment, the alerts) and the caseloads of agencies and workers summed over them.
//!
//! Like the travel map, everything here is derived from a client's standing facts and a "now",
//! with no I/O: a case file folded live and one rebuilt from zero are the same by construction,
//! and the history of an alert (raised, cleared, by what) is read off the facts rather than
//! stored beside them. A retracted event therefore takes its alert with it, and a corrected one
//! changes it: the history shows the journey as it now reads.
//!
//! ## Alert rules
//! Facts are taken in `occurred_at` order. Each alert names the client, since when it holds, the
//! agency expected to act, and the event it arose from; its id is derived from those, so the same
//! alert keeps its id across rebuilds and subscribers can de-duplicate.
//!
//! | kind | raised | cleared |
//! | --- | --- | --- |
//! | `no_first_day_contact` | 24 h after a release with no attended contact since (a contact at the release's moment counts) | by the first attended contact (resolved), or a return to custody or a later release (superseded) |
//! | `release_unprepared` | 14 days before a scheduled release (or when the release is scheduled, if later) while no plan is agreed or a planned needs area is unassessed; again at a fact that undoes the preparation before the release (an area set back to `not_started`, a plan naming an unassessed area) | when the plan is agreed and every planned area assessed (resolved), or at release or a new schedule (superseded) |
//! | `appointments_missed` | at the second missed appointment in a row | by the next attended contact (resolved) |
//! | `job_lost` / `housing_lost` | when the job or housing is lost | by a job placed / housing secured (resolved), or 7 days later (expired) |
//! | `dropped_out` | when the client drops out of the programme | by enrolling again (resolved) |
//! | `no_case_manager` | when a released client has had no open case manager or probation officer involvement for longer than the configured days (a second release without custody in between continues the first's gap) | when one is opened (resolved), or a return to custody (superseded) |

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use travelmap_domain::payloads::{NeedStatus, Role};
use travelmap_domain::{ClientId, EventId, JourneyEvent};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ClientState;
use crate::travel_map::{Appointment, FIRST_DAY_WINDOW, Fact, Involvement, Phase};

/// Released this recently counts as "released < 30 days" in caseloads.
pub const RECENT_RELEASE: Duration = Duration::days(30);
/// How long before a scheduled release the plan and needs assessment must be in place.
pub const RELEASE_PREPARATION: Duration = Duration::days(14);
/// How long a lost job or lost housing stays an alert unless resolved sooner.
pub const RECENT_LOSS: Duration = Duration::days(7);
/// Opened or closed this recently counts in a caseload's "last 30 days" figures.
pub const CASELOAD_WINDOW: Duration = Duration::days(30);

/// The thresholds coordinators can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// A worker with more active clients than this is flagged. The field calls 50 "way too
    /// much".
    pub worker_threshold: usize,
    /// A released client without a case manager or probation officer for longer than this is
    /// flagged.
    pub unassigned_after: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            worker_threshold: 50,
            unassigned_after: Duration::days(7),
        }
    }
}

/// What an alert is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    NoFirstDayContact,
    ReleaseUnprepared,
    AppointmentsMissed,
    JobLost,
    HousingLost,
    DroppedOut,
    NoCaseManager,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::NoFirstDayContact,
        AlertKind::ReleaseUnprepared,
        AlertKind::AppointmentsMissed,
        AlertKind::JobLost,
        AlertKind::HousingLost,
        AlertKind::DroppedOut,
        AlertKind::NoCaseManager,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NoFirstDayContact => "no_first_day_contact",
            AlertKind::ReleaseUnprepared => "release_unprepared",
            AlertKind::AppointmentsMissed => "appointments_missed",
            AlertKind::JobLost => "job_lost",
            AlertKind::HousingLost => "housing_lost",
            AlertKind::DroppedOut => "dropped_out",
            AlertKind::NoCaseManager => "no_case_manager",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// How an alert ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The event that resolves it arrived.
    Resolved,
    /// It ran its course (a loss older than 7 days).
    Expired,
    /// The situation it was about is over (back in custody, released, rescheduled).
    Superseded,
}

/// When and why an alert cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Clearance {
    pub at: DateTime<Utc>,
    pub resolution: Resolution,
    /// The event that cleared it; absent when it expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub by: Option<EventId>,
}

/// Something a coordinator must act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    /// Stable across rebuilds: derived from the client, the kind and the event it arose from.
    pub id: Uuid,
    #[schema(value_type = uuid::Uuid)]
    pub client_id: ClientId,
    pub kind: AlertKind,
    /// Since when it holds.
    pub since: DateTime<Utc>,
    /// The agency expected to act.
    pub agency: String,
    /// The event it arose from.
    #[schema(value_type = uuid::Uuid)]
    pub cause: EventId,
    /// A readable explanation, free of personal details.
    pub detail: String,
    /// Absent while the alert is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared: Option<Clearance>,
}

impl Alert {
    pub fn is_open(&self) -> bool {
        self.cleared.is_none()
    }
}

/// Where a client stands, as coordinators count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    InCustody,
    // Spelt as the caseload's `stages` counts are (`snake_case` alone would join the digits to
    // the word before them).
    #[serde(rename = "released_under_30_days", alias = "released_under30_days")]
    ReleasedUnder30Days,
    #[serde(rename = "released_over_30_days", alias = "released_over30_days")]
    ReleasedOver30Days,
    /// Registered only, completed, dropped out or re-offended.
    Other,
}

/// One client as coordinators see it at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseFile {
    pub client_id: ClientId,
    pub phase: Phase,
    /// The client's latest release, unless they are in custody again: the one that began the
    /// current `released` phase, or the one before a completion, a drop-out or a re-offence.
    pub released_at: Option<DateTime<Utc>>,
    /// Every involvement, open and closed.
    pub involvements: Vec<Involvement>,
    /// Appointments scheduled and not yet met or missed, soonest first.
    pub appointments: Vec<Appointment>,
    /// Alerts raised by `now`, open and cleared, oldest first.
    pub alerts: Vec<Alert>,
    /// The next moment at which the alerts change without a new event (an alert falls due or
    /// expires); the scheduler wakes then.
    pub next_change: Option<DateTime<Utc>>,
    /// Processing is restricted: the client is left out of caseloads and alerts.
    pub restricted: bool,
    /// The client's personal data was erased and the record closed: nothing more can be
    /// recorded for them, so they are left out of caseloads and alerts too (their open alerts
    /// could never be cleared).
    pub erased: bool,
    /// The file was derived for this moment.
    pub as_of: DateTime<Utc>,
}

impl CaseFile {
    /// Left out of caseloads and alerts: restricted, or erased.
    pub fn withheld(&self) -> bool {
        self.restricted || self.erased
    }

    pub fn stage(&self, now: DateTime<Utc>) -> Stage {
        match (self.phase, self.released_at) {
            (Phase::InCustody, _) => Stage::InCustody,
            (Phase::Released, Some(released)) if now - released < RECENT_RELEASE => {
                Stage::ReleasedUnder30Days
            }
            (Phase::Released, _) => Stage::ReleasedOver30Days,
            _ => Stage::Other,
        }
    }

    /// Whether the agency has an involvement with the client open at `now` (as its access to
    /// the client is decided, see [`Involvement::open_at`]).
    pub fn carried_by(&self, agency: &str, now: DateTime<Utc>) -> bool {
        self.involvements
            .iter()
            .any(|involvement| involvement.agency == agency && involvement.open_at(now))
    }

    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter().filter(|alert| alert.is_open())
    }
}

impl ClientState {
    /// The client's case file as it stands at `now`.
    pub fn case_file(&self, now: DateTime<Utc>, rules: &Rules) -> CaseFile {
        let map = self.travel_map_without_steps(now);
        // When the client last left prison, also once they completed or dropped out after it
        // (how long ago still orders a caseload); none while in custody again. A release
        // recorded again with no custody between (a second agency's record of the same
        // release) does not move it: the stretch out of custody began with the first, as the
        // map's phases and the `no_case_manager` alert count it.
        let released_at = (map.phase != Phase::InCustody)
            .then(|| {
                map.phases
                    .iter()
                    .rev()
                    .find(|span| span.phase == Phase::Released)
                    .map(|span| span.from.with_timezone(&Utc))
            })
            .flatten();
        let (mut alerts, next_change) = alerts(self, &map.involvements, now, rules);
        let flagged = |kind: &str| map.flags.iter().any(|flag| flag.kind == kind);
        let restricted = flagged("processing_restricted");
        let erased = flagged("personal_data_erased");
        // The coordinators' index keeps a file for every client, so the lists are kept without
        // the spare room they grew with.
        let mut involvements = map.involvements;
        involvements.shrink_to_fit();
        let mut appointments = map.next;
        appointments.shrink_to_fit();
        alerts.shrink_to_fit();
        CaseFile {
            client_id: self.client_id,
            phase: map.phase,
            released_at,
            involvements,
            appointments,
            alerts,
            // A withheld file changes only with a new event (a restriction lifted), which
            // refreshes it: no timer is kept for it meanwhile.
            next_change: if restricted || erased {
                None
            } else {
                next_change
            },
            restricted,
            erased,
            as_of: now,
        }
    }
}

// ----- alerts --------------------------------------------------------------------------------

/// An alert as a rule finds it, before "now" decides what of it has happened yet.
struct Candidate {
    kind: AlertKind,
    since: DateTime<Utc>,
    agency: Expected,
    cause: EventId,
    detail: String,
    cleared: Option<Clearance>,
}

fn at(fact: &Fact) -> DateTime<Utc> {
    fact.occurred_at.with_timezone(&Utc)
}

/// Events that end a stretch of freedom: the client is (back) in custody.
fn returns_to_custody(event: &JourneyEvent) -> bool {
    matches!(
        event,
        JourneyEvent::SentenceStarted(_) | JourneyEvent::ClientRecalled(_)
    )
}

fn attended_contact(event: &JourneyEvent) -> bool {
    matches!(event, JourneyEvent::ContactMade(contact) if contact.attended)
}

/// Who is expected to act on an alert.
#[derive(Clone)]
enum Expected {
    /// A given agency: the one that scheduled the missed appointments, or whose involvement
    /// closed.
    Agency(String),
    /// The agency of the first of `roles` with an involvement open while the alert stands, else
    /// `fallback` (the agency that recorded the cause).
    FirstOpen {
        roles: &'static [Role],
        fallback: String,
    },
}

impl Expected {
    fn first_open(roles: &'static [Role], fallback: &str) -> Self {
        Self::FirstOpen {
            roles,
            fallback: fallback.to_owned(),
        }
    }

    /// The agency, with the involvements open while the alert `stands`. A cleared alert stays
    /// with the agency that was to act on it, not one that began working with the client
    /// afterwards.
    fn at(self, involvements: &[Involvement], stands: Standing) -> String {
        match self {
            Self::Agency(agency) => agency,
            Self::FirstOpen { roles, fallback } => roles
                .iter()
                .find_map(|role| {
                    involvements
                        .iter()
                        .rev()
                        .find(|involvement| {
                            involvement.role == *role && open_while(involvement, stands)
                        })
                        .map(|involvement| involvement.agency.clone())
                })
                .unwrap_or(fallback),
        }
    }
}

/// Until when an alert is looked at for the agency expected to act.
#[derive(Clone, Copy)]
enum Standing {
    /// It is open now.
    Open { now: DateTime<Utc> },
    /// It stood until it was cleared at this moment.
    ClearedAt(DateTime<Utc>),
}

/// Whether the involvement was open while the alert stood: at `now` for an open alert, up to
/// the clearing for a cleared one (one whose opening was never recorded counts as not open, as
/// for access).
fn open_while(involvement: &Involvement, stands: Standing) -> bool {
    let from = involvement.from.map(|from| from.with_timezone(&Utc));
    let to = involvement.to.map(|to| to.with_timezone(&Utc));
    match stands {
        Standing::Open { now } => {
            from.is_some_and(|from| from <= now) && to.is_none_or(|to| to > now)
        }
        Standing::ClearedAt(cleared) => {
            from.is_some_and(|from| from < cleared) && to.is_none_or(|to| to >= cleared)
        }
    }
}

const SUPERVISING: [Role; 2] = [Role::ProbationOfficer, Role::CaseManager];
const ACCOMPANYING: [Role; 4] = [
    Role::ProbationOfficer,
    Role::CaseManager,
    Role::Mentor,
    Role::SocialWorker,
];

/// The alerts raised by `now` and when they next change.
fn alerts(
    state: &ClientState,
    involvements: &[Involvement],
    now: DateTime<Utc>,
    rules: &Rules,
) -> (Vec<Alert>, Option<DateTime<Utc>>) {
    let facts = &state.facts;
    let mut candidates = Vec::new();
    // Whether the client was released and has not returned to custody since.
    let mut at_liberty = false;
    for (index, fact) in facts.iter().enumerate() {
        let later = &facts[index + 1..];
        if returns_to_custody(&fact.event) {
            at_liberty = false;
        }
        match &fact.event {
            JourneyEvent::ClientReleased(_) => {
                // Facts of the same moment sort by when they were recorded; a contact recorded
                // before the release but made at its very moment is within its first day.
                let same_moment = facts[..index]
                    .iter()
                    .rposition(|earlier| at(earlier) != at(fact))
                    .map_or(0, |before| before + 1);
                candidates.extend(no_first_day_contact(
                    fact,
                    &facts[same_moment..index],
                    later,
                ));
                // A second release with no custody in between (a record of the same release,
                // or a transfer recorded as one) does not start a second gap: the first goes on.
                if !at_liberty {
                    candidates.extend(no_case_manager(fact, later, involvements, rules));
                }
                at_liberty = true;
            }
            JourneyEvent::ReleaseScheduled(scheduled) => {
                let release = scheduled.release_date.and_time(NaiveTime::MIN).and_utc();
                candidates.extend(release_unprepared(fact, &facts[..index], later, release));
            }
            JourneyEvent::JobLost(_) => candidates.push(loss(
                fact,
                later,
                AlertKind::JobLost,
                |event| matches!(event, JourneyEvent::JobPlaced(_)),
                Expected::first_open(
                    &[
                        Role::EmploymentAdvisor,
                        Role::CaseManager,
                        Role::ProbationOfficer,
                    ],
                    &fact.agency,
                ),
                "job lost",
            )),
            JourneyEvent::HousingLost(_) => candidates.push(loss(
                fact,
                later,
                AlertKind::HousingLost,
                |event| matches!(event, JourneyEvent::HousingSecured(_)),
                Expected::first_open(
                    &[Role::HousingWorker, Role::SocialWorker, Role::CaseManager],
                    &fact.agency,
                ),
                "housing lost",
            )),
            JourneyEvent::ProgrammeDroppedOut(_) => {
                let enrolled = later
                    .iter()
                    .find(|other| matches!(other.event, JourneyEvent::ProgrammeEnrolled(_)));
                candidates.push(Candidate {
                    kind: AlertKind::DroppedOut,
                    since: at(fact),
                    agency: Expected::first_open(
                        &[Role::CaseManager, Role::Mentor, Role::ProbationOfficer],
                        &fact.agency,
                    ),
                    cause: fact.event_id,
                    detail: "dropped out of the programme".into(),
                    cleared: enrolled.map(|other| Clearance {
                        at: at(other),
                        resolution: Resolution::Resolved,
                        by: Some(other.event_id),
                    }),
                });
            }
            _ => {}
        }
    }
    candidates.extend(appointments_missed(facts));

    // What of each candidate has happened by `now`; the earliest of what has not yet is when the
    // file next changes.
    let mut next_change: Option<DateTime<Utc>> = None;
    let mut note = |moment: DateTime<Utc>| {
        if moment > now {
            next_change = Some(next_change.map_or(moment, |next| next.min(moment)));
        }
    };
    let mut alerts: Vec<Alert> = Vec::new();
    for candidate in candidates {
        note(candidate.since);
        if candidate.since > now {
            continue;
        }
        let cleared = candidate.cleared.filter(|clearance| {
            note(clearance.at);
            clearance.at <= now
        });
        let standing = cleared
            .as_ref()
            .map_or(Standing::Open { now }, |clearance| {
                Standing::ClearedAt(clearance.at)
            });
        alerts.push(Alert {
            id: alert_id(state.client_id, candidate.kind, candidate.cause),
            client_id: state.client_id,
            kind: candidate.kind,
            since: candidate.since,
            agency: candidate.agency.at(involvements, standing),
            cause: candidate.cause,
            detail: candidate.detail,
            cleared,
        });
    }
    alerts.sort_by_key(|alert| (alert.since, alert.kind, alert.id));
    (alerts, next_change)
}

fn alert_id(client_id: ClientId, kind: AlertKind, cause: EventId) -> Uuid {
    let mut name = Vec::with_capacity(48);
    name.extend_from_slice(client_id.0.as_bytes());
    name.extend_from_slice(kind.as_str().as_bytes());
    name.extend_from_slice(cause.0.as_bytes());
    Uuid::new_v5(&ALERT_NAMESPACE, &name)
}

/// The namespace of alert ids (a random constant: ids are names within it).
const ALERT_NAMESPACE: Uuid = Uuid::from_u128(0x6d0f_8a35_3c1e_4b8e_9a57_2f4d_b1c0_7e21);

/// The stretch of freedom after a release: the facts up to a return to custody, and that return.
fn at_liberty(later: &[Fact]) -> (&[Fact], Option<&Fact>) {
    match later
        .iter()
        .position(|fact| returns_to_custody(&fact.event))
    {
        Some(end) => (&later[..end], Some(&later[end])),
        None => (later, None),
    }
}

/// The first day after `release`: the alert is due unless an attended contact was made by its
/// end (at the release's very moment counts, `same_moment` being the facts of that moment
/// recorded before it), and is superseded by a return to custody or by a later release, whose
/// own first day then counts.
fn no_first_day_contact(release: &Fact, same_moment: &[Fact], later: &[Fact]) -> Option<Candidate> {
    let due = at(release) + FIRST_DAY_WINDOW;
    let (free, custody) = until_next_release_or_custody(later);
    let contact = same_moment
        .iter()
        .chain(free)
        .find(|fact| attended_contact(&fact.event));
    if contact.is_some_and(|contact| at(contact) <= due)
        || custody.is_some_and(|custody| at(custody) <= due)
    {
        return None;
    }
    let cleared = match (contact, custody) {
        (Some(contact), _) => Some(Clearance {
            at: at(contact),
            resolution: Resolution::Resolved,
            by: Some(contact.event_id),
        }),
        (None, Some(custody)) => Some(Clearance {
            at: at(custody),
            resolution: Resolution::Superseded,
            by: Some(custody.event_id),
        }),
        (None, None) => None,
    };
    Some(Candidate {
        kind: AlertKind::NoFirstDayContact,
        since: due,
        agency: Expected::first_open(&ACCOMPANYING, &release.agency),
        cause: release.event_id,
        detail: format!(
            "released {}; no attended contact was recorded within 24 hours",
            at(release).format("%Y-%m-%d %H:%M UTC")
        ),
        cleared,
    })
}

/// Like [`at_liberty`], but a later release also ends the stretch.
fn until_next_release_or_custody(later: &[Fact]) -> (&[Fact], Option<&Fact>) {
    match later.iter().position(|fact| {
        returns_to_custody(&fact.event) || matches!(fact.event, JourneyEvent::ClientReleased(_))
    }) {
        Some(end) => (&later[..end], Some(&later[end])),
        None => (later, None),
    }
}

fn no_case_manager(
    release: &Fact,
    later: &[Fact],
    involvements: &[Involvement],
    rules: &Rules,
) -> Vec<Candidate> {
    let released = at(release);
    let (_, custody) = at_liberty(later);
    let end = custody.map(at);
    let supervising: Vec<&Involvement> = involvements
        .iter()
        .filter(|involvement| SUPERVISING.contains(&involvement.role))
        .collect();
    let covered = |moment: DateTime<Utc>| {
        supervising.iter().any(|involvement| {
            involvement
                .from
                .is_none_or(|from| from.with_timezone(&Utc) <= moment)
                && involvement
                    .to
                    .is_none_or(|to| to.with_timezone(&Utc) > moment)
        })
    };
    // A gap can begin at the release or when a supervising involvement closes.
    let mut starts: Vec<DateTime<Utc>> = std::iter::once(released)
        .chain(
            supervising
                .iter()
                .filter_map(|involvement| involvement.to.map(|to| to.with_timezone(&Utc))),
        )
        .filter(|moment| *moment >= released && end.is_none_or(|end| *moment < end))
        .collect();
    starts.sort();
    starts.dedup();
    let mut candidates = Vec::new();
    let mut covered_until = released;
    for start in starts {
        if start < covered_until || covered(start) {
            continue;
        }
        let resumed = supervising
            .iter()
            .filter_map(|involvement| involvement.from.map(|from| from.with_timezone(&Utc)))
            .filter(|from| *from > start)
            .min();
        let since = start + rules.unassigned_after;
        let cleared = match (resumed, end) {
            (Some(resumed), end) if end.is_none_or(|end| resumed <= end) => Some(Clearance {
                at: resumed,
                resolution: Resolution::Resolved,
                by: opened_at(later, resumed),
            }),
            (_, Some(end)) => Some(Clearance {
                at: end,
                resolution: Resolution::Superseded,
                by: custody.map(|fact| fact.event_id),
            }),
            _ => None,
        };
        covered_until = cleared
            .as_ref()
            .map_or(DateTime::<Utc>::MAX_UTC, |clearance| clearance.at);
        if cleared
            .as_ref()
            .is_some_and(|clearance| clearance.at <= since)
        {
            continue;
        }
        let closing = later.iter().rfind(|fact| {
            at(fact) <= start && matches!(&fact.event, JourneyEvent::InvolvementClosed(closed) if SUPERVISING.contains(&closed.role))
        });
        candidates.push(Candidate {
            kind: AlertKind::NoCaseManager,
            since,
            // The agency whose involvement ended must arrange the hand-over, whoever recorded
            // the end (any agency may record another's).
            agency: Expected::Agency(closing.map_or_else(
                || release.agency.clone(),
                |fact| {
                    match &fact.event {
                        JourneyEvent::InvolvementClosed(closed) => closed
                            .agency
                            .as_ref()
                            .map_or_else(|| fact.agency.clone(), ToString::to_string),
                        _ => fact.agency.clone(),
                    }
                },
            )),
            // Each gap is its own alert: the first is named by the release, later ones by the
            // closing that opened them.
            cause: closing.map_or(release.event_id, |fact| fact.event_id),
            detail: format!(
                "no case manager or probation officer since {}",
                start.format("%Y-%m-%d")
            ),
            cleared,
        });
    }
    candidates
}

/// The `involvement.opened` event of a supervising role at `moment`.
fn opened_at(later: &[Fact], moment: DateTime<Utc>) -> Option<EventId> {
    later
        .iter()
        .find(|fact| {
            at(fact) == moment
                && matches!(&fact.event, JourneyEvent::InvolvementOpened(opened) if SUPERVISING.contains(&opened.role))
        })
        .map(|fact| fact.event_id)
}

fn release_unprepared(
    schedule: &Fact,
    earlier: &[Fact],
    later: &[Fact],
    release: DateTime<Utc>,
) -> Vec<Candidate> {
    let since = (release - RELEASE_PREPARATION).max(at(schedule));
    // The schedule stands until the release, or until it is rescheduled.
    let end = later.iter().find(|fact| {
        matches!(
            fact.event,
            JourneyEvent::ClientReleased(_) | JourneyEvent::ReleaseScheduled(_)
        )
    });
    if end.is_some_and(|end| at(end) <= since) {
        return Vec::new();
    }
    // Preparation as it stands after each fact, in order.
    let mut plan: Option<BTreeSet<travelmap_domain::payloads::NeedArea>> = None;
    let mut assessed: BTreeMap<travelmap_domain::payloads::NeedArea, NeedStatus> = BTreeMap::new();
    let mut prepared = |fact: &Fact| -> bool {
        match &fact.event {
            JourneyEvent::PlanAgreed(agreed) => {
                plan.get_or_insert_with(BTreeSet::new)
                    .extend(agreed.areas.iter().copied());
            }
            JourneyEvent::NeedAssessed(need) => {
                assessed.insert(need.area, need.status);
            }
            _ => {}
        }
        let assessed_any = assessed
            .values()
            .any(|status| *status != NeedStatus::NotStarted);
        match &plan {
            None => false,
            Some(areas) if areas.is_empty() => assessed_any,
            Some(areas) => areas.iter().all(|area| {
                assessed
                    .get(area)
                    .is_some_and(|status| *status != NeedStatus::NotStarted)
            }),
        }
    };
    let mut ready = false;
    for fact in earlier
        .iter()
        .chain(later.iter().filter(|fact| at(fact) <= since))
    {
        ready = prepared(fact);
    }
    // From `since` until the release or a new schedule, an alert runs while preparation falls
    // short: the first from `since` (unless ready by then), and a new one from each fact that
    // undoes it again (a planned area set back to `not_started`, say), caused by that fact.
    let end_at = end.map(at);
    let agency = Expected::first_open(
        &[Role::CaseManager, Role::ProbationOfficer, Role::Mentor],
        &schedule.agency,
    );
    let candidate = |since, cause, cleared| Candidate {
        kind: AlertKind::ReleaseUnprepared,
        since,
        agency: agency.clone(),
        cause,
        detail: format!(
            "release scheduled for {}; no plan agreed or a planned needs area not assessed",
            release.format("%Y-%m-%d")
        ),
        cleared,
    };
    let mut candidates = Vec::new();
    let mut running = (!ready).then_some((since, schedule.event_id));
    for fact in later
        .iter()
        .filter(|fact| at(fact) > since && end_at.is_none_or(|end| at(fact) < end))
    {
        match (running, prepared(fact)) {
            (Some((from, cause)), true) => {
                candidates.push(candidate(
                    from,
                    cause,
                    Some(Clearance {
                        at: at(fact),
                        resolution: Resolution::Resolved,
                        by: Some(fact.event_id),
                    }),
                ));
                running = None;
            }
            (None, false) => running = Some((at(fact), fact.event_id)),
            _ => {}
        }
    }
    if let Some((from, cause)) = running {
        let superseded = end.map(|end| Clearance {
            at: at(end),
            resolution: Resolution::Superseded,
            by: Some(end.event_id),
        });
        candidates.push(candidate(from, cause, superseded));
    }
    candidates
}

fn loss(
    fact: &Fact,
    later: &[Fact],
    kind: AlertKind,
    remedies: impl Fn(&JourneyEvent) -> bool,
    agency: Expected,
    what: &str,
) -> Candidate {
    let since = at(fact);
    let expires = since + RECENT_LOSS;
    let remedy = later
        .iter()
        .find(|other| remedies(&other.event) && at(other) <= expires);
    Candidate {
        kind,
        since,
        agency,
        cause: fact.event_id,
        detail: format!("{what} on {}", since.format("%Y-%m-%d")),
        cleared: Some(match remedy {
            Some(other) => Clearance {
                at: at(other),
                resolution: Resolution::Resolved,
                by: Some(other.event_id),
            },
            None => Clearance {
                at: expires,
                resolution: Resolution::Expired,
                by: None,
            },
        }),
    }
}

fn appointments_missed(facts: &[Fact]) -> Vec<Candidate> {
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut streak = 0;
    let mut open: Option<usize> = None;
    for fact in facts {
        match &fact.event {
            JourneyEvent::AppointmentMissed(missed) => {
                streak += 1;
                if streak == 2 && open.is_none() {
                    // The agency that scheduled the appointment is the one to follow it up; an
                    // id is its sender's reference, so a miss names the recorder's own.
                    let scheduler = facts
                        .iter()
                        .any(|other| match &other.event {
                            JourneyEvent::AppointmentScheduled(scheduled) => {
                                scheduled.appointment_id == missed.appointment_id
                                    && other.agency == fact.agency
                            }
                            _ => false,
                        })
                        .then(|| fact.agency.clone());
                    open = Some(candidates.len());
                    candidates.push(Candidate {
                        kind: AlertKind::AppointmentsMissed,
                        since: at(fact),
                        agency: scheduler.map_or_else(
                            || Expected::first_open(&ACCOMPANYING, &fact.agency),
                            Expected::Agency,
                        ),
                        cause: fact.event_id,
                        detail: "two appointments missed in a row".into(),
                        cleared: None,
                    });
                }
            }
            event if attended_contact(event) => {
                streak = 0;
                if let Some(index) = open.take() {
                    candidates[index].cleared = Some(Clearance {
                        at: at(fact),
                        resolution: Resolution::Resolved,
                        by: Some(fact.event_id),
                    });
                }
            }
            _ => {}
        }
    }
    candidates
}

// ----- caseloads -----------------------------------------------------------------------------

/// Clients per stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StageCounts {
    pub in_custody: usize,
    pub released_under_30_days: usize,
    pub released_over_30_days: usize,
    /// Registered only, completed, dropped out or re-offended.
    pub other: usize,
}

impl StageCounts {
    fn add(&mut self, stage: Stage) {
        match stage {
            Stage::InCustody => self.in_custody += 1,
            Stage::ReleasedUnder30Days => self.released_under_30_days += 1,
            Stage::ReleasedOver30Days => self.released_over_30_days += 1,
            Stage::Other => self.other += 1,
        }
    }
}

/// One worker's active clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerLoad {
    pub worker: String,
    /// Distinct clients with an open involvement of this worker.
    pub clients: usize,
    /// More clients than the threshold.
    pub over_threshold: bool,
}

/// An agency's caseload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgencyCaseload {
    pub agency: String,
    /// Distinct clients with an open involvement of the agency.
    pub active_clients: usize,
    /// Role → active clients in that role.
    #[schema(value_type = Object)]
    pub by_role: BTreeMap<String, usize>,
    /// Named workers, most loaded first.
    pub workers: Vec<WorkerLoad>,
    /// Active clients without a named worker.
    pub unassigned_clients: usize,
    pub stages: StageCounts,
    /// Involvements opened in the last 30 days.
    pub opened_last_30_days: usize,
    /// Involvements closed in the last 30 days.
    pub closed_last_30_days: usize,
    /// Involvements opened as hand-overs (reason `transfer`) in the last 30 days.
    pub handovers_last_30_days: usize,
    /// Open alerts that this agency is expected to act on.
    pub open_alerts: usize,
}

/// The caseloads of every agency with an involvement, in agency order. Restricted clients are
/// left out (their data may be stored, not processed).
pub fn caseloads<'a>(
    files: impl IntoIterator<Item = &'a CaseFile>,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Vec<AgencyCaseload> {
    #[derive(Default)]
    struct Tally {
        clients: BTreeSet<ClientId>,
        by_role: BTreeMap<String, BTreeSet<ClientId>>,
        workers: BTreeMap<String, BTreeSet<ClientId>>,
        named: BTreeSet<ClientId>,
        stages: StageCounts,
        opened: usize,
        closed: usize,
        handovers: usize,
        open_alerts: usize,
    }
    let recent = |moment: Option<chrono::DateTime<chrono::FixedOffset>>| {
        moment.is_some_and(|moment| {
            let moment = moment.with_timezone(&Utc);
            moment <= now && now - moment <= CASELOAD_WINDOW
        })
    };
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for file in files.into_iter().filter(|file| !file.withheld()) {
        let stage = file.stage(now);
        for involvement in &file.involvements {
            let tally = tallies.entry(involvement.agency.clone()).or_default();
            if recent(involvement.from) {
                tally.opened += 1;
                if involvement.handover {
                    tally.handovers += 1;
                }
            }
            if recent(involvement.to) {
                tally.closed += 1;
            }
            if !involvement.open_at(now) {
                continue;
            }
            if tally.clients.insert(file.client_id) {
                tally.stages.add(stage);
            }
            tally
                .by_role
                .entry(role_name(involvement.role))
                .or_default()
                .insert(file.client_id);
            if let Some(worker) = &involvement.worker {
                tally
                    .workers
                    .entry(worker.clone())
                    .or_default()
                    .insert(file.client_id);
                tally.named.insert(file.client_id);
            }
        }
        for alert in file.open_alerts() {
            tallies.entry(alert.agency.clone()).or_default().open_alerts += 1;
        }
    }
    tallies
        .into_iter()
        .map(|(agency, tally)| {
            let mut workers: Vec<WorkerLoad> = tally
                .workers
                .into_iter()
                .map(|(worker, clients)| WorkerLoad {
                    worker,
                    clients: clients.len(),
                    over_threshold: clients.len() > rules.worker_threshold,
                })
                .collect();
            workers.sort_by(|a, b| b.clients.cmp(&a.clients).then(a.worker.cmp(&b.worker)));
            AgencyCaseload {
                agency,
                active_clients: tally.clients.len(),
                by_role: tally
                    .by_role
                    .into_iter()
                    .map(|(role, clients)| (role, clients.len()))
                    .collect(),
                workers,
                unassigned_clients: tally.clients.len() - tally.named.len(),
                stages: tally.stages,
                opened_last_30_days: tally.opened,
                closed_last_30_days: tally.closed,
                handovers_last_30_days: tally.handovers,
                open_alerts: tally.open_alerts,
            }
        })
        .collect()
}

pub fn role_name(role: Role) -> String {
    serde_json::to_value(role)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// How the agency works with a client: one open involvement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    #[schema(value_type = String)]
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Opened as a hand-over from another worker or agency.
    pub handover: bool,
}

/// One active client on an agency's caseload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CaseEntry {
    #[schema(value_type = uuid::Uuid)]
    pub client_id: ClientId,
    pub phase: Phase,
    pub stage: Stage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_since_release: Option<i64>,
    pub assignments: Vec<Assignment>,
    /// The soonest appointment still ahead or overdue, with any agency (its purpose is personal
    /// and left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_appointment: Option<NextAppointment>,
    /// Kinds of the client's open alerts.
    pub flags: Vec<AlertKind>,
}

/// An appointment on a caseload, without its purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NextAppointment {
    pub appointment_id: String,
    pub at: chrono::DateTime<chrono::FixedOffset>,
    pub agency: String,
    pub overdue: bool,
}

/// The agency's active clients (an open involvement), longest released first.
pub fn agency_caseload<'a>(
    files: impl IntoIterator<Item = &'a CaseFile>,
    agency: &str,
    now: DateTime<Utc>,
) -> Vec<CaseEntry> {
    let mut entries: Vec<CaseEntry> = files
        .into_iter()
        .filter(|file| !file.withheld() && file.carried_by(agency, now))
        .map(|file| {
            let mut flags: Vec<AlertKind> = file.open_alerts().map(|alert| alert.kind).collect();
            flags.sort();
            flags.dedup();
            CaseEntry {
                client_id: file.client_id,
                phase: file.phase,
                stage: file.stage(now),
                released_at: file.released_at,
                days_since_release: file.released_at.map(|released| (now - released).num_days()),
                assignments: file
                    .involvements
                    .iter()
                    .filter(|involvement| involvement.agency == agency && involvement.open_at(now))
                    .map(|involvement| Assignment {
                        role: involvement.role,
                        worker: involvement.worker.clone(),
                        since: involvement.from,
                        handover: involvement.handover,
                    })
                    .collect(),
                next_appointment: file
                    .appointments
                    .first()
                    .map(|appointment| NextAppointment {
                        appointment_id: appointment.appointment_id.clone(),
                        at: appointment.at,
                        agency: appointment.agency.clone(),
                        // Derived when read, like the map's: the case file was made when
                        // the client last changed, and an appointment passes without an event.
                        overdue: appointment.at.with_timezone(&Utc) < now,
                    }),
                flags,
            }
        })
        .collect();
    entries.sort_by(|a, b| {
        (a.released_at.is_none(), a.released_at, a.client_id).cmp(&(
            b.released_at.is_none(),
            b.released_at,
            b.client_id,
        ))
    });
    entries
}
