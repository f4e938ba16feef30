//! The domain's errors: a submitted event that does not fit its schema, or stored data that can
//! no longer be decoded.

/// A submitted event (or part of one) that breaks its schema or a rule of the catalogue.
/// `field` is a dotted path relative to the object that was validated, e.g. `release_kind` or
/// `identifiers[0].value`; callers prefix it with where that object sits (`data.`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Where the problem is, as a dotted path; empty for the object as a whole.
    pub field: String,
    /// What is wrong, in words a sender's developer can act on.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, seen from an enclosing object: `within("data")` turns `release_kind` into
    /// `data.release_kind`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = field_path(prefix, &self.field);
        self
    }
}

/// Joins a dotted field path: `field_path("data", "release_kind")` is `data.release_kind`, and an
/// index stays attached: `field_path("identifiers", "[0]")` is `identifiers[0]`.
pub fn field_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
        (false, false) => format!("{prefix}.{field}"),
    }
}

/// Why an event could not be turned into a typed [`crate::JourneyEvent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type is not in the catalogue.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// The type exists but not in this schema version.
    #[error(
        "event type `{event_type}` has no schema version {schema_version} (current: {current})"
    )]
    UnsupportedVersion {
        event_type: String,
        schema_version: u32,
        current: u32,
    },
    /// The `data` object does not match the type's schema.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}
