//! The OpenAPI document as a contract: every answer the server gives to a bad request is one the
//! document lists for that operation, and the limits the server enforces are stated in it, so
//! that a client generated from the document is not surprised.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

/// A concrete URL path for a documented path template.
fn concrete(template: &str) -> String {
    template
        .replace("{client_id}", &Uuid::new_v4().to_string())
        .replace("{id}", &Uuid::new_v4().to_string())
        .replace("{agency}", "prison-opava")
        .replace("{code}", "not_found")
}

fn documented(doc: &Value, template: &str, method: &str, status: StatusCode) -> bool {
    doc["paths"][template][method]["responses"][status.as_str()].is_object()
}

/// Every documented operation, as (path template, method).
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut operations = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item[method].is_object() {
                operations.push((template.clone(), method.to_owned()));
            }
        }
    }
    operations
}

/// Sends requests that every operation must refuse the same way (no key; a body that is not
/// declared as JSON, is not JSON, or is too large) and checks each answer is a problem document
/// whose status the document lists for that operation.
#[tokio::test]
async fn every_refusal_of_a_malformed_request_is_documented() {
    let app = spawn_app().await;
    let doc = app.get_ok("/openapi.json", ADMIN).await;
    let operations = operations(&doc);
    assert!(operations.len() > 20, "{} operations", operations.len());
    let mut checked_bodies = 0;
    for (template, method) in &operations {
        let operation = &doc["paths"][template][method];
        let url = app.url(&concrete(template));
        let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let request = || {
            app.http
                .request(verb.clone(), &url)
                .header("x-purpose", "case_management")
        };

        if operation["security"].is_array() {
            let response = request().send().await.unwrap();
            assert!(
                documented(&doc, template, method, response.status()),
                "{method} {template} without a key answered {}, which is not documented",
                response.status()
            );
            expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        }

        if operation["requestBody"].is_object() {
            checked_bodies += 1;
            let oversize = format!("{{\"reason\": \"{}\"}}", "x".repeat(1024 * 1024));
            for (content_type, body, status, code) in [
                (
                    "text/plain",
                    "hello".to_owned(),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                ),
                (
                    "application/json",
                    "{\"reason\": ".to_owned(),
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                ),
                (
                    "application/json",
                    oversize,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                ),
            ] {
                // The data-protection decisions check the role before the body (a refused
                // caller is logged whatever it sent), so they are asked by the one role that
                // may make them.
                let key =
                    if template.contains("/personal-data") || template.contains("/restriction") {
                        DPO
                    } else {
                        ADMIN
                    };
                let response = request()
                    .bearer_auth(key)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(
                    documented(&doc, template, method, response.status()),
                    "{method} {template} answered {} to a {code} body, which is not documented",
                    response.status()
                );
                expect_problem(response, status, code).await;
            }
        }
    }
    // Events, batches, the three data-protection decisions and webhook registration.
    assert!(
        checked_bodies >= 6,
        "{checked_bodies} operations take a body"
    );
}

/// Whether the operation declares a header parameter of that name.
fn declares_header(operation: &Value, name: &str) -> bool {
    operation["parameters"]
        .as_array()
        .is_some_and(|parameters| {
            parameters.iter().any(|parameter| {
                parameter["in"] == "header"
                    && parameter["name"]
                        .as_str()
                        .is_some_and(|declared| declared.eq_ignore_ascii_case(name))
            })
        })
}

/// Reads send what the document asks of them: every read that refuses a missing `X-Purpose`
/// declares the header, and an unknown query parameter is answered as the document says.
#[tokio::test]
async fn every_read_declares_the_headers_and_answers_it_needs() {
    let app = spawn_app().await;
    let doc = app.get_ok("/openapi.json", ADMIN).await;
    let mut needing_purpose = 0;
    for (template, method) in operations(&doc) {
        if method != "get" {
            continue;
        }
        let operation = &doc["paths"][&template]["get"];
        let url = app.url(&concrete(&template));
        for key in [ADMIN, AUDITOR, COORDINATOR] {
            let response = app.http.get(&url).bearer_auth(key).send().await.unwrap();
            if response.status() == StatusCode::BAD_REQUEST {
                let problem: Value = response.json().await.unwrap();
                if problem["code"] == "purpose_required" {
                    needing_purpose += 1;
                    assert!(
                        declares_header(operation, "X-Purpose"),
                        "GET {template} requires X-Purpose but does not declare it"
                    );
                }
            }
        }
        let response = app
            .http
            .get(format!("{url}?no_such_parameter=1"))
            .bearer_auth(ADMIN)
            .header("x-purpose", "case_management")
            .send()
            .await
            .unwrap();
        assert!(
            documented(&doc, &template, "get", response.status()),
            "GET {template} answered {} to an unknown parameter, which is not documented",
            response.status()
        );
    }
    assert!(
        needing_purpose >= 8,
        "{needing_purpose} reads need a purpose"
    );
}

/// Positions and audit sequence numbers are stored as signed 64-bit integers: a larger one is
/// refused at once as a malformed parameter (it used to fail inside the store, or be waited for
/// in vain), and the document says where the range ends.
#[tokio::test]
async fn positions_past_the_largest_are_refused_as_parameters() {
    let app = spawn_app().await;
    let client = Uuid::new_v4();
    let too_large = i64::MAX as u64 + 1;
    for (path, key, purpose, field) in [
        (
            format!("/v1/events?after={too_large}"),
            AUDITOR,
            "audit",
            "after",
        ),
        (
            format!("/v1/audit/entries?after={too_large}"),
            AUDITOR,
            "audit",
            "after",
        ),
        (
            format!("/v1/clients/{client}/travel-map?min_position={too_large}"),
            AUDITOR,
            "audit",
            "min_position",
        ),
        (
            format!("/v1/caseloads?min_position={too_large}"),
            COORDINATOR,
            "case_management",
            "min_position",
        ),
        (
            format!("/v1/alerts?min_position={too_large}"),
            COORDINATOR,
            "case_management",
            "min_position",
        ),
        (
            format!("/v1/subscriptions/feed?after={too_large}"),
            PRISON_WRITER,
            "case_management",
            "after",
        ),
    ] {
        let started = std::time::Instant::now();
        let response = app.get_for(&path, key, purpose).await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
        assert_eq!(problem["field"], field, "{path}: {problem}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{path} waited {:?} before refusing",
            started.elapsed()
        );
    }
    // The largest position itself is read as a position, and refused as one past the end of
    // the feed, which no reader was ever sent.
    let response = app
        .get(&format!("/v1/events?after={}", i64::MAX), AUDITOR)
        .await;
    let problem = expect_problem(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(problem["field"], "after");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("past the end of the feed"),
        "{problem}"
    );
}

/// A path segment that is not UTF-8 once decoded is refused in the one error format, on every
/// route that takes one.
#[tokio::test]
async fn a_path_segment_that_is_not_text_is_a_problem() {
    let app = spawn_app().await;
    for (path, key, field) in [
        ("/v1/agencies/%FF/caseload", COORDINATOR, "agency"),
        ("/v1/clients/%FF/travel-map", AUDITOR, "client_id"),
        ("/problems/%FF", AUDITOR, "code"),
    ] {
        let response = app.get(path, key).await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
        assert_eq!(problem["field"], field, "{path}");
    }
    // Nor is a query value: decoded as it is, `%ff` and `%fe` would both read as U+FFFD.
    for query in [
        "identifier=prison_number:%FF",
        "identifier=prison_number:%FE",
    ] {
        let response = app.get(&format!("/v1/clients?{query}"), AUDITOR).await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
        assert_eq!(problem["field"], "identifier", "{query}");
    }
    app.stop().await;
}

/// The limits the server enforces on parameters and bodies are stated in the document.
#[tokio::test]
async fn the_document_states_the_limits_the_server_enforces() {
    let app = spawn_app().await;
    let doc = app.get_ok("/openapi.json", ADMIN).await;
    let parameter = |template: &str, name: &str| -> Value {
        doc["paths"][template]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == name)
            .unwrap_or_else(|| panic!("{template} documents no {name}"))
            .clone()
    };
    for template in [
        "/v1/events",
        "/v1/audit/entries",
        "/v1/subscriptions/webhooks/{id}/deliveries",
    ] {
        let limit = parameter(template, "limit");
        assert_eq!(limit["in"], "query", "{template}: {limit}");
        assert_eq!(limit["schema"]["minimum"], 1, "{template}: {limit}");
        assert_eq!(limit["schema"]["maximum"], 1000, "{template}: {limit}");
    }
    // Out of the stated range, the server refuses it.
    for path in ["/v1/events?limit=0", "/v1/audit/entries?limit=1001"] {
        let response = app.get_for(path, AUDITOR, "audit").await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
        assert_eq!(problem["field"], "limit", "{path}: {problem}");
    }
    for (template, name) in [
        ("/v1/events", "after"),
        ("/v1/audit/entries", "after"),
        ("/v1/subscriptions/feed", "after"),
        ("/v1/clients/{client_id}/travel-map", "min_position"),
        ("/v1/caseloads", "min_position"),
        ("/v1/agencies/{agency}/caseload", "min_position"),
        ("/v1/alerts", "min_position"),
    ] {
        let position = parameter(template, name);
        assert_eq!(position["schema"]["maximum"], json!(i64::MAX), "{position}");
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["BatchRequest"]["properties"]["events"]["minItems"],
        1
    );
    assert_eq!(
        schemas["BatchRequest"]["properties"]["events"]["maxItems"],
        1000
    );
    assert_eq!(
        schemas["DecisionRequest"]["properties"]["reason"]["minLength"],
        1
    );
    // An event request is one of a schema per type that agencies post (the service records the
    // data-protection decisions itself), chosen by `type`, whose `data` is that type's schema.
    let request = &schemas["EventRequest"];
    let mapping = request["discriminator"]["mapping"].as_object().unwrap();
    assert_eq!(request["discriminator"]["propertyName"], "type");
    assert_eq!(request["oneOf"].as_array().unwrap().len(), mapping.len());
    assert!(mapping.contains_key("client.released") && mapping.contains_key("job.placed"));
    assert!(!mapping.contains_key("personal_data.erased"));
    let catalogue = app.get_ok("/v1/event-types", ADMIN).await;
    let posted = catalogue["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|info| {
            info["posted_by"]
                .as_array()
                .is_some_and(|kinds| !kinds.is_empty())
        })
        .count();
    assert_eq!(mapping.len(), posted);
    let released = &schemas["EventRequest.client.released"];
    assert_eq!(
        mapping["client.released"],
        "#/components/schemas/EventRequest.client.released"
    );
    assert_eq!(
        released["properties"]["type"]["enum"],
        json!(["client.released"])
    );
    assert_eq!(
        released["properties"]["data"]["$ref"],
        "#/components/schemas/EventData.client.released"
    );
    assert!(
        schemas["EventData.client.released"]["properties"]["release_kind"].is_object(),
        "{}",
        schemas["EventData.client.released"]
    );
    let newest = catalogue["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|info| info["schema_version"].as_u64().unwrap())
        .max()
        .unwrap();
    let versions: Vec<u64> = (1..=newest).collect();
    assert_eq!(
        released["properties"]["schema_version"]["enum"],
        json!(versions)
    );
    assert_eq!(
        schemas["WebhookRequest"]["properties"]["purpose"]["enum"],
        json!(["case_management", "supervision", "service_delivery", null])
    );
    assert_eq!(parameter("/v1/clients", "identifier")["required"], true);
    let patterns = &schemas["WebhookRequest"]["properties"]["types"]["items"]["enum"];
    assert!(
        patterns
            .as_array()
            .is_some_and(|patterns| patterns.contains(&json!("job.*"))
                && patterns.contains(&json!("personal_data.erased"))),
        "{patterns}"
    );
    // Every listed pattern is taken, and those a webhook would never deliver are neither
    // listed nor taken.
    let url = "https://case-system.example/hooks";
    for pattern in patterns.as_array().unwrap() {
        let body = json!({"url": url, "types": [pattern]});
        let response = app
            .post("/v1/subscriptions/webhooks", PROBATION_WRITER, &body)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{pattern}");
        // Deleted again: an agency may have only so many.
        let webhook: Value = response.json().await.unwrap();
        let path = format!(
            "/v1/subscriptions/webhooks/{}",
            webhook["id"].as_str().unwrap()
        );
        let deleted = app.delete(&path, PROBATION_WRITER, &json!({})).await;
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    }
    for never in [
        "processing.restricted",
        "restriction.lifted",
        "processing.*",
    ] {
        assert!(!patterns.as_array().unwrap().contains(&json!(never)));
        let body = json!({"url": url, "types": [never]});
        let problem = expect_problem(
            app.post("/v1/subscriptions/webhooks", PROBATION_WRITER, &body)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], "types[0]");
    }
}

/// Each read's `X-Purpose` lists exactly the purposes it takes: one outside the list is refused
/// whoever states it (as a purpose, to those whose roles reach the read), and one inside it is
/// taken from someone.
#[tokio::test]
async fn each_read_lists_the_purposes_it_takes() {
    let app = spawn_app().await;
    let doc = app.get_ok("/openapi.json", ADMIN).await;
    let every: Vec<String> = [
        "case_management",
        "supervision",
        "service_delivery",
        "audit",
        "statistics",
        "subject_access",
        "emergency",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut checked = 0;
    for (template, method) in operations(&doc) {
        let operation = &doc["paths"][&template][&method];
        let Some(listed) = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|parameter| parameter["in"] == "header" && parameter["name"] == "X-Purpose")
            .and_then(|parameter| parameter["schema"]["enum"].as_array())
        else {
            continue;
        };
        if method != "get" || template == "/v1/subscriptions/feed" {
            continue;
        }
        checked += 1;
        let url = app.url(&concrete(&template));
        for purpose in &every {
            let mut refusals = Vec::new();
            for key in [ADMIN, AUDITOR, DPO, COORDINATOR] {
                let response = app
                    .http
                    .get(&url)
                    .bearer_auth(key)
                    .header("x-purpose", purpose)
                    .header("x-justification", "checking the contract")
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap_or_default();
                refusals.push(
                    status == StatusCode::BAD_REQUEST
                        && body["code"] == "purpose_required"
                        && body["field"] == "X-Purpose",
                );
                if !listed.contains(&Value::from(purpose.as_str())) {
                    assert!(
                        !status.is_success(),
                        "GET {template} took `{purpose}`, which it does not list"
                    );
                }
            }
            if listed.contains(&Value::from(purpose.as_str())) {
                assert!(
                    refusals.iter().any(|refused| !refused),
                    "GET {template} lists `{purpose}` but refuses it from everyone"
                );
            } else {
                // Those without the role are refused for it first.
                assert!(
                    refusals.iter().any(|refused| *refused),
                    "GET {template} does not list `{purpose}` but does not refuse it as a purpose"
                );
            }
        }
    }
    assert!(checked >= 10, "{checked} reads list their purposes");
    app.stop().await;
}
