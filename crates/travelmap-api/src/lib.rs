//! The Travelmap v1 HTTP API: routes, wire types, authentication, RFC 9457 errors and the
//! OpenAPI document generated from the handlers.
//!
//! This is the only crate that knows axum and the wire format. It turns requests into calls on
//! [`travelmap_service::Journeys`] and results into responses; it holds no business rules.

pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod jwt;
pub mod routes;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use travelmap_service::Journeys;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use auth::{Authenticator, Caller, Credential, Role};
pub use error::{ApiError, Code};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub journeys: Arc<Journeys>,
    pub authenticator: Arc<Authenticator>,
    /// Where every operation on personal data is logged.
    pub audit: Arc<dyn travelmap_store::AuditLog>,
    /// How long a break-glass grant lasts.
    pub break_glass: std::time::Duration,
    /// Signs the audit trail's checkpoints.
    pub checkpoint_key: Arc<ed25519_dalek::SigningKey>,
    /// When each category of personal data is due for shredding (for subject access reports).
    pub retention: travelmap_projections::retention::Schedule,
    /// Case files, caseloads and alerts.
    pub coordination: Arc<travelmap_service::coordination::Coordination>,
    /// Reads the head of the feed once for every live subscriber.
    pub hub: Arc<travelmap_service::subscriptions::FeedHub>,
    /// Turns true when the server begins to shut down: live streams end then, or a graceful
    /// shutdown would wait for them forever.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Webhook registrations and their delivery logs.
    pub webhooks: Arc<dyn travelmap_store::WebhookStore>,
    /// The addresses webhook receivers may be at; registrations naming another are refused.
    pub webhook_destinations: travelmap_webhooks::Destinations,
    /// The clients each live-feed recipient has lately been named for in the audit trail.
    pub named: Arc<routes::subscriptions::NamedRecipients>,
    /// Audit entries of committed writes still waiting for the trail; drained when the service
    /// stops.
    pub deferred: Arc<audit::Deferred>,
    /// The background tasks, as `GET /readyz` reports them.
    pub tasks: Arc<Vec<travelmap_service::health::Watched>>,
    /// Since when the readiness check has seen each task behind without moving.
    pub stalls: Arc<travelmap_service::health::Stalls>,
    /// Writes that run on after their caller hung up (see [`finish_writes`]): a stopping
    /// server waits for them before it closes the store, or a decision already carried out (an
    /// erasure) could be cut off from its record or its entry, and a write refused half-way.
    pub writes: Writes,
}

/// The writes under way (see [`finish_writes`]).
#[derive(Clone, Default)]
pub struct Writes {
    tracker: tokio_util::task::TaskTracker,
    cut_off: tokio_util::sync::CancellationToken,
}

impl Writes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the reading of every write's body still being sent, with an error, and of those to
    /// come: a stopping server that has given up on its open connections must not wait for
    /// bodies that will never arrive. A write whose body had arrived goes on.
    pub fn cut_off_bodies(&self) {
        self.cut_off.cancel();
    }

    /// Takes no more writes; [`Self::wait`] then returns once those under way have ended.
    pub fn close(&self) {
        self.tracker.close();
    }

    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// How many writes are under way.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

/// How long a break-glass grant lasts unless configured otherwise.
pub const DEFAULT_BREAK_GLASS: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// The OpenAPI document, generated from the handlers and wire types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Travelmap API",
        description = "Journey events of people leaving prison, recorded by the agencies that work with them, and the travel maps projected from them. Errors are RFC 9457 problem details with a stable `code`. Besides the answers each operation lists: a path that is not listed is answered `404 not_found`, and a method a listed path does not take `405 method_not_allowed` with `Allow` naming those it does.",
    ),
    paths(
        routes::events::post_event,
        routes::events::post_batch,
        routes::events::feed,
        routes::clients::history,
        routes::clients::travel_map,
        routes::clients::search,
        routes::audit::client_entries,
        routes::audit::entries,
        routes::audit::checkpoint,
        routes::audit::break_glass,
        routes::audit::access_changes,
        routes::protection::erase,
        routes::protection::restrict,
        routes::protection::lift_restriction,
        routes::protection::subject_access,
        routes::statistics::outcomes,
        routes::coordination::caseloads,
        routes::coordination::agency_caseload,
        routes::coordination::alerts,
        routes::subscriptions::feed,
        routes::webhooks::register,
        routes::webhooks::list,
        routes::webhooks::get,
        routes::webhooks::delete,
        routes::webhooks::resume,
        routes::webhooks::deliveries,
        routes::meta::event_types,
        routes::meta::health,
        routes::meta::readiness,
        routes::meta::openapi,
        routes::meta::problem_type,
    ),
    // The live feed's alert messages travel inside `text/event-stream`, which no response body
    // schema names; listed here so clients can still generate the type.
    components(schemas(routes::subscriptions::AlertMessage)),
    modifiers(
        &BearerAuth,
        &EventDataSchemas,
        &AcceptedValues,
        &BodyRejections,
        &CommonAnswers
    ),
    tags(
        (name = "events", description = "Recording journey events and reading the global feed"),
        (name = "clients", description = "Histories, travel maps and identifier look-up"),
        (name = "audit", description = "The audit trail of every operation on personal data"),
        (name = "data protection", description = "Erasure, restriction of processing and subject access (the data-protection officer's)"),
        (name = "statistics", description = "Aggregate outcome statistics, with small counts suppressed"),
        (name = "coordination", description = "Caseloads, agencies' active clients and the alerts coordinators act on"),
        (name = "subscriptions", description = "The live feed for agency systems: server-sent events of journey events and alerts"),
        (name = "webhooks", description = "Subscriptions that POST the events an agency may know of to its URL, signed, retried and logged"),
        (name = "catalogue", description = "The event types and their schemas"),
        (name = "meta", description = "Health, readiness, this document, problem types"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Adds the `data` schema of every event type as an `EventData.<type>` component: the same
/// JSON Schemas the server validates with and `GET /v1/event-types` publishes.
struct EventDataSchemas;

impl Modify for EventDataSchemas {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for info in travelmap_domain::catalogue::event_types() {
            let mut schema = info.data.clone();
            if let Some(object) = schema.as_object_mut() {
                object.remove("$schema");
            }
            match serde_json::from_value(schema) {
                Ok(schema) => {
                    components
                        .schemas
                        .insert(format!("EventData.{}", info.event_type), schema);
                }
                Err(error) => {
                    tracing::error!(event_type = info.event_type, %error, "event schema left out of OpenAPI")
                }
            }
        }
    }
}

/// States the values the server accepts where the derived schemas say only "string" or
/// "object": an event's `type` (the catalogue's types that some agency may post; the service
/// records the others itself) with the `data` that goes with it, and its `schema_version`, and a
/// webhook's types or families of them (`job.*`) and purpose. They come from the same lists the
/// server checks against, so they cannot drift.
struct AcceptedValues;

impl Modify for AcceptedValues {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let catalogue = travelmap_domain::catalogue::event_types();
        let posted: Vec<&str> = catalogue
            .iter()
            .filter(|info| !info.posted_by.is_empty())
            .map(|info| info.event_type)
            .collect();
        let mut patterns: Vec<String> = catalogue
            .iter()
            .map(|info| info.event_type.to_owned())
            .collect();
        patterns.extend(
            catalogue
                .iter()
                .filter_map(|info| info.event_type.split_once('.'))
                .map(|(family, _)| format!("{family}.*")),
        );
        patterns
            .retain(|pattern| travelmap_service::subscriptions::reaches_agencies_pattern(pattern));
        patterns.sort();
        patterns.dedup();
        // Every schema version up to the newest of any type (older ones are upcast).
        let newest = catalogue
            .iter()
            .map(|info| info.schema_version)
            .max()
            .unwrap_or(1);
        let versions: Vec<serde_json::Value> = (1..=newest).map(serde_json::Value::from).collect();
        set_enum(
            &mut components.schemas,
            "EventRequest",
            "schema_version",
            &versions,
        );
        one_request_per_type(&mut components.schemas, &posted);
        set_enum(
            &mut components.schemas,
            "WebhookRequest",
            "types",
            &patterns,
        );
        // A webhook's purpose may be left out (or null) for `case_management`.
        let mut purposes: Vec<serde_json::Value> =
            travelmap_webhooks::registration::ALLOWED_PURPOSES
                .split(", ")
                .map(serde_json::Value::from)
                .collect();
        purposes.push(serde_json::Value::Null);
        set_enum(
            &mut components.schemas,
            "WebhookRequest",
            "purpose",
            &purposes,
        );
        stated_purposes(openapi);
    }
}

/// Lists in each operation's `X-Purpose` header the purposes it takes: the audit trail's, the
/// subject access report's and the statistics report's own (the lists their handlers check),
/// a webhook's purposes on its registration, and every purpose elsewhere.
fn stated_purposes(openapi: &mut utoipa::openapi::OpenApi) {
    use travelmap_domain::payloads::Purpose;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    // The purposes, in the catalogue's order, that `takes` accepts.
    let taking = |takes: &dyn Fn(Purpose) -> bool| -> Vec<serde_json::Value> {
        Purpose::ALL
            .into_iter()
            .filter(|purpose| takes(*purpose))
            .map(|purpose| purpose.as_str().into())
            .collect()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        let taken = if path.starts_with("/v1/audit/") {
            taking(&|purpose| audit::TRAIL_PURPOSES.contains(&purpose))
        } else if path.ends_with("/subject-access") {
            taking(&|purpose| audit::SUBJECT_ACCESS_PURPOSES.contains(&purpose))
        } else if path.starts_with("/v1/statistics/") {
            taking(&|purpose| audit::STATISTICS_PURPOSES.contains(&purpose))
        } else if path.starts_with("/v1/subscriptions/webhooks") {
            taking(&travelmap_webhooks::registration::purpose_allowed)
        } else if path == "/v1/subscriptions/feed" {
            // By role (`routes::subscriptions::feed_purposes`): every purpose but `emergency`.
            taking(&|purpose| purpose != Purpose::Emergency)
        } else if let Some(reach) = audit::reach_of(path) {
            taking(&|purpose| audit::fits(purpose, reach))
        } else {
            taking(&|_| true)
        };
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                if parameter.name == "X-Purpose" {
                    parameter.schema = Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some(taken.clone()))
                            .into(),
                    );
                }
            }
        }
    }
}

/// Makes `EventRequest` the choice, by `type`, between one request schema per event type whose
/// `data` is that type's `EventData.<type>` component, so that a client generated from the
/// document knows which data goes with which type (the derived schema says only "object").
fn one_request_per_type(
    schemas: &mut std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::Schema>,
    >,
    types: &[&str],
) {
    use utoipa::openapi::schema::{Discriminator, OneOf};
    use utoipa::openapi::{Ref, RefOr, Schema};
    let Some(RefOr::T(Schema::Object(request))) = schemas.get("EventRequest").cloned() else {
        return;
    };
    let mut choice = OneOf::new();
    choice.description = request.description.clone();
    let mut mapping = std::collections::BTreeMap::new();
    for event_type in types {
        let data = format!("EventData.{event_type}");
        if !schemas.contains_key(&data) {
            continue;
        }
        let mut variant = request.clone();
        variant.title = Some(format!("`{event_type}` event"));
        if let Some(RefOr::T(Schema::Object(name))) = variant.properties.get_mut("type") {
            name.enum_values = Some(vec![serde_json::Value::from(*event_type)]);
        }
        variant
            .properties
            .insert("data".to_owned(), Ref::from_schema_name(data).into());
        let component = format!("EventRequest.{event_type}");
        schemas.insert(component.clone(), RefOr::T(Schema::Object(variant)));
        choice
            .items
            .push(Ref::from_schema_name(component.clone()).into());
        mapping.insert(
            (*event_type).to_owned(),
            format!("#/components/schemas/{component}"),
        );
    }
    choice.discriminator = Some(Discriminator::with_mapping("type", mapping));
    schemas.insert("EventRequest".to_owned(), RefOr::T(Schema::OneOf(choice)));
}

/// Lists the values a string property (or the items of an array property) of a component may
/// take.
fn set_enum<V: Clone + Into<serde_json::Value>>(
    schemas: &mut std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::Schema>,
    >,
    component: &str,
    property: &str,
    values: &[V],
) {
    use utoipa::openapi::schema::ArrayItems;
    use utoipa::openapi::{RefOr, Schema};
    let values = values.iter().cloned().map(Into::into).collect();
    let Some(RefOr::T(Schema::Object(object))) = schemas.get_mut(component) else {
        return;
    };
    match object.properties.get_mut(property) {
        Some(RefOr::T(Schema::Object(string))) => string.enum_values = Some(values),
        Some(RefOr::T(Schema::Array(array))) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items
                && let RefOr::T(Schema::Object(string)) = items.as_mut()
            {
                string.enum_values = Some(values);
            }
        }
        _ => {}
    }
}

/// Documents the answers of the JSON body extractor ([`extract::JsonBody`]) on every operation
/// that takes a body. One mechanism gives them, so one mechanism documents them: an operation
/// added later cannot leave them out, and one that describes them more closely keeps its words.
struct BodyRejections;

impl Modify for BodyRejections {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        const ANSWERS: [(&str, &str); 3] = [
            ("400", "The body is not JSON (malformed_json)"),
            ("413", "The body is over 1 MiB (payload_too_large)"),
            (
                "415",
                "The body is not declared as JSON with `Content-Type: application/json` (unsupported_media_type)",
            ),
        ];
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                if operation.request_body.is_none() {
                    continue;
                }
                for (status, description) in ANSWERS {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem_response(description).into());
                }
            }
        }
    }
}

/// The operations of a path, whatever their method.
fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// A response whose body is a problem document.
fn problem_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// Documents what every operation may answer whatever it does: `500 internal` for a fault of
/// the service, and, on those that use the store, `503 unavailable` with `Retry-After` while
/// the store cannot be reached. And where an operation reads `X-Purpose`, it reads
/// `X-Justification` too (logged with the request; required for `emergency`): one extractor
/// handles both for every operation, so one place documents them.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{Type, schema::ObjectBuilder};
        let problem = problem_response;
        // The catalogue and the service's own descriptions are served from memory.
        let uses_store = |path: &str| path.starts_with("/v1/") && path != "/v1/event-types";
        for (path, item) in openapi.paths.paths.iter_mut() {
            // Every operation but these reads the two headers (one extractor, `RequestContext`),
            // logs them with the request and refuses one sent twice or too long: the catalogue
            // and the webhook reads, which name events by id only, do not.
            let takes_no_context = |operation: &utoipa::openapi::path::Operation| {
                path == "/v1/event-types"
                    || (path.starts_with("/v1/subscriptions/webhooks")
                        && operation
                            .operation_id
                            .as_deref()
                            .is_some_and(|id| matches!(id, "list" | "get" | "deliveries")))
            };
            for operation in operations_mut(item) {
                if path.starts_with("/v1/") && !takes_no_context(operation) {
                    let parameters = operation.parameters.get_or_insert_with(Vec::new);
                    if !parameters.iter().any(|p| {
                        matches!(p.parameter_in, ParameterIn::Header)
                            && p.name.eq_ignore_ascii_case("X-Purpose")
                    }) {
                        parameters.push(
                            ParameterBuilder::new()
                                .name("X-Purpose")
                                .parameter_in(ParameterIn::Header)
                                .description(Some(
                                    "Optional here: why you act, logged with the request (a \
                                     value not among the read purposes is logged as `unlisted`; \
                                     sent once)",
                                ))
                                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                                .build(),
                        );
                    }
                }
                let responses = &mut operation.responses.responses;
                responses.entry("500".to_owned()).or_insert_with(|| {
                    problem("A fault of the service, logged with the request id (internal)").into()
                });
                if uses_store(path) {
                    responses.entry("503".to_owned()).or_insert_with(|| {
                        problem(
                            "The store cannot be reached or is restarting; retry after \
                             `Retry-After` seconds (unavailable)",
                        )
                        .into()
                    });
                }
                let Some(parameters) = operation.parameters.as_mut() else {
                    continue;
                };
                let is_header = |parameter: &utoipa::openapi::path::Parameter, name: &str| {
                    matches!(parameter.parameter_in, ParameterIn::Header)
                        && parameter.name.eq_ignore_ascii_case(name)
                };
                let reads_purpose = parameters.iter().any(|p| is_header(p, "X-Purpose"));
                let has_justification = parameters.iter().any(|p| is_header(p, "X-Justification"));
                // Declared by hand on some reads: the limit is stated on every one.
                for parameter in parameters.iter_mut() {
                    if is_header(parameter, "X-Justification") {
                        parameter.schema = Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .max_length(Some(audit::MAX_JUSTIFICATION_CHARS))
                                .into(),
                        );
                    }
                }
                if reads_purpose && !has_justification {
                    parameters.push(
                        ParameterBuilder::new()
                            .name("X-Justification")
                            .parameter_in(ParameterIn::Header)
                            .description(Some(
                                "A written reason, logged with the request (at most 2,000 \
                                 characters, sent once); required with `X-Purpose: emergency`",
                            ))
                            .schema(Some(
                                ObjectBuilder::new()
                                    .schema_type(Type::String)
                                    .max_length(Some(audit::MAX_JUSTIFICATION_CHARS)),
                            ))
                            .build(),
                    );
                }
            }
        }
    }
}

/// The operations, as method and route, whose OpenAPI description names no query parameter.
static TAKES_NO_QUERY: std::sync::LazyLock<std::collections::HashSet<(String, String)>> =
    std::sync::LazyLock::new(|| {
        use utoipa::openapi::path::{Operation, ParameterIn};
        let takes_query = |operation: &Operation| {
            operation
                .parameters
                .iter()
                .flatten()
                .any(|parameter| matches!(parameter.parameter_in, ParameterIn::Query))
        };
        let document = ApiDoc::openapi();
        let mut none = std::collections::HashSet::new();
        for (path, item) in &document.paths.paths {
            for (method, operation) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("PATCH", &item.patch),
                ("DELETE", &item.delete),
            ] {
                if operation
                    .as_ref()
                    .is_some_and(|operation| !takes_query(operation))
                {
                    none.insert((method.to_owned(), path.clone()));
                }
            }
        }
        none
    });

/// Refuses a query string sent to an endpoint that takes no query parameters, naming the first
/// parameter: ignoring it would answer something other than what was asked (a `dry_run` that
/// stores, an `as_of` that is not applied). Endpoints that take parameters refuse unknown ones
/// in their own extractor ([`extract::Query`]).
async fn refuse_unexpected_query(
    matched: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let first = request
        .uri()
        .query()
        .and_then(|query| form_urlencoded::parse(query.as_bytes()).next());
    // HEAD runs the GET handler (without sending its body), so it takes what GET takes.
    let method = match request.method().as_str() {
        "HEAD" => "GET",
        method => method,
    };
    if let Some((name, _)) = first
        && TAKES_NO_QUERY.contains(&(method.to_owned(), matched.as_str().to_owned()))
    {
        return ApiError::invalid_parameter(
            &name,
            format!("`{name}`: this endpoint takes no query parameters"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Runs a request that may write to its end even when its caller hangs up. Hyper drops a
/// request's handler when the connection closes: a write dropped while its entries were being
/// written would be refused by the log (its events are committed only once they are), and a
/// decision dropped after it was carried out would be left without its entry. Either way the
/// caller's retry is answered as it would have been. Reads are left to be dropped: one cut
/// short has returned nothing. Each write is spawned on `writes`, which a stopping server
/// waits on: the connection it came on may be long gone by then.
async fn finish_writes(
    axum::extract::State(writes): axum::extract::State<Writes>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let cut_off = writes.cut_off.clone();
    let request = request.map(|body| until_cut_off(body, cut_off));
    let span = tracing::Span::current();
    match writes
        .tracker
        .spawn(tracing::Instrument::instrument(next.run(request), span))
        .await
    {
        Ok(response) => response,
        Err(_) => ApiError::internal("a request handler panicked").into_response(),
    }
}

/// `body`, read as it comes until `cut_off` is cancelled, then ending with an error (the
/// request is then answered `503`, the service shutting down, and nothing is written).
fn until_cut_off(
    body: axum::body::Body,
    cut_off: tokio_util::sync::CancellationToken,
) -> axum::body::Body {
    use futures::StreamExt;
    let chunks = futures::stream::unfold(
        (body.into_data_stream(), Some(cut_off)),
        |(mut data, cut_off)| async move {
            // After the error, the body ends.
            let cut_off = cut_off?;
            tokio::select! {
                biased;
                chunk = data.next() => chunk.map(|chunk| (chunk, (data, Some(cut_off)))),
                () = cut_off.cancelled() => Some((
                    Err(axum::Error::new(extract::BodyCutOff)),
                    (data, None),
                )),
            }
        },
    );
    axum::body::Body::from_stream(chunks)
}

/// The application's router with its middleware: request ids, tracing, the body limit, and
/// problem-format answers for unknown routes and methods.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route(
            "/v1/events",
            post(routes::events::post_event).get(routes::events::feed),
        )
        .route("/v1/events/batch", post(routes::events::post_batch))
        .route("/v1/clients", get(routes::clients::search))
        .route(
            "/v1/clients/{client_id}/events",
            get(routes::clients::history),
        )
        .route(
            "/v1/clients/{client_id}/travel-map",
            get(routes::clients::travel_map),
        )
        .route(
            "/v1/audit/clients/{client_id}",
            get(routes::audit::client_entries),
        )
        .route(
            "/v1/clients/{client_id}/personal-data",
            delete(routes::protection::erase),
        )
        .route(
            "/v1/clients/{client_id}/restriction",
            post(routes::protection::restrict).delete(routes::protection::lift_restriction),
        )
        .route(
            "/v1/clients/{client_id}/subject-access",
            get(routes::protection::subject_access),
        )
        .route("/v1/statistics/outcomes", get(routes::statistics::outcomes))
        .route("/v1/caseloads", get(routes::coordination::caseloads))
        .route(
            "/v1/agencies/{agency}/caseload",
            get(routes::coordination::agency_caseload),
        )
        .route("/v1/alerts", get(routes::coordination::alerts))
        .route("/v1/subscriptions/feed", get(routes::subscriptions::feed))
        .route("/v1/audit/entries", get(routes::audit::entries))
        .route("/v1/audit/checkpoint", get(routes::audit::checkpoint))
        .route("/v1/audit/break-glass", get(routes::audit::break_glass))
        .route(
            "/v1/audit/access-changes",
            get(routes::audit::access_changes),
        )
        .route(
            "/v1/subscriptions/webhooks",
            post(routes::webhooks::register).get(routes::webhooks::list),
        )
        .route(
            "/v1/subscriptions/webhooks/{id}",
            get(routes::webhooks::get).delete(routes::webhooks::delete),
        )
        .route(
            "/v1/subscriptions/webhooks/{id}/resume",
            post(routes::webhooks::resume),
        )
        .route(
            "/v1/subscriptions/webhooks/{id}/deliveries",
            get(routes::webhooks::deliveries),
        )
        .route("/v1/event-types", get(routes::meta::event_types))
        .route("/healthz", get(routes::meta::health))
        .route("/readyz", get(routes::meta::readiness))
        .route("/openapi.json", get(routes::meta::openapi))
        .route("/problems/{code}", get(routes::meta::problem_type))
        // Before the handlers' own checks, so also before authentication: which parameters an
        // endpoint takes is public (the OpenAPI document).
        .route_layer(axum::middleware::from_fn(refuse_unexpected_query))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Code::MethodNotAllowed,
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.writes.clone(),
            finish_writes,
        ))
        .layer(axum::middleware::map_response(guarded_response))
        // A panic in a handler is a bug; the client still gets a problem document, not a
        // dropped connection.
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::internal("a request handler panicked").into_response()
            },
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default();
                // `credential` is filled in once the caller is authenticated (see `auth::Caller`).
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    // The path only: a query may carry personal data (an identifier searched
                    // for), which must not reach the logs.
                    path = %request.uri().path(),
                    request_id,
                    credential = tracing::field::Empty
                )
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // The id is the server's own, never the caller's: it names the request in the audit
        // trail, where a caller could otherwise forge one or reuse another request's (and a
        // header value may carry anything into the logs).
        .layer(axum::middleware::map_request(
            |mut request: axum::extract::Request| async move {
                request.headers_mut().remove("x-request-id");
                request
            },
        ))
        .with_state(state)
}

/// Headers every answer carries: nothing the service answers is to be kept by a cache (it is
/// personal data, or about it), no browser is to guess a type other than the one given, and a
/// page (the subject access report) runs no script and loads nothing, whatever text it shows.
async fn guarded_response(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{
        CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS,
    };
    let is_page = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/html"));
    let headers = response.headers_mut();
    // Replaced, not only added where missing: the live feed's stream comes with `no-cache`,
    // which lets a cache keep a copy.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if is_page {
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::post;
    use tower::ServiceExt;
    use utoipa::OpenApi;

    /// A router whose one route sets `done` after a pause, for every method.
    fn slow_route(done: Arc<AtomicBool>) -> Router {
        let handler = move || {
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                done.store(true, Ordering::SeqCst);
            }
        };
        Router::new()
            .route("/slow", post(handler.clone()).get(handler))
            .layer(axum::middleware::from_fn_with_state(
                super::Writes::new(),
                super::finish_writes,
            ))
    }

    async fn hang_up(router: Router, method: &str) {
        let request = Request::builder()
            .method(method)
            .uri("/slow")
            .body(Body::empty())
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_millis(5), router.oneshot(request)).await;
        assert!(answer.is_err(), "the caller hangs up before the answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    #[tokio::test]
    async fn a_write_runs_to_its_end_when_the_caller_hangs_up() {
        let done = Arc::new(AtomicBool::new(false));
        hang_up(slow_route(done.clone()), "POST").await;
        assert!(done.load(Ordering::SeqCst));
    }

    /// On the test's single-threaded runtime the write can only end while the test waits: a
    /// `wait` that did not know of it would return at once, before it ended.
    #[tokio::test]
    async fn a_stopping_server_can_wait_for_a_write_whose_caller_hung_up() {
        let done = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let handler = {
            let (done, gate) = (done.clone(), gate.clone());
            move || async move {
                let _pass = gate.acquire().await;
                done.store(true, Ordering::SeqCst);
            }
        };
        let writes = super::Writes::new();
        let router = Router::new().route("/write", post(handler)).layer(
            axum::middleware::from_fn_with_state(writes.clone(), super::finish_writes),
        );
        let request = Request::builder()
            .method("POST")
            .uri("/write")
            .body(Body::empty())
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_millis(5), router.oneshot(request)).await;
        assert!(answer.is_err(), "the caller hangs up before the answer");
        assert!(!done.load(Ordering::SeqCst), "the write is still running");
        gate.add_permits(1);
        writes.close();
        writes.wait().await;
        assert!(done.load(Ordering::SeqCst), "waited for until it ended");
    }

    /// A write whose body never arrives in full (a caller that stalled) ends once bodies are cut
    /// off, so a stopping server does not wait for it, and a caller still connected is told to
    /// retry (the service is shutting down), not that its body was bad.
    #[tokio::test]
    async fn a_write_whose_body_never_arrives_ends_once_bodies_are_cut_off() {
        let writes = super::Writes::new();
        let router = Router::new()
            .route(
                "/write",
                post(|body: super::extract::JsonBody| async move { body.0.to_string() }),
            )
            .layer(axum::middleware::from_fn_with_state(
                writes.clone(),
                super::finish_writes,
            ));
        // The first part of a body, and then nothing.
        let parts = futures::StreamExt::chain(
            futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from(
                "{\"partial\":",
            ))]),
            futures::stream::pending(),
        );
        let stalled = Request::builder()
            .method("POST")
            .uri("/write")
            .header("content-type", "application/json")
            .body(Body::from_stream(parts))
            .unwrap();
        let answer = tokio::spawn(router.oneshot(stalled));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(writes.len(), 1, "the write waits for its body");
        writes.cut_off_bodies();
        writes.close();
        tokio::time::timeout(Duration::from_secs(1), writes.wait())
            .await
            .expect("a body cut off ends its write");
        let answer = answer.await.unwrap().unwrap();
        assert_eq!(answer.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_read_is_dropped_with_its_caller() {
        let done = Arc::new(AtomicBool::new(false));
        hang_up(slow_route(done.clone()), "GET").await;
        assert!(!done.load(Ordering::SeqCst));
    }

    #[test]
    fn the_webhook_routes_are_documented() {
        let document = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let paths = &document["paths"];
        for (path, method) in [
            ("/v1/subscriptions/webhooks", "post"),
            ("/v1/subscriptions/webhooks", "get"),
            ("/v1/subscriptions/webhooks/{id}", "get"),
            ("/v1/subscriptions/webhooks/{id}", "delete"),
            ("/v1/subscriptions/webhooks/{id}/resume", "post"),
            ("/v1/subscriptions/webhooks/{id}/deliveries", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
        for schema in ["WebhookRequest", "Webhook", "WebhookList", "DeliveryLog"] {
            assert!(
                document["components"]["schemas"][schema].is_object(),
                "{schema}"
            );
        }
    }

    #[test]
    fn the_coordination_routes_and_the_live_feed_are_documented() {
        let document = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        for path in [
            "/v1/caseloads",
            "/v1/agencies/{agency}/caseload",
            "/v1/alerts",
            "/v1/subscriptions/feed",
        ] {
            assert!(document["paths"][path]["get"].is_object(), "{path}");
        }
        for schema in [
            "Caseloads",
            "AgencyCaseload",
            "AgencyCaseloadPage",
            "AlertList",
            "Alert",
            "AlertMessage",
        ] {
            assert!(
                document["components"]["schemas"][schema].is_object(),
                "{schema}"
            );
        }
    }

    #[test]
    fn each_read_lists_the_purposes_it_takes() {
        let document = serde_json::to_value(crate::ApiDoc::openapi()).unwrap();
        let taken = |path: &str, method: &str| -> Vec<String> {
            let parameters = document["paths"][path][method]["parameters"]
                .as_array()
                .unwrap();
            let purpose = parameters
                .iter()
                .find(|parameter| parameter["name"] == "X-Purpose")
                .unwrap_or_else(|| panic!("{method} {path} takes no X-Purpose"));
            serde_json::from_value(purpose["schema"]["enum"].clone()).unwrap()
        };
        assert_eq!(taken("/v1/statistics/outcomes", "get"), ["statistics"]);
        assert_eq!(
            taken("/v1/audit/entries", "get"),
            ["audit", "subject_access"]
        );
        assert_eq!(
            taken("/v1/clients/{client_id}/subject-access", "get"),
            ["subject_access"]
        );
        assert_eq!(taken("/v1/clients/{client_id}/travel-map", "get").len(), 6);
        for (standing, method) in [
            ("/v1/subscriptions/webhooks", "post"),
            ("/v1/subscriptions/feed", "get"),
        ] {
            assert!(!taken(standing, method).contains(&"emergency".to_owned()));
        }
    }

    #[test]
    fn the_actor_has_the_pattern_of_every_text() {
        let document = serde_json::to_value(crate::ApiDoc::openapi()).unwrap();
        let request = &document["components"]["schemas"]["EventRequest.client.released"];
        assert_eq!(
            request["properties"]["actor"]["pattern"],
            travelmap_domain::TEXT_PATTERN
        );
        assert_eq!(
            request["properties"]["occurred_at"]["pattern"],
            travelmap_domain::dates::DATE_TIME_PATTERN
        );
        assert_eq!(
            document["components"]["schemas"]["DecisionRequest"]["properties"]["reason"]["pattern"],
            travelmap_domain::TEXT_PATTERN
        );
    }

    #[test]
    fn every_event_data_schema_is_in_the_openapi_document_unchanged() {
        let document = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        for info in travelmap_domain::catalogue::event_types() {
            let mut expected = info.data.clone();
            expected.as_object_mut().unwrap().remove("$schema");
            let name = format!("EventData.{}", info.event_type);
            assert_eq!(document["components"]["schemas"][&name], expected, "{name}");
        }
    }
}
