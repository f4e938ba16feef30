//! Calendar dates written as `YYYY-MM-DD`, the text chrono writes for them, without going
//! through its formatter.
//!
//! Every stored view holds its client's events with their dates, so a rebuild writes tens of
//! thousands of them. chrono formats a date through `Debug` into a fresh string, a character at
//! a time, which was a few percent of a rebuild's instructions; these write the ten bytes
//! directly. Years outside 0 to 9999 (which chrono writes with a sign) are left to chrono.

use chrono::{Datelike, NaiveDate};
use serde::{Serialize, Serializer};

/// For `#[serde(serialize_with = "crate::dates::serialize")]`.
pub(crate) fn serialize<S: Serializer>(date: &NaiveDate, serializer: S) -> Result<S::Ok, S::Error> {
    let Ok(year) = u32::try_from(date.year()) else {
        return date.serialize(serializer);
    };
    if year > 9999 {
        return date.serialize(serializer);
    }
    let mut text = *b"0000-00-00";
    write_digits(&mut text[0..4], year);
    write_digits(&mut text[5..7], date.month());
    write_digits(&mut text[8..10], date.day());
    serializer.serialize_str(std::str::from_utf8(&text).expect("digits and dashes are ASCII"))
}

/// For `#[serde(serialize_with = "crate::dates::option")]`.
pub(crate) fn option<S: Serializer>(
    date: &Option<NaiveDate>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    struct Date<'a>(&'a NaiveDate);
    impl Serialize for Date<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, serializer)
        }
    }
    match date {
        Some(date) => serializer.serialize_some(&Date(date)),
        None => serializer.serialize_none(),
    }
}

/// Writes `value` in decimal into `into`, right-aligned and padded with zeros.
fn write_digits(into: &mut [u8], mut value: u32) {
    for digit in into.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Serialize)]
    struct Dated {
        #[serde(serialize_with = "serialize")]
        on: NaiveDate,
        #[serde(serialize_with = "option")]
        maybe: Option<NaiveDate>,
    }

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).expect("a valid date")
    }

    #[test]
    fn dates_are_written_as_chrono_writes_them() {
        for on in [
            date(2026, 3, 1),
            date(1987, 12, 31),
            date(5, 1, 9),
            date(0, 2, 29),
            date(9999, 12, 31),
            date(10_000, 1, 1),
            date(-44, 3, 15),
        ] {
            let written = serde_json::to_value(Dated {
                on,
                maybe: Some(on),
            })
            .expect("serialises");
            let chrono = serde_json::to_value(on).expect("serialises");
            assert_eq!(written, json!({"on": chrono, "maybe": chrono}), "{on:?}");
        }
        assert_eq!(
            serde_json::to_value(date(5, 1, 9)).unwrap(),
            json!("0005-01-09")
        );
    }

    #[test]
    fn a_missing_date_is_written_as_none() {
        let written = serde_json::to_value(Dated {
            on: date(2026, 3, 1),
            maybe: None,
        })
        .expect("serialises");
        assert_eq!(written, json!({"on": "2026-03-01", "maybe": null}));
    }
}
