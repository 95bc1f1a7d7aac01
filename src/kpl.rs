//! Kinesis Producer Library aggregation: records that start with the magic bytes
//! `F3 89 9A C2` carry a protobuf `AggregatedRecord` followed by the MD5 of that protobuf.
//! [`decode`] splits one into its user records; [`encode`] builds one (the producer's
//! `--aggregate`, and tests). Hand-written protobuf: the message is three fields deep.
//!
//! ```text
//! message AggregatedRecord { repeated string partition_key_table = 1;
//!                            repeated string explicit_hash_key_table = 2;
//!                            repeated Record records = 3; }
//! message Record { required uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2;
//!                  required bytes data = 3; repeated Tag tags = 4; }
//! ```

use md5::{Digest, Md5};

pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// What one Kinesis record's data turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not aggregated: the data is the user record.
    Plain(&'a [u8]),
    /// User records of an aggregate, in order (their index is the sub-sequence number).
    Aggregated(Vec<&'a [u8]>),
}

/// Why an aggregate could not be split; the whole record goes to rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    #[error("KPL aggregate shorter than magic + MD5")]
    TooShort,
    #[error("KPL aggregate MD5 does not match its contents")]
    BadDigest,
    #[error("KPL aggregate protobuf is malformed: {0}")]
    Protobuf(&'static str),
}

/// Splits `data` into user records when it is a KPL aggregate.
pub fn decode(data: &[u8]) -> Result<Decoded<'_>, KplError> {
    if !data.starts_with(&MAGIC) {
        return Ok(Decoded::Plain(data));
    }
    if data.len() < MAGIC.len() + DIGEST_LEN {
        return Err(KplError::TooShort);
    }
    let (body, digest) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - DIGEST_LEN);
    if Md5::digest(body).as_slice() != digest {
        return Err(KplError::BadDigest);
    }
    let mut records = Vec::new();
    let mut keys = 0u64;
    let mut r = Reader(body);
    while !r.0.is_empty() {
        let (field, wire) = r.key()?;
        match (field, wire) {
            (1, 2) => {
                r.bytes()?;
                keys += 1;
            }
            (3, 2) => {
                let (data, key_index) = record(r.bytes()?)?;
                if key_index >= keys {
                    // Keys are written before records; an index past the table is corrupt.
                    return Err(KplError::Protobuf("partition key index out of range"));
                }
                records.push(data);
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(Decoded::Aggregated(records))
}

/// One `Record` message: its data and partition key index.
fn record(buf: &[u8]) -> Result<(&[u8], u64), KplError> {
    let mut r = Reader(buf);
    let (mut data, mut key_index) = (None, None);
    while !r.0.is_empty() {
        match r.key()? {
            (1, 0) => key_index = Some(r.varint()?),
            (3, 2) => data = Some(r.bytes()?),
            (_, w) => r.skip(w)?,
        }
    }
    match (data, key_index) {
        (Some(d), Some(k)) => Ok((d, k)),
        (None, _) => Err(KplError::Protobuf("record without data")),
        (_, None) => Err(KplError::Protobuf("record without partition key index")),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, KplError> {
        let mut v = 0u64;
        for (i, b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(KplError::Protobuf("truncated varint"))
    }

    fn key(&mut self) -> Result<(u64, u8), KplError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Result<&'a [u8], KplError> {
        let len =
            usize::try_from(self.varint()?).map_err(|_| KplError::Protobuf("length overflow"))?;
        if len > self.0.len() {
            return Err(KplError::Protobuf("truncated field"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn skip(&mut self, wire: u8) -> Result<(), KplError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.advance(8),
            2 => self.bytes().map(drop),
            5 => self.advance(4),
            _ => Err(KplError::Protobuf("unsupported wire type")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), KplError> {
        if n > self.0.len() {
            return Err(KplError::Protobuf("truncated field"));
        }
        self.0 = &self.0[n..];
        Ok(())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Builds a KPL aggregate of `(partition_key, data)` user records, readable by pinstream
/// and by the Kinesis Client Library.
pub fn encode(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut keys: Vec<&str> = Vec::new();
    let mut body = Vec::new();
    let mut indexes = Vec::with_capacity(records.len());
    for (key, _) in records {
        let i = keys.iter().position(|k| k == key).unwrap_or_else(|| {
            keys.push(key);
            keys.len() - 1
        });
        indexes.push(i as u64);
    }
    for k in &keys {
        put_bytes(&mut body, 1, k.as_bytes());
    }
    for ((_, data), index) in records.iter().zip(indexes) {
        let mut rec = Vec::with_capacity(data.len() + 8);
        put_varint(&mut rec, 1 << 3);
        put_varint(&mut rec, index);
        put_bytes(&mut rec, 3, data);
        put_bytes(&mut body, 3, &rec);
    }
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_records_pass_through() {
        assert_eq!(decode(b"{\"ind\":1}"), Ok(Decoded::Plain(b"{\"ind\":1}")));
    }

    #[test]
    fn aggregates_round_trip_in_order() {
        let recs: [(&str, &[u8]); 3] = [("a", b"{\"ind\":1}"), ("b", b"{\"ind\":2}"), ("a", b"")];
        let agg = encode(&recs);
        assert!(agg.starts_with(&MAGIC));
        assert_eq!(
            decode(&agg),
            Ok(Decoded::Aggregated(recs.iter().map(|(_, d)| *d).collect()))
        );
    }

    /// A fixed aggregate as the KPL writes it (two keys, explicit field order), so the
    /// format is pinned independently of `encode`.
    #[test]
    fn decodes_a_hand_built_kpl_aggregate() {
        let mut body = vec![0x0a, 0x01, b'k', 0x0a, 0x01, b'j'];
        // Record{partition_key_index: 1, data: "x"} with an unknown tag field 4 included.
        body.extend_from_slice(&[
            0x1a, 0x0a, 0x08, 0x01, 0x1a, 0x01, b'x', 0x22, 0x03, 0x0a, 0x01, b't',
        ]);
        let mut agg = MAGIC.to_vec();
        agg.extend_from_slice(&body);
        agg.extend_from_slice(&Md5::digest(&body));
        assert_eq!(decode(&agg), Ok(Decoded::Aggregated(vec![&b"x"[..]])));
    }

    #[test]
    fn corrupt_aggregates_are_errors() {
        let mut agg = encode(&[("a", b"{}")]);
        let last = agg.len() - 1;
        agg[last] ^= 1;
        assert_eq!(decode(&agg), Err(KplError::BadDigest));
        assert_eq!(decode(&MAGIC), Err(KplError::TooShort));
        // Truncated protobuf with a valid digest.
        let body = [0x1a, 0x05, 0x08];
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&body);
        bad.extend_from_slice(&Md5::digest(body));
        assert!(matches!(decode(&bad), Err(KplError::Protobuf(_))));
        // Key index past the key table.
        let body = [0x1a, 0x05, 0x08, 0x03, 0x1a, 0x01, b'x'];
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&body);
        bad.extend_from_slice(&Md5::digest(body));
        assert_eq!(
            decode(&bad),
            Err(KplError::Protobuf("partition key index out of range"))
        );
    }
}
