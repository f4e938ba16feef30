//! Free text that must say something: trimmed, not empty, bounded in length.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The longest text field we accept. Journey events are facts, not documents; a bound keeps one
/// careless sender from filling the log.
pub const MAX_TEXT_LEN: usize = 2000;

/// A non-empty, trimmed string of at most [`MAX_TEXT_LEN`] characters. Parsing rejects anything
/// else, so code holding a `Text` never re-checks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Text {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if trimmed.chars().count() > MAX_TEXT_LEN {
            return Err(format!("must be at most {MAX_TEXT_LEN} characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

impl TryFrom<&str> for Text {
    type Error = String;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::try_from(value.to_owned())
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TEXT_LEN,
            "pattern": "\\S"
        })
    }
}
