//! The `Records` of a GetRecords answer's JSON body, decoded by a reader made for them:
//! each record's base64 `Data` straight into one buffer, its sequence number into one
//! string ([`Records`]). What remains of the body (the `Records` array emptied) is left to
//! the SDK, which reads the iterator, the lag and the child shards from it as always.
//!
//! The SDK's generic JSON reader spends most of a drain's reading CPU on this array: a
//! token per value, an owned `String` per key compare and value, a `Blob` per record.

use super::records::{micros, Records};
use aws_sdk_kinesis::primitives::DateTime;

/// Why a body was left to the SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub &'static str);

/// The answer's records, and the body with an empty `Records` array (or the body as it is
/// when it has none).
pub fn take_records(body: &[u8]) -> Result<(Records, Vec<u8>), Unreadable> {
    let mut p = Parser { s: body, i: 0 };
    p.ws();
    p.expect(b'{')?;
    let mut found: Option<(usize, usize, Records)> = None;
    p.ws();
    if p.peek() == Some(b'}') {
        return Ok((Records::default(), body.to_vec()));
    }
    loop {
        p.ws();
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        if key == b"Records" && found.is_none() {
            let start = p.i;
            let records = p.records()?;
            found = Some((start, p.i, records));
        } else {
            p.skip_value(0)?;
        }
        p.ws();
        match p.next()? {
            b',' => continue,
            b'}' => break,
            _ => return Err(Unreadable("expected , or } after a member")),
        }
    }
    p.ws();
    if p.i != body.len() {
        return Err(Unreadable("text after the answer"));
    }
    Ok(match found {
        Some((start, end, records)) => {
            let mut rest = Vec::with_capacity(body.len() - (end - start) + 2);
            rest.extend_from_slice(&body[..start]);
            rest.extend_from_slice(b"[]");
            rest.extend_from_slice(&body[end..]);
            (records, rest)
        }
        None => (Records::default(), body.to_vec()),
    })
}

/// Nesting beyond this is not a GetRecords answer.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Result<u8, Unreadable> {
        let c = self.peek().ok_or(Unreadable("unexpected end"))?;
        self.i += 1;
        Ok(c)
    }

    fn expect(&mut self, c: u8) -> Result<(), Unreadable> {
        if self.next()? == c {
            Ok(())
        } else {
            Err(Unreadable("unexpected character"))
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    /// A string's raw bytes between its quotes (escapes left as they are).
    fn string(&mut self) -> Result<&'a [u8], Unreadable> {
        self.string_escaped().map(|(s, _)| s)
    }

    /// [`Parser::string`], and whether the string holds an escape.
    fn string_escaped(&mut self) -> Result<(&'a [u8], bool), Unreadable> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = &self.s[self.i..];
            let at = memchr::memchr2(b'"', b'\\', rest).ok_or(Unreadable("unterminated string"))?;
            self.i += at + 1;
            if rest[at] == b'"' {
                return Ok((&self.s[start..self.i - 1], escaped));
            }
            // An escape: skip the escaped character (a \uXXXX's digits are plain).
            escaped = true;
            self.next()?;
        }
    }

    /// The `Records` array.
    fn records(&mut self) -> Result<Records, Unreadable> {
        self.expect(b'[')?;
        // Base64 is 4/3 of the data; a record's other members are about 150 bytes.
        let rest = self.s.len() - self.i;
        let mut out = Records::with_capacity(rest / 1000 + 1, rest / 4 * 3);
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            self.ws();
            self.record(&mut out)?;
            self.ws();
            match self.next()? {
                b',' => continue,
                b']' => return Ok(out),
                _ => return Err(Unreadable("expected , or ] after a record")),
            }
        }
    }

    /// One record object: `Data`, `SequenceNumber`, `ApproximateArrivalTimestamp`; other
    /// members (`PartitionKey`, `EncryptionType`) are skipped.
    fn record(&mut self, out: &mut Records) -> Result<(), Unreadable> {
        self.expect(b'{')?;
        let (mut data, mut sequence_number, mut arrival) = (None, None, None);
        self.ws();
        if self.peek() != Some(b'}') {
            loop {
                self.ws();
                let key = self.string()?;
                self.ws();
                self.expect(b':')?;
                self.ws();
                match key {
                    b"Data" => data = Some(self.string_escaped()?),
                    b"SequenceNumber" => sequence_number = Some(self.string()?),
                    b"ApproximateArrivalTimestamp" => arrival = Some(self.number()?),
                    _ => self.skip_value(1)?,
                }
                self.ws();
                match self.next()? {
                    b',' => continue,
                    b'}' => break,
                    _ => return Err(Unreadable("expected , or } in a record")),
                }
            }
        } else {
            self.i += 1;
        }
        let (data, escaped) = data.ok_or(Unreadable("a record without Data"))?;
        let sequence_number = sequence_number
            .filter(|s| !s.is_empty() && s.iter().all(u8::is_ascii_digit))
            .ok_or(Unreadable("a record without a plain SequenceNumber"))?;
        let arrival_micros = match arrival {
            Some(n) => Some(seconds_to_micros(n)?),
            None => None,
        };
        decode_base64(data, escaped, out.data_mut())?;
        // Digits only (checked above), so valid UTF-8.
        let sequence_number =
            std::str::from_utf8(sequence_number).map_err(|_| Unreadable("sequence number"))?;
        out.push_end(sequence_number, arrival_micros);
        Ok(())
    }

    /// A number's text.
    fn number(&mut self) -> Result<&'a [u8], Unreadable> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.i += 1;
        }
        if self.i == start {
            return Err(Unreadable("expected a number"));
        }
        Ok(&self.s[start..self.i])
    }

    /// Skips one JSON value of any kind.
    fn skip_value(&mut self, depth: usize) -> Result<(), Unreadable> {
        if depth > MAX_DEPTH {
            return Err(Unreadable("nested too deep"));
        }
        match self.peek().ok_or(Unreadable("unexpected end"))? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let close = if self.next()? == b'{' { b'}' } else { b']' };
                self.ws();
                if self.peek() == Some(close) {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if close == b'}' {
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => continue,
                        c if c == close => return Ok(()),
                        _ => return Err(Unreadable("expected , or a closing bracket")),
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Unreadable> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Unreadable("unknown literal"))
        }
    }
}

/// A JSON string of base64 appended to `out` decoded; an escaped string (`\/` is legal
/// JSON for `/`) is unescaped first.
fn decode_base64(raw: &[u8], escaped: bool, out: &mut Vec<u8>) -> Result<(), Unreadable> {
    let engine = &base64_simd::STANDARD;
    if !escaped {
        return engine
            .decode_append(raw, out)
            .map_err(|_| Unreadable("Data is not base64"));
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    let text: String =
        serde_json::from_slice(&quoted).map_err(|_| Unreadable("Data is not a JSON string"))?;
    engine
        .decode_append(text.as_bytes(), out)
        .map_err(|_| Unreadable("Data is not base64"))
}

/// Epoch seconds (with a fraction) as the SDK reads them, in microseconds.
fn seconds_to_micros(text: &[u8]) -> Result<i64, Unreadable> {
    let secs: f64 = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|s: &f64| s.is_finite())
        .ok_or(Unreadable("ApproximateArrivalTimestamp is not a number"))?;
    Ok(micros(&DateTime::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn records_are_decoded_and_the_rest_is_left_with_an_empty_array() {
        let body = format!(
            r#"{{"MillisBehindLatest":12,"NextShardIterator":"AAA=","Records":[{{"ApproximateArrivalTimestamp":1700000000.125,"Data":"{}","PartitionKey":"p\"q","SequenceNumber":"4961"}}, {{"SequenceNumber":"4962","Data":"{}","EncryptionType":"NONE","ApproximateArrivalTimestamp":1.7e9}}],"ChildShards":[{{"ShardId":"s-1","ParentShards":["s-0"],"HashKeyRange":{{"StartingHashKey":"0","EndingHashKey":"9"}}}}]}}"#,
            b64(r#"{"index": 1}"#),
            b64("ü\n")
        );
        let (records, rest) = take_records(body.as_bytes()).unwrap();
        let got: Vec<_> = records
            .iter()
            .map(|r| (r.sequence_number, r.data.to_vec(), r.arrival_micros))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "4961",
                    br#"{"index": 1}"#.to_vec(),
                    Some(1_700_000_000_125_000)
                ),
                (
                    "4962",
                    "ü\n".as_bytes().to_vec(),
                    Some(1_700_000_000_000_000)
                ),
            ]
        );
        assert_eq!(
            String::from_utf8(rest).unwrap(),
            r#"{"MillisBehindLatest":12,"NextShardIterator":"AAA=","Records":[],"ChildShards":[{"ShardId":"s-1","ParentShards":["s-0"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#
        );
    }

    #[test]
    fn an_escaped_slash_in_data_is_unescaped_before_decoding() {
        // base64 of 0xff 0xff 0xff is "////"; JSON may write it "\/\/\/\/".
        let body = r#"{"Records":[{"Data":"\/\/\/\/","SequenceNumber":"1"}]}"#;
        let (records, _) = take_records(body.as_bytes()).unwrap();
        assert_eq!(records.last().unwrap().data, &[0xff, 0xff, 0xff]);
        assert_eq!(records.last().unwrap().arrival_micros, None);
    }

    #[test]
    fn same_micros_as_the_sdk_reads_from_the_same_number() {
        for text in [
            "1700000000.125",
            "1700000000.1",
            "1.7000000001234567E9",
            "0",
        ] {
            let sdk = DateTime::from_secs_f64(text.parse().unwrap());
            assert_eq!(
                seconds_to_micros(text.as_bytes()).unwrap(),
                micros(&sdk),
                "{text}"
            );
        }
    }

    #[test]
    fn empty_and_recordless_answers() {
        let (r, rest) = take_records(br#"{"Records":[],"NextShardIterator":null}"#).unwrap();
        assert!(r.is_empty());
        assert_eq!(rest, br#"{"Records":[],"NextShardIterator":null}"#);
        let (r, rest) = take_records(b" {} ").unwrap();
        assert!(r.is_empty());
        assert_eq!(rest, b" {} ");
    }

    #[test]
    fn anything_unexpected_is_left_to_the_sdk() {
        for body in [
            &br#"{"Records":[{"Data":"!!","SequenceNumber":"1"}]}"#[..],
            br#"{"Records":[{"SequenceNumber":"1"}]}"#,
            br#"{"Records":[{"Data":"","SequenceNumber":"x1"}]}"#,
            br#"{"Records":[{"Data":"","SequenceNumber":"1","ApproximateArrivalTimestamp":"soon"}]}"#,
            br#"{"Records":[{"Data":"","SequenceNumber":"1"}]"#,
            br#"{"Records":[{"Data":"","SequenceNumber":"1"}]} x"#,
            br#"["Records"]"#,
            br#"{"Records":{}}"#,
        ] {
            assert!(
                take_records(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
