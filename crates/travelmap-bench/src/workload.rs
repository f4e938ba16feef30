//! The seeded workload: plausible journeys of people through custody, release and resettlement,
//! each a valid sequence of events under the v1 wire format.
//!
//! Realism matters more than variety for its own sake: the cost of recording and projecting an
//! event depends on the size of its `data`, on how many events a client already has, and on how
//! the events of many clients interleave in time, so the journeys follow the order a real case
//! takes (registration, sentence, programme, plan, release, first-day contact, work, housing, an
//! ending) with the follow-ups a real record has (an appointment kept or missed, a debt case
//! opened then closed, a case handed over). Everything is drawn from one seeded generator, so a
//! run can be repeated exactly.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, SecondsFormat, TimeZone, Timelike};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

/// Roughly how many days a client's recorded journey spans, whatever its number of events. Kept
/// well short of the time between the earliest start and today, so that no `occurred_at` lies in
/// the future (the server refuses those).
const JOURNEY_DAYS: f64 = 500.0;

/// One client's events, serialised as they are posted, in the order they happened.
pub struct ClientEvents {
    pub client_id: Uuid,
    pub events: Vec<String>,
}

/// A reference to one event of the workload.
#[derive(Debug, Clone, Copy)]
pub struct EventRef {
    pub client: u32,
    pub index: u32,
}

/// A generated workload: the clients' journeys and the order in which the events are posted.
pub struct Workload {
    pub clients: Vec<ClientEvents>,
    /// Every event, in `occurred_at` order across all clients: the order in which agencies would
    /// post them as things happen. A client's own events keep their order.
    pub order: Vec<EventRef>,
    /// How many events of each type the workload holds.
    pub types: BTreeMap<&'static str, usize>,
    pub first_occurred: DateTime<FixedOffset>,
    pub last_occurred: DateTime<FixedOffset>,
}

impl Workload {
    pub fn generate(seed: u64, clients: usize, events_per_client: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut journeys = Vec::with_capacity(clients);
        let mut timeline = Vec::with_capacity(clients * events_per_client);
        let mut types = BTreeMap::new();
        for client in 0..clients {
            let journey = Journey::generate(&mut rng, events_per_client);
            for (index, event) in journey.events.iter().enumerate() {
                timeline.push((event.at, client as u32, index as u32));
                *types.entry(event.event_type).or_default() += 1;
            }
            journeys.push(ClientEvents {
                client_id: journey.client_id,
                events: journey.events.into_iter().map(|event| event.json).collect(),
            });
        }
        timeline.sort_unstable_by_key(|&(at, client, index)| (at, client, index));
        let first_occurred = timeline.first().map_or_else(epoch, |entry| entry.0);
        let last_occurred = timeline.last().map_or_else(epoch, |entry| entry.0);
        Self {
            clients: journeys,
            order: timeline
                .into_iter()
                .map(|(_, client, index)| EventRef { client, index })
                .collect(),
            types,
            first_occurred,
            last_occurred,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn event(&self, event: EventRef) -> &str {
        &self.clients[event.client as usize].events[event.index as usize]
    }

    /// The first `count` events in posting order (journeys cut wherever the count ends).
    pub fn first(&self, count: usize) -> Vec<EventRef> {
        self.order.iter().take(count).copied().collect()
    }

    /// The complete journeys of the first clients (in order of their first event) holding at most
    /// `limit` events, in posting order: a subset that is still a set of whole, valid journeys.
    pub fn first_journeys(&self, limit: usize) -> Vec<EventRef> {
        let per_client = self
            .clients
            .first()
            .map_or(1, |client| client.events.len().max(1));
        let wanted = (limit / per_client).max(1);
        let mut chosen = vec![false; self.clients.len()];
        let mut taken = 0;
        for event in &self.order {
            if taken == wanted {
                break;
            }
            if !chosen[event.client as usize] {
                chosen[event.client as usize] = true;
                taken += 1;
            }
        }
        self.order
            .iter()
            .filter(|event| chosen[event.client as usize])
            .copied()
            .collect()
    }
}

fn epoch() -> DateTime<FixedOffset> {
    DateTime::UNIX_EPOCH.fixed_offset()
}

struct GeneratedEvent {
    at: DateTime<FixedOffset>,
    event_type: &'static str,
    json: String,
}

const PRISONS: &[&str] = &[
    "Opava",
    "Pankrác",
    "Bory",
    "Mírov",
    "Rýnovice",
    "Kuřim",
    "Stráž pod Ralskem",
    "Valdice",
];
const MUNICIPALITIES: &[&str] = &[
    "Opava", "Ostrava", "Brno", "Plzeň", "Liberec", "Olomouc", "Praha", "Kladno", "Jihlava",
];
const GIVEN_NAMES: &[&str] = &[
    "Jan", "Petr", "Tomáš", "Martin", "Lukáš", "Jakub", "David", "Pavel", "Jana", "Petra", "Lenka",
    "Eva",
];
const FAMILY_NAMES: &[&str] = &[
    "Novák",
    "Svoboda",
    "Dvořák",
    "Černý",
    "Procházka",
    "Kučera",
    "Veselý",
    "Horák",
    "Němec",
    "Marek",
];
const PROGRAMMES: &[&str] = &[
    "vol-mentoring",
    "resettlement-plus",
    "first-step",
    "work-ready",
];
const AREAS: &[&str] = &[
    "housing",
    "employment",
    "family",
    "finance",
    "health",
    "addiction",
    "attitudes",
    "leisure",
];
const LECTURE_TOPICS: &[&str] = &[
    "Registering with the labour office",
    "Benefits after release",
    "Finding somewhere to live",
    "Dealing with debt",
];
const COURSES: &[&str] = &[
    "welding",
    "forklift licence",
    "bricklaying",
    "IT basics",
    "kitchen assistant",
];
const SECTORS: &[&str] = &[
    "construction",
    "logistics",
    "manufacturing",
    "hospitality",
    "cleaning",
    "agriculture",
];
const JOB_KINDS: &[&str] = &[
    "full_time",
    "part_time",
    "temporary",
    "supported_employment",
];
const HOUSING_KINDS: &[&str] = &[
    "own_tenancy",
    "social_housing",
    "supported_housing",
    "shelter",
    "family",
];
const COUNSELLING: &[&str] = &["debt", "legal", "family_law", "psychological"];
const NOTES: &[&str] = &[
    "identity card to be renewed",
    "waiting list for a GP",
    "wants to contact the children",
    "agreed to weekly check-ins",
];

/// Generates one client's journey. Each helper below writes the events of one step of a case
/// and moves the clock forward, so the events come out in the order they happened.
struct Journey<'r> {
    rng: &'r mut StdRng,
    client_id: Uuid,
    at: DateTime<FixedOffset>,
    /// The mean gap between two steps, in minutes.
    gap_minutes: f64,
    events: Vec<GeneratedEvent>,
    programme: &'static str,
    areas: Vec<&'static str>,
    /// The case manager's agency and worker reference, used as the `actor` of most events.
    case_manager: (String, String),
    municipality: &'static str,
    identifier_added: bool,
    consent_recorded: bool,
    retraining: Option<&'static str>,
    employed: bool,
    housed: bool,
    debt_case: Option<String>,
    debt_cases: u32,
    appointments: u32,
    family_restored: bool,
}

impl<'r> Journey<'r> {
    fn generate(rng: &'r mut StdRng, events: usize) -> Self {
        let client_id = uuid(rng);
        let offset = FixedOffset::east_opt(3600).expect("a valid offset");
        let start_day = NaiveDate::from_ymd_opt(2023, 1, 2).expect("a valid date")
            + Duration::days(rng.random_range(0..180));
        let at = offset
            .from_local_datetime(&start_day.and_hms_opt(9, 0, 0).expect("a valid time"))
            .single()
            .expect("a fixed offset has no gaps");
        let case_manager = (
            "Probation and Mediation Service".to_owned(),
            format!("PMS-{:04}", rng.random_range(1..2000)),
        );
        let mut journey = Self {
            gap_minutes: JOURNEY_DAYS * 24.0 * 60.0 / events.max(1) as f64,
            rng,
            client_id,
            at,
            events: Vec::with_capacity(events + 2),
            programme: "",
            areas: Vec::new(),
            case_manager,
            municipality: "",
            identifier_added: false,
            consent_recorded: false,
            retraining: None,
            employed: false,
            housed: false,
            debt_case: None,
            debt_cases: 0,
            appointments: 0,
            family_restored: false,
        };
        journey.programme = journey.pick(PROGRAMMES);
        journey.municipality = journey.pick(MUNICIPALITIES);
        journey.working_time();
        journey.write(events);
        journey
    }

    /// The whole journey, cut to exactly `total` events. The twelve steps every case has come
    /// first; the rest are spread a third before release and two thirds after it.
    fn write(&mut self, total: usize) {
        const ESSENTIAL: usize = 12;
        let extra = total.saturating_sub(ESSENTIAL);
        let before_release = extra / 3;

        self.registered();
        self.step();
        self.sentence_started();
        self.step();
        self.programme_enrolled();
        self.step();
        self.case_manager_assigned();
        self.step();
        self.plan_agreed();
        self.step();
        let area = self.planned_area();
        self.need_assessed(area, "support_required");
        self.step();
        self.lecture_attended();
        for _ in 0..before_release {
            self.step();
            self.in_custody_step();
        }
        self.step();
        self.released();
        self.first_day_contact();
        self.step();
        let contract_signed = self.rng.random_bool(0.8);
        self.emit(
            "employment_bureau.registered",
            json!({"contract_signed": contract_signed}),
        );
        let mut remaining = extra - before_release;
        while remaining > 0 {
            self.step();
            remaining -= self.after_release_step(remaining);
        }
        self.step();
        self.ending();
        self.events.truncate(total);
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        *items.choose(self.rng).expect("a non-empty list")
    }

    fn planned_area(&mut self) -> &'static str {
        self.areas.choose(self.rng).expect("a plan has areas")
    }

    /// Moves the clock to the next step: days apart in a case that moves at a normal pace, at a
    /// working hour; minutes apart only in very long journeys.
    fn step(&mut self) {
        let minutes = (self.gap_minutes * self.rng.random_range(0.5..1.5)).max(1.0) as i64;
        if minutes >= 2 * 24 * 60 {
            self.at += Duration::days(minutes / (24 * 60));
            self.working_time();
        } else {
            self.at += Duration::minutes(minutes);
        }
    }

    fn working_time(&mut self) {
        let hour = self.rng.random_range(8..17);
        let minute = self.rng.random_range(0..60);
        self.at = self
            .at
            .with_hour(hour)
            .and_then(|at| at.with_minute(minute))
            .expect("a valid time of day");
    }

    fn emit(&mut self, event_type: &'static str, data: Value) {
        let mut event = json!({
            "id": uuid(self.rng),
            "type": event_type,
            "schema_version": 1,
            "client_id": self.client_id,
            "occurred_at": self.at.to_rfc3339_opts(SecondsFormat::Secs, false),
            "data": data,
        });
        // Senders often leave the worker out; the wire format makes it optional.
        if self.rng.random_bool(0.7) {
            event["actor"] = json!(self.case_manager.1);
        }
        self.events.push(GeneratedEvent {
            at: self.at,
            event_type,
            json: event.to_string(),
        });
    }

    fn registered(&mut self) {
        let mut identifiers = vec![json!({
            "type": "prison_number",
            "value": format!("VS-{:06}", self.rng.random_range(0..1_000_000)),
        })];
        if self.rng.random_bool(0.5) {
            identifiers.push(json!({
                "type": "probation_case",
                "value": format!("PMS-2023-{:05}", self.rng.random_range(0..100_000)),
            }));
        }
        let birth_date = NaiveDate::from_ymd_opt(1960, 1, 1).expect("a valid date")
            + Duration::days(self.rng.random_range(0..(43 * 365)));
        let personal = json!({
            "given_name": self.pick(GIVEN_NAMES),
            "family_name": self.pick(FAMILY_NAMES),
            "birth_date": birth_date.to_string(),
        });
        self.emit(
            "client.registered",
            json!({"identifiers": identifiers, "personal": personal}),
        );
    }

    fn sentence_started(&mut self) {
        let start = self.at.date_naive();
        let expected = start + Duration::days(self.rng.random_range(180..900));
        let prison = self.pick(PRISONS);
        self.emit(
            "sentence.started",
            json!({
                "prison": prison,
                "start_date": start.to_string(),
                "expected_release_date": expected.to_string(),
            }),
        );
    }

    fn programme_enrolled(&mut self) {
        let mut data = json!({"programme": self.programme});
        if self.rng.random_bool(0.6) {
            data["court_approval"] = json!(self.rng.random_bool(0.7));
        }
        self.emit("programme.enrolled", data);
    }

    fn case_manager_assigned(&mut self) {
        let reason = self.pick(&["referral", "assigned", "court_order"]);
        self.emit(
            "involvement.opened",
            json!({
                "agency": self.case_manager.0,
                "role": "case_manager",
                "worker": self.case_manager.1,
                "reason": reason,
            }),
        );
    }

    fn plan_agreed(&mut self) {
        let mut areas = AREAS.to_vec();
        areas.shuffle(self.rng);
        areas.truncate(self.rng.random_range(2..=5));
        self.areas = areas;
        let review = self.at.date_naive() + Duration::days(self.rng.random_range(60..180));
        self.emit(
            "plan.agreed",
            json!({"areas": self.areas, "review_date": review.to_string()}),
        );
    }

    fn need_assessed(&mut self, area: &str, status: &str) {
        let mut data = json!({"area": area, "status": status});
        if self.rng.random_bool(0.3) {
            data["note"] = json!(self.pick(NOTES));
        }
        self.emit("need.assessed", data);
    }

    fn lecture_attended(&mut self) {
        let topic = self.pick(LECTURE_TOPICS);
        self.emit("prerelease_lecture.attended", json!({"topic": topic}));
    }

    /// One event of the time in custody between the plan and the release.
    fn in_custody_step(&mut self) {
        match self.rng.random_range(0..10) {
            0..=2 => {
                let area = self.planned_area();
                let status = self.pick(&["in_progress", "support_required", "support_declined"]);
                self.need_assessed(area, status);
            }
            3..=4 => {
                let kind = self.pick(COUNSELLING);
                self.emit("counselling.attended", json!({"kind": kind}));
            }
            5..=6 if self.retraining.is_none() => {
                let course = self.pick(COURSES);
                self.retraining = Some(course);
                self.emit("retraining.started", json!({"course": course}));
            }
            7 if !self.identifier_added => {
                self.identifier_added = true;
                let value = format!("UP-{:08}", self.rng.random_range(0..100_000_000));
                self.emit(
                    "identifier.added",
                    json!({"identifier": {"type": "labour_office_id", "value": value}}),
                );
            }
            8 if !self.consent_recorded => {
                // The mentoring organisation is not a public body: it needs the client's consent
                // to receive the case.
                self.consent_recorded = true;
                self.emit(
                    "consent.recorded",
                    json!({
                        "agency": "Mentoring NGO",
                        "purposes": ["case_management", "service_delivery"],
                        "legal_basis": "consent",
                    }),
                );
            }
            _ => self.lecture_attended(),
        }
    }

    /// `release.scheduled` and `client.released`: the date scheduled is the day of the release.
    fn released(&mut self) {
        let release = self.at + Duration::days(self.rng.random_range(7..45));
        self.emit(
            "release.scheduled",
            json!({"release_date": release.date_naive().to_string()}),
        );
        self.at = release;
        self.working_time();
        let kind = self.pick(&[
            "conditional",
            "parole",
            "end_of_sentence",
            "end_of_sentence",
        ]);
        self.emit(
            "client.released",
            json!({
                "release_kind": kind,
                "supervision": kind != "end_of_sentence",
                "municipality": self.municipality,
            }),
        );
    }

    /// Most clients are met on the day of release; for some the first contact comes days later,
    /// which is what the travel map's `no_first_day_contact` flag is for.
    fn first_day_contact(&mut self) {
        if self.rng.random_bool(0.9) {
            self.at += Duration::hours(self.rng.random_range(1..8));
            self.emit(
                "contact.made",
                json!({"kind": "first_day", "attended": true}),
            );
        } else {
            self.at += Duration::days(self.rng.random_range(2..6));
            self.working_time();
            self.emit("contact.made", json!({"kind": "meeting", "attended": true}));
        }
    }

    /// One step after release; some steps are two events (an appointment and whether it was
    /// kept, a hand-over). Returns how many events were written, never more than `room`.
    fn after_release_step(&mut self, room: usize) -> usize {
        match self.rng.random_range(0..20) {
            0..=4 if room >= 2 => {
                self.appointment();
                2
            }
            5..=6 if !self.employed => {
                self.employed = true;
                let (kind, sector) = (self.pick(JOB_KINDS), self.pick(SECTORS));
                self.emit("job.placed", json!({"kind": kind, "sector": sector}));
                1
            }
            7 if self.employed => {
                self.employed = false;
                let reason = self.pick(&["contract ended", "dismissed", "health"]);
                self.emit("job.lost", json!({"reason": reason}));
                1
            }
            8..=9 if !self.housed => {
                self.housed = true;
                let kind = self.pick(HOUSING_KINDS);
                self.emit("housing.secured", json!({"kind": kind}));
                1
            }
            10 if self.housed && self.rng.random_bool(0.3) => {
                self.housed = false;
                let reason = self.pick(&["eviction", "relationship breakdown", "rent arrears"]);
                self.emit("housing.lost", json!({"reason": reason}));
                1
            }
            11 => match self.debt_case.take() {
                Some(case_ref) => {
                    let outcome = self.pick(&["settled", "repayment_plan", "insolvency"]);
                    self.emit(
                        "debt_case.closed",
                        json!({"case_ref": case_ref, "outcome": outcome}),
                    );
                    1
                }
                None => {
                    self.debt_cases += 1;
                    let case_ref = format!("DC-{}-{}", self.short_id(), self.debt_cases);
                    self.emit("debt_case.opened", json!({"case_ref": case_ref}));
                    self.debt_case = Some(case_ref);
                    1
                }
            },
            12 => {
                let kind = self.pick(COUNSELLING);
                self.emit("counselling.attended", json!({"kind": kind}));
                1
            }
            13 if self.retraining.is_some() => {
                let course = self.retraining.take().expect("checked above");
                let certificate = self.rng.random_bool(0.8);
                self.emit(
                    "retraining.completed",
                    json!({"course": course, "certificate": certificate}),
                );
                1
            }
            14 if !self.family_restored => {
                self.family_restored = true;
                self.emit(
                    "family_contact.restored",
                    json!({"note": "regular visits with family agreed"}),
                );
                1
            }
            15 if room >= 2 => {
                self.hand_over();
                2
            }
            16..=17 => {
                let area = self.planned_area();
                let status = self.pick(&["in_progress", "done", "support_not_required"]);
                self.need_assessed(area, status);
                1
            }
            _ => {
                let kind = self.pick(&["meeting", "phone", "home_visit", "phone"]);
                let attended = self.rng.random_bool(0.85);
                self.emit("contact.made", json!({"kind": kind, "attended": attended}));
                1
            }
        }
    }

    /// An appointment, then on its day either a meeting that keeps it or a record that it was
    /// missed.
    fn appointment(&mut self) {
        self.appointments += 1;
        let appointment_id = format!("A-{}-{}", self.short_id(), self.appointments);
        let mut meeting = self.at + Duration::days(self.rng.random_range(3..14));
        meeting = meeting
            .with_hour(self.rng.random_range(9..16))
            .and_then(|at| at.with_minute(0))
            .expect("a valid time of day");
        let purpose = self.pick(&["progress review", "benefit claim", "job search", "housing"]);
        self.emit(
            "appointment.scheduled",
            json!({
                "appointment_id": appointment_id,
                "at": meeting.to_rfc3339_opts(SecondsFormat::Secs, false),
                "purpose": purpose,
            }),
        );
        self.at = meeting + Duration::minutes(self.rng.random_range(5..90));
        if self.rng.random_bool(0.8) {
            self.emit(
                "contact.made",
                json!({"kind": "meeting", "attended": true, "appointment_id": appointment_id}),
            );
        } else {
            self.emit(
                "appointment.missed",
                json!({"appointment_id": appointment_id}),
            );
        }
    }

    /// The case manager hands the case over to a colleague.
    fn hand_over(&mut self) {
        let (agency, worker) = self.case_manager.clone();
        self.emit(
            "involvement.closed",
            json!({"agency": agency, "role": "case_manager", "worker": worker, "reason": "transferred"}),
        );
        self.at += Duration::minutes(self.rng.random_range(5..60));
        let next = format!("PMS-{:04}", self.rng.random_range(2000..4000));
        self.case_manager.1 = next.clone();
        self.emit(
            "involvement.opened",
            json!({"agency": agency, "role": "case_manager", "worker": next, "reason": "transfer"}),
        );
    }

    /// How the recorded journey ends: most complete the programme; some drop out, some
    /// re-offend or are recalled, and some are still under way (one more contact).
    fn ending(&mut self) {
        match self.rng.random_range(0..20) {
            0..=11 => self.emit("programme.completed", json!({"programme": self.programme})),
            12..=14 => {
                let reason =
                    self.pick(&["lost contact", "moved abroad", "declined further support"]);
                self.emit(
                    "programme.dropped_out",
                    json!({"programme": self.programme, "reason": reason}),
                );
            }
            15 => {
                let offence = self.at.date_naive() - Duration::days(self.rng.random_range(1..30));
                self.emit(
                    "reoffence.recorded",
                    json!({"offence_date": offence.to_string()}),
                );
            }
            16 => {
                let prison = self.pick(PRISONS);
                self.emit(
                    "client.recalled",
                    json!({"prison": prison, "reason": "breach of supervision conditions"}),
                );
            }
            _ => self.emit("contact.made", json!({"kind": "meeting", "attended": true})),
        }
    }

    fn short_id(&self) -> String {
        self.client_id.simple().to_string()[..8].to_owned()
    }
}

/// A version-4 UUID from the seeded generator (not from the OS), so ids repeat with the seed.
fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journeys_have_the_requested_length_and_repeat_with_the_seed() {
        let one = Workload::generate(7, 50, 20);
        let again = Workload::generate(7, 50, 20);
        assert_eq!(one.len(), 1000);
        assert!(one.clients.iter().all(|client| client.events.len() == 20));
        assert_eq!(one.clients[3].events, again.clients[3].events);
        let short = Workload::generate(7, 5, 3);
        assert!(short.clients.iter().all(|client| client.events.len() == 3));
    }

    #[test]
    fn every_event_is_accepted_by_the_wire_format() {
        let workload = Workload::generate(1, 200, 40);
        for client in &workload.clients {
            let mut last = None;
            for event in &client.events {
                let value: Value = serde_json::from_str(event).unwrap();
                let submission = travelmap_api::wire::parse_event(&value)
                    .unwrap_or_else(|error| panic!("{event}: {error:?}"));
                let at = submission.draft.occurred_at;
                assert!(last.is_none_or(|last| last < at), "out of order: {event}");
                last = Some(at);
            }
        }
    }

    #[test]
    fn the_posting_order_keeps_each_clients_order() {
        let workload = Workload::generate(3, 100, 20);
        let mut next = vec![0u32; 100];
        for event in &workload.order {
            assert_eq!(next[event.client as usize], event.index);
            next[event.client as usize] += 1;
        }
    }
}
