//! Extractors that answer every rejection in the API's problem format, rather than axum's
//! plain-text defaults.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, Code};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body, parsed in two steps so that the answer is precise: bytes that are not JSON get
/// `400 malformed_json` (with line and column); JSON of the wrong shape is left to the handler,
/// which reports the offending field with `422`.
pub struct JsonBody(pub Value);

/// Why a write's body stopped being read: the server is stopping and gave up waiting for it
/// (see `crate::Writes::cut_off_bodies`). Nothing was written; the client retries.
#[derive(Debug)]
pub(crate) struct BodyCutOff;

impl std::fmt::Display for BodyCutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server stopped waiting for the body")
    }
}

impl std::error::Error for BodyCutOff {}

/// Whether `error`, or one it was caused by, is [`BodyCutOff`].
fn cut_off(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<BodyCutOff>() {
            return true;
        }
        cause = error.source();
    }
    false
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // Readers of the same request (a gateway, this server) could each take another one.
        if request
            .headers()
            .get_all(CONTENT_TYPE)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "send one `Content-Type` header, not several",
            ));
        }
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        // `application/json`, or a type with JSON's suffix (`application/problem+json`), which
        // names something before the suffix.
        let essence = essence.to_ascii_lowercase();
        let is_json = essence == "application/json"
            || essence
                .strip_prefix("application/")
                .and_then(|subtype| subtype.strip_suffix("+json"))
                .is_some_and(|name| {
                    // A media type's name is a token (RFC 6838): no space, slash or wildcard.
                    !name.is_empty()
                        && name.bytes().all(|byte| {
                            byte.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&byte)
                        })
                });
        if !is_json {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        // A compressed body would be read as if it were not (and refused as malformed JSON, or
        // worse, taken as it stands under an encoding that claims otherwise).
        if let Some(coding) =
            coding_other_than(&request, axum::http::header::CONTENT_ENCODING, "identity")
        {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                format!("bodies are read as sent: `Content-Encoding: {coding}` is not supported"),
            ));
        }
        // The same holds for transfer codings: the server takes `chunked` (it refuses a message
        // that does not end with it before any handler runs), and would otherwise read, say,
        // `gzip, chunked` as if the chunks held the body as it stands.
        if let Some(coding) =
            coding_other_than(&request, axum::http::header::TRANSFER_ENCODING, "chunked")
        {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                format!(
                    "bodies are read as sent: `Transfer-Encoding: {coding}` is not supported \
                     (send the body with `Content-Length`, or chunked alone)"
                ),
            ));
        }
        // Refused on its declared length before the body is read: a client that sent
        // `Expect: 100-continue` is then told at once, rather than invited to send a body that
        // would be refused.
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!("the body exceeds {MAX_BODY_BYTES} bytes"),
            ));
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if cut_off(&rejection) {
                        ApiError::new(Code::Unavailable, "the service is shutting down")
                    } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::new(
                            Code::PayloadTooLarge,
                            format!("the body exceeds {MAX_BODY_BYTES} bytes"),
                        )
                    } else {
                        // The framework's wording names its own internals; say what happened.
                        ApiError::new(
                            Code::MalformedJson,
                            "the body could not be read in full: the connection ended before it \
                             did, or its chunked framing is invalid",
                        )
                    }
                })?;
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(|why| ApiError::new(Code::MalformedJson, format!("the body is {why}")))
    }
}

/// Parses JSON as `serde_json` does, except that an object naming a member twice is refused.
/// `serde_json` keeps the last value, while another reader of the same bytes (a gateway, an
/// agency's own log) may keep the first: an event recorded for good must mean one thing.
/// A refusal says why, as `ambiguous: ...` or `not valid JSON: ...` (with line and column).
pub fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<Unambiguous>(bytes)
        .map(|parsed| parsed.0)
        .map_err(|error| {
            // The only data error a generic value can meet is the repeated member refused below.
            if error.classify() == serde_json::error::Category::Data {
                format!("ambiguous: {error}")
            } else {
                format!("not valid JSON: {error}")
            }
        })
}

/// A JSON value whose objects name each member once (see [`parse_json`]).
struct Unambiguous(Value);

impl<'de> Deserialize<'de> for Unambiguous {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UnambiguousVisitor)
            .map(Unambiguous)
    }
}

struct UnambiguousVisitor;

impl<'de> serde::de::Visitor<'de> for UnambiguousVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(Unambiguous(value)) = seq.next_element()? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(serde::de::Error::custom(format_args!(
                    "the member `{name}` appears twice in one object"
                )));
            }
            let Unambiguous(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

/// Refuses a body that is not a JSON object, saying what shape it must have. Read as a struct,
/// an array would be taken for the struct's fields in order, and refused with a message about
/// its first element's type.
pub fn require_object(body: &serde_json::Value, shape: &str) -> Result<(), ApiError> {
    if body.is_object() {
        return Ok(());
    }
    Err(ApiError::new(
        Code::ValidationFailed,
        format!("the body must be a JSON object: {shape}"),
    ))
}

/// Query parameters; a malformed one is a `400 invalid_parameter` naming the parameter.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or_default();
        refuse_bytes_that_are_not_text(raw)?;
        // A parameter with an empty value (`?agency=`, as a form sends a field left blank) is
        // one not given, for every parameter alike; but an unknown one is refused even empty
        // (`?afer=`), so the whole query is read once for its names first.
        let blanks = form_urlencoded::parse(raw.as_bytes()).any(|(_, value)| value.is_empty());
        if blanks
            && let Err(error) = serde_path_to_error::deserialize::<_, T>(
                serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes())),
            )
            && error.inner().to_string().starts_with("unknown field")
        {
            return Err(query_problem(&error));
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                form_urlencoded::parse(raw.as_bytes()).filter(|(_, value)| !value.is_empty()),
            )
            .finish();
        let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(pairs)
            .map(Query)
            .map_err(|error| query_problem(&error))
    }
}

/// Refuses a query whose names or values, once percent-decoded, are not UTF-8: decoded as they
/// are, each such byte would become U+FFFD, and two different values (`%ff`, `%fe`) would be
/// taken for the same text.
fn refuse_bytes_that_are_not_text(raw: &str) -> Result<(), ApiError> {
    for pair in raw.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = |text: &str| {
            let spaced = text.replace('+', " ");
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8()
                .map(|text| text.into_owned())
        };
        let Ok(name) = decoded(name) else {
            // No `field`: the name itself is what cannot be given back.
            return Err(ApiError::new(
                Code::InvalidParameter,
                "a query parameter's name is not UTF-8 text",
            ));
        };
        if decoded(value).is_err() {
            return Err(ApiError::invalid_parameter(
                &name,
                format!("query parameter `{name}` is not UTF-8 text"),
            ));
        }
    }
    Ok(())
}

/// The answer to a query that does not deserialise: `400 invalid_parameter` naming the
/// parameter.
fn query_problem(error: &serde_path_to_error::Error<serde::de::value::Error>) -> ApiError {
    let inner = error.inner().to_string();
    // A parameter that is unknown or given twice fails at the level of the whole query, whose
    // path is `.`; serde names the parameter in its message.
    let field = match error.path().to_string() {
        root if root == "." => quoted_name(&inner).unwrap_or(root),
        field => field,
    };
    let detail = format!("query parameter `{field}`: {inner}");
    ApiError::invalid_parameter(&field, detail)
}

/// The first name quoted in backticks in one of serde's messages (``unknown field `x`, ...``).
fn quoted_name(message: &str) -> Option<String> {
    let (_, rest) = message.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    Some(name.to_owned())
}

/// The largest log position or audit sequence number. Both are stored as signed 64-bit SQL
/// integers, so nothing larger can exist, and a larger one must be refused here rather than
/// reach a store where it does not fit.
pub const MAX_POSITION: u64 = i64::MAX as u64;

/// Checks a position (or audit sequence number) given by the caller under `name`.
pub fn position(name: &str, value: u64) -> Result<u64, ApiError> {
    if value > MAX_POSITION {
        return Err(ApiError::invalid_parameter(
            name,
            format!("{name} must be at most {MAX_POSITION}"),
        ));
    }
    Ok(value)
}

/// The page size a caller asked for in `limit`, or `default`: refused outside 1 to `most`.
pub fn limit(asked: Option<usize>, default: usize, most: usize) -> Result<usize, ApiError> {
    let limit = asked.unwrap_or(default);
    if !(1..=most).contains(&limit) {
        return Err(ApiError::invalid_parameter(
            "limit",
            format!("limit must be between 1 and {most}"),
        ));
    }
    Ok(limit)
}

/// A position in a query (`after`, `min_position`): `#[serde(default, deserialize_with =
/// "extract::query_position")]`. Refused past [`MAX_POSITION`] as a malformed parameter.
pub fn query_position<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let value = Option::<u64>::deserialize(deserializer)?;
    if value.is_some_and(|value| value > MAX_POSITION) {
        return Err(serde::de::Error::custom(format!(
            "must be at most {MAX_POSITION}"
        )));
    }
    Ok(value)
}

/// A client id from the path; anything but a UUID is a `400` naming `client_id`.
pub fn client_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|error| {
        ApiError::invalid_parameter("client_id", format!("client_id must be a UUID: {error}"))
    })
}

/// Path parameters; a malformed one is a `400 invalid_parameter`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| {
                let field = match &rejection {
                    PathRejection::FailedToDeserializePathParams(failed) => match failed.kind() {
                        ErrorKind::InvalidUtf8InPathParam { key }
                        | ErrorKind::ParseErrorAtKey { key, .. }
                        | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                let problem = ApiError::new(Code::InvalidParameter, rejection.body_text());
                match field {
                    Some(field) => problem.with_field(field),
                    None => problem,
                }
            })
    }
}

/// The first coding a request's `header` (a comma-separated list of codings, as
/// `Content-Encoding` and `Transfer-Encoding` are) names other than `allowed`; a value that is
/// not text counts as one.
fn coding_other_than(
    request: &Request,
    header: axum::http::HeaderName,
    allowed: &str,
) -> Option<String> {
    request
        .headers()
        .get_all(header)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(allowed))
        .map(str::to_owned)
}
