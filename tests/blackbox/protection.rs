//! The data-protection lifecycle through the HTTP API, on the embedded store and on PostgreSQL:
//! erasure (crypto-shredding), restriction, rectification, retention, subject access and
//! outcome statistics.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

const AT: &str = "2026-02-01T09:00:00+01:00";

/// Secrets of the client whose data is erased; none may be found in the store afterwards.
const NAME: &str = "Radoslava";
const PRISON_NUMBER: &str = "OP-31337";
const NOTE: &str = "opioid-substitution-at-Vitkovice";
const DROPOUT_REASON: &str = "relapsed-after-eviction";

async fn posted(app: &TestApp, key: &str, body: &Value) -> Value {
    let response = app.post_event(key, body).await;
    let status = response.status();
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    receipt
}

/// A client with a name, a prison number, a health note and a drop-out reason, in the care of
/// the NGO.
async fn client_with_personal_data(app: &TestApp, client: Uuid) -> u64 {
    let registered = event(
        client,
        "client.registered",
        AT,
        json!({"identifiers": [{"type": "prison_number", "value": PRISON_NUMBER}],
               "personal": {"given_name": NAME, "family_name": "Kovarova", "birth_date": "1984-03-02"}}),
    );
    posted(app, PRISON_WRITER, &registered).await;
    posted(
        app,
        NGO_WRITER,
        &event(client, "involvement.opened", AT, json!({"role": "mentor"})),
    )
    .await;
    posted(
        app,
        NGO_WRITER,
        &event(
            client,
            "need.assessed",
            AT,
            json!({"area": "addiction", "status": "in_progress", "note": NOTE}),
        ),
    )
    .await;
    posted(
        app,
        NGO_WRITER,
        &event(
            client,
            "programme.enrolled",
            AT,
            json!({"programme": "vol-mentoring"}),
        ),
    )
    .await;
    let last = posted(
        app,
        NGO_WRITER,
        &event(
            client,
            "programme.dropped_out",
            AT,
            json!({"programme": "vol-mentoring", "reason": DROPOUT_REASON}),
        ),
    )
    .await;
    last["position"].as_u64().unwrap()
}

/// Every row of every table (PostgreSQL) or every byte of every file (embedded), as text; with
/// `views` false, all but the travel-map views (which hold plaintext until erasure, by design).
async fn raw_store(app: &TestApp, backend: &Backend, views: bool) -> String {
    match backend {
        Backend::Embedded => {
            let mut all = String::new();
            for entry in std::fs::read_dir(app.data_dir.path()).unwrap() {
                let path = entry.unwrap().path();
                let is_view = path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("projections"));
                if path.is_file() && (views || !is_view) {
                    all.push_str(&String::from_utf8_lossy(&std::fs::read(path).unwrap()));
                }
            }
            all
        }
        Backend::Postgres(database) => {
            let pool = sqlx::PgPool::connect(database.url()).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let mut all = String::new();
            for table in tables {
                if !views && table == "client_views" {
                    continue;
                }
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" t"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                all.push_str(&rows.join("\n"));
            }
            pool.close().await;
            all
        }
    }
}

async fn erasure_removes_the_personal_data_everywhere_and_keeps_the_facts(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    let other = Uuid::new_v4();
    client_with_personal_data(&app, client).await;
    posted(
        &app,
        PRISON_WRITER,
        &event(
            other,
            "client.registered",
            AT,
            json!({"personal": {"given_name": "Vlasta"}}),
        ),
    )
    .await;
    let before = raw_store(&app, &backend, false).await;
    for secret in [PRISON_NUMBER, NOTE, DROPOUT_REASON, "1984-03-02"] {
        assert!(
            !before.contains(secret),
            "{secret} reached the log, the key store, the index or the audit trail in plaintext"
        );
    }
    let found = app
        .get_ok(
            &format!("/v1/clients?identifier=prison_number:{PRISON_NUMBER}"),
            AUDITOR,
        )
        .await;
    assert_eq!(found["clients"][0]["client_id"], client.to_string());

    let path = format!("/v1/clients/{client}/personal-data");
    let reason = json!({"reason": "the client asked for erasure"});
    expect_problem(
        app.delete(&path, AUDITOR, &reason).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // Refused for the role whatever the body (none here), and logged all the same.
    let bodiless = app
        .http
        .delete(app.url(&path))
        .bearer_auth(COORDINATOR)
        .send()
        .await
        .unwrap();
    expect_problem(bodiless, StatusCode::FORBIDDEN, "forbidden").await;
    expect_problem(
        app.delete(&path, DPO, &json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        app.delete(
            &format!("/v1/clients/{}/personal-data", Uuid::new_v4()),
            DPO,
            &reason,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let first = app.delete(&path, DPO, &reason).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = app.delete(&path, DPO, &reason).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    // Reads, the feed and the travel map show the personal fields as erased, the facts as they were.
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events[0]["personal_data"], "erased");
    assert_eq!(
        events[0]["data"],
        json!({"identifiers": [], "personal": {}})
    );
    assert_eq!(events[2]["data"]["note"], "[erased]");
    assert_eq!(events[2]["data"]["area"], "addiction");
    assert_eq!(events[4]["data"]["reason"], "[erased]");
    assert_eq!(events[4]["data"]["programme"], "vol-mentoring");
    assert_eq!(
        events[1].get("personal_data"),
        None,
        "no personal field to erase"
    );
    assert_eq!(events.last().unwrap()["type"], "personal_data.erased");
    let feed = serde_json::to_string(&app.feed().await).unwrap();
    let map = app
        .travel_map(client, first["position"].as_u64().unwrap())
        .await;
    assert_eq!(map["phase"], "dropped_out");
    assert!(
        map["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|flag| flag["kind"] == "personal_data_erased")
    );
    // The registration's summary no longer counts identifiers it cannot see: "with 0" would
    // state that the client had none.
    assert_eq!(map["steps"][0]["summary"], "Registered", "{map}");
    let as_of = app
        .get_ok(
            &format!(
                "/v1/clients/{client}/travel-map?as_of={}",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
            AUDITOR,
        )
        .await;
    let found = app
        .get_ok(
            &format!("/v1/clients?identifier=prison_number:{PRISON_NUMBER}"),
            AUDITOR,
        )
        .await;
    assert_eq!(found["clients"], json!([]));
    let shown = format!("{history}{feed}{map}{as_of}");
    for secret in [NAME, PRISON_NUMBER, NOTE, DROPOUT_REASON, "1984-03-02"] {
        assert!(!shown.contains(secret), "{secret} is still shown");
    }
    let kept = app
        .get_ok(&format!("/v1/clients/{other}/events"), AUDITOR)
        .await;
    assert_eq!(
        kept["events"][0]["data"]["personal"]["given_name"],
        "Vlasta"
    );

    // The record is closed.
    expect_problem(
        app.post_event(
            NGO_WRITER,
            &event(client, "contact.made", AT, json!({"kind": "meeting"})),
        )
        .await,
        StatusCode::CONFLICT,
        "client_erased",
    )
    .await;
    // The erasure itself is audited, with its reason.
    let trail = app
        .get_for(&format!("/v1/audit/clients/{client}"), AUDITOR, "audit")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        trail["entries"].as_array().unwrap().iter().any(|entry| {
            entry["operation"] == "erasure"
                && entry["justification"] == "the client asked for erasure"
        }),
        "{trail}"
    );
    // And so are the refused attempts, the one without a body too.
    for refused in ["dpo-office", "coordinator-desk"] {
        assert!(
            trail["entries"].as_array().unwrap().iter().any(|entry| {
                entry["operation"] == "erasure"
                    && entry["outcome"] == "denied"
                    && entry["credential"] == refused
            }),
            "{refused}: {trail}"
        );
    }
    // So is the attempt to write to the closed record.
    assert!(
        trail["entries"].as_array().unwrap().iter().any(|entry| {
            entry["action"] == "POST /v1/events"
                && entry["outcome"] == "denied"
                && entry["operation"] == "collection"
        }),
        "{trail}"
    );

    // Nothing of the erased client is left in plaintext anywhere in the store, views included.
    let after = raw_store(&app, &backend, true).await;
    for secret in [NAME, PRISON_NUMBER, NOTE, DROPOUT_REASON, "1984-03-02"] {
        assert!(!after.contains(secret), "{secret} is still stored");
    }
    app.stop().await;
    backend.remove().await;
}

async fn restriction_freezes_reads_and_writes_until_lifted(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    let position = client_with_personal_data(&app, client).await;
    app.travel_map(client, position).await;
    let path = format!("/v1/clients/{client}/restriction");
    let reason = json!({"reason": "the client contests the accuracy of the record"});
    expect_problem(
        app.delete(&path, DPO, &reason).await,
        StatusCode::CONFLICT,
        "not_restricted",
    )
    .await;
    let restricted = app.post(&path, DPO, &reason).await;
    assert_eq!(restricted.status(), StatusCode::CREATED);
    let restricted: Value = restricted.json().await.unwrap();
    let again = app.post(&path, DPO, &reason).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap(), restricted);

    // Stored, but not to be used: the NGO's coordinator (open involvement) is refused, so is an
    // auditor reading for case management; an audit or a subject access request may read.
    let map_path = format!("/v1/clients/{client}/travel-map");
    expect_problem(
        app.get(&map_path, NGO_COORDINATOR).await,
        StatusCode::FORBIDDEN,
        "restricted",
    )
    .await;
    expect_problem(
        app.get(&format!("/v1/clients/{client}/events"), AUDITOR)
            .await,
        StatusCode::FORBIDDEN,
        "restricted",
    )
    .await;
    // An agency that does not work with the client is refused as for any client: that this one
    // contests their data is not for it to learn.
    for purpose in ["case_management", "emergency"] {
        expect_problem(
            app.get_for(&map_path, COORDINATOR, purpose).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    let audited = app.get_for(&map_path, AUDITOR, "audit").await;
    assert_eq!(audited.status(), StatusCode::OK);
    let audited: Value = audited.json().await.unwrap();
    assert!(
        audited["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|flag| flag["kind"] == "processing_restricted"),
        "{audited}"
    );
    let report = app
        .get_for(
            &format!("/v1/clients/{client}/subject-access"),
            DPO,
            "subject_access",
        )
        .await;
    assert_eq!(report.status(), StatusCode::OK);
    assert_eq!(report.json::<Value>().await.unwrap()["restricted"], true);
    expect_problem(
        app.post_event(
            NGO_WRITER,
            &event(client, "contact.made", AT, json!({"kind": "meeting"})),
        )
        .await,
        StatusCode::CONFLICT,
        "client_restricted",
    )
    .await;
    // The attempt is logged for the data-protection officer's review.
    let trail: Value = app
        .get_for(&format!("/v1/audit/clients/{client}"), AUDITOR, "audit")
        .await
        .json()
        .await
        .unwrap();
    let last = trail["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["action"], &last["outcome"]),
        (&json!("POST /v1/events"), &json!("denied")),
        "{trail}"
    );
    // Nor is a restricted client found by identifier, except in an audit.
    let search = format!("/v1/clients?identifier=prison_number:{PRISON_NUMBER}");
    assert_eq!(
        app.get_ok(&search, PRISON_WRITER).await["clients"],
        json!([])
    );
    let audit_search: Value = app
        .get_for(&search, AUDITOR, "audit")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit_search["clients"][0]["client_id"], client.to_string());
    // The feed keeps every position but withholds the personal fields, except in an audit.
    let feed: Value = app
        .get_for("/v1/events?after=0&limit=1000", ADMIN, "service_delivery")
        .await
        .json()
        .await
        .unwrap();
    let registered = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| {
            event["client_id"] == client.to_string() && event["type"] == "client.registered"
        })
        .unwrap();
    assert_eq!(registered["personal_data"], "withheld");
    assert!(!registered.to_string().contains(NAME));
    assert!(!registered.to_string().contains(PRISON_NUMBER));
    let audited_feed = app
        .get_for("/v1/events?after=0&limit=1000", AUDITOR, "audit")
        .await
        .text()
        .await
        .unwrap();
    assert!(audited_feed.contains(NAME));
    // A data-protection decision cannot be posted, nor retracted by an agency.
    expect_problem(
        app.post_event(
            NGO_WRITER,
            &event(client, "restriction.lifted", AT, json!({"reason": "done"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.post(
            "/v1/events/batch",
            NGO_WRITER,
            &json!({"events": [event(client, "personal_data.erased", AT, json!({"reason": "x"}))]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let lifted = app
        .delete(&path, DPO, &json!({"reason": "record verified"}))
        .await;
    assert_eq!(lifted.status(), StatusCode::CREATED);
    let lifted: Value = lifted.json().await.unwrap();
    let lifted_again = app
        .delete(&path, DPO, &json!({"reason": "record verified"}))
        .await;
    assert_eq!(lifted_again.status(), StatusCode::OK);
    assert_eq!(lifted_again.json::<Value>().await.unwrap(), lifted);
    posted(
        &app,
        NGO_WRITER,
        &event(client, "contact.made", AT, json!({"kind": "meeting"})),
    )
    .await;
    expect_problem(
        app.post_event(
            NGO_WRITER,
            &event(
                client,
                "event.retracted",
                AT,
                json!({"event_id": lifted["id"], "reason": "undo the lifting"}),
            ),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let map = app
        .get_ok(
            &format!("{map_path}?min_position={}", lifted["position"]),
            NGO_COORDINATOR,
        )
        .await;
    assert!(
        map["flags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|flag| flag["kind"] != "processing_restricted")
    );
    app.stop().await;
    backend.remove().await;
}

async fn subject_access_tells_the_client_everything_held(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    let position = client_with_personal_data(&app, client).await;
    // A correction: the history keeps the original, the correction, who made it and why.
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let note_event = history["events"][2]["id"].as_str().unwrap().to_owned();
    let correction = posted(
        &app,
        NGO_WRITER,
        &event(
            client,
            "event.corrected",
            AT,
            json!({"event_id": note_event, "reason": "status misread",
                   "data": {"area": "addiction", "status": "support_required", "note": NOTE}}),
        ),
    )
    .await;
    let map = app
        .travel_map(client, correction["position"].as_u64().unwrap())
        .await;
    let corrected = map["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["event_id"] == note_event.as_str())
        .unwrap();
    assert_eq!(corrected["data"]["status"], "support_required");
    assert_eq!(corrected["corrections"][0]["reason"], "status misread");
    assert_eq!(corrected["corrections"][0]["agency"], "ngo-opava");
    app.get(&format!("/v1/clients/{client}/travel-map"), NGO_COORDINATOR)
        .await;
    assert!(position > 0);

    // A break-glass read: the client learns who read, and the reason they gave.
    let emergency = app
        .http
        .get(app.url(&format!("/v1/clients/{client}/travel-map")))
        .bearer_auth(COORDINATOR)
        .header("x-purpose", "emergency")
        .header("x-justification", "client missing after release")
        .send()
        .await
        .unwrap();
    assert_eq!(emergency.status(), StatusCode::OK);

    let path = format!("/v1/clients/{client}/subject-access");
    expect_problem(
        app.get_for(&path, DPO, "case_management").await,
        StatusCode::BAD_REQUEST,
        "purpose_required",
    )
    .await;
    expect_problem(
        app.get_for(&path, NGO_COORDINATOR, "subject_access").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let report: Value = app
        .get_for(&path, DPO, "subject_access")
        .await
        .json()
        .await
        .unwrap();
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(events[0]["data"]["personal"]["given_name"], NAME);
    assert_eq!(events[2]["data"]["note"], NOTE);
    let recorded_by: Vec<&str> = report["recorded_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|agency| agency["agency"].as_str().unwrap())
        .collect();
    assert_eq!(recorded_by, ["ngo-opava", "prison-opava"]);
    let processed = report["processed_by"].as_array().unwrap();
    assert!(processed.iter().any(|entry| {
        entry["agency"] == "ngo-opava"
            && entry["operation"] == "consultation"
            && entry["purpose"] == "case_management"
    }));
    assert!(
        processed
            .iter()
            .any(|entry| entry["operation"] == "collection")
    );
    assert!(
        processed
            .iter()
            .any(|entry| entry["action"] == "break-glass"
                && entry["justification"] == "client missing after release"),
        "{processed:?}"
    );

    let html = app
        .http
        .get(app.url(&format!("{path}?format=html")))
        .bearer_auth(DPO)
        .header("x-purpose", "subject_access")
        .send()
        .await
        .unwrap();
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // Kept by no cache, its type not guessed, and as a page it runs nothing and loads nothing.
    assert_eq!(html.headers()["cache-control"], "no-store");
    assert_eq!(html.headers()["x-content-type-options"], "nosniff");
    assert!(
        html.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let html = html.text().await.unwrap();
    assert!(html.contains("<h1>Subject access report</h1>"));
    assert!(html.contains("client missing after release"));
    assert!(html.contains("break-glass"));
    assert!(html.contains(NAME));
    assert!(html.contains("ngo-opava"));
    app.stop().await;
    backend.remove().await;
}

/// The VOL Mentoring figures from the field (domain.md): 178 clients entered from 5 prisons,
/// 134 completed, 44 dropped out, 64 retraining courses, 65 debt cases closed, over 100 jobs
/// after release (here 101 within six months).
async fn statistics_reproduce_the_vol_mentoring_figures(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let prisons = ["Opava", "Mirov", "Karvina", "Ostrava", "Vinarice"];
    let mut custody = Vec::new();
    let mut services = Vec::new();
    let mut last_client = Uuid::nil();
    for index in 0..178 {
        let client = Uuid::new_v4();
        last_client = client;
        let prison = prisons[index % prisons.len()];
        custody.push(event(
            client,
            "sentence.started",
            "2024-01-10T09:00:00+01:00",
            json!({"prison": prison, "start_date": "2024-01-10"}),
        ));
        services.push(event(
            client,
            "programme.enrolled",
            "2024-06-01T09:00:00+02:00",
            json!({"programme": "vol-mentoring"}),
        ));
        custody.push(event(
            client,
            "client.released",
            "2024-12-01T09:00:00+01:00",
            json!({"release_kind": "conditional", "supervision": index % 4 == 0, "municipality": "Opava"}),
        ));
        if index < 134 {
            services.push(event(
                client,
                "programme.completed",
                "2025-05-01T09:00:00+02:00",
                json!({"programme": "vol-mentoring"}),
            ));
        } else {
            services.push(event(
                client,
                "programme.dropped_out",
                "2025-02-01T09:00:00+01:00",
                json!({"programme": "vol-mentoring", "reason": "moved away"}),
            ));
        }
        if index < 64 {
            services.push(event(
                client,
                "retraining.completed",
                "2024-10-01T09:00:00+02:00",
                json!({"course": "welding"}),
            ));
        }
        if (40..105).contains(&index) {
            services.push(event(
                client,
                "debt_case.closed",
                "2025-03-01T09:00:00+01:00",
                json!({"case_ref": format!("D-{index}")}),
            ));
        }
        if index < 101 {
            services.push(event(
                client,
                "job.placed",
                "2025-02-15T09:00:00+01:00",
                json!({"sector": "construction"}),
            ));
        }
    }
    let mut position = 0;
    for (key, events) in [(PRISON_WRITER, custody), (NGO_WRITER, services)] {
        for chunk in events.chunks(1000) {
            let response = app
                .post("/v1/events/batch", key, &json!({"events": chunk}))
                .await;
            let body: Value = response.json().await.unwrap();
            position = body["receipts"].as_array().unwrap().last().unwrap()["position"]
                .as_u64()
                .unwrap();
        }
    }
    app.travel_map(last_client, position).await;

    let path = "/v1/statistics/outcomes?programme=vol-mentoring";
    expect_problem(
        app.get(path, COORDINATOR).await,
        StatusCode::BAD_REQUEST,
        "purpose_required",
    )
    .await;
    expect_problem(
        app.get_for(path, NGO_WRITER, "statistics").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let report: Value = app
        .get_for(path, COORDINATOR, "statistics")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        report["total"]["cells"],
        json!({"entered": 178, "completed": 134, "dropped_out": 44, "retraining_completed": 64,
               "debt_cases_closed": 65, "job_within_6_months": 101, "housing_secured": 0,
               "reoffence_within_12_months": 0}),
    );

    let by_prison: Value = app
        .get_for(
            &format!("{path}&group_by=prison"),
            COORDINATOR,
            "statistics",
        )
        .await
        .json()
        .await
        .unwrap();
    let groups = by_prison["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 5);
    let mut suppressed_dropouts = 0;
    for group in groups {
        for (measure, cell) in group["cells"].as_object().unwrap() {
            if let Some(count) = cell.as_u64() {
                assert!(
                    count == 0 || count >= 10,
                    "{measure} of {} shows a small count: {count}",
                    group["key"]
                );
            } else {
                assert_eq!(cell, "suppressed");
                if measure == "dropped_out" {
                    suppressed_dropouts += 1;
                }
            }
        }
    }
    // 44 drop-outs over 5 prisons: 8 or 9 each, every one of them too small to show.
    assert_eq!(suppressed_dropouts, 5);
    let text = by_prison.to_string();
    assert!(!text.contains("client_id"), "aggregates only");
    // Each request is in the trail with its query, so that reviewers can tell two near-identical
    // ones apart (the difference of two tables may show what suppression hid in each); typed
    // text that matched no programme is not kept.
    let typed = app
        .get_for(
            "/v1/statistics/outcomes?programme=Jana%20Kovarova",
            COORDINATOR,
            "statistics",
        )
        .await;
    assert_eq!(typed.status(), StatusCode::OK);
    let mut trail = Vec::new();
    loop {
        let after = trail
            .last()
            .map_or(0, |entry: &Value| entry["seq"].as_u64().unwrap());
        let page = app
            .get_ok(
                &format!("/v1/audit/entries?after={after}&limit=1000"),
                AUDITOR,
            )
            .await;
        let entries = page["entries"].as_array().unwrap().clone();
        let last_page = entries.len() < 1000;
        trail.extend(entries);
        // Not "until a page is empty": each read of the trail adds an entry of its own.
        if last_page {
            break;
        }
    }
    let statistics: Vec<(&str, &str)> = trail
        .iter()
        .filter(|entry| entry["action"] == "GET /v1/statistics/outcomes")
        .map(|entry| {
            (
                entry["outcome"].as_str().unwrap(),
                entry["returned"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        statistics,
        [
            ("denied", ""),
            ("denied", ""),
            ("allowed", "aggregate counts for programme=vol-mentoring"),
            (
                "allowed",
                "aggregate counts for programme=vol-mentoring&group_by=prison"
            ),
            ("allowed", "aggregate counts for programme=unlisted"),
        ]
    );
    app.stop().await;
    backend.remove().await;
}

async fn retention_shreds_what_is_due_audits_it_and_reports_it(backend: Backend) {
    const DUE_NOTE: &str = "relapse after a funeral in Vítkov";
    let app = spawn_app_on(&backend).await;
    let due = Uuid::new_v4();
    let running = Uuid::new_v4();
    let mut sent = Vec::new();
    for (client, closes) in [(due, true), (running, false)] {
        let registered = event(
            client,
            "client.registered",
            "2015-01-01T09:00:00+01:00",
            json!({"personal": {"given_name": NAME}}),
        );
        posted(&app, PRISON_WRITER, &registered).await;
        sent.push(registered);
        posted(
            &app,
            NGO_WRITER,
            &event(
                client,
                "involvement.opened",
                "2015-01-02T09:00:00+01:00",
                json!({"role": "mentor"}),
            ),
        )
        .await;
        // The due client's note is its own, so that the store can be searched for it.
        let note = if closes { DUE_NOTE } else { NOTE };
        let assessed = event(
            client,
            "need.assessed",
            "2015-02-01T09:00:00+01:00",
            json!({"area": "health", "status": "in_progress", "note": note}),
        );
        posted(&app, NGO_WRITER, &assessed).await;
        sent.push(assessed);
        if closes {
            posted(
                &app,
                NGO_WRITER,
                &event(
                    client,
                    "involvement.closed",
                    "2016-01-02T09:00:00+01:00",
                    json!({"role": "mentor"}),
                ),
            )
            .await;
        }
    }
    let data_dir = app.stop().await;
    let config = crate::binary::write_config(data_dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    // Needs assessments five years after the last involvement ended; identity for fifty; justice
    // data for two, of which these clients hold none (so it must not date the shredding).
    text.push_str("[retention]\nneeds = 5\nidentity = 50\njustice = 2\n");
    std::fs::write(&config, text).unwrap();
    // The app ran on the data directory itself; the binary is pointed at the same place. On
    // PostgreSQL the command runs beside a server, which writes the views: it must neither wait
    // for the server's lease (it did, for ever) nor end before the server has folded what it
    // shredded. The embedded store takes one process at a time.
    let path = data_dir.path().to_owned();
    let store_args = backend.store_args(&path);
    let (beside, data_dir) = match backend {
        Backend::Postgres(_) => (Some(spawn_app_on_in(&backend, data_dir).await), None),
        Backend::Embedded => (None, Some(data_dir)),
    };
    let run = || {
        let (config, store_args) = (config.clone(), store_args.clone());
        async move {
            let mut command = tokio::process::Command::from(travelmap_command());
            command
                .kill_on_drop(true)
                .args(["retention", "run", "--config"])
                .arg(&config)
                .args(store_args);
            let output = tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
                .await
                .expect("the run ends")
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            serde_json::from_slice::<Value>(&output.stdout).unwrap()
        }
    };
    let report = run().await;
    assert_eq!(report["clients"], 2, "{report}");
    assert_eq!(
        report["due"],
        json!([{"client_id": due, "categories": ["needs"], "due_since": "2021-01-02"}])
    );
    assert_eq!(report["done"][0]["client_id"], due.to_string());
    assert_eq!(report["done"][0]["keys_destroyed"], 1);
    assert_eq!(report["failed"], json!([]));
    if matches!(backend, Backend::Embedded) {
        // Gone from the views too, without waiting for the next start.
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(DUE_NOTE),
                    "{} still holds the shredded note",
                    path.display()
                );
            }
        }
    }
    let second = run().await;
    assert_eq!(second["due"], json!([]), "what was shredded stays shredded");

    let app = match (beside, data_dir) {
        (Some(app), _) => app,
        (None, Some(data_dir)) => spawn_app_on_in(&backend, data_dir).await,
        (None, None) => unreachable!("the app or its data directory"),
    };
    let history = app
        .get_ok(&format!("/v1/clients/{due}/events"), AUDITOR)
        .await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events[2]["data"]["note"], "[erased]");
    assert_eq!(events[2]["data"]["area"], "health");
    assert_eq!(
        events[0]["data"]["personal"]["given_name"], NAME,
        "identity is kept for longer"
    );
    assert_eq!(events.last().unwrap()["type"], "retention.applied");
    // A retry of the shredded assessment is answered alike whatever its note: a match would
    // confirm a guess of what was destroyed. The registration, whose identity is kept, still
    // matches.
    let mut guessed = sent[1].clone();
    guessed["data"]["note"] = json!("a guess");
    for retry in [&sent[1], &guessed] {
        expect_problem(
            app.post_event(NGO_WRITER, retry).await,
            StatusCode::CONFLICT,
            "duplicate_conflict",
        )
        .await;
    }
    assert_eq!(
        app.post_event(PRISON_WRITER, &sent[0]).await.status(),
        StatusCode::OK
    );
    let kept = app
        .get_ok(&format!("/v1/clients/{running}/events"), AUDITOR)
        .await;
    assert_eq!(
        kept["events"][2]["data"]["note"], NOTE,
        "an open involvement keeps its data"
    );
    let trail = app
        .get_for(&format!("/v1/audit/clients/{due}"), AUDITOR, "audit")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        trail["entries"].as_array().unwrap().iter().any(|entry| {
            entry["operation"] == "erasure" && entry["action"] == "travelmap retention run"
        }),
        "{trail}"
    );
    // The refused retries left nothing for the next run to shred and record (a key made for
    // them would have been).
    let (beside, data_dir) = match backend {
        Backend::Postgres(_) => (Some(app), None),
        Backend::Embedded => (None, Some(app.stop().await)),
    };
    let third = run().await;
    assert_eq!(third["due"], json!([]), "{third}");
    assert_eq!(third["done"], json!([]), "{third}");
    if let Some(app) = beside {
        app.stop().await;
    }
    drop(data_dir);
    backend.remove().await;
}

/// The server applies the schedule by itself (here every 100 ms instead of daily), with no new
/// event arriving and no command run.
async fn the_server_applies_the_retention_schedule_by_itself(backend: Backend) {
    let schedule = travelmap_projections::retention::Schedule::from_config(
        &std::collections::BTreeMap::from([("needs".to_owned(), 2)]),
    )
    .unwrap();
    let app = spawn_app_with_retention(&backend, schedule).await;
    let client = Uuid::new_v4();
    for (key, event_type, at, data) in [
        (
            NGO_WRITER,
            "involvement.opened",
            "2019-01-02T09:00:00+01:00",
            json!({"role": "mentor"}),
        ),
        (
            NGO_WRITER,
            "need.assessed",
            "2019-02-01T09:00:00+01:00",
            json!({"area": "addiction", "status": "in_progress", "note": NOTE}),
        ),
        (
            NGO_WRITER,
            "involvement.closed",
            "2020-01-02T09:00:00+01:00",
            json!({"role": "mentor"}),
        ),
    ] {
        posted(&app, key, &event(client, event_type, at, data)).await;
    }
    let path = format!("/v1/clients/{client}/events");
    let mut shredded = None;
    for _ in 0..200 {
        let history = app.get_ok(&path, AUDITOR).await;
        // The keys are destroyed first and the shredding recorded just after (a shredding is
        // never recorded that did not happen), so a read can fall between the two.
        if history["events"][1]["data"]["note"] == "[erased]"
            && history["events"].as_array().unwrap().len() == 4
        {
            shredded = Some(history);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let history = shredded.expect("the schedule shredded the note and recorded it within 10 s");
    assert_eq!(history["events"][3]["type"], "retention.applied");
    assert_eq!(history["events"][3]["data"]["due_since"], "2022-01-02");
    app.stop().await;
    backend.remove().await;
}

/// The first event of `event_type` in a history.
fn first_of_type<'a>(history: &'a Value, event_type: &str) -> &'a Value {
    history["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == event_type)
        .unwrap_or_else(|| panic!("no {event_type} in {history}"))
}

/// A correction's personal replacement fields read as erased after an erasure, like the fields
/// of the event it corrects, rather than vanish from the correction and the map; and the closed
/// record leaves the caseloads.
#[tokio::test]
async fn a_corrections_personal_fields_read_as_erased_after_erasure() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    client_with_personal_data(&app, client).await;
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let assessed = first_of_type(&history, "need.assessed")["id"].clone();
    posted(
        &app,
        NGO_WRITER,
        &event(
            client,
            "event.corrected",
            AT,
            json!({"event_id": assessed, "reason": "status was wrong",
                   "data": {"area": "addiction", "status": "done", "note": "a second note"}}),
        ),
    )
    .await;
    let listed = |caseload: &Value| {
        caseload["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["client_id"] == client.to_string())
    };
    let caseload = "/v1/agencies/ngo-opava/caseload";
    assert!(listed(&app.get_ok(caseload, ADMIN).await));
    let erase = json!({"reason": "the client asked for erasure"});
    let erased = app
        .delete(&format!("/v1/clients/{client}/personal-data"), DPO, &erase)
        .await;
    assert_eq!(erased.status(), StatusCode::CREATED);
    // Nothing more can be recorded for the client, so no agency is left carrying them.
    let position = erased.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap();
    let caseload_now = app
        .get_ok(&format!("{caseload}?min_position={position}"), ADMIN)
        .await;
    assert!(!listed(&caseload_now), "{caseload_now}");
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let correction = first_of_type(&history, "event.corrected");
    assert_eq!(
        correction["data"]["data"],
        json!({"area": "addiction", "status": "done", "note": "[erased]"})
    );
    assert!(!history.to_string().contains("a second note"));
    app.stop().await;
}

/// Erasure closes the record, but a restriction placed before it must not outlive it for good:
/// kept, it would hold the client's remaining facts out of statistics, which erasure itself
/// does not change. Its lifting is the one thing an erased record still takes.
#[tokio::test]
async fn a_restriction_that_outlived_an_erasure_can_still_be_lifted() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    client_with_personal_data(&app, client).await;
    let restriction = format!("/v1/clients/{client}/restriction");
    let reason = json!({"reason": "the client contests the accuracy of the record"});
    assert_eq!(
        app.post(&restriction, DPO, &reason).await.status(),
        StatusCode::CREATED
    );
    let erasure = format!("/v1/clients/{client}/personal-data");
    let erase = json!({"reason": "the client asked for erasure"});
    assert_eq!(
        app.delete(&erasure, DPO, &erase).await.status(),
        StatusCode::CREATED
    );
    let lift = json!({"reason": "erased meanwhile"});
    assert_eq!(
        app.delete(&restriction, DPO, &lift).await.status(),
        StatusCode::CREATED
    );
    // Closed again: no new restriction, no new events.
    expect_problem(
        app.post(&restriction, DPO, &reason).await,
        StatusCode::CONFLICT,
        "client_erased",
    )
    .await;
    expect_problem(
        app.post_event(
            NGO_WRITER,
            &event(client, "contact.made", AT, json!({"kind": "meeting"})),
        )
        .await,
        StatusCode::CONFLICT,
        "client_erased",
    )
    .await;
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types[types.len() - 3..],
        [
            "processing.restricted",
            "personal_data.erased",
            "restriction.lifted"
        ]
    );
    app.stop().await;
}

/// Decisions sent several times at once, as a tool that retries after a timeout or a double
/// submission sends them: each is recorded once, and every other request is answered as a
/// retry, with the receipt of the decision that was recorded.
async fn simultaneous_decisions_are_recorded_once(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    client_with_personal_data(&app, client).await;
    let restriction = format!("/v1/clients/{client}/restriction");
    let erasure = format!("/v1/clients/{client}/personal-data");
    let reason = json!({"reason": "the client contests the accuracy of the record"});
    let decisions: [(&str, &str); 3] = [
        ("POST", &restriction),
        ("DELETE", &restriction),
        ("DELETE", &erasure),
    ];
    for (method, path) in decisions {
        let send = || async {
            let response = match method {
                "POST" => app.post(path, DPO, &reason).await,
                _ => app.delete(path, DPO, &reason).await,
            };
            let status = response.status();
            let receipt: Value = response.json().await.unwrap();
            (status, receipt)
        };
        let (a, b, c, d) = tokio::join!(send(), send(), send(), send());
        recorded_once(&[a, b, c, d], &format!("{method} {path}"));
    }
    let history = app
        .get_ok(&format!("/v1/clients/{client}/events"), AUDITOR)
        .await;
    let decisions: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .filter(|event_type| {
            [
                "processing.restricted",
                "restriction.lifted",
                "personal_data.erased",
            ]
            .contains(event_type)
        })
        .collect();
    assert_eq!(
        decisions,
        [
            "processing.restricted",
            "restriction.lifted",
            "personal_data.erased"
        ]
    );

    // A restriction that outlived an erasure is lifted once, however many ask at once: the
    // erased record refuses the liftings that come after the first, which then answers them.
    let other = Uuid::new_v4();
    client_with_personal_data(&app, other).await;
    let restriction = format!("/v1/clients/{other}/restriction");
    let erasure = format!("/v1/clients/{other}/personal-data");
    assert_eq!(
        app.post(&restriction, DPO, &reason).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.delete(&erasure, DPO, &reason).await.status(),
        StatusCode::CREATED
    );
    let lift = || async {
        let response = app.delete(&restriction, DPO, &reason).await;
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    };
    let (a, b, c, d) = tokio::join!(lift(), lift(), lift(), lift());
    recorded_once(&[a, b, c, d], "lifting after erasure");
    app.stop().await;
}

/// Asserts that of decisions asked for at once, one was recorded (`201`) and every other was
/// answered with its receipt (`200`).
fn recorded_once(answers: &[(StatusCode, Value)], what: &str) {
    let created = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{what}: {answers:?}");
    for (status, receipt) in answers {
        assert!(
            [StatusCode::CREATED, StatusCode::OK].contains(status),
            "{what}: {status} {receipt}"
        );
        assert_eq!(receipt["id"], answers[0].1["id"], "{what}");
    }
}

/// A closed record says nothing of how it moves: a write to a restricted client with a wrong
/// `expected_version` is refused as restricted and logged, never answered with the stream's
/// version; a version conflict on an open record is logged as denied too.
#[tokio::test]
async fn a_closed_record_does_not_tell_its_version() {
    let app = spawn_app().await;
    let (client, open) = (Uuid::new_v4(), Uuid::new_v4());
    client_with_personal_data(&app, client).await;
    client_with_personal_data(&app, open).await;
    let restriction = format!("/v1/clients/{client}/restriction");
    let reason = json!({"reason": "the client contests the accuracy of the record"});
    assert_eq!(
        app.post(&restriction, DPO, &reason).await.status(),
        StatusCode::CREATED
    );
    let probing = |client: Uuid| {
        let mut probe = event(client, "contact.made", AT, json!({"kind": "phone"}));
        probe["expected_version"] = json!(999);
        probe
    };
    let problem = expect_problem(
        app.post_event(NGO_WRITER, &probing(client)).await,
        StatusCode::CONFLICT,
        "client_restricted",
    )
    .await;
    assert!(problem["current_version"].is_null(), "{problem}");
    expect_problem(
        app.post_event(NGO_WRITER, &probing(open)).await,
        StatusCode::CONFLICT,
        "version_conflict",
    )
    .await;
    for probed in [client, open] {
        let denied = app
            .trail_of(probed)
            .await
            .into_iter()
            .filter(|entry| entry["outcome"] == "denied" && entry["action"] == "POST /v1/events")
            .count();
        assert_eq!(denied, 1, "{probed}");
    }
    app.stop().await;
}

/// An erasure cut short after it destroyed the client's keys, before its decision was recorded,
/// leaves the travel map showing the plaintext. Here the keys are destroyed while the server is
/// stopped, as a crash between the two steps would leave them; the server finishes the erasure
/// once it starts again: the decision is recorded, the map and the identifier index no longer
/// show the data, and the trail says who finished it.
async fn a_restart_finishes_an_erasure_cut_short(backend: Backend) {
    let app = spawn_app_on(&backend).await;
    let client = Uuid::new_v4();
    let position = client_with_personal_data(&app, client).await;
    let map = app.travel_map(client, position).await;
    assert!(map.to_string().contains(NAME), "{map}");
    let data_dir = app.stop().await;

    let store = travelmap_store::Store::open(&backend.location(data_dir.path()))
        .await
        .unwrap();
    let keyring = store
        .keyring(travelmap_store::MasterKeys::new(
            travelmap_store::MasterKey::new("test", [9; 32]),
            Vec::new(),
        ))
        .await
        .unwrap();
    let destroyed = keyring
        .destroy(travelmap_domain::ClientId(client), None)
        .await
        .unwrap();
    assert!(destroyed > 0);
    drop(keyring);
    store.close().await;
    drop(store);

    let app = spawn_app_on_in(&backend, data_dir).await;
    let history = format!("/v1/clients/{client}/events");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let decision = loop {
        let events = app.get_ok(&history, AUDITOR).await["events"].clone();
        let last = events.as_array().unwrap().last().unwrap().clone();
        if last["type"] == "personal_data.erased" {
            break last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the erasure was not finished: {events}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(decision["agency"], "travelmap");
    assert_eq!(decision["credential"], "travelmap-recovery");
    let map = app
        .travel_map(client, decision["position"].as_u64().unwrap())
        .await;
    assert!(!map.to_string().contains(NAME), "{map}");
    assert!(
        map["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|flag| flag["kind"] == "personal_data_erased"),
        "{map}"
    );
    let found = app
        .get_ok(
            &format!("/v1/clients?identifier=prison_number:{PRISON_NUMBER}"),
            AUDITOR,
        )
        .await;
    assert_eq!(found["clients"], json!([]), "{found}");
    let trail = app.trail_of(client).await;
    assert!(
        trail.iter().any(|entry| entry["operation"] == "erasure"
            && entry["action"] == "erasure finished"
            && entry["credential"] == "travelmap-recovery"),
        "{trail:?}"
    );
    // Once finished, it is finished: a later start records nothing more.
    let data_dir = app.stop().await;
    let app = spawn_app_on_in(&backend, data_dir).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let events = app.get_ok(&history, AUDITOR).await["events"].clone();
    let decisions = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "personal_data.erased")
        .count();
    assert_eq!(decisions, 1, "{events}");
    app.stop().await;
    backend.remove().await;
}

/// A data-protection decision goes through while the client's record takes other writes (the
/// decision is not bound to a stream version that those writes keep moving): an erasure that
/// has destroyed the keys is recorded, rather than answered 503 with the views still showing
/// the plaintext.
async fn decisions_go_through_while_the_record_takes_writes(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app_on(&backend).await);
    let client = Uuid::new_v4();
    let position = client_with_personal_data(&app, client).await;
    app.travel_map(client, position).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let mut accepted = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let contact = event(
                        client,
                        "contact.made",
                        AT,
                        json!({"kind": "phone", "attended": true}),
                    );
                    if app.post_event(NGO_WRITER, &contact).await.status() == StatusCode::CREATED {
                        accepted += 1;
                    }
                }
                accepted
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let reason = json!({"reason": "the client contests the accuracy of the record"});
    let restriction = format!("/v1/clients/{client}/restriction");
    let erasure = format!("/v1/clients/{client}/personal-data");
    for (method, path) in [
        ("POST", &restriction),
        ("DELETE", &restriction),
        ("DELETE", &erasure),
    ] {
        let response = match method {
            "POST" => app.post(path, DPO, &reason).await,
            _ => app.delete(path, DPO, &reason).await,
        };
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{method} {path}: {}",
            response.text().await.unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut accepted = 0;
    for writer in writers {
        accepted += writer.await.unwrap();
    }
    assert!(accepted > 0, "the writers never got a write in");
    let map = app
        .get_ok(&format!("/v1/clients/{client}/travel-map"), AUDITOR)
        .await
        .to_string();
    assert!(!map.contains(NAME), "{map}");
    let found = app
        .get_ok(
            &format!("/v1/clients?identifier=prison_number:{PRISON_NUMBER}"),
            AUDITOR,
        )
        .await;
    assert_eq!(found["clients"], json!([]));
    let app = std::sync::Arc::into_inner(app).unwrap();
    app.stop().await;
    backend.remove().await;
}

on_both_backends!(
    a_restart_finishes_an_erasure_cut_short,
    erasure_removes_the_personal_data_everywhere_and_keeps_the_facts,
    restriction_freezes_reads_and_writes_until_lifted,
    subject_access_tells_the_client_everything_held,
    statistics_reproduce_the_vol_mentoring_figures,
    retention_shreds_what_is_due_audits_it_and_reports_it,
    the_server_applies_the_retention_schedule_by_itself,
    simultaneous_decisions_are_recorded_once,
    decisions_go_through_while_the_record_takes_writes,
);

/// An embedded store in `dir` and the use cases over it, sealing under a test master key, for
/// tests that run the retention schedule directly.
async fn embedded_journeys(
    dir: &std::path::Path,
) -> (travelmap_store::Store, travelmap_service::Journeys) {
    let store = travelmap_store::Store::open(&travelmap_store::Location::Embedded(dir.to_owned()))
        .await
        .unwrap();
    let keyring = store
        .keyring(travelmap_store::MasterKeys::new(
            travelmap_store::MasterKey::new("test", [9; 32]),
            Vec::new(),
        ))
        .await
        .unwrap();
    let journeys = travelmap_service::Journeys::new(store.log(), store.views(), Some(keyring))
        .await
        .unwrap();
    (store, journeys)
}

/// A retention run decides each client as of the moment it decides, not as of its start: a fact
/// recorded after the run began (here, before it reaches the client) restarts its category's
/// clock, and what it holds is not shredded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_run_counts_what_was_recorded_after_it_began() {
    use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance};
    let dir = tempfile::tempdir().unwrap();
    let (store, journeys) = embedded_journeys(dir.path()).await;
    let client = ClientId(Uuid::new_v4());
    let prison = Provenance {
        agency: "prison-opava".into(),
        credential: "prison-system".into(),
    };
    let submission =
        |event_type: &str, occurred_at: &str, data: Value| travelmap_service::Submission {
            draft: EventDraft {
                id: EventId(Uuid::new_v4()),
                client_id: client,
                occurred_at: occurred_at.parse().unwrap(),
                actor: None,
                event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
            },
            expected_version: None,
        };
    journeys
        .record(
            &prison,
            &[
                submission(
                    "client.registered",
                    "2001-01-01T09:00:00Z",
                    json!({"identifiers": [{"type": "prison_number", "value": "OP-2001-7"}]}),
                ),
                submission(
                    "involvement.opened",
                    "2001-01-02T09:00:00Z",
                    json!({"role": "case_manager"}),
                ),
                submission(
                    "involvement.closed",
                    "2001-02-01T09:00:00Z",
                    json!({"role": "case_manager"}),
                ),
            ],
        )
        .await
        .unwrap();
    let began = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    journeys
        .record(
            &prison,
            &[submission(
                "identifier.added",
                &chrono::Utc::now().to_rfc3339(),
                json!({"identifier": {"type": "probation_case", "value": "PR-99"}}),
            )],
        )
        .await
        .unwrap();
    let schedule = travelmap_projections::retention::Schedule::from_config(
        &std::collections::BTreeMap::from([("identity".to_owned(), 1)]),
    )
    .unwrap();
    let (report, ran) = travelmap::retention::run(
        &journeys,
        &store.audit(),
        None,
        &schedule,
        began,
        std::time::Duration::from_secs(10),
        travelmap::commands::RETENTION_ACTION,
    )
    .await;
    ran.unwrap();
    assert!(report.done.is_empty(), "{report:?}");
    let history = journeys.history(client, None).await.unwrap();
    assert!(
        history.iter().all(|event| !event.personal.is_erased()),
        "{history:?}"
    );
    store.close().await;
}

/// A key in force that sealed nothing (a new client's keys are made with its first request's
/// digests, and that request may then be refused) holds nothing to shred: a retention run
/// neither destroys it nor records a shredding of data never recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_sealed_nothing_is_not_recorded_as_shredded() {
    use travelmap_domain::personal::Category;
    use travelmap_domain::{ClientId, EventDraft, EventId, JourneyEvent, Provenance};
    let dir = tempfile::tempdir().unwrap();
    let (store, journeys) = embedded_journeys(dir.path()).await;
    let client = ClientId(Uuid::new_v4());
    let prison = Provenance {
        agency: "prison-opava".into(),
        credential: "prison-system".into(),
    };
    let submission = |event_type: &str, data: Value, expected_version: Option<u64>| {
        travelmap_service::Submission {
            draft: EventDraft {
                id: EventId(Uuid::new_v4()),
                client_id: client,
                occurred_at: "2001-01-03T09:00:00Z".parse().unwrap(),
                actor: None,
                event: JourneyEvent::decode(event_type, 1, &data).unwrap(),
            },
            expected_version,
        }
    };
    let refused = journeys
        .record(
            &prison,
            &[submission(
                "need.assessed",
                json!({"area": "housing", "status": "in_progress", "note": "never recorded"}),
                Some(5),
            )],
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    journeys
        .record(
            &prison,
            &[
                submission(
                    "client.registered",
                    json!({"identifiers": [{"type": "prison_number", "value": "OP-2001-8"}]}),
                    None,
                ),
                submission("involvement.opened", json!({"role": "case_manager"}), None),
                submission("involvement.closed", json!({"role": "case_manager"}), None),
            ],
        )
        .await
        .unwrap();
    assert!(
        journeys
            .live_categories(client)
            .await
            .unwrap()
            .contains(&Category::Needs),
        "the refused request's key is there (what this test is about)"
    );
    let schedule = travelmap_projections::retention::Schedule::from_config(
        &std::collections::BTreeMap::from([("needs".to_owned(), 1)]),
    )
    .unwrap();
    let (report, ran) = travelmap::retention::run(
        &journeys,
        &store.audit(),
        None,
        &schedule,
        chrono::Utc::now(),
        std::time::Duration::from_secs(10),
        travelmap::commands::RETENTION_ACTION,
    )
    .await;
    ran.unwrap();
    assert_eq!(report.clients, 1, "the client was decided: {report:?}");
    assert!(report.done.is_empty(), "{report:?}");
    let history = journeys.history(client, None).await.unwrap();
    assert!(
        history
            .iter()
            .all(|event| event.draft.event.event_type() != "retention.applied"),
        "{history:?}"
    );
    store.close().await;
}

/// A shredding whose entry the trail refuses is done all the same (the keys are gone) and no
/// later run finds the client due again: the entry is written once the trail takes entries
/// again, rather than lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shredding_the_trail_refused_is_audited_once_it_takes_entries_again() {
    let schedule = travelmap_projections::retention::Schedule::from_config(
        &std::collections::BTreeMap::from([("needs".to_owned(), 2)]),
    )
    .unwrap();
    // Recorded before the schedule runs, and the trail made to refuse entries before it does.
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    for (event_type, at, data) in [
        (
            "involvement.opened",
            "2019-01-02T09:00:00+01:00",
            json!({"role": "mentor"}),
        ),
        (
            "need.assessed",
            "2019-02-01T09:00:00+01:00",
            json!({"area": "addiction", "status": "in_progress", "note": NOTE}),
        ),
        (
            "involvement.closed",
            "2020-01-02T09:00:00+01:00",
            json!({"role": "mentor"}),
        ),
    ] {
        let answer = app
            .post_event(NGO_WRITER, &event(client, event_type, at, data))
            .await;
        assert_eq!(answer.status(), StatusCode::CREATED);
    }
    let data_dir = app.stop().await;
    let trail = RefusingTrail::start_in(data_dir.path());
    let app = spawn_app_with_retention_in(&Backend::Embedded, data_dir, schedule).await;
    // Read from the log's file: a read through the service needs the trail too.
    let log = rusqlite::Connection::open(app.data_dir.path().join("events.sqlite")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let shredded: i64 = log
            .query_row(
                "SELECT count(*) FROM events WHERE event_type = 'retention.applied'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        if shredded > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never shredded");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(log);
    // Longer than the run retries the entry itself: from then on it is the deferred entries'.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    trail.takes_entries_again();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let audited = app
            .trail_of(client)
            .await
            .into_iter()
            .any(|entry| entry["operation"] == "erasure" && entry["action"] == "retention run");
        if audited {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shredding's deferred entry never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    app.stop().await;
}
