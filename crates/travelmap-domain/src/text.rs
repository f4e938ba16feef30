//! Free text that must say something: trimmed, not empty, bounded in length.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize, Serializer};

/// The longest text field we accept. Journey events are facts, not documents; a bound keeps one
/// careless sender from filling the log.
pub const MAX_TEXT_LEN: usize = 2000;

/// The published pattern of a text: something besides white space, and no control character
/// but tab, line feed and carriage return (which the HTTP layer refuses in every string). An
/// ECMA-262 regular expression, as JSON Schema takes.
pub const PATTERN: &str = concat!(
    "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*",
    "[^\\s\\u0000-\\u001F\\u007F-\\u009F]",
    "[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
);

/// A non-empty, trimmed string of at most [`MAX_TEXT_LEN`] characters. Parsing rejects anything
/// else, so code holding a `Text` never re-checks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
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
        // A character takes at least one byte, so only a long string needs counting.
        if trimmed.len() > MAX_TEXT_LEN && trimmed.chars().count() > MAX_TEXT_LEN {
            return Err(format!("must be at most {MAX_TEXT_LEN} characters"));
        }
        // Every text of every stored event is parsed again when a projection is rebuilt; most
        // need no trimming and keep the string they were parsed into.
        if trimmed.len() == value.len() {
            return Ok(Self(value));
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

/// Written as the string it holds, without the copy that serialising through `String` made.
impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
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
            "pattern": PATTERN
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_must_say_something() {
        assert_eq!(Text::try_from("  Opava \n").unwrap().as_str(), "Opava");
        assert_eq!(Text::try_from("Opava").unwrap().as_str(), "Opava");
        assert!(Text::try_from(" \t ").is_err());
        assert!(Text::try_from("").is_err());
    }

    #[test]
    fn the_bound_counts_characters_not_bytes() {
        let widest = "é".repeat(MAX_TEXT_LEN);
        assert_eq!(Text::try_from(widest.as_str()).unwrap().as_str(), widest);
        assert!(Text::try_from("é".repeat(MAX_TEXT_LEN + 1)).is_err());
        assert!(Text::try_from("a".repeat(MAX_TEXT_LEN + 1)).is_err());
        let padded = format!("  {}  ", "a".repeat(MAX_TEXT_LEN));
        assert_eq!(Text::try_from(padded).unwrap().as_str().len(), MAX_TEXT_LEN);
    }

    #[test]
    fn text_is_written_as_a_plain_string() {
        let text = Text::try_from("Opava").unwrap();
        assert_eq!(serde_json::to_string(&text).unwrap(), "\"Opava\"");
        let read: Text = serde_json::from_str("\" Opava \"").unwrap();
        assert_eq!(read, text);
        assert!(serde_json::from_str::<Text>("\"  \"").is_err());
    }
}
