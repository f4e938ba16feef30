//! Calendar dates written as `YYYY-MM-DD`, the text chrono writes for them, without going
//! through its formatter; and the strict forms in which dates and times are accepted.
//!
//! Every stored view holds its client's events with their dates, so a rebuild writes tens of
//! thousands of them. chrono formats a date through `Debug` into a fresh string, a character at
//! a time, which was a few percent of a rebuild's instructions; these write the ten bytes
//! directly. Years outside 0 to 9999 (which chrono writes with a sign) are left to chrono.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, SubsecRound};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// For `#[serde(deserialize_with = "crate::dates::to_the_microsecond")]`: a time inside an
/// event's data, kept to the microsecond as `occurred_at` is, so that a retry written with finer
/// digits compares equal to what was stored.
pub(crate) fn to_the_microsecond<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<DateTime<FixedOffset>, D::Error> {
    DateTime::<FixedOffset>::deserialize(deserializer).map(|time| time.trunc_subsecs(6))
}

/// The years a recorded date or time may fall in. Nothing in a reintegration journey lies
/// outside them, and the bound keeps date arithmetic (deadlines, windows) far from chrono's
/// limits: a release dated in the year -262143 once overflowed the alerts' arithmetic.
pub const EARLIEST_YEAR: i32 = 1900;
pub const LATEST_YEAR: i32 = 2199;

/// The published pattern of a date and time (`format: date-time`): the strict RFC 3339 form
/// [`check_date_time`] takes, in the years [`EARLIEST_YEAR`] to [`LATEST_YEAR`] as written. The
/// server also counts those years in UTC and knows how many days each month has, which a
/// pattern does not: it still refuses a day the month lacks, and a time within a day of the
/// range's ends whose UTC year falls outside it.
pub const DATE_TIME_PATTERN: &str = "^(19|20|21)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// How far ahead of this machine's clock a time may lie and still count as past or present:
/// the clocks of agencies and of the service's own processes differ a little. An `occurred_at`
/// further ahead is refused (future plans have their own events, such as
/// `appointment.scheduled`), and so is an `as_of` (a moment still to come has no record yet).
pub const MAX_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Checks a date as posted: exactly `YYYY-MM-DD`, a real day, in the years above. chrono alone
/// also takes `+2026-01-05`, `2026-1-5` and years of six digits with a sign.
pub fn check_date(text: &str) -> Result<NaiveDate, String> {
    let date = calendar_day(text)?;
    in_range(date.year(), text)?;
    Ok(date)
}

/// A day written exactly `YYYY-MM-DD`, in any year of four digits.
fn calendar_day(text: &str) -> Result<NaiveDate, String> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && [0, 1, 2, 3, 5, 6, 8, 9]
            .iter()
            .all(|&index| bytes[index].is_ascii_digit());
    if !shaped {
        return Err(format!("`{text}` is not a date in the form YYYY-MM-DD"));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("`{text}` is not a day of the calendar"))
}

/// Checks a date and time as posted: RFC 3339 exactly (`2026-03-01T09:00:00+01:00`, with an
/// optional fraction of a second and `Z` for UTC), in the years above, without a leap second
/// (which chrono would keep as `:60` in one place and roll into the next minute in another).
pub fn check_date_time(text: &str) -> Result<DateTime<FixedOffset>, String> {
    let refused =
        || format!("`{text}` is not an RFC 3339 date and time, e.g. 2026-03-01T09:00:00+01:00");
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't') {
        return Err(refused());
    }
    // The years are counted both as written (as the published pattern counts them) and in UTC
    // (below), so that neither the local day nor the moment lies outside them.
    let local_day = calendar_day(&text[..10]).map_err(|_| refused())?;
    in_range(local_day.year(), text)?;
    let time = &bytes[11..];
    let digits =
        |range: std::ops::Range<usize>| range.into_iter().all(|i| time[i].is_ascii_digit());
    if !(digits(0..2) && time[2] == b':' && digits(3..5) && time[5] == b':' && digits(6..8)) {
        return Err(refused());
    }
    if time[6] >= b'6' {
        return Err(format!(
            "`{text}` has no such second (leap seconds are not taken)"
        ));
    }
    let mut rest = &time[8..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let count = fraction
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if count == 0 {
            return Err(refused());
        }
        rest = &fraction[count..];
    }
    let zone_shaped = match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|byte| byte.is_ascii_digit())
        }
        _ => false,
    };
    if !zone_shaped {
        return Err(refused());
    }
    let at = DateTime::parse_from_rfc3339(text).map_err(|_| refused())?;
    in_range(at.with_timezone(&chrono::Utc).year(), text)?;
    Ok(at)
}

/// Why a moment asked for (see [`parse_moment`]) was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MomentRefused {
    /// Not an RFC 3339 date and time.
    NotRfc3339,
    /// A leap second (`:60`).
    LeapSecond,
}

/// Reads a moment a reader asks for (a query's `as_of`, `replay --as-of`), more leniently than
/// [`check_date_time`] reads what is posted, since a reader types or pastes it: RFC 3339 as
/// chrono reads it (a space may stand for the `T`, as RFC 3339 allows), and a space where the
/// offset's `+` belongs read as `+` (what a `+` left unencoded in a query string decodes to).
/// A leap second is refused: chrono would keep it as `:60`, a time no other reader takes, and
/// no event can be recorded at it. Kept to the microsecond, like every recorded time.
pub fn parse_moment(text: &str) -> Result<DateTime<chrono::Utc>, MomentRefused> {
    let at = DateTime::parse_from_rfc3339(text)
        .or_else(|error| match text.rfind(' ') {
            // The offset is last: only the last space can stand for its `+`.
            Some(space) => {
                DateTime::parse_from_rfc3339(&format!("{}+{}", &text[..space], &text[space + 1..]))
            }
            None => Err(error),
        })
        .map_err(|_| MomentRefused::NotRfc3339)?;
    if chrono::Timelike::nanosecond(&at) >= 1_000_000_000 {
        return Err(MomentRefused::LeapSecond);
    }
    Ok(at.with_timezone(&chrono::Utc).trunc_subsecs(6))
}

fn in_range(year: i32, text: &str) -> Result<(), String> {
    if (EARLIEST_YEAR..=LATEST_YEAR).contains(&year) {
        Ok(())
    } else {
        Err(format!(
            "`{text}` lies outside the years {EARLIEST_YEAR} to {LATEST_YEAR}"
        ))
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
    fn a_moment_asked_for_is_read_as_typed_or_pasted_to_the_microsecond() {
        let utc = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let expected = utc("2026-03-01T08:00:00.123456Z");
        for text in [
            "2026-03-01T09:00:00.123456+01:00",
            // A `+` left unencoded in a query string arrives as a space.
            "2026-03-01T09:00:00.123456 01:00",
            // RFC 3339 lets a space stand for the `T`.
            "2026-03-01 08:00:00.123456Z",
            // Both at once, as a pasted time with an unencoded `+` arrives.
            "2026-03-01 09:00:00.123456 01:00",
            // Kept to the microsecond, as recorded times are.
            "2026-03-01T08:00:00.123456999Z",
        ] {
            assert_eq!(parse_moment(text), Ok(expected), "{text}");
        }
        assert_eq!(
            parse_moment("2016-12-31T23:59:60Z"),
            Err(MomentRefused::LeapSecond)
        );
        for text in ["yesterday", "2026-03-01", "2026-03-01T09:00:00"] {
            assert_eq!(parse_moment(text), Err(MomentRefused::NotRfc3339), "{text}");
        }
    }

    #[test]
    fn dates_and_times_are_taken_only_in_their_strict_forms() {
        assert_eq!(check_date("2026-01-05"), Ok(date(2026, 1, 5)));
        for loose in [
            "+2026-01-05",
            "2026-1-5",
            " 2026-01-05",
            "-0001-01-01",
            "-262143-01-01",
            "2026-02-30",
            "1899-12-31",
            "2200-01-01",
        ] {
            assert!(check_date(loose).is_err(), "{loose} was taken");
        }
        for strict in [
            "2026-03-01T09:00:00+01:00",
            "2026-03-01T08:00:00Z",
            "2026-03-01t08:00:00.250z",
            "2026-03-01T09:00:00.123456-05:30",
        ] {
            assert!(check_date_time(strict).is_ok(), "{strict} was refused");
        }
        for loose in [
            "+2026-01-01T00:00:00Z",
            " 2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00 Z",
            "2026-06-01T12:34:60+02:00",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+0100",
            "-262143-01-01T00:00:00Z",
            "1899-12-31T23:00:00Z",
        ] {
            assert!(check_date_time(loose).is_err(), "{loose} was taken");
        }
    }

    #[test]
    fn a_time_is_kept_to_the_years_as_written_and_in_utc_and_told_so() {
        assert!(check_date_time("2199-12-31T23:30:00+00:30").is_ok());
        assert!(check_date_time("1900-01-01T00:30:00+00:30").is_ok());
        for outside in [
            "2200-01-01T00:00:00Z",
            "1899-12-31T23:30:00+01:00",
            // Local days outside the years, UTC moments inside them: refused as the published
            // pattern refuses them.
            "2200-01-01T00:30:00+01:00",
            "1899-12-31T23:30:00-01:00",
            // And the other way round.
            "2199-12-31T23:30:00-01:00",
            "1900-01-01T00:30:00+01:00",
        ] {
            let refusal = check_date_time(outside).unwrap_err();
            assert!(
                refusal.contains("outside the years 1900 to 2199"),
                "{outside}: {refusal}"
            );
        }
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
