//! Value conversions of the cleaning contract (`docs/cleaning.md`), one function per
//! rule. Pure: JSON value in, typed value or a [`ValueError`] out. Knows nothing of streams,
//! Arrow or Delta.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime};

use super::json::Field;

/// Why one field could not be converted. Carried into the rejects table as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("expected an integer, got {0}")]
    NotInteger(String),
    #[error("expected a number, got {0}")]
    NotNumber(String),
    #[error("expected a string, got {0}")]
    NotString(String),
    #[error("not a follower count (digits with an optional k/M/B suffix): {0}")]
    BadFollowerCount(String),
    #[error("not a timestamp (YYYY-MM-DD[T ]HH:MM:SS[.fff][Z|+HH:MM]): {0}")]
    BadTimestamp(String),
    #[error("out of the 64-bit integer range: {0}")]
    OutOfRange(String),
}

/// Shortened rendering of an offending value for a reject reason (the raw record is kept
/// whole next to it, so the reason stays short).
fn show(v: &Field<'_>) -> String {
    let s = v.to_json();
    if s.len() <= 80 {
        s
    } else {
        let mut end = 77;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// `null`, a missing key and `""` are all absent.
#[inline]
fn present<'v, 'a>(v: Option<&'v Field<'a>>) -> Option<&'v Field<'a>> {
    match v {
        None | Some(Field::Null) => None,
        Some(Field::Str(s)) if s.is_empty() => None,
        Some(v) => Some(v),
    }
}

/// A text column: strings as they are, numbers and booleans as their JSON text; empty
/// strings and the column's placeholders become null. Arrays and objects are refused.
/// Strings are borrowed from the record, never copied here.
pub fn text<'v>(
    v: Option<&'v Field<'_>>,
    placeholders: &[&str],
) -> Result<Option<Cow<'v, str>>, ValueError> {
    match present(v) {
        None => Ok(None),
        Some(Field::Str(s)) if placeholders.contains(&&**s) => Ok(None),
        Some(Field::Str(s)) => Ok(Some(Cow::Borrowed(&**s))),
        Some(n @ (Field::Number(_) | Field::Bool(_))) => Ok(Some(Cow::Owned(n.to_json()))),
        Some(other) => Err(ValueError::NotString(show(other))),
    }
}

/// A 64-bit integer column: JSON integers, integral JSON floats, or numeric strings
/// (`"20"`, `"20.0"`). `30.5`, `true` and `"old"` are refused.
pub fn integer(v: Option<&Field<'_>>) -> Result<Option<i64>, ValueError> {
    let Some(v) = present(v) else { return Ok(None) };
    match v {
        Field::Number(n) => number_to_i64(n.as_i64(), n.as_f64(), v),
        Field::Str(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                return Ok(Some(i));
            }
            match t.parse::<f64>() {
                Ok(f) if f.is_finite() => number_to_i64(None, Some(f), v),
                _ => Err(ValueError::NotInteger(show(v))),
            }
        }
        _ => Err(ValueError::NotInteger(show(v))),
    }
}

fn number_to_i64(i: Option<i64>, f: Option<f64>, v: &Field<'_>) -> Result<Option<i64>, ValueError> {
    if let Some(i) = i {
        return Ok(Some(i));
    }
    match f {
        Some(f) if f.fract() == 0.0 => {
            // 2^63 is exactly representable; anything at or beyond it does not fit.
            if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
                Ok(Some(f as i64))
            } else {
                Err(ValueError::OutOfRange(show(v)))
            }
        }
        _ => Err(ValueError::NotInteger(show(v))),
    }
}

/// A 64-bit float column: JSON numbers or numeric strings.
pub fn float(v: Option<&Field<'_>>) -> Result<Option<f64>, ValueError> {
    let Some(v) = present(v) else { return Ok(None) };
    let f = match v {
        Field::Number(n) => n.as_f64(),
        Field::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match f {
        Some(f) if f.is_finite() => Ok(Some(f)),
        _ => Err(ValueError::NotNumber(show(v))),
    }
}

/// `follower_count`: `"987"`, `"12k"`, `"1.5k"`, `"3M"`, `"2B"` (k/K = 10^3, M/m = 10^6,
/// B = 10^9). Decimals are scaled exactly, then rounded half away from zero. JSON numbers
/// must be integral. `"User Info Error"` is a placeholder and becomes null.
pub fn follower_count(v: Option<&Field<'_>>) -> Result<Option<i64>, ValueError> {
    let Some(v) = present(v) else { return Ok(None) };
    let s = match v {
        Field::Str(s) if s == "User Info Error" => return Ok(None),
        Field::Str(s) => s.trim(),
        Field::Number(_) => return integer(Some(v)),
        _ => return Err(ValueError::BadFollowerCount(show(v))),
    };
    parse_scaled(s).ok_or_else(|| ValueError::BadFollowerCount(show(v)))
}

fn parse_scaled(s: &str) -> Option<Option<i64>> {
    let (num, exp) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 3u32),
        b'm' | b'M' => (&s[..s.len() - 1], 6),
        b'b' | b'B' => (&s[..s.len() - 1], 9),
        _ => (s, 0),
    };
    // The usual spelling, digits and an optional suffix, in u64 (the same answer as the
    // general path below; it stays for signs and decimals).
    if (1..=15).contains(&num.len()) && num.bytes().all(|b| b.is_ascii_digit()) {
        let m = num.bytes().fold(0u64, |m, d| m * 10 + u64::from(d - b'0'));
        let scaled = m.checked_mul(10u64.pow(exp));
        // Too large for i64: not a count, as below.
        return scaled.and_then(|v| i64::try_from(v).ok()).map(Some);
    }
    let (neg, num) = match num.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return None;
    }
    // Exact decimal arithmetic in i128: mantissa * 10^exp / 10^frac_len, rounded half up.
    if int_part.len() + frac_part.len() > 30 {
        return None;
    }
    // The digits of both parts as one integer, without building a string.
    let mantissa = int_part
        .bytes()
        .chain(frac_part.bytes())
        .try_fold(0i128, |m, d| {
            m.checked_mul(10)?.checked_add(i128::from(d - b'0'))
        })?;
    let scaled = mantissa.checked_mul(10i128.pow(exp))?;
    let divisor = 10i128.checked_pow(frac_part.len() as u32)?;
    let rounded = (scaled + divisor / 2) / divisor;
    let value = if neg { -rounded } else { rounded };
    Some(Some(i64::try_from(value).ok()?))
}

/// A timestamp column, as microseconds since the Unix epoch, UTC. Accepts
/// `YYYY-MM-DDTHH:MM:SS` or a space instead of `T`, optional fractional seconds, and an
/// optional `Z` or `+HH:MM`/`-HH:MM` offset; naive times are UTC.
pub fn timestamp_micros(v: Option<&Field<'_>>) -> Result<Option<i64>, ValueError> {
    let Some(v) = present(v) else { return Ok(None) };
    let Field::Str(s) = v else {
        return Err(ValueError::BadTimestamp(show(v)));
    };
    parse_timestamp(s.trim())
        .map(Some)
        .ok_or_else(|| ValueError::BadTimestamp(show(v)))
}

fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
        return None;
    }
    let mut norm = String::with_capacity(s.len());
    norm.push_str(&s[..10]);
    norm.push('T');
    norm.push_str(&s[11..]);
    let has_offset = matches!(b.last(), Some(b'Z' | b'z')) || {
        // An offset starts after the seconds (and fraction) with + or -.
        s[19..].contains(['+', '-'])
    };
    if has_offset {
        let norm = if norm.ends_with('z') {
            format!("{}Z", &norm[..norm.len() - 1])
        } else {
            norm
        };
        DateTime::parse_from_rfc3339(&norm)
            .ok()
            .map(|dt| dt.timestamp_micros())
    } else {
        NaiveDateTime::parse_from_str(&norm, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|dt| dt.and_utc().timestamp_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// `json!` as a cleaning field.
    macro_rules! f {
        ($($j:tt)+) => {
            Field::from_value(&json!($($j)+))
        };
    }

    fn ts(s: &str) -> Option<i64> {
        timestamp_micros(Some(&f!(s))).unwrap()
    }

    #[test]
    fn empty_and_null_are_absent_everywhere() {
        for v in [f!(""), Field::from_value(&Value::Null)] {
            assert_eq!(text(Some(&v), &[]), Ok(None));
            assert_eq!(integer(Some(&v)), Ok(None));
            assert_eq!(float(Some(&v)), Ok(None));
            assert_eq!(follower_count(Some(&v)), Ok(None));
            assert_eq!(timestamp_micros(Some(&v)), Ok(None));
        }
        assert_eq!(text(None, &[]), Ok(None));
    }

    #[test]
    fn placeholders_become_null_only_in_their_column() {
        let p = ["No Title Data Available"];
        assert_eq!(text(Some(&f!("No Title Data Available")), &p), Ok(None));
        assert_eq!(
            text(Some(&f!("No Title Data Available")), &[])
                .unwrap()
                .as_deref(),
            Some("No Title Data Available")
        );
        assert_eq!(
            text(Some(&f!("Untitled")), &p).unwrap().as_deref(),
            Some("Untitled")
        );
        assert_eq!(text(Some(&f!(12)), &p).unwrap().as_deref(), Some("12"));
        assert!(matches!(
            text(Some(&f!([1])), &p),
            Err(ValueError::NotString(_))
        ));
    }

    #[test]
    fn integers_accept_integral_values_only() {
        assert_eq!(integer(Some(&f!(20))), Ok(Some(20)));
        assert_eq!(integer(Some(&f!("20"))), Ok(Some(20)));
        assert_eq!(integer(Some(&f!(" 20 "))), Ok(Some(20)));
        assert_eq!(integer(Some(&f!(20.0))), Ok(Some(20)));
        assert_eq!(integer(Some(&f!("-7"))), Ok(Some(-7)));
        assert!(matches!(
            integer(Some(&f!(30.5))),
            Err(ValueError::NotInteger(_))
        ));
        assert!(matches!(
            integer(Some(&f!(true))),
            Err(ValueError::NotInteger(_))
        ));
        assert!(matches!(
            integer(Some(&f!("old"))),
            Err(ValueError::NotInteger(_))
        ));
        assert!(matches!(
            integer(Some(&f!(1e300))),
            Err(ValueError::OutOfRange(_))
        ));
    }

    #[test]
    fn follower_counts_scale_exactly() {
        let fc = |s: &str| follower_count(Some(&f!(s)));
        assert_eq!(fc("987"), Ok(Some(987)));
        assert_eq!(fc("12k"), Ok(Some(12_000)));
        assert_eq!(fc("12K"), Ok(Some(12_000)));
        assert_eq!(fc("1.5k"), Ok(Some(1_500)));
        assert_eq!(fc("3M"), Ok(Some(3_000_000)));
        assert_eq!(fc("1.25m"), Ok(Some(1_250_000)));
        assert_eq!(fc("2B"), Ok(Some(2_000_000_000)));
        assert_eq!(
            fc("1.2345k"),
            Ok(Some(1_235)),
            "rounded half up after exact scaling"
        );
        assert_eq!(fc("0.0004k"), Ok(Some(0)));
        assert_eq!(fc("User Info Error"), Ok(None));
        assert_eq!(follower_count(Some(&f!(42))), Ok(Some(42)));
        // Limits of the digits-and-suffix path and of the general one.
        assert_eq!(fc("000123"), Ok(Some(123)));
        assert_eq!(fc("9223372036B"), Ok(Some(9_223_372_036_000_000_000)));
        assert_eq!(fc("999999999999999k"), Ok(Some(999_999_999_999_999_000)));
        assert_eq!(fc("9223372036854775807"), Ok(Some(i64::MAX)));
        assert_eq!(fc("-12k"), Ok(Some(-12_000)));
        for bad in [
            "abc",
            "k",
            "1.2.3k",
            "12kk",
            "1e3",
            ".",
            "99999999999B",
            "9223372037B",
            "999999999999999M",
            "9223372036854775808",
        ] {
            assert!(
                matches!(fc(bad), Err(ValueError::BadFollowerCount(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_in_every_listed_shape() {
        let base = 1_598_586_767_000_000; // 2020-08-28T03:52:47Z
        assert_eq!(ts("2020-08-28T03:52:47"), Some(base));
        assert_eq!(ts("2020-08-28 03:52:47"), Some(base));
        assert_eq!(ts("2020-08-28T03:52:47Z"), Some(base));
        assert_eq!(ts("2020-08-28T03:52:47.123456"), Some(base + 123_456));
        assert_eq!(ts("2020-08-28 03:52:47.5Z"), Some(base + 500_000));
        assert_eq!(ts("2020-08-28T05:52:47+02:00"), Some(base));
        assert_eq!(ts("2020-08-28T01:52:47.25-02:00"), Some(base + 250_000));
        for bad in [
            "2020-08-28",
            "yesterday",
            "2020-13-28T03:52:47",
            "2020-08-28X03:52:47",
        ] {
            assert!(
                matches!(
                    timestamp_micros(Some(&f!(bad))),
                    Err(ValueError::BadTimestamp(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            timestamp_micros(Some(&f!(5))),
            Err(ValueError::BadTimestamp(_))
        ));
    }

    #[test]
    fn floats_from_numbers_and_numeric_strings() {
        assert_eq!(float(Some(&f!(-88.8298))), Ok(Some(-88.8298)));
        assert_eq!(float(Some(&f!("17.5"))), Ok(Some(17.5)));
        assert!(matches!(
            float(Some(&f!("north"))),
            Err(ValueError::NotNumber(_))
        ));
        assert!(matches!(
            float(Some(&f!("NaN"))),
            Err(ValueError::NotNumber(_))
        ));
    }
}
