//! The fast path of [`super::parse`]: one pass over a flat object in the shape producers
//! send. Keys are strings without escapes; values are strings without escapes, integers of
//! at most 15 digits, decimals of at most 15 digits without an exponent, `true`, `false` or
//! `null`. Anything else (nesting, escapes, exponents, longer numbers, `-0`, and all invalid
//! JSON) is not decided here: [`parse`] returns `None` and the caller parses the text with
//! serde_json, whose answer and error message stand. So this path only ever answers what
//! serde_json would answer, with the same numbers, and the same last value for a repeated
//! key; the differential tests below hold it to that.
//!
//! Why it is faster than serde_json on these records: strings are scanned 16 bytes at a
//! time with a branch-free classification the compiler turns into vector compares (safe
//! code, no intrinsics), each value is written once into its slot instead of being handed
//! through a visitor, and keys nobody reads are skipped without building anything.

use std::borrow::Cow;

use serde_json::Number;

use super::{slot, Field, Keys, Object};

/// The object `text` holds, when it is a flat object in the shape described above;
/// `None` means "not decided here" (parse it with serde_json), never "invalid".
pub(super) fn parse<K: Keys>(text: &str) -> Option<Object<'_, K>> {
    let b = text.as_bytes();
    let mut obj = Object::<K>::empty();
    let mut i = skip_ws(b, 0);
    if *b.get(i)? != b'{' {
        return None;
    }
    i = skip_ws(b, i + 1);
    if *b.get(i)? == b'}' {
        i += 1;
    } else {
        let mut ignored = None;
        // The slot the next key most likely fills: real producers send keys in one order, and
        // `K::NAMES` lists them in that order.
        let mut guess = 0;
        loop {
            if *b.get(i)? != b'"' {
                return None;
            }
            let (found, end) = match expected_key::<K>(b, i + 1, guess) {
                Some(end) => (Some(guess), end),
                None => {
                    let end = string_end(b, i + 1)?;
                    (slot::<K>(text.get(i + 1..end)?), end)
                }
            };
            i = skip_ws(b, end + 1);
            if *b.get(i)? != b':' {
                return None;
            }
            i = skip_ws(b, i + 1);
            let out = match found {
                Some(s) => {
                    guess = s + 1;
                    &mut obj.slots[s]
                }
                None => &mut ignored,
            };
            i = skip_ws(b, value(text, i, out)?);
            match *b.get(i)? {
                b',' => i = skip_ws(b, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(obj)
}

/// When the key starting at `start` (after its opening quote) is `K::NAMES[guess]`, the
/// index of its closing quote. Names hold no quote, backslash or control character, so
/// the name followed by a quote is the whole key, unescaped.
#[inline]
fn expected_key<K: Keys>(b: &[u8], start: usize, guess: usize) -> Option<usize> {
    let name = K::NAMES.get(guess)?.as_bytes();
    let end = start + name.len();
    (b.get(end) == Some(&b'"') && same(&b[start..end], name)).then_some(end)
}

/// `a == b` for two slices of the same length, a word at a time (keys are 3 to 20 bytes:
/// a call to `memcmp` costs more than the comparison).
#[inline(always)]
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    let word =
        |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let half =
        |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap_or_default());
    match n {
        0..=3 => a == b,
        4..=8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        // Overlapping words: the first ones, then the last eight bytes.
        _ => {
            let mut i = 0;
            while i + 8 < n {
                if word(a, i) != word(b, i) {
                    return false;
                }
                i += 8;
            }
            word(a, n - 8) == word(b, n - 8)
        }
    }
}

/// JSON whitespace, as serde_json skips it.
#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Reads the value at `i` into `out`; the index after it.
#[inline]
fn value<'a>(text: &'a str, i: usize, out: &mut Option<Field<'a>>) -> Option<usize> {
    let b = text.as_bytes();
    let (field, next) = match *b.get(i)? {
        b'"' => {
            let end = string_end(b, i + 1)?;
            (Field::Str(Cow::Borrowed(text.get(i + 1..end)?)), end + 1)
        }
        b't' => literal(b, i, b"true", Field::Bool(true))?,
        b'f' => literal(b, i, b"false", Field::Bool(false))?,
        b'n' => literal(b, i, b"null", Field::Null)?,
        b'-' | b'0'..=b'9' => {
            let (n, next) = number(b, i)?;
            (Field::Number(n), next)
        }
        _ => return None,
    };
    *out = Some(field);
    Some(next)
}

fn literal<'a>(b: &[u8], i: usize, word: &[u8], field: Field<'a>) -> Option<(Field<'a>, usize)> {
    (b.get(i..i + word.len())? == word).then_some((field, i + word.len()))
}

/// Powers of ten a `f64` holds exactly.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Most digits a number read here may have: below 2^53, so the digits are exact as a
/// `f64` and a decimal is one correctly rounded division (what serde_json computes too).
const MAX_DIGITS: usize = 15;

/// A number serde_json would read as the same `Number`: an integer (`u64` when
/// non-negative, `i64` when negative) or a decimal without exponent.
fn number(b: &[u8], mut i: usize) -> Option<(Number, usize)> {
    let negative = b[i] == b'-';
    if negative {
        i += 1;
    }
    let mut digits = 0;
    let mut mantissa: u64 = 0;
    let mut read_digits = |i: &mut usize, digits: &mut usize| {
        while let Some(&d @ b'0'..=b'9') = b.get(*i) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            *digits += 1;
            *i += 1;
        }
    };
    match b.get(i)? {
        // A leading zero stands alone ("01" is refused by serde_json; the caller sees the
        // `1` where it wants `,` or `}` and falls back).
        b'0' => {
            i += 1;
            digits = 1;
        }
        b'1'..=b'9' => read_digits(&mut i, &mut digits),
        _ => return None,
    }
    let mut fraction = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        read_digits(&mut i, &mut fraction);
        if fraction == 0 {
            return None;
        }
    }
    if digits + fraction > MAX_DIGITS || matches!(b.get(i), Some(b'e' | b'E')) {
        return None;
    }
    let n = if fraction > 0 {
        let f = mantissa as f64 / POW10[fraction];
        Number::from_f64(if negative { -f } else { f })?
    } else if negative {
        // serde_json reads "-0" as the float -0.0; left to it.
        if mantissa == 0 {
            return None;
        }
        Number::from(-(mantissa as i64))
    } else {
        Number::from(mantissa)
    };
    Some((n, i))
}

/// The index of the quote that closes the string starting at `start`, or `None` when an
/// escape, a control character or the end of the text comes first.
#[inline]
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    while let Some(block) = b.get(i..i + BLOCK) {
        let block: &[u8; BLOCK] = block.try_into().ok()?;
        if any_special(block) {
            let at = i + first_special(block);
            return (b[at] == b'"').then_some(at);
        }
        i += BLOCK;
    }
    // The last few bytes, padded with bytes that are not special.
    let rest = &b[i..];
    let mut block = [b'x'; BLOCK];
    block[..rest.len()].copy_from_slice(rest);
    let at = first_special(&block);
    (at < rest.len() && rest[at] == b'"').then_some(i + at)
}

/// Bytes of a string looked at at once: one 16-byte vector (32 was slower: most
/// strings are short).
const BLOCK: usize = 16;

/// Whether the block holds a `"`, a `\` or a control character. Written as an OR over
/// all its bytes, which the compiler turns into vector compares (safe code, no
/// intrinsics).
#[inline]
fn any_special(block: &[u8; BLOCK]) -> bool {
    block.iter().fold(false, |any, &c| {
        any | (c == b'"') | (c == b'\\') | (c < 0x20)
    })
}

/// The position of the first special byte in the block (`BLOCK` when there is none),
/// eight bytes at a time: a byte equal to `"` or `\`, or below 0x20, sets its high bit.
/// The lowest set bit is exact (a borrow can only mark bytes after a real match).
#[inline]
fn first_special(block: &[u8; BLOCK]) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    for (k, word) in block.chunks_exact(8).enumerate() {
        let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let marks = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | w.wrapping_sub(ONES * 0x20) & !w)
            & HIGH;
        if marks != 0 {
            return k * 8 + marks.trailing_zeros() as usize / 8;
        }
    }
    BLOCK
}

#[cfg(test)]
mod tests {
    use super::super::{parse_with_serde_json, TopLevel};
    use super::*;
    use crate::clean::{GeoKeys, PinKeys, UserKeys};
    use proptest::prelude::*;

    enum All {}
    impl Keys for All {
        const NAMES: &'static [&'static str] = &["a", "b", "c", "k", "key", "index", "x"];
    }

    /// What serde_json makes of `text`: the object, or `None` when it is something else.
    fn reference<K: Keys>(text: &str) -> Option<Object<'_, K>> {
        match parse_with_serde_json::<K>(text) {
            Ok(TopLevel::Object(o)) => Some(o),
            _ => None,
        }
    }

    /// When the fast path answers, serde_json gives the same object.
    fn agrees<K: Keys>(text: &str) -> Result<bool, TestCaseError> {
        match parse::<K>(text) {
            Some(fast) => {
                let slow = reference::<K>(text).map(|o| o.slots);
                prop_assert_eq!(Some(&fast.slots), slow.as_ref(), "{}", text);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn check(text: &str) -> bool {
        agrees::<All>(text).unwrap()
    }

    #[test]
    fn answers_the_shapes_producers_send_and_agrees_with_serde_json() {
        for text in [
            r#"{}"#,
            r#" { } "#,
            r#"{"a":1}"#,
            "{\"a\" :\t\"x\" ,\r\n \"b\": true, \"c\":false,\"k\":null}",
            r#"{"a":-5,"b":0,"c":123456789012345,"k":-123456789012345}"#,
            r#"{"a":1.5,"b":-0.0,"c":0.1,"k":-77.0123,"x":12345678901234.5}"#,
            r#"{"a":"été … ∑","unread":"x","unread2":7,"b":"","a":"last wins"}"#,
            r#"{"key":"0123456789abcdef0123456789abcdef","x":"0123456789abcdef"}"#,
        ] {
            assert!(check(text), "fast path declined {text}");
        }
    }

    #[test]
    fn declines_everything_else_and_serde_json_decides() {
        for text in [
            "",
            " ",
            "[]",
            "\"x\"",
            "1",
            "{",
            r#"{"a":1"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}}"#,
            r#"{"a":"x\"y"}"#,
            r#"{"a\u0062":1}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"unterminated}"#,
            r#"{"a":[1]}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":1e5}"#,
            r#"{"a":1.5E-3}"#,
            r#"{"a":-0}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":1234567890123456}"#,
            r#"{"a":0.1234567890123456}"#,
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
            r#"{"a":nul}"#,
            r#"{a:1}"#,
            r#"{"a":1 "b":2}"#,
        ] {
            assert!(!check(text), "fast path answered {text:?}");
        }
    }

    #[test]
    fn key_comparison_sees_a_difference_at_every_position_of_every_length() {
        for n in 0..40 {
            let a: Vec<u8> = (0..n).map(|k| b'a' + (k % 26) as u8).collect();
            assert!(same(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] = b'_';
                assert!(!same(&a, &b), "{n} {at}");
            }
        }
    }

    #[test]
    fn strings_end_at_the_first_special_byte_in_every_block_position() {
        // Every length across the 16-byte blocks and the tail, ending in each kind of
        // special byte.
        for len in 0..70 {
            let body = "é".repeat(len / 2) + &"x".repeat(len % 2);
            assert!(check(&format!(r#"{{"a":"{body}","b":1}}"#)), "{len}");
            for bad in ["\\n", "\u{1}", "\u{1f}"] {
                let text = format!(r#"{{"a":"{body}{bad}","b":1}}"#);
                assert!(!check(&text), "{text:?}");
                assert_eq!(reference::<All>(&text).is_some(), bad == "\\n", "{text:?}");
            }
        }
    }

    /// Realistic records from the producer's generator (dirty ones included), whole and
    /// damaged: wherever the fast path answers, it answers what serde_json answers, and it
    /// answers for the clean generated records.
    #[test]
    fn generated_records_whole_and_damaged_agree_with_serde_json() {
        let mut g = crate::producer::generator::Generator::new(7, 0.05);
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut answered, mut total) = (0, 0);
        for _ in 0..400 {
            let (_, triple) = g.next_triple();
            for (kind, data) in triple {
                let text = String::from_utf8(data).unwrap();
                total += 1;
                let fast = match kind {
                    crate::clean::Kind::Pin => agrees::<PinKeys>(&text).unwrap(),
                    crate::clean::Kind::Geo => agrees::<GeoKeys>(&text).unwrap(),
                    crate::clean::Kind::User => agrees::<UserKeys>(&text).unwrap(),
                };
                answered += usize::from(fast);
                // Damage: replace, insert or delete a byte with one JSON cares about.
                for _ in 0..8 {
                    let mut bytes = text.clone().into_bytes();
                    let at = (next() as usize) % bytes.len();
                    const BYTES: &[u8] = b"{}[]\":,.-+eE0123456789\\ tfn\x01x";
                    let c = BYTES[(next() as usize) % BYTES.len()];
                    match next() % 3 {
                        0 => bytes[at] = c,
                        1 => bytes.insert(at, c),
                        _ => {
                            bytes.remove(at);
                        }
                    }
                    if let Ok(damaged) = String::from_utf8(bytes) {
                        agrees::<PinKeys>(&damaged).unwrap();
                        agrees::<GeoKeys>(&damaged).unwrap();
                        agrees::<UserKeys>(&damaged).unwrap();
                    }
                }
            }
        }
        // Generated records only leave the fast path for escapes in their text or when the
        // generator made them malformed on purpose.
        assert!(answered * 10 >= total * 9, "{answered} of {total}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Numbers in every spelling near the limits read as serde_json reads them.
        #[test]
        fn numbers_agree_with_serde_json(
            int in any::<i64>(),
            digits in 0usize..18,
            frac in 0usize..18,
            neg in any::<bool>(),
        ) {
            let s = int.unsigned_abs().to_string();
            let whole = &s[..digits.min(s.len()).max(1)];
            let fraction = &format!("{:018}", int.unsigned_abs() % 1_000_000_000_000_000_000)[..frac];
            let sign = if neg { "-" } else { "" };
            for text in [
                format!(r#"{{"a":{sign}{whole}}}"#),
                format!(r#"{{"a":{sign}{whole}.{fraction}}}"#),
                format!(r#"{{"a":{sign}0.{fraction}}}"#),
                format!(r#"{{"a":{}}}"#, int),
                format!(r#"{{"a":{}}}"#, f64::from_bits(int as u64)),
            ] {
                agrees::<All>(&text)?;
            }
        }

        /// Arbitrary text near the accepted shape: the fast path never disagrees.
        #[test]
        fn near_shaped_text_never_disagrees(text in r#"\{( ?"[abk\\é]{0,3}" ?: ?("[a-z\\"é\x01]{0,20}"|-?[0-9]{1,17}(\.[0-9]{0,3})?|true|false|null|\[\]) ?,?){0,4}\} ?"#) {
            agrees::<All>(&text)?;
        }
    }
}
