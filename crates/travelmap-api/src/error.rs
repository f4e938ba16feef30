//! The one error type of the HTTP API and its wire form: RFC 9457 problem details
//! (`application/problem+json`) with a stable machine-readable `code`.
//!
//! Every failure a client can see goes through [`ApiError`], including rejections by extractors
//! and unknown routes, so clients parse one shape. Details of 5xx errors are logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use travelmap_domain::{field_path, journey};
use utoipa::ToSchema;

/// The stable error codes. Clients match on these, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// 400: the body is not well-formed JSON.
    MalformedJson,
    /// 400: a query or path parameter is malformed.
    InvalidParameter,
    PurposeRequired,
    /// 401: no bearer key, or one that matches no credential.
    Unauthorized,
    /// 403: the credential is valid but lacks the role for this operation.
    Forbidden,
    /// 404: no such resource (or route).
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: the event id was recorded before with different content.
    DuplicateConflict,
    /// 409: the client's stream is not at the `expected_version` the sender gave.
    VersionConflict,
    /// 403: processing of the client's data is restricted: readable only with purpose `audit` or
    /// `subject_access`.
    Restricted,
    /// 409: processing of the client's data is restricted: nothing but lifting the restriction
    /// is recorded.
    ClientRestricted,
    /// 409: the client's personal data was erased and the record is closed.
    ClientErased,
    /// 409: lifting a restriction that was never made.
    NotRestricted,
    /// 413: the request body is larger than 1 MiB.
    PayloadTooLarge,
    /// 415: the body is not declared as JSON.
    UnsupportedMediaType,
    /// 422: the event breaks its schema or a rule; `field` names the offending field.
    ValidationFailed,
    /// 422: the event's `type` is not in the catalogue.
    UnknownEventType,
    /// 422: a batch holds more than 1000 events.
    BatchTooLarge,
    /// 503: the service is briefly unable to answer (busy, or the projection is catching up).
    Unavailable,
    /// 500: an unexpected failure; details are in the server log under the request id.
    Internal,
}

impl Code {
    /// The one table from code to status and title.
    pub fn status_and_title(self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Code::MalformedJson => (S::BAD_REQUEST, "Malformed JSON"),
            Code::InvalidParameter => (S::BAD_REQUEST, "Invalid parameter"),
            Code::PurposeRequired => (S::BAD_REQUEST, "Purpose required"),
            Code::Unauthorized => (S::UNAUTHORIZED, "Unauthorized"),
            Code::Forbidden => (S::FORBIDDEN, "Forbidden"),
            Code::NotFound => (S::NOT_FOUND, "Not found"),
            Code::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "Method not allowed"),
            Code::DuplicateConflict => (S::CONFLICT, "Event id already used for other content"),
            Code::VersionConflict => (S::CONFLICT, "Stream version conflict"),
            Code::Restricted => (S::FORBIDDEN, "Processing restricted"),
            Code::ClientRestricted => (S::CONFLICT, "Processing restricted"),
            Code::ClientErased => (S::CONFLICT, "Client erased"),
            Code::NotRestricted => (S::CONFLICT, "Not restricted"),
            Code::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "Payload too large"),
            Code::UnsupportedMediaType => (S::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type"),
            Code::ValidationFailed => (S::UNPROCESSABLE_ENTITY, "Validation failed"),
            Code::UnknownEventType => (S::UNPROCESSABLE_ENTITY, "Unknown event type"),
            Code::BatchTooLarge => (S::UNPROCESSABLE_ENTITY, "Batch too large"),
            Code::Unavailable => (S::SERVICE_UNAVAILABLE, "Service unavailable"),
            Code::Internal => (S::INTERNAL_SERVER_ERROR, "Internal error"),
        }
    }

    /// What the code means and what to do about it, for `GET /problems/{code}`.
    pub fn meaning(self) -> &'static str {
        match self {
            Code::MalformedJson => {
                "The body is not JSON (or is cut short). Nothing was stored; fix the body and send it again."
            }
            Code::InvalidParameter => {
                "A query, path or header parameter is malformed, unknown, repeated or out of range; `field` names it."
            }
            Code::PurposeRequired => {
                "The read states no purpose in X-Purpose, or one this read (or the caller's role) does not take; `field` names the header."
            }
            Code::Unauthorized => "No key or token was given, or it is not valid.",
            Code::Forbidden => {
                "The credential may not do this: its role, its agency's kind, or need-to-know (no open involvement, consent or break-glass grant for the client)."
            }
            Code::NotFound => "No such route, client or resource.",
            Code::MethodNotAllowed => {
                "The route does not take this method; `Allow` lists those it takes."
            }
            Code::DuplicateConflict => {
                "The event id was already used, for other content or by another agency. Nothing was stored; choose a new id for new content."
            }
            Code::VersionConflict => {
                "expected_version is not the client's stream version (`current_version`). Nothing was stored; read the history and decide again."
            }
            Code::Restricted => {
                "Processing of the client's data is restricted: only an auditor or data-protection officer reading with X-Purpose audit or subject_access may read it."
            }
            Code::ClientRestricted => {
                "Processing of the client's data is restricted: nothing but lifting the restriction (or erasing) can be recorded."
            }
            Code::ClientErased => {
                "The client's personal data has been erased and the record is closed: nothing more can be recorded."
            }
            Code::NotRestricted => {
                "Processing of the client's data is not restricted: there is nothing to lift."
            }
            Code::PayloadTooLarge => {
                "The body is larger than 1 MiB. Nothing was stored; split a batch."
            }
            Code::UnsupportedMediaType => {
                "The body is not declared as application/json (or is compressed). Nothing was stored."
            }
            Code::ValidationFailed => {
                "The request is well-formed JSON but breaks a rule of the catalogue or the journey; `field` (and, in a batch, `index`) names it. Nothing was stored."
            }
            Code::UnknownEventType => {
                "The event type is not in the catalogue (GET /v1/event-types). Nothing was stored."
            }
            Code::BatchTooLarge => {
                "A batch holds more than 1000 events. Nothing was stored; split it."
            }
            Code::Unavailable => {
                "The store cannot be reached, or the service is busy or behind; retry after `Retry-After` seconds. A write's outcome may be unknown: retry it with the same id."
            }
            Code::Internal => "A fault of the service, logged with the request id.",
        }
    }

    pub fn as_str(self) -> &'static str {
        CODES
            .iter()
            .find(|(code, _)| *code == self)
            .map(|(_, name)| *name)
            .expect("every code is listed")
    }
}

/// Every code with its wire name, for documentation and `GET /problems/{code}`.
pub const CODES: &[(Code, &str)] = &[
    (Code::MalformedJson, "malformed_json"),
    (Code::InvalidParameter, "invalid_parameter"),
    (Code::PurposeRequired, "purpose_required"),
    (Code::Unauthorized, "unauthorized"),
    (Code::Forbidden, "forbidden"),
    (Code::NotFound, "not_found"),
    (Code::MethodNotAllowed, "method_not_allowed"),
    (Code::DuplicateConflict, "duplicate_conflict"),
    (Code::VersionConflict, "version_conflict"),
    (Code::Restricted, "restricted"),
    (Code::ClientRestricted, "client_restricted"),
    (Code::ClientErased, "client_erased"),
    (Code::NotRestricted, "not_restricted"),
    (Code::PayloadTooLarge, "payload_too_large"),
    (Code::UnsupportedMediaType, "unsupported_media_type"),
    (Code::ValidationFailed, "validation_failed"),
    (Code::UnknownEventType, "unknown_event_type"),
    (Code::BatchTooLarge, "batch_too_large"),
    (Code::Unavailable, "unavailable"),
    (Code::Internal, "internal"),
];

/// The problem-details body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type: `/problems/{code}`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// The stable machine-readable code.
    pub code: Code,
    /// For validation errors, the offending field as a dotted path, e.g. `data.release_kind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For batch requests, the index of the offending event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// For version conflicts, the client's current stream version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// The most characters of a problem's `field`.
const MAX_FIELD_CHARS: usize = 200;

/// The most characters of a quoted value a problem's `detail` repeats.
const QUOTED_CHARS: usize = 80;

/// `detail` with each value it quotes between backticks (as the refusals of the parsers and the
/// validators do) cut to [`QUOTED_CHARS`] characters: a refusal of a value of almost a mebibyte
/// would otherwise repeat it whole, into the answer and the server log.
fn shorten_quoted(detail: String) -> String {
    let quoted_too_long = detail
        .split('`')
        .skip(1)
        .step_by(2)
        .any(|quoted| quoted.chars().count() > QUOTED_CHARS);
    if !quoted_too_long {
        return detail;
    }
    let mut shortened = String::with_capacity(QUOTED_CHARS * 4);
    for (index, part) in detail.split('`').enumerate() {
        if index > 0 {
            shortened.push('`');
        }
        let quoted = index % 2 == 1;
        match part.char_indices().nth(QUOTED_CHARS) {
            Some((cut, _)) if quoted => {
                shortened.push_str(&part[..cut]);
                shortened.push('…');
            }
            _ => shortened.push_str(part),
        }
    }
    shortened
}

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub detail: String,
    pub field: Option<String>,
    pub index: Option<usize>,
    pub current_version: Option<u64>,
}

impl ApiError {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: shorten_quoted(detail.into()),
            field: None,
            index: None,
            current_version: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field: String = field.into();
        // A field named by the sender (an unknown member, an unknown parameter) is cut like a
        // quoted value: it is repeated into the answer and the log.
        self.field = Some(match field.char_indices().nth(MAX_FIELD_CHARS) {
            Some((cut, _)) => format!("{}…", &field[..cut]),
            None => field,
        });
        self
    }

    pub fn at_index(mut self, index: Option<usize>) -> Self {
        self.index = index;
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Code::NotFound, detail)
    }

    pub fn invalid_parameter(name: &str, detail: impl Into<String>) -> Self {
        Self::new(Code::InvalidParameter, detail).with_field(name)
    }

    /// A store's failure: `503` when the database is busy or unreachable for a moment (the
    /// client retries, as for any `unavailable`), `500` otherwise.
    pub fn store(error: travelmap_store::Error) -> Self {
        if matches!(error, travelmap_store::Error::Closed) {
            return Self::new(Code::Unavailable, "the service is shutting down");
        }
        if error.is_transient() {
            tracing::warn!(%error, "store unavailable");
            return Self::new(
                Code::Unavailable,
                "the store is busy or unreachable just now; retry shortly",
            );
        }
        if error.is_misconfiguration() {
            tracing::error!(%error, "this server is not configured for the stored data");
            return Self::new(
                Code::Unavailable,
                "this server lacks a master key the stored data needs (a configuration fault, \
                 logged); another server of the deployment may answer: retry later",
            );
        }
        if matches!(error, travelmap_store::Error::Unlogged) {
            tracing::warn!(%error, "a write's audit entries were not written");
            return Self::new(
                Code::Unavailable,
                "the audit trail could not take this write's entries just now, so nothing was \
                 recorded; retry shortly",
            );
        }
        if matches!(error, travelmap_store::Error::TrailReplaced) {
            tracing::error!(%error, "the audit trail's file is gone");
            return Self::new(
                Code::Unavailable,
                "the audit trail cannot be written until the service is restarted (logged for \
                 the operator), so nothing is recorded",
            );
        }
        if error.is_out_of_service() {
            tracing::error!(%error, "the store cannot take writes");
            return Self::new(
                Code::Unavailable,
                "the store cannot take writes just now (its disk is full, or it was made \
                 read-only); retry later",
            );
        }
        Self::internal(error)
    }

    /// A failure whose details must not reach the client: logged here, answered as 500.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            Code::Internal,
            "an unexpected error occurred; it has been logged",
        )
    }

    pub fn problem(&self) -> Problem {
        let (status, title) = self.code.status_and_title();
        Problem {
            problem_type: format!("/problems/{}", self.code.as_str()),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.detail.clone(),
            code: self.code,
            field: self.field.clone(),
            index: self.index,
            current_version: self.current_version,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).expect("valid status");
        let body = serde_json::to_vec(&problem).expect("problems serialise");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self.code {
            Code::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"travelmap\""),
                );
            }
            Code::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<travelmap_service::Error> for ApiError {
    fn from(error: travelmap_service::Error) -> Self {
        use travelmap_service::Error as E;
        match error {
            E::RepeatedInBatch { index, .. } => {
                ApiError::new(Code::ValidationFailed, error.to_string())
                    .with_field("id")
                    .at_index(Some(index))
            }
            E::DuplicateConflict { index, .. } | E::Unmatchable { index, .. } => {
                ApiError::new(Code::DuplicateConflict, error.to_string()).at_index(Some(index))
            }
            E::VersionConflict { index, actual, .. } => {
                let mut api = ApiError::new(Code::VersionConflict, error.to_string())
                    .with_field("expected_version")
                    .at_index(Some(index));
                api.current_version = Some(actual);
                api
            }
            E::Refused { index, source } => refusal(source).at_index(Some(index)),
            E::UnknownClient(_) | E::NotYetRecorded(_) => ApiError::not_found(error.to_string()),
            E::ProjectionBehind(_) | E::NotYetProjected(_) | E::Contention => {
                ApiError::new(Code::Unavailable, error.to_string())
            }
            E::NotRestricted(_) => ApiError::new(Code::NotRestricted, error.to_string()),
            E::Reserved { index, .. } => ApiError::new(Code::Forbidden, error.to_string())
                .with_field("type")
                .at_index(Some(index)),
            E::Store(travelmap_store::Error::ClientErased(_)) => {
                ApiError::new(Code::ClientErased, error.to_string())
            }
            E::Store(store) | E::Projection(travelmap_projections::Error::Store(store)) => {
                ApiError::store(store)
            }
            E::Projection(travelmap_projections::Error::Behind { .. }) => ApiError::new(
                Code::Unavailable,
                "the views are behind the log just now; retry shortly",
            ),
            E::NoKeyring => ApiError::internal(error),
        }
    }
}

fn refusal(source: journey::Error) -> ApiError {
    let detail = source.to_string();
    match source {
        journey::Error::InvalidReplacement(invalid) => ApiError::new(
            Code::ValidationFailed,
            format!("replacement data: {}", invalid.message),
        )
        .with_field(field_path("data.data", &invalid.field)),
        journey::Error::FactAfterEvent(invalid) => {
            ApiError::new(Code::ValidationFailed, invalid.message)
                .with_field(field_path("data", &invalid.field))
        }
        journey::Error::VersionConflict { actual, .. } => {
            let mut api = ApiError::new(Code::VersionConflict, detail);
            api.current_version = Some(actual);
            api
        }
        journey::Error::Restricted => ApiError::new(Code::ClientRestricted, detail),
        journey::Error::Erased => ApiError::new(Code::ClientErased, detail),
        journey::Error::NotRestricted => ApiError::new(Code::NotRestricted, detail),
        journey::Error::NotPoster { .. } => {
            ApiError::new(Code::Forbidden, detail).with_field("data.event_id")
        }
        journey::Error::UnknownTarget(_)
        | journey::Error::TargetRetracted(_)
        | journey::Error::TargetNotCorrectable { .. } => {
            ApiError::new(Code::ValidationFailed, detail).with_field("data.event_id")
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_long_quoted_value_is_cut_in_the_detail() {
        let value = "é".repeat(10_000);
        let error = ApiError::new(
            Code::ValidationFailed,
            format!("unknown variant `{value}`, expected `conditional` or `parole`"),
        );
        let kept = format!("`{}…`", "é".repeat(QUOTED_CHARS));
        assert_eq!(
            error.detail,
            format!("unknown variant {kept}, expected `conditional` or `parole`")
        );
        let short = "unknown variant `escaped`, expected `conditional`";
        assert_eq!(ApiError::new(Code::ValidationFailed, short).detail, short);
        let named = ApiError::new(Code::ValidationFailed, "unknown field")
            .with_field(format!("data.{}", "x".repeat(5_000)));
        assert_eq!(named.field.unwrap().chars().count(), MAX_FIELD_CHARS + 1);
    }

    use super::*;

    #[test]
    fn wire_names_match_serde_names() {
        for (code, name) in CODES {
            assert_eq!(serde_json::to_value(code).unwrap(), *name);
        }
    }
}
