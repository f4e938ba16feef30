//! The alert rules and caseload counts, given journeys and a "now".

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use travelmap_domain::{
    ClientId, EventDraft, EventId, JourneyEvent, PersonalData, Provenance, RecordMeta,
    RecordedEvent,
};
use travelmap_projections::ClientState;
use travelmap_projections::coordination::{
    AlertKind, CaseFile, Resolution, Rules, Stage, agency_caseload, caseloads,
};
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    "2026-03-01T09:00:00Z".parse().unwrap()
}

/// A journey built event by event, each `at` an offset from `t0`.
struct Journey {
    client_id: ClientId,
    events: Vec<RecordedEvent>,
}

impl Journey {
    fn new(n: u128) -> Self {
        Self {
            client_id: ClientId(Uuid::from_u128(n)),
            events: Vec::new(),
        }
    }

    fn add(&mut self, at: Duration, agency: &str, event_type: &str, data: Value) -> EventId {
        let id = EventId(Uuid::new_v4());
        let position = self.events.len() as u64 + 1;
        self.events.push(RecordedEvent {
            draft: EventDraft {
                id,
                client_id: self.client_id,
                occurred_at: (t0() + at).fixed_offset(),
                actor: None,
                event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
            },
            provenance: Provenance {
                agency: agency.into(),
                credential: format!("{agency}-system"),
            },
            meta: RecordMeta {
                version: position,
                position,
                recorded_at: t0() + at,
            },
            personal: PersonalData::None,
        });
        id
    }

    fn file(&self, now: Duration) -> CaseFile {
        self.file_with(now, &Rules::default())
    }

    fn file_with(&self, now: Duration, rules: &Rules) -> CaseFile {
        ClientState::from_history(self.client_id, self.events.clone()).case_file(t0() + now, rules)
    }
}

fn released() -> Value {
    json!({"release_kind": "conditional", "supervision": true, "municipality": "Opava"})
}

fn open(agency: &str, role: &str, worker: &str) -> Value {
    json!({"agency": agency, "role": role, "worker": worker})
}

fn hours(n: i64) -> Duration {
    Duration::hours(n)
}

fn days(n: i64) -> Duration {
    Duration::days(n)
}

#[test]
fn a_release_without_contact_raises_an_alert_after_24_hours_that_a_contact_clears() {
    let mut journey = Journey::new(1);
    journey.add(
        -days(1),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    let release = journey.add(hours(0), "prison-opava", "client.released", released());

    let before = journey.file(hours(23));
    assert!(before.alerts.is_empty());
    assert_eq!(
        before.next_change,
        Some(t0() + hours(24)),
        "the scheduler must wake when it falls due"
    );

    let due = journey.file(hours(25));
    let alert = &due.alerts[0];
    assert_eq!(alert.kind, AlertKind::NoFirstDayContact);
    assert_eq!(alert.since, t0() + hours(24));
    assert_eq!(
        alert.agency, "probation-opava",
        "the supervising agency is expected to act"
    );
    assert_eq!(alert.cause, release);
    assert!(alert.is_open());

    let contact = journey.add(
        hours(30),
        "probation-opava",
        "contact.made",
        json!({"kind": "meeting"}),
    );
    let later = journey.file(hours(31));
    assert_eq!(
        later.alerts.len(),
        1,
        "the cleared alert stays in the history"
    );
    let cleared = later.alerts[0]
        .cleared
        .as_ref()
        .expect("cleared by the contact");
    assert_eq!(cleared.by, Some(contact));
    assert_eq!(cleared.resolution, Resolution::Resolved);
    assert_eq!(cleared.at, t0() + hours(30));
    assert_eq!(
        later.alerts[0].id, alert.id,
        "the same alert, not a new one"
    );
}

#[test]
fn a_first_day_contact_in_time_raises_nothing() {
    let mut journey = Journey::new(2);
    journey.add(hours(0), "prison-opava", "client.released", released());
    journey.add(
        hours(3),
        "ngo-rubikon",
        "contact.made",
        json!({"kind": "first_day"}),
    );
    assert!(journey.file(days(2)).alerts.is_empty());
}

#[test]
fn a_contact_not_attended_does_not_count() {
    let mut journey = Journey::new(3);
    journey.add(hours(0), "prison-opava", "client.released", released());
    journey.add(
        hours(3),
        "ngo-rubikon",
        "contact.made",
        json!({"kind": "first_day", "attended": false}),
    );
    let file = journey.file(days(2));
    assert_eq!(file.open_alerts().count(), 1);
}

#[test]
fn a_scheduled_release_without_plan_raises_an_alert_14_days_before_that_the_plan_clears() {
    let mut journey = Journey::new(4);
    journey.add(-days(60), "prison-opava", "sentence.started", json!({"prison": "Opava", "start_date": "2025-01-01", "expected_release_date": "2026-04-01"}));
    let schedule = journey.add(
        -days(40),
        "prison-opava",
        "release.scheduled",
        json!({"release_date": "2026-04-01"}),
    );
    // Release on 1 April: the alert falls due on 18 March.
    let due = "2026-03-18T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let before = journey.file(days(10));
    assert!(before.alerts.is_empty());
    assert_eq!(before.next_change, Some(due));

    let open = journey.file(days(18));
    assert_eq!(open.alerts.len(), 1);
    assert_eq!(open.alerts[0].kind, AlertKind::ReleaseUnprepared);
    assert_eq!(open.alerts[0].since, due);
    assert_eq!(open.alerts[0].cause, schedule);

    // A plan alone is not enough while a planned area is unassessed.
    journey.add(
        days(19),
        "probation-opava",
        "plan.agreed",
        json!({"areas": ["housing", "employment"]}),
    );
    journey.add(
        days(20),
        "probation-opava",
        "need.assessed",
        json!({"area": "housing", "status": "in_progress"}),
    );
    assert!(journey.file(days(20) + hours(1)).alerts[0].is_open());
    let last = journey.add(
        days(21),
        "probation-opava",
        "need.assessed",
        json!({"area": "employment", "status": "support_required"}),
    );
    let cleared = journey.file(days(22)).alerts[0]
        .cleared
        .clone()
        .expect("prepared");
    assert_eq!(cleared.by, Some(last));

    // A planned area set back to `not_started` before the release undoes the preparation: a new
    // alert, caused by that assessment, until it is assessed again.
    let undone = journey.add(
        days(23),
        "probation-opava",
        "need.assessed",
        json!({"area": "employment", "status": "not_started"}),
    );
    let file = journey.file(days(24));
    assert_eq!(file.alerts.len(), 2);
    let again = file.open_alerts().next().expect("raised again");
    assert_eq!(again.kind, AlertKind::ReleaseUnprepared);
    assert_eq!(again.cause, undone);
    assert_eq!(again.since, t0() + days(23));
    let redone = journey.add(
        days(25),
        "probation-opava",
        "need.assessed",
        json!({"area": "employment", "status": "in_progress"}),
    );
    let file = journey.file(days(26));
    assert_eq!(file.open_alerts().count(), 0);
    assert_eq!(
        file.alerts[1]
            .cleared
            .as_ref()
            .and_then(|cleared| cleared.by),
        Some(redone)
    );
}

#[test]
fn a_release_prepared_in_time_raises_nothing() {
    let mut journey = Journey::new(5);
    journey.add(
        -days(40),
        "prison-opava",
        "release.scheduled",
        json!({"release_date": "2026-04-01"}),
    );
    journey.add(
        -days(30),
        "probation-opava",
        "plan.agreed",
        json!({"areas": ["housing"]}),
    );
    journey.add(
        -days(29),
        "probation-opava",
        "need.assessed",
        json!({"area": "housing", "status": "support_required"}),
    );
    assert!(journey.file(days(25)).alerts.is_empty());
}

#[test]
fn two_missed_appointments_in_a_row_raise_an_alert_that_an_attended_contact_clears() {
    let mut journey = Journey::new(6);
    for (n, day) in [(1, 1), (2, 8)] {
        journey.add(
            days(day - 1),
            "probation-opava",
            "appointment.scheduled",
            json!({"appointment_id": format!("a{n}"), "at": (t0() + days(day)).to_rfc3339()}),
        );
    }
    journey.add(
        days(1),
        "probation-opava",
        "appointment.missed",
        json!({"appointment_id": "a1"}),
    );
    assert!(
        journey.file(days(2)).alerts.is_empty(),
        "one miss is not yet an alert"
    );
    let second = journey.add(
        days(8),
        "probation-opava",
        "appointment.missed",
        json!({"appointment_id": "a2"}),
    );
    let file = journey.file(days(9));
    assert_eq!(file.alerts[0].kind, AlertKind::AppointmentsMissed);
    assert_eq!(file.alerts[0].cause, second);
    assert_eq!(file.alerts[0].agency, "probation-opava");
    journey.add(
        days(10),
        "probation-opava",
        "contact.made",
        json!({"kind": "meeting"}),
    );
    assert!(!journey.file(days(11)).alerts[0].is_open());
}

#[test]
fn a_missed_appointment_between_attended_contacts_is_not_a_streak() {
    let mut journey = Journey::new(7);
    journey.add(
        days(1),
        "probation-opava",
        "appointment.missed",
        json!({"appointment_id": "a1"}),
    );
    journey.add(
        days(2),
        "probation-opava",
        "contact.made",
        json!({"kind": "phone"}),
    );
    journey.add(
        days(3),
        "probation-opava",
        "appointment.missed",
        json!({"appointment_id": "a2"}),
    );
    assert!(journey.file(days(4)).alerts.is_empty());
}

#[test]
fn a_lost_job_is_an_alert_for_7_days_unless_a_new_job_comes_first() {
    let mut journey = Journey::new(8);
    journey.add(
        -days(5),
        "labour-office-opava",
        "involvement.opened",
        open("labour-office-opava", "employment_advisor", "dvorak"),
    );
    journey.add(days(0), "labour-office-opava", "job.lost", json!({}));
    let open = journey.file(days(3));
    assert_eq!(open.alerts[0].kind, AlertKind::JobLost);
    assert_eq!(open.alerts[0].agency, "labour-office-opava");
    assert_eq!(
        open.next_change,
        Some(t0() + days(7)),
        "it expires on its own"
    );
    let expired = journey.file(days(8)).alerts[0].cleared.clone().unwrap();
    assert_eq!(expired.resolution, Resolution::Expired);
    assert_eq!(expired.by, None);

    let mut journey = Journey::new(9);
    journey.add(days(0), "housing-opava", "housing.lost", json!({}));
    let secured = journey.add(
        days(2),
        "housing-opava",
        "housing.secured",
        json!({"kind": "social_housing"}),
    );
    let cleared = journey.file(days(3)).alerts[0].cleared.clone().unwrap();
    assert_eq!(
        (cleared.resolution, cleared.by),
        (Resolution::Resolved, Some(secured))
    );
}

#[test]
fn dropping_out_raises_an_alert_until_the_client_enrols_again() {
    let mut journey = Journey::new(10);
    journey.add(
        days(0),
        "ngo-vol",
        "programme.enrolled",
        json!({"programme": "VOL Mentoring"}),
    );
    journey.add(
        days(5),
        "ngo-vol",
        "programme.dropped_out",
        json!({"programme": "VOL Mentoring", "reason": "moved away"}),
    );
    assert!(journey.file(days(6)).alerts[0].is_open());
    journey.add(
        days(9),
        "ngo-vol",
        "programme.enrolled",
        json!({"programme": "VOL Mentoring"}),
    );
    assert!(!journey.file(days(10)).alerts[0].is_open());
}

#[test]
fn a_released_client_without_a_case_manager_is_flagged_after_the_configured_days() {
    let rules = Rules {
        unassigned_after: days(3),
        ..Rules::default()
    };
    let mut journey = Journey::new(11);
    journey.add(
        -days(10),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    journey.add(days(0), "prison-opava", "client.released", released());
    journey.add(
        hours(2),
        "probation-opava",
        "contact.made",
        json!({"kind": "first_day"}),
    );
    // Covered at release; the involvement closes on day 5, leaving a gap.
    let closed = journey.add(
        days(5),
        "probation-opava",
        "involvement.closed",
        json!({"agency": "probation-opava", "role": "probation_officer", "worker": "novak"}),
    );
    assert!(journey.file_with(days(7), &rules).alerts.is_empty());
    let flagged = journey.file_with(days(9), &rules);
    assert_eq!(flagged.alerts[0].kind, AlertKind::NoCaseManager);
    assert_eq!(flagged.alerts[0].since, t0() + days(8));
    assert_eq!(flagged.alerts[0].cause, closed);
    assert_eq!(flagged.alerts[0].agency, "probation-opava");
    // A hand-over to another agency resolves it.
    let handover = journey.add(days(10), "probation-ostrava", "involvement.opened", json!({"agency": "probation-ostrava", "role": "probation_officer", "worker": "svoboda", "reason": "transfer"}));
    let cleared = journey.file_with(days(11), &rules).alerts[0]
        .cleared
        .clone()
        .unwrap();
    assert_eq!(cleared.by, Some(handover));
}

#[test]
fn a_retracted_release_takes_its_alert_with_it() {
    let mut journey = Journey::new(12);
    let release = journey.add(hours(0), "prison-opava", "client.released", released());
    assert_eq!(
        journey.file(days(2)).alerts[0].kind,
        AlertKind::NoFirstDayContact
    );
    journey.add(
        days(2),
        "prison-opava",
        "event.retracted",
        json!({"event_id": release.0, "reason": "recorded for the wrong client"}),
    );
    assert!(journey.file(days(3)).alerts.is_empty());
}

#[test]
fn caseloads_count_active_clients_by_role_worker_and_stage_and_flag_overloaded_workers() {
    let rules = Rules {
        worker_threshold: 2,
        ..Rules::default()
    };
    let mut files = Vec::new();
    for n in 0..3u128 {
        let mut journey = Journey::new(100 + n);
        journey.add(
            -days(100),
            "prison-opava",
            "sentence.started",
            json!({"prison": "Opava", "start_date": "2025-01-01"}),
        );
        journey.add(
            -days(50),
            "probation-opava",
            "involvement.opened",
            open("probation-opava", "probation_officer", "novak"),
        );
        if n > 0 {
            // Two released: one 40 days ago, one 10 days ago.
            let released_days_ago = if n == 1 { 40 } else { 10 };
            journey.add(
                -days(released_days_ago),
                "prison-opava",
                "client.released",
                released(),
            );
            journey.add(
                -days(released_days_ago) + hours(2),
                "probation-opava",
                "contact.made",
                json!({"kind": "first_day"}),
            );
        }
        files.push(journey.file(days(0)));
    }
    let mut moved = Journey::new(200);
    moved.add(
        -days(20),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    moved.add(
        -days(5),
        "probation-opava",
        "involvement.closed",
        json!({"agency": "probation-opava", "role": "probation_officer", "worker": "novak"}),
    );
    moved.add(
        -days(5),
        "probation-ostrava",
        "involvement.opened",
        json!({"agency": "probation-ostrava", "role": "probation_officer", "reason": "transfer"}),
    );
    files.push(moved.file(days(0)));

    let loads = caseloads(&files, t0(), &rules);
    let opava = loads
        .iter()
        .find(|load| load.agency == "probation-opava")
        .unwrap();
    assert_eq!(opava.active_clients, 3);
    assert_eq!(opava.by_role["probation_officer"], 3);
    assert_eq!(opava.workers[0].worker, "novak");
    assert_eq!(opava.workers[0].clients, 3);
    assert!(
        opava.workers[0].over_threshold,
        "3 clients is above a threshold of 2"
    );
    assert_eq!(opava.stages.in_custody, 1);
    assert_eq!(opava.stages.released_over_30_days, 1);
    assert_eq!(opava.stages.released_under_30_days, 1);
    assert_eq!(opava.closed_last_30_days, 1);
    assert_eq!(opava.opened_last_30_days, 1);
    let ostrava = loads
        .iter()
        .find(|load| load.agency == "probation-ostrava")
        .unwrap();
    assert_eq!(ostrava.active_clients, 1);
    assert_eq!(ostrava.handovers_last_30_days, 1);
    assert_eq!(ostrava.unassigned_clients, 1, "no worker named yet");

    let list = agency_caseload(&files, "probation-opava", t0());
    assert_eq!(list.len(), 3);
    assert_eq!(
        list[0].days_since_release,
        Some(40),
        "longest released first"
    );
    assert_eq!(list[0].stage, Stage::ReleasedOver30Days);
    assert_eq!(list[2].stage, Stage::InCustody);
    assert!(
        list.iter()
            .all(|entry| entry.assignments[0].worker.as_deref() == Some("novak"))
    );
}

#[test]
fn restricted_clients_stay_out_of_caseloads() {
    let mut journey = Journey::new(300);
    journey.add(
        days(0),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    journey.add(
        days(1),
        "",
        "processing.restricted",
        json!({"reason": "accuracy contested"}),
    );
    let file = journey.file(days(2));
    assert!(file.restricted);
    assert!(
        caseloads([&file], t0() + days(2), &Rules::default())
            .iter()
            .all(|load| load.active_clients == 0)
    );
    assert!(agency_caseload([&file], "probation-opava", t0() + days(2)).is_empty());
}

/// A release recorded again with no custody between (a second agency's record of the same
/// release) does not move when the client left prison: the caseload counts from the first.
#[test]
fn a_caseload_counts_from_when_the_client_left_prison() {
    let mut journey = Journey::new(302);
    journey.add(
        -days(60),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    journey.add(-days(40), "prison-opava", "client.released", released());
    journey.add(-days(10), "probation-opava", "client.released", released());
    let file = journey.file(Duration::zero());
    assert_eq!(file.released_at, Some(t0() - days(40)));
    let listed = agency_caseload([&file], "probation-opava", t0());
    assert_eq!(listed[0].days_since_release, Some(40));
    assert_eq!(listed[0].stage, Stage::ReleasedOver30Days);
}

/// An involvement recorded ahead of its time puts the client on the agency's caseload when it
/// begins, and one whose end is recorded ahead keeps the client there until it ends: the
/// caseload follows the agency's access to the client, which counts each from its time.
#[test]
fn involvements_recorded_ahead_of_their_time_count_from_that_time() {
    let mut journey = Journey::new(301);
    journey.add(
        hours(1),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    let before = journey.file(Duration::zero());
    assert!(agency_caseload([&before], "probation-opava", t0()).is_empty());
    assert!(
        caseloads([&before], t0(), &Rules::default())
            .iter()
            .all(|load| load.active_clients == 0)
    );
    let begun = journey.file(hours(2));
    let listed = agency_caseload([&begun], "probation-opava", t0() + hours(2));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].assignments.len(), 1);

    journey.add(
        hours(3),
        "probation-opava",
        "involvement.closed",
        json!({"agency": "probation-opava", "role": "probation_officer", "worker": "novak"}),
    );
    let closing = journey.file(hours(2));
    assert_eq!(
        agency_caseload([&closing], "probation-opava", t0() + hours(2)).len(),
        1
    );
    let load = caseloads([&closing], t0() + hours(2), &Rules::default());
    assert_eq!(load[0].active_clients, 1);
    let ended = journey.file(hours(4));
    assert!(agency_caseload([&ended], "probation-opava", t0() + hours(4)).is_empty());
}

#[test]
fn a_contact_made_at_the_moment_of_release_counts_whichever_was_recorded_first() {
    let mut journey = Journey::new(20);
    // Recorded before the release, made at the same moment.
    journey.add(
        hours(0),
        "ngo-rubikon",
        "contact.made",
        json!({"kind": "first_day"}),
    );
    journey.add(hours(0), "prison-opava", "client.released", released());
    let file = journey.file(days(2));
    assert!(
        file.alerts
            .iter()
            .all(|alert| alert.kind != AlertKind::NoFirstDayContact),
        "{:?}",
        file.alerts
    );
    let map = ClientState::from_history(journey.client_id, journey.events.clone())
        .travel_map(t0() + days(2));
    assert!(map.flags.is_empty(), "{:?}", map.flags);
}

#[test]
fn a_second_release_without_custody_between_raises_each_alert_once() {
    let mut journey = Journey::new(21);
    let first = journey.add(hours(0), "prison-opava", "client.released", released());
    let second = journey.add(days(31), "prison-opava", "client.released", released());
    let file = journey.file(days(40));
    let open: Vec<_> = file.open_alerts().collect();
    let first_day: Vec<_> = open
        .iter()
        .filter(|alert| alert.kind == AlertKind::NoFirstDayContact)
        .collect();
    assert_eq!(first_day.len(), 1, "{open:?}");
    assert_eq!(
        first_day[0].cause, second,
        "the later release's first day counts"
    );
    let superseded = file
        .alerts
        .iter()
        .find(|alert| alert.kind == AlertKind::NoFirstDayContact && alert.cause == first)
        .expect("the first release's alert stays in the history");
    assert_eq!(
        superseded
            .cleared
            .as_ref()
            .map(|clearance| clearance.resolution),
        Some(Resolution::Superseded)
    );
    let gaps: Vec<_> = open
        .iter()
        .filter(|alert| alert.kind == AlertKind::NoCaseManager)
        .collect();
    assert_eq!(gaps.len(), 1, "one continuous gap: {open:?}");
    assert_eq!(gaps[0].cause, first, "the gap began at the first release");
}

#[test]
fn a_gap_is_the_agency_s_whose_involvement_ended_whoever_recorded_the_end() {
    let rules = Rules {
        unassigned_after: days(3),
        ..Rules::default()
    };
    let mut journey = Journey::new(24);
    journey.add(days(0), "prison-opava", "client.released", released());
    journey.add(
        hours(1),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    let closed = journey.add(
        days(2),
        "ngo-rubikon",
        "involvement.closed",
        json!({"agency": "probation-opava", "role": "probation_officer"}),
    );
    let file = journey.file_with(days(9), &rules);
    let gap = file
        .alerts
        .iter()
        .find(|alert| alert.kind == AlertKind::NoCaseManager && alert.cause == closed)
        .unwrap_or_else(|| panic!("no gap named by the closing: {:?}", file.alerts));
    assert_eq!(
        gap.agency, "probation-opava",
        "probation must arrange the hand-over, not the NGO that recorded the end"
    );
}

#[test]
fn closing_an_involvement_without_a_worker_ends_every_one_of_that_agency_in_that_role() {
    let mut journey = Journey::new(22);
    journey.add(
        hours(0),
        "ngo-rubikon",
        "involvement.opened",
        json!({"role": "mentor"}),
    );
    journey.add(
        hours(1),
        "ngo-rubikon",
        "involvement.opened",
        json!({"role": "mentor", "worker": "M-2"}),
    );
    journey.add(
        hours(2),
        "ngo-rubikon",
        "involvement.opened",
        json!({"role": "case_manager", "worker": "C-1"}),
    );
    let map = |journey: &Journey| {
        ClientState::from_history(journey.client_id, journey.events.clone())
            .travel_map(t0() + days(1))
    };
    journey.add(
        hours(3),
        "ngo-rubikon",
        "involvement.closed",
        json!({"role": "mentor", "worker": "M-2"}),
    );
    let open_workers = |journey: &Journey| -> Vec<Option<String>> {
        map(journey)
            .involvements
            .iter()
            .filter(|involvement| involvement.to.is_none())
            .map(|involvement| involvement.worker.clone())
            .collect()
    };
    assert_eq!(
        open_workers(&journey),
        vec![None, Some("C-1".to_owned())],
        "a close naming a worker ends only that worker's"
    );
    journey.add(
        hours(4),
        "ngo-rubikon",
        "involvement.opened",
        json!({"role": "mentor", "worker": "M-3"}),
    );
    journey.add(
        hours(5),
        "ngo-rubikon",
        "involvement.closed",
        json!({"role": "mentor"}),
    );
    assert_eq!(
        open_workers(&journey),
        vec![Some("C-1".to_owned())],
        "a close naming no worker ends every mentor involvement of the agency"
    );
}

#[test]
fn a_close_naming_a_worker_ends_an_involvement_opened_before_the_worker_was_known() {
    let mut journey = Journey::new(25);
    journey.add(
        hours(0),
        "ngo-rubikon",
        "involvement.opened",
        json!({"role": "mentor"}),
    );
    journey.add(
        hours(1),
        "ngo-rubikon",
        "involvement.opened",
        json!({"role": "case_manager"}),
    );
    journey.add(
        hours(2),
        "ngo-rubikon",
        "involvement.closed",
        json!({"role": "mentor", "worker": "M-1"}),
    );
    let map = ClientState::from_history(journey.client_id, journey.events.clone())
        .travel_map(t0() + days(1));
    let open: Vec<Value> = map
        .involvements
        .iter()
        .filter(|involvement| involvement.to.is_none())
        .map(|involvement| json!(involvement.role))
        .collect();
    assert_eq!(open, [json!("case_manager")]);
    assert_eq!(
        map.involvements.len(),
        2,
        "the close ended the mentor involvement rather than standing apart"
    );
}

#[test]
fn facts_keep_microseconds_whatever_the_history_holds() {
    let mut journey = Journey::new(23);
    journey.add(hours(0), "prison-opava", "client.released", released());
    journey.events[0].draft.occurred_at = "2026-03-01T09:00:00.123456789Z".parse().unwrap();
    let map = ClientState::from_history(journey.client_id, journey.events.clone())
        .travel_map(t0() + days(2));
    assert_eq!(
        map.steps[0].occurred_at.to_rfc3339(),
        "2026-03-01T09:00:00.123456+00:00",
        "as the stored view keeps it, so that an as_of read equals the live one"
    );
}

#[test]
fn a_caseload_shows_an_appointment_overdue_once_its_time_has_passed_without_a_new_event() {
    let mut journey = Journey::new(24);
    journey.add(
        hours(0),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    journey.add(
        hours(1),
        "probation-opava",
        "appointment.scheduled",
        json!({"appointment_id": "A-1", "at": "2026-03-01T12:00:00Z"}),
    );
    // The file is made before the appointment and not again: nothing happened since.
    let file = journey.file(hours(2));
    let entry = |now| {
        agency_caseload([&file], "probation-opava", t0() + now)[0]
            .next_appointment
            .clone()
            .expect("the appointment")
    };
    assert!(!entry(hours(2)).overdue);
    assert!(entry(hours(4)).overdue);
}

#[test]
fn appointment_ids_are_each_agencys_own() {
    let mut journey = Journey::new(25);
    for (offset, agency) in [(1, "ngo-rubikon"), (2, "probation-opava")] {
        for id in ["1", "2"] {
            journey.add(
                hours(offset),
                agency,
                "appointment.scheduled",
                json!({"appointment_id": id, "at": "2026-03-05T09:00:00Z"}),
            );
        }
    }
    let next = |journey: &Journey| -> Vec<(String, String)> {
        ClientState::from_history(journey.client_id, journey.events.clone())
            .travel_map(t0() + hours(3))
            .next
            .iter()
            .map(|appointment| {
                (
                    appointment.agency.clone(),
                    appointment.appointment_id.clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        next(&journey).len(),
        4,
        "probation's ids replace none of the NGO's"
    );
    for id in ["1", "2"] {
        journey.add(
            hours(3),
            "probation-opava",
            "appointment.missed",
            json!({"appointment_id": id}),
        );
    }
    assert_eq!(
        next(&journey),
        vec![
            ("ngo-rubikon".to_owned(), "1".to_owned()),
            ("ngo-rubikon".to_owned(), "2".to_owned())
        ],
        "probation's misses settle probation's appointments"
    );
    // The client came later that day after all: probation's contact names its own settled "1",
    // and still leaves the NGO's "1" alone.
    journey.add(
        hours(3) + Duration::minutes(30),
        "probation-opava",
        "contact.made",
        json!({"kind": "meeting", "appointment_id": "1", "attended": true}),
    );
    assert_eq!(next(&journey).len(), 2, "the NGO's appointments stay");
    let file = journey.file(hours(3) + Duration::minutes(20));
    let missed: Vec<_> = file
        .open_alerts()
        .filter(|alert| alert.kind == AlertKind::AppointmentsMissed)
        .collect();
    assert_eq!(missed.len(), 1);
    assert_eq!(
        missed[0].agency, "probation-opava",
        "the agency whose appointments were missed follows them up"
    );
}

#[test]
fn a_client_who_completed_after_release_keeps_the_release_date() {
    let mut journey = Journey::new(90);
    journey.add(
        hours(0),
        "prison-opava",
        "sentence.started",
        json!({"prison": "Opava", "start_date": "2025-01-01"}),
    );
    journey.add(days(1), "prison-opava", "client.released", released());
    journey.add(
        days(200),
        "ngo-rubikon",
        "programme.completed",
        json!({"programme": "vol-mentoring"}),
    );
    let file = journey.file(days(210));
    assert_eq!(
        file.phase,
        travelmap_projections::travel_map::Phase::Completed
    );
    assert_eq!(file.released_at, Some(t0() + days(1)));
    assert_eq!(file.stage(t0() + days(210)), Stage::Other);

    // In custody again, the old release no longer counts.
    journey.add(days(220), "prison-opava", "client.recalled", json!({}));
    let file = journey.file(days(230));
    assert_eq!(file.released_at, None, "{:?}", file.phase);
}

#[test]
fn an_alert_is_for_the_agency_working_with_the_client_while_it_stands() {
    let mut journey = Journey::new(40);
    journey.add(
        -days(1),
        "probation-opava",
        "involvement.opened",
        open("probation-opava", "probation_officer", "novak"),
    );
    journey.add(hours(0), "prison-opava", "client.released", released());
    // Probation hands over to the mentor while the first-day alert is open.
    journey.add(
        days(3),
        "probation-opava",
        "involvement.closed",
        json!({"agency": "probation-opava", "role": "probation_officer", "worker": "novak"}),
    );
    journey.add(
        days(3),
        "ngo-vol",
        "involvement.opened",
        open("ngo-vol", "mentor", "dvorak"),
    );
    let open_alert = &journey.file(days(4)).alerts[0];
    assert!(open_alert.is_open());
    assert_eq!(
        open_alert.agency, "ngo-vol",
        "an open alert goes to whoever works now"
    );

    journey.add(
        days(5),
        "ngo-vol",
        "contact.made",
        json!({"kind": "meeting"}),
    );
    // Once cleared, it stays the mentor's, though a case manager began afterwards.
    journey.add(
        days(60),
        "municipality-opava",
        "involvement.opened",
        open("municipality-opava", "case_manager", "svoboda"),
    );
    let cleared = &journey.file(days(61)).alerts[0];
    assert_eq!(cleared.kind, AlertKind::NoFirstDayContact);
    assert!(!cleared.is_open());
    assert_eq!(cleared.agency, "ngo-vol");
}
