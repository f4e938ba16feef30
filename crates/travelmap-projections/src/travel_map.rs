//! The travel map: who works with a client, when, what happened and what is next.
//!
//! The projection keeps a [`ClientState`] per client: the client's standing facts (events with
//! corrections applied, retracted ones removed), sorted by when they happened. The map itself is
//! derived from that state when it is read, with the time of reading as "now". Deriving on read
//! is cheap (a client has tens of events) and is what makes time-based flags right: "no first-day
//! contact" appears 24 hours after release even if no event arrives, and a map `as_of` a past
//! moment shows the flags as they stood then.
//!
//! ## Phase rules
//! Facts are taken in `occurred_at` order (ties by global position); the last phase-changing fact
//! sets the phase:
//! `sentence.started` and `client.recalled` → `in_custody`; `client.released` → `released`;
//! `programme.completed` → `completed`; `programme.dropped_out` → `dropped_out`;
//! `reoffence.recorded` → `reoffended`. Before any of these the phase is `registered`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, FixedOffset, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use travelmap_domain::payloads::{NeedArea, NeedStatus, Purpose, Role};
use travelmap_domain::{ClientId, EventId, JourneyEvent, RecordedEvent};
use utoipa::ToSchema;

/// How long after release a first-day contact may come before the map flags its absence.
pub const FIRST_DAY_WINDOW: Duration = Duration::hours(24);

/// A standing fact: an event as it now reads, after any corrections.
///
/// Facts are stored in the projection, never sent as they are, so their times are kept as
/// integers: formatting and parsing RFC 3339 text was a seventh of a rebuild's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub event_id: EventId,
    pub position: u64,
    #[serde(with = "offset_micros")]
    pub occurred_at: DateTime<FixedOffset>,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub recorded_at: DateTime<Utc>,
    pub agency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub event: JourneyEvent,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<CorrectionNote>,
}

/// A correction applied to a fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CorrectionNote {
    /// The `event.corrected` event.
    #[schema(value_type = uuid::Uuid)]
    pub event_id: EventId,
    /// Why the fact was corrected.
    pub reason: String,
    /// The agency that corrected it.
    pub agency: String,
    /// When the correction was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// The projection's state for one client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientState {
    pub client_id: ClientId,
    /// The client's stream version folded so far.
    pub version: u64,
    /// The global position of the last event folded; events at or below it are skipped, which
    /// makes applying an event twice harmless.
    pub position: u64,
    /// Standing facts in `occurred_at` order (ties by position).
    pub facts: Vec<Fact>,
    /// Facts retracted, gone from `facts`: only what retention needs of them (a retraction's
    /// reason is sealed under the category of the fact it retracts, whose clock it restarts).
    /// Absent from views stored before it was kept, which read as having none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retractions: Vec<Retraction>,
    /// Access that a rectification took back (see [`crate::Access::told_of_its_end`]). Absent
    /// from views stored before it was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants_taken_back: Vec<TakenBack>,
}

/// Access a correction or retraction took back from an agency: of an involvement (every
/// purpose), or of a consent (the purposes it no longer covers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenBack {
    pub agency: String,
    /// The correction or retraction.
    pub rectification: EventId,
    /// The purposes taken back; absent for an involvement's, which covered every purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purposes: Option<Vec<Purpose>>,
}

/// The access a fact gives an agency: an involvement (for every purpose) opened for it (the
/// recording agency, unless it names another), or a consent for some purposes.
pub(crate) fn granted_by(
    event: &JourneyEvent,
    recorder: &str,
) -> Option<(String, Option<Vec<Purpose>>)> {
    match event {
        JourneyEvent::InvolvementOpened(opened) => Some((
            opened
                .agency
                .as_ref()
                .map_or(recorder, |named| named.as_str())
                .to_owned(),
            None,
        )),
        JourneyEvent::ConsentRecorded(consent) => Some((
            consent.agency.as_str().to_owned(),
            Some(consent.purposes.clone()),
        )),
        _ => None,
    }
}

/// What of `before`'s access `after` (the fact as corrected; `None` once retracted) no longer
/// gives, taken back by `rectification`.
fn taken_back(
    before: (String, Option<Vec<Purpose>>),
    after: Option<(String, Option<Vec<Purpose>>)>,
    rectification: EventId,
) -> Option<TakenBack> {
    let (agency, covered) = before;
    let purposes = match after {
        Some((still, _)) if still != agency => covered,
        Some((_, still)) => match (covered, still) {
            (Some(covered), Some(still)) => {
                let lost: Vec<Purpose> = covered
                    .into_iter()
                    .filter(|purpose| !still.contains(purpose))
                    .collect();
                if lost.is_empty() {
                    return None;
                }
                Some(lost)
            }
            _ => return None,
        },
        None => covered,
    };
    Some(TakenBack {
        agency,
        rectification,
        purposes,
    })
}

/// A retracted fact, as retention counts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retraction {
    /// The type of the fact retracted (its category is that of the retraction).
    pub event_type: String,
    /// When the retraction was recorded.
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub recorded_at: DateTime<Utc>,
}

impl ClientState {
    pub fn new(client_id: ClientId) -> Self {
        Self {
            client_id,
            version: 0,
            position: 0,
            facts: Vec::new(),
            retractions: Vec::new(),
            grants_taken_back: Vec::new(),
        }
    }

    /// Folds a whole history (e.g. for `as_of`).
    pub fn from_history(
        client_id: ClientId,
        events: impl IntoIterator<Item = RecordedEvent>,
    ) -> Self {
        let mut state = Self::new(client_id);
        for event in events {
            state.apply(event);
        }
        state
    }

    /// Folds one recorded event into the state. Returns false (and changes nothing) if the event
    /// was already folded in. Takes the event by value: its data moves into the fact instead of
    /// being copied, which matters when a rebuild folds the whole log.
    pub fn apply(&mut self, recorded: RecordedEvent) -> bool {
        if recorded.meta.position <= self.position {
            return false;
        }
        let RecordedEvent {
            draft,
            provenance,
            meta,
            ..
        } = recorded;
        self.position = meta.position;
        self.version = meta.version;
        match draft.event {
            JourneyEvent::EventCorrected(correction) => {
                if let Some(fact) = self
                    .facts
                    .iter_mut()
                    .find(|fact| fact.event_id == correction.event_id)
                {
                    let granted_before = granted_by(&fact.event, &fact.agency);
                    // The aggregate validated the replacement against this type when it was
                    // recorded; a failure here would mean a damaged log, and keeping the original
                    // reading is the safer answer than dropping the fact.
                    if let Ok(event) = travelmap_domain::personal::decode_replacement(
                        fact.event.event_type(),
                        fact.event.schema_version(),
                        correction.data,
                    ) {
                        fact.event = event;
                    }
                    if let Some(before) = granted_before
                        && let Some(lost) =
                            taken_back(before, granted_by(&fact.event, &fact.agency), draft.id)
                    {
                        self.grants_taken_back.push(lost);
                    }
                    fact.corrections.push(CorrectionNote {
                        event_id: draft.id,
                        reason: correction.reason.into(),
                        agency: provenance.agency,
                        recorded_at: meta.recorded_at,
                    });
                }
            }
            JourneyEvent::EventRetracted(retraction) => {
                if let Some(at) = self
                    .facts
                    .iter()
                    .position(|fact| fact.event_id == retraction.event_id)
                {
                    let retracted = self.facts.remove(at);
                    if let Some(before) = granted_by(&retracted.event, &retracted.agency)
                        && let Some(lost) = taken_back(before, None, draft.id)
                    {
                        self.grants_taken_back.push(lost);
                    }
                    self.retractions.push(Retraction {
                        event_type: retracted.event.event_type().to_owned(),
                        recorded_at: meta.recorded_at,
                    });
                }
            }
            event => {
                let fact = Fact {
                    event_id: draft.id,
                    position: meta.position,
                    // Stored views keep microseconds; a fold from the history (`as_of`) must see
                    // the same time as the live view, also for events recorded with finer ones.
                    occurred_at: draft.occurred_at.trunc_subsecs(6),
                    recorded_at: meta.recorded_at,
                    agency: provenance.agency,
                    actor: draft.actor.map(String::from),
                    event,
                    corrections: Vec::new(),
                };
                // Most events arrive in the order they occurred, so the last fact is looked at
                // first: a rebuild folds clients in turn, each of them cold in the CPU's caches,
                // and the binary search's reads of other facts were most of this function's time.
                let key = sort_key(&fact);
                let at = match self.facts.last() {
                    Some(last) if sort_key(last) > key => {
                        self.facts.partition_point(|other| sort_key(other) <= key)
                    }
                    _ => self.facts.len(),
                };
                if self.facts.capacity() == 0 {
                    // Room for a typical journey up front: growing from the smallest capacity
                    // copied the facts (cold, like the rest of the state) three times.
                    self.facts.reserve_exact(TYPICAL_FACTS);
                }
                self.facts.insert(at, fact);
            }
        }
        true
    }

    /// The identifiers under which the client can be found.
    pub fn identifiers(&self) -> Vec<(String, String)> {
        let mut identifiers = Vec::new();
        for fact in &self.facts {
            let added: Vec<_> = match &fact.event {
                JourneyEvent::ClientRegistered(registered) => {
                    registered.identifiers.iter().collect()
                }
                JourneyEvent::IdentifierAdded(added) => vec![&added.identifier],
                _ => continue,
            };
            for identifier in added {
                // An erased identifier reads as a placeholder, which must not become findable.
                if identifier.value.as_str() == travelmap_domain::personal::ERASED {
                    continue;
                }
                let pair = (
                    identifier.kind.as_str().to_owned(),
                    identifier.value.to_string(),
                );
                if !identifiers.contains(&pair) {
                    identifiers.push(pair);
                }
            }
        }
        identifiers
    }

    /// The travel map as it stands at `now`.
    pub fn travel_map(&self, now: DateTime<Utc>) -> TravelMap {
        derive(self, now, true)
    }

    /// The travel map at `now` with no steps: where the client stands (phases, involvements,
    /// needs, appointments, flags). For access decisions, case files and retention, which never
    /// show the steps; their summaries and data were most of what deriving a map cost.
    pub fn travel_map_without_steps(&self, now: DateTime<Utc>) -> TravelMap {
        derive(self, now, false)
    }
}

/// Facts a new client's state makes room for at once (the benchmark's journeys have 20).
const TYPICAL_FACTS: usize = 16;

fn sort_key(fact: &Fact) -> (DateTime<Utc>, u64) {
    (fact.occurred_at.with_timezone(&Utc), fact.position)
}

/// Where the client is on the journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Known, but no custody or release recorded yet.
    Registered,
    InCustody,
    Released,
    Completed,
    DroppedOut,
    Reoffended,
}

/// A stretch of time in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PhaseSpan {
    pub phase: Phase,
    /// When the phase began (the `occurred_at` of the event that began it).
    pub from: DateTime<FixedOffset>,
    /// When it ended; absent for the current phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<FixedOffset>>,
}

/// An agency (and worker) working with the client in a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Involvement {
    pub agency: String,
    #[schema(value_type = String)]
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When it began; absent if only its end was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<FixedOffset>>,
    /// When it ended; absent while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<FixedOffset>>,
    /// True when it was opened as a hand-over (`reason: transfer`).
    pub handover: bool,
    /// The agency that recorded its opening (or, if only its end was recorded, its end): any
    /// agency may record another's involvement, which opens that agency's access.
    pub recorded_by: String,
    /// The agency that recorded its end; absent while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
}

impl Involvement {
    /// Whether it is open at `now`: begun by then and not yet ended. An opening or closing
    /// recorded a few minutes ahead of its time (within the clock skew allowed) counts from that
    /// time, and one with only its end recorded was never seen open.
    pub fn open_at(&self, now: DateTime<Utc>) -> bool {
        self.from.is_some_and(|from| from <= now) && self.to.is_none_or(|to| to > now)
    }
}

/// One event on the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    #[schema(value_type = uuid::Uuid)]
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<FixedOffset>,
    pub recorded_at: DateTime<Utc>,
    /// The agency that recorded the event.
    pub agency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// A short, readable line about what happened.
    pub summary: String,
    /// The event's data, with corrections applied.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Corrections applied to this step, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<CorrectionNote>,
}

/// The latest assessment of a needs area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Need {
    #[schema(value_type = String)]
    pub status: NeedStatus,
    pub since: DateTime<FixedOffset>,
    pub agency: String,
}

/// A scheduled appointment not yet met or missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Appointment {
    pub appointment_id: String,
    pub at: DateTime<FixedOffset>,
    pub agency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// True when its time has passed without a contact or a miss being recorded.
    pub overdue: bool,
}

/// Something on the map that needs attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Flag {
    /// What kind of attention: `no_first_day_contact`, `processing_restricted`,
    /// `personal_data_erased`.
    pub kind: String,
    /// Since when the flag holds.
    pub since: DateTime<Utc>,
    /// A readable explanation.
    pub detail: String,
}

/// A client's travel map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TravelMap {
    #[schema(value_type = uuid::Uuid)]
    pub client_id: ClientId,
    pub phase: Phase,
    pub phases: Vec<PhaseSpan>,
    pub involvements: Vec<Involvement>,
    pub steps: Vec<Step>,
    /// Needs area → latest status.
    #[schema(value_type = Object)]
    pub needs: BTreeMap<NeedArea, Need>,
    pub next: Vec<Appointment>,
    pub flags: Vec<Flag>,
    /// The client's stream version this map reflects.
    pub version: u64,
    /// The global position of the last event this map reflects.
    pub position: u64,
    /// The moment the map was derived for: now, or the `as_of` asked for.
    pub as_of: DateTime<Utc>,
}

fn phase_of(event: &JourneyEvent) -> Option<Phase> {
    Some(match event {
        JourneyEvent::SentenceStarted(_) | JourneyEvent::ClientRecalled(_) => Phase::InCustody,
        JourneyEvent::ClientReleased(_) => Phase::Released,
        JourneyEvent::ProgrammeCompleted(_) => Phase::Completed,
        JourneyEvent::ProgrammeDroppedOut(_) => Phase::DroppedOut,
        JourneyEvent::ReoffenceRecorded(_) => Phase::Reoffended,
        _ => return None,
    })
}

/// Settles the appointment that a miss or contact recorded by `agency` names: the agency's own
/// with that id. An id is its sender's reference, and agencies number their appointments each
/// their own way, so one agency's miss or contact never settles another's appointment that
/// happens to share its id; the agency that schedules an appointment records how it went.
fn settle(appointments: &mut Vec<Appointment>, appointment_id: &str, agency: &str) {
    appointments.retain(|appointment| {
        appointment.appointment_id != appointment_id || appointment.agency != agency
    });
}

fn derive(state: &ClientState, now: DateTime<Utc>, with_steps: bool) -> TravelMap {
    // Times are kept to the microsecond, so the moment is too: a map shows the `as_of` it was
    // derived for, and judges overdue appointments and the first day at that very moment.
    let now = now.trunc_subsecs(6);
    let mut phases: Vec<PhaseSpan> = Vec::new();
    let mut involvements: Vec<Involvement> = Vec::new();
    let mut needs = BTreeMap::new();
    let mut appointments: Vec<Appointment> = Vec::new();
    let mut last_release: Option<DateTime<Utc>> = None;
    let mut first_day_contact_after_release = false;
    // The moment of the last attended contact: facts of one moment sort by when they were
    // recorded, and a contact recorded before the release but made at its very moment counts.
    let mut last_attended_contact: Option<DateTime<Utc>> = None;

    for fact in &state.facts {
        let at = fact.occurred_at;
        // Only a release ends custody: a programme completed or dropped, or an offence
        // recorded, while the client is in prison is a step of the journey, and the phase it
        // names begins only out of custody (mentoring starts months before release).
        let custody_holds = |phase: Phase| {
            phases
                .last()
                .is_some_and(|span| span.phase == Phase::InCustody)
                && !matches!(phase, Phase::InCustody | Phase::Released)
        };
        if let Some(phase) = phase_of(&fact.event).filter(|phase| !custody_holds(*phase)) {
            match phases.last_mut() {
                Some(current) if current.phase == phase => {}
                Some(current) => {
                    current.to = Some(at);
                    phases.push(PhaseSpan {
                        phase,
                        from: at,
                        to: None,
                    });
                }
                None => phases.push(PhaseSpan {
                    phase,
                    from: at,
                    to: None,
                }),
            }
        }
        match &fact.event {
            JourneyEvent::InvolvementOpened(opened) => involvements.push(Involvement {
                agency: opened
                    .agency
                    .as_ref()
                    .map_or_else(|| fact.agency.clone(), ToString::to_string),
                role: opened.role,
                worker: opened.worker.as_ref().map(ToString::to_string),
                from: Some(at),
                to: None,
                handover: opened.reason
                    == Some(travelmap_domain::payloads::OpeningReason::Transfer),
                recorded_by: fact.agency.clone(),
                closed_by: None,
            }),
            JourneyEvent::InvolvementClosed(closed) => {
                let agency = closed
                    .agency
                    .as_ref()
                    .map_or_else(|| fact.agency.clone(), ToString::to_string);
                let worker = closed.worker.as_ref().map(ToString::to_string);
                let open_here = |involvement: &Involvement| {
                    involvement.to.is_none()
                        && involvement.agency == agency
                        && involvement.role == closed.role
                };
                let matches = |involvement: &Involvement| {
                    open_here(involvement) && (worker.is_none() || involvement.worker == worker)
                };
                // A close naming a worker ends that worker's latest involvement, or, if that
                // worker has none open, the latest opened without a worker (whose worker was
                // not known then); one naming no worker ends the agency's role with the client,
                // whoever carried it.
                let closing: Vec<usize> = match worker {
                    Some(_) => involvements
                        .iter()
                        .rposition(matches)
                        .or_else(|| {
                            involvements.iter().rposition(|involvement| {
                                open_here(involvement) && involvement.worker.is_none()
                            })
                        })
                        .into_iter()
                        .collect(),
                    None => (0..involvements.len())
                        .filter(|index| matches(&involvements[*index]))
                        .collect(),
                };
                for index in &closing {
                    involvements[*index].to = Some(at);
                    involvements[*index].closed_by = Some(fact.agency.clone());
                }
                if closing.is_empty() {
                    involvements.push(Involvement {
                        agency,
                        role: closed.role,
                        worker,
                        from: None,
                        to: Some(at),
                        handover: false,
                        recorded_by: fact.agency.clone(),
                        closed_by: Some(fact.agency.clone()),
                    });
                }
            }
            JourneyEvent::PlanAgreed(plan) => {
                for area in &plan.areas {
                    needs.entry(*area).or_insert(Need {
                        status: NeedStatus::NotStarted,
                        since: at,
                        agency: fact.agency.clone(),
                    });
                }
            }
            JourneyEvent::NeedAssessed(assessed) => {
                needs.insert(
                    assessed.area,
                    Need {
                        status: assessed.status,
                        since: at,
                        agency: fact.agency.clone(),
                    },
                );
            }
            // An appointment id is its sender's reference: agencies number their appointments
            // each their own way, so scheduling an id again replaces only the sender's own.
            JourneyEvent::AppointmentScheduled(scheduled) => {
                let appointment_id = scheduled.appointment_id.to_string();
                appointments.retain(|other| {
                    other.appointment_id != appointment_id || other.agency != fact.agency
                });
                appointments.push(Appointment {
                    appointment_id,
                    at: scheduled.at,
                    agency: fact.agency.clone(),
                    purpose: scheduled.purpose.as_ref().map(ToString::to_string),
                    overdue: false,
                });
            }
            JourneyEvent::AppointmentMissed(missed) => {
                settle(
                    &mut appointments,
                    missed.appointment_id.as_str(),
                    &fact.agency,
                );
            }
            JourneyEvent::ContactMade(contact) => {
                if let Some(appointment_id) = &contact.appointment_id {
                    settle(&mut appointments, appointment_id.as_str(), &fact.agency);
                }
                if contact.attended {
                    last_attended_contact = Some(at.with_timezone(&Utc));
                }
                if let Some(released) = last_release
                    && contact.attended
                    && at.with_timezone(&Utc) <= released + FIRST_DAY_WINDOW
                {
                    first_day_contact_after_release = true;
                }
            }
            JourneyEvent::ClientReleased(_) => {
                let released = at.with_timezone(&Utc);
                last_release = Some(released);
                first_day_contact_after_release = last_attended_contact == Some(released);
            }
            _ => {}
        }
    }

    let phase = phases.last().map_or(Phase::Registered, |span| span.phase);
    let mut flags = Vec::new();
    // Out since the last release (released, or completed, dropped out or reoffended since):
    // a programme's end does not make up for the first day, as the alert of the same name
    // agrees. A return to custody ends it.
    if phase != Phase::InCustody
        && let Some(released) = last_release
        && !first_day_contact_after_release
        && now >= released + FIRST_DAY_WINDOW
    {
        flags.push(Flag {
            kind: "no_first_day_contact".into(),
            since: released + FIRST_DAY_WINDOW,
            // Worded as the alert of the same name words it.
            detail: format!(
                "released {}; no attended contact was recorded within 24 hours",
                released.format("%Y-%m-%d %H:%M UTC")
            ),
        });
    }
    flags.extend(data_protection_flags(state));
    for appointment in &mut appointments {
        appointment.overdue = appointment.at.with_timezone(&Utc) < now;
    }
    appointments.sort_by_key(|appointment| appointment.at);

    TravelMap {
        client_id: state.client_id,
        phase,
        phases,
        involvements,
        steps: if with_steps {
            state.facts.iter().map(step).collect()
        } else {
            Vec::new()
        },
        needs,
        next: appointments,
        flags,
        version: state.version,
        position: state.position,
        as_of: now,
    }
}

/// `processing_restricted` while a restriction stands, `personal_data_erased` once erased. These
/// decisions take effect when recorded, so they are read in recording order.
fn data_protection_flags(state: &ClientState) -> Vec<Flag> {
    let mut decisions: Vec<&Fact> = state
        .facts
        .iter()
        .filter(|fact| {
            matches!(
                fact.event,
                JourneyEvent::ProcessingRestricted(_)
                    | JourneyEvent::RestrictionLifted(_)
                    | JourneyEvent::PersonalDataErased(_)
            )
        })
        .collect();
    decisions.sort_by_key(|fact| fact.position);
    let mut restricted: Option<&Fact> = None;
    let mut erased: Option<&Fact> = None;
    for fact in decisions {
        match fact.event {
            JourneyEvent::ProcessingRestricted(_) => restricted = Some(fact),
            JourneyEvent::RestrictionLifted(_) => restricted = None,
            _ => erased = Some(fact),
        }
    }
    let mut flags = Vec::new();
    if let Some(fact) = restricted {
        flags.push(Flag {
            kind: "processing_restricted".into(),
            since: fact.recorded_at,
            detail: "processing is restricted: the data may be read only for audit or subject access, and nothing but lifting the restriction is recorded".into(),
        });
    }
    if let Some(fact) = erased {
        flags.push(Flag {
            kind: "personal_data_erased".into(),
            since: fact.recorded_at,
            detail: "the client's personal data was erased; the journey facts remain".into(),
        });
    }
    flags
}

fn step(fact: &Fact) -> Step {
    Step {
        event_id: fact.event_id,
        event_type: fact.event.event_type().to_owned(),
        occurred_at: fact.occurred_at,
        recorded_at: fact.recorded_at,
        agency: fact.agency.clone(),
        actor: fact.actor.clone(),
        summary: summary(&fact.event),
        data: fact.event.data(),
        corrections: fact.corrections.clone(),
    }
}

/// A short line for a step. Deliberately free of personal details (names, notes), so that a map
/// summary can be shown on a screen without exposing more than the journey.
pub fn summary(event: &JourneyEvent) -> String {
    use JourneyEvent as E;
    match event {
        // Erased identifiers read as none: the count would then state that there were none.
        E::ClientRegistered(e) if e.identifiers.is_empty() => "Registered".into(),
        E::ClientRegistered(e) => format!("Registered with {} identifier(s)", e.identifiers.len()),
        E::IdentifierAdded(e)
            if e.identifier.value.as_str() == travelmap_domain::personal::ERASED =>
        {
            "Identifier added (erased)".into()
        }
        E::IdentifierAdded(e) => format!("Identifier {} added", e.identifier.kind.as_str()),
        E::SentenceStarted(e) => match e.expected_release_date {
            Some(release) => format!(
                "Sentence started at {} (expected release {release})",
                e.prison
            ),
            None => format!("Sentence started at {}", e.prison),
        },
        E::ProgrammeEnrolled(e) => format!("Enrolled in {}", e.programme),
        E::InvolvementOpened(e) => format!(
            "{} involvement opened{}",
            capitalised(&e.role),
            if e.reason == Some(travelmap_domain::payloads::OpeningReason::Transfer) {
                " (hand-over)"
            } else {
                ""
            }
        ),
        E::InvolvementClosed(e) => format!("{} involvement closed", capitalised(&e.role)),
        E::ConsentRecorded(e) => format!("Consent recorded for {}", e.agency),
        E::ConsentWithdrawn(e) => format!("Consent withdrawn for {}", e.agency),
        E::PlanAgreed(e) => format!("Plan agreed covering {} needs area(s)", e.areas.len()),
        E::NeedAssessed(e) => format!("{} assessed: {}", capitalised(&e.area), words(&e.status)),
        E::PrereleaseLectureAttended(_) => "Pre-release lecture attended".into(),
        E::RetrainingStarted(e) => format!("Retraining started: {}", e.course),
        E::RetrainingCompleted(e) => format!("Retraining completed: {}", e.course),
        E::CounsellingAttended(e) => format!("{} counselling attended", capitalised(&e.kind)),
        E::ReleaseScheduled(e) => format!("Release scheduled for {}", e.release_date),
        E::ClientReleased(e) => format!(
            "Released ({}{}){}",
            words(&e.release_kind),
            if e.supervision { ", supervised" } else { "" },
            e.municipality
                .as_ref()
                .map_or(String::new(), |place| format!(" to {place}"))
        ),
        E::ContactMade(e) => format!(
            "{} contact{}",
            capitalised(&e.kind),
            if e.attended { "" } else { " (not attended)" }
        ),
        E::AppointmentScheduled(e) => format!("Appointment scheduled for {}", e.at.to_rfc3339()),
        E::AppointmentMissed(_) => "Appointment missed".into(),
        E::EmploymentBureauRegistered(_) => "Registered with the employment bureau".into(),
        E::JobPlaced(_) => "Job placed".into(),
        E::JobLost(_) => "Job lost".into(),
        E::HousingSecured(e) => format!("Housing secured ({})", words(&e.kind)),
        E::HousingLost(_) => "Housing lost".into(),
        E::DebtCaseOpened(_) => "Debt case opened".into(),
        E::DebtCaseClosed(_) => "Debt case closed".into(),
        E::FamilyContactRestored(_) => "Family contact restored".into(),
        E::ProgrammeCompleted(e) => format!("Programme {} completed", e.programme),
        E::ProgrammeDroppedOut(e) => format!("Dropped out of {}", e.programme),
        E::ReoffenceRecorded(_) => "Re-offence recorded".into(),
        E::ClientRecalled(_) => "Recalled to prison".into(),
        E::EventCorrected(_) => "Correction".into(),
        E::EventRetracted(_) => "Retraction".into(),
        E::PersonalDataErased(_) => "Personal data erased".into(),
        E::RetentionApplied(e) => format!(
            "Retention period ended: {} data shredded",
            e.categories
                .iter()
                .map(|category| category.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        E::ProcessingRestricted(_) => "Processing restricted".into(),
        E::RestrictionLifted(_) => "Restriction lifted".into(),
    }
}

/// A vocabulary value in words: `case_manager` → `case manager`.
fn words(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(|raw| raw.replace('_', " ")))
        .unwrap_or_default()
}

/// The same, capitalised for the start of a line.
fn capitalised(value: &impl Serialize) -> String {
    let words = words(value);
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => words,
    }
}

/// A time with its UTC offset as `[microseconds since the epoch, offset in seconds]`.
mod offset_micros {
    use chrono::{DateTime, FixedOffset};
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    pub fn serialize<S: Serializer>(
        at: &DateTime<FixedOffset>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        (at.timestamp_micros(), at.offset().local_minus_utc()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<FixedOffset>, D::Error> {
        let (micros, offset): (i64, i32) = Deserialize::deserialize(deserializer)?;
        let offset = FixedOffset::east_opt(offset).ok_or_else(|| D::Error::custom("bad offset"))?;
        let at = DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| D::Error::custom("time out of range"))?;
        Ok(at.with_timezone(&offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(position: u64, occurred_at: &str) -> RecordedEvent {
        RecordedEvent {
            draft: travelmap_domain::EventDraft {
                id: EventId(uuid::Uuid::from_u128(position.into())),
                client_id: ClientId(uuid::Uuid::from_u128(1)),
                occurred_at: occurred_at.parse().unwrap(),
                actor: None,
                event: JourneyEvent::decode("job.placed", 1, &serde_json::json!({})).unwrap(),
            },
            provenance: travelmap_domain::Provenance {
                agency: "employment-bureau-opava".into(),
                credential: "test".into(),
            },
            meta: travelmap_domain::RecordMeta {
                version: position,
                position,
                recorded_at: "2026-03-02T10:00:00Z".parse().unwrap(),
            },
            personal: Default::default(),
        }
    }

    /// Facts are kept in order of occurrence (ties by position) whatever order they arrive in:
    /// late events go before later ones, and an offset is compared as the instant it names.
    #[test]
    fn facts_stay_in_order_of_occurrence_when_events_arrive_late() {
        let mut state = ClientState::new(ClientId(uuid::Uuid::from_u128(1)));
        for (position, occurred_at) in [
            (1, "2026-03-01T09:00:00+01:00"),
            (2, "2026-03-05T09:00:00+01:00"),
            // Late: between the first two.
            (3, "2026-03-03T09:00:00+01:00"),
            // The same instant as the first, in another offset: after it, by position.
            (4, "2026-03-01T08:00:00Z"),
            // Before everything.
            (5, "2026-02-01T09:00:00+01:00"),
            // In order again.
            (6, "2026-03-06T09:00:00+01:00"),
        ] {
            assert!(state.apply(recorded(position, occurred_at)));
        }
        let positions: Vec<u64> = state.facts.iter().map(|fact| fact.position).collect();
        assert_eq!(positions, [5, 1, 4, 3, 2, 6]);
    }

    #[test]
    fn stored_facts_keep_the_offset_and_the_microseconds() {
        let fact = Fact {
            event_id: EventId(uuid::Uuid::from_u128(7)),
            position: 3,
            occurred_at: "2026-03-01T09:00:00.123456+01:00".parse().unwrap(),
            recorded_at: "2026-03-02T10:00:00.654321Z".parse().unwrap(),
            agency: "prison-opava".into(),
            actor: None,
            event: JourneyEvent::decode("job.placed", 1, &serde_json::json!({})).unwrap(),
            corrections: Vec::new(),
        };
        let json = serde_json::to_string(&fact).unwrap();
        let back: Fact = serde_json::from_str(&json).unwrap();
        assert_eq!(back, fact);
        assert_eq!(
            back.occurred_at.to_rfc3339(),
            "2026-03-01T09:00:00.123456+01:00"
        );
    }

    /// An erased identifier reads as a placeholder; its summary says it was erased rather than
    /// naming the placeholder's type, and a registration without identifiers counts none.
    #[test]
    fn summaries_do_not_state_what_erasure_took() {
        let decode = |event_type: &str, data: serde_json::Value| {
            JourneyEvent::decode(event_type, 1, &data).unwrap()
        };
        let erased = decode(
            "identifier.added",
            serde_json::json!({"identifier": {"type": "erased", "value": "[erased]"}}),
        );
        assert_eq!(summary(&erased), "Identifier added (erased)");
        let added = decode(
            "identifier.added",
            serde_json::json!({"identifier": {"type": "probation_case", "value": "PC-1"}}),
        );
        assert_eq!(summary(&added), "Identifier probation_case added");
        let registered = decode("client.registered", serde_json::json!({"identifiers": []}));
        assert_eq!(summary(&registered), "Registered");
    }
}
