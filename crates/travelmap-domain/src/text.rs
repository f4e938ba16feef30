//! Free text that must say something: trimmed, not empty, bounded in length.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize, Serializer};

/// The longest text field we accept. Journey events are facts, not documents; a bound keeps one
/// careless sender from filling the log.
pub const MAX_TEXT_LEN: usize = 2000;

/// The characters a text is trimmed of, as the body of an ECMA-262 character class: Unicode's
/// white space, which is what `str::trim` takes away. Spelt out rather than written `\s`, which
/// in ECMA-262 also takes U+FEFF (the byte-order mark) that Rust keeps: a published schema that
/// refused a text the server takes, or the other way round, would mislead validating senders.
macro_rules! white_space {
    () => {
        "\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000"
    };
}

/// The published pattern of a text: something besides white space, and no control character
/// but tab, line feed and carriage return (which the HTTP layer refuses in every string). An
/// ECMA-262 regular expression, as JSON Schema takes.
pub const PATTERN: &str = concat!(
    "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*",
    "[^",
    white_space!(),
    "\\u0000-\\u001F\\u007F-\\u009F]",
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

    /// The characters of an ECMA-262 class body made of `\t`, `\n`, `\r`, `\uXXXX`, literal
    /// characters and ranges between them.
    fn class_members(body: &str) -> std::collections::BTreeSet<char> {
        let mut chars = body.chars().peekable();
        let mut single = Vec::new();
        while let Some(c) = chars.next() {
            let member = match c {
                '\\' => match chars.next().unwrap() {
                    't' => '\t',
                    'n' => '\n',
                    'r' => '\r',
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap()
                    }
                    other => panic!("unexpected escape \\{other}"),
                },
                '-' => {
                    single.push('-');
                    continue;
                }
                other => other,
            };
            single.push(member);
        }
        let mut members = std::collections::BTreeSet::new();
        let mut index = 0;
        while index < single.len() {
            if single.get(index + 1) == Some(&'-') {
                members.extend(single[index]..=single[index + 2]);
                index += 3;
            } else {
                members.insert(single[index]);
                index += 1;
            }
        }
        members
    }

    #[test]
    fn the_published_white_space_is_what_text_is_trimmed_of() {
        let published = class_members(white_space!());
        let trimmed: std::collections::BTreeSet<char> =
            ('\0'..=char::MAX).filter(|c| c.is_whitespace()).collect();
        assert_eq!(published, trimmed);
        // The byte-order mark is not white space: a text of it alone says something, in the
        // schema as on the server.
        assert!(!published.contains(&'\u{FEFF}'));
        assert!(Text::try_from("\u{FEFF}").is_ok());
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
