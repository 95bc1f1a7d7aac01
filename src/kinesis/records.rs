//! The records of one GetRecords answer or fan-out event, packed: every record's data
//! back to back in one buffer and every sequence number in one string, so a 10,000-record
//! answer is three allocations instead of three per record.

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::Record;

/// Records in arrival order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Records {
    data: Vec<u8>,
    sequence_numbers: String,
    ends: Vec<Ends>,
}

/// Where a record's data and sequence number end in the shared buffers (each starts where
/// the one before ends), and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ends {
    data: usize,
    sequence_number: usize,
    arrival_micros: Option<i64>,
}

/// One record, borrowed from [`Records`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordRef<'a> {
    pub data: &'a [u8],
    pub sequence_number: &'a str,
    /// `ApproximateArrivalTimestamp`, microseconds since the epoch.
    pub arrival_micros: Option<i64>,
}

impl Records {
    /// Room for `records` records of `data_bytes` bytes in all.
    pub fn with_capacity(records: usize, data_bytes: usize) -> Self {
        Records {
            data: Vec::with_capacity(data_bytes),
            sequence_numbers: String::with_capacity(records * 56),
            ends: Vec::with_capacity(records),
        }
    }

    /// The SDK's records (fan-out events, or an answer the SDK decoded), packed.
    pub fn from_sdk(records: &[Record]) -> Self {
        let bytes = records.iter().map(|r| r.data().as_ref().len()).sum();
        let mut out = Records::with_capacity(records.len(), bytes);
        for r in records {
            out.data.extend_from_slice(r.data().as_ref());
            out.push_end(
                r.sequence_number(),
                r.approximate_arrival_timestamp().map(micros),
            );
        }
        out
    }

    /// The buffer a record's data is appended to; [`Records::push_end`] closes the record.
    pub(super) fn data_mut(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    /// Ends the record whose data was appended since the last one.
    pub(super) fn push_end(&mut self, sequence_number: &str, arrival_micros: Option<i64>) {
        self.sequence_numbers.push_str(sequence_number);
        self.ends.push(Ends {
            data: self.data.len(),
            sequence_number: self.sequence_numbers.len(),
            arrival_micros,
        });
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of data over all records.
    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + Clone + '_ {
        (0..self.ends.len()).map(|i| self.get(i))
    }

    fn get(&self, i: usize) -> RecordRef<'_> {
        let end = self.ends[i];
        let (data, seq) = match i.checked_sub(1) {
            Some(before) => (self.ends[before].data, self.ends[before].sequence_number),
            None => (0, 0),
        };
        RecordRef {
            data: &self.data[data..end.data],
            sequence_number: &self.sequence_numbers[seq..end.sequence_number],
            arrival_micros: end.arrival_micros,
        }
    }

    pub fn last(&self) -> Option<RecordRef<'_>> {
        self.ends.len().checked_sub(1).map(|i| self.get(i))
    }
}

/// A timestamp in microseconds since the epoch.
pub fn micros(t: &DateTime) -> i64 {
    t.secs() * 1_000_000 + i64::from(t.subsec_nanos() / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;

    fn sdk(seq: &str, data: &str, secs: f64) -> Record {
        Record::builder()
            .sequence_number(seq)
            .partition_key("k")
            .data(Blob::new(data))
            .approximate_arrival_timestamp(DateTime::from_secs_f64(secs))
            .build()
            .unwrap()
    }

    #[test]
    fn packed_records_read_back_as_given() {
        let r = Records::from_sdk(&[
            sdk("1", "ab", 1.5),
            sdk("22", "", 2.0),
            sdk("333", "c", 3.25),
        ]);
        let got: Vec<_> = r
            .iter()
            .map(|r| (r.sequence_number, r.data, r.arrival_micros))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1", &b"ab"[..], Some(1_500_000)),
                ("22", &b""[..], Some(2_000_000)),
                ("333", &b"c"[..], Some(3_250_000)),
            ]
        );
        assert_eq!((r.len(), r.data_bytes()), (3, 3));
        assert_eq!(r.last().unwrap().sequence_number, "333");
    }
}
