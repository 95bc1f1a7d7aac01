//! Hostile records put straight into a stream land in the rejects table, whole and with
//! their reason; KPL aggregates are split into their user records.

use std::collections::BTreeMap;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Int64Type;
use pinstream::worker::{self};
use tokio_util::sync::CancellationToken;

use crate::support::{self, count};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_rejects_with_their_reason_and_aggregates_are_split() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("hostile");
    let settings = support::settings(&name, dir.path(), "");
    support::create_streams(&aws, &settings, 1).await;
    let mut corrupt = pinstream::kpl::encode(&[("k", br#"{"ind": 99, "age": 40}"#)]);
    let n = corrupt.len();
    corrupt[n - 1] ^= 0xff;
    let hostile: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"ind\": 1, \"age\": ".to_vec(), "invalid_json"),
        (b"\xff\xfe{\"ind\": 2}".to_vec(), "invalid_utf8"),
        (b"[1, 2, 3]".to_vec(), "not_an_object"),
        (b"\"just a string\"".to_vec(), "not_an_object"),
        (
            br#"{"first_name": "No", "last_name": "Key"}"#.to_vec(),
            "missing_key",
        ),
        (br#"{"ind": true}"#.to_vec(), "invalid_key"),
        (br#"{"ind": "seven"}"#.to_vec(), "invalid_key"),
        (br#"{"ind": 3, "age": "old"}"#.to_vec(), "invalid_value"),
        (br#"{"ind": 4, "age": 30.5}"#.to_vec(), "invalid_value"),
        (
            br#"{"ind": 5, "date_joined": "last tuesday"}"#.to_vec(),
            "invalid_value",
        ),
        (corrupt, "corrupt_aggregate"),
    ];
    let good_aggregate = pinstream::kpl::encode(&[
        ("k1", br#"{"ind": 10, "first_name": "Ann", "last_name": "Lee", "age": "33", "date_joined": "2016-01-02 03:04:05"}"#),
        ("k2", br#"{"ind": 11, "age": "not an age"}"#),
        ("k1", br#"{"ind": 12, "first_name": "", "last_name": "Solo", "age": 20}"#),
    ]);
    let mut entries: Vec<PutRecordsRequestEntry> = hostile
        .iter()
        .map(|(d, _)| {
            PutRecordsRequestEntry::builder()
                .data(Blob::new(d.clone()))
                .partition_key("p")
                .build()
                .unwrap()
        })
        .collect();
    entries.push(
        PutRecordsRequestEntry::builder()
            .data(Blob::new(good_aggregate))
            .partition_key("p")
            .build()
            .unwrap(),
    );
    let out = aws
        .kinesis
        .put_records()
        .stream_name(&settings.streams[&pinstream::clean::Kind::User])
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_record_count(), Some(0));

    let run = support::run_options(true);
    let summary = worker::run(settings, aws, run, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        summary.records_read, 12,
        "Kinesis records (the aggregate is one)"
    );

    let rejects = support::read_table(dir.path(), "user_rejects").await;
    assert_eq!(
        count(&rejects),
        hostile.len() + 1,
        "every hostile record plus the bad user record inside the aggregate"
    );
    let mut by_raw: BTreeMap<String, (String, bool, i64)> = BTreeMap::new();
    for b in &rejects {
        let raw = b.column_by_name("raw_data").unwrap().as_string::<i32>();
        let b64 = b.column_by_name("raw_data_is_base64").unwrap().as_boolean();
        let reason = b.column_by_name("reason").unwrap().as_string::<i32>();
        let sub = b
            .column_by_name("_sub_sequence_number")
            .unwrap()
            .as_primitive::<Int64Type>();
        let detail = b.column_by_name("detail").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            assert!(!detail.value(i).is_empty());
            by_raw.insert(
                raw.value(i).to_owned(),
                (reason.value(i).to_owned(), b64.value(i), sub.value(i)),
            );
        }
    }
    use base64::Engine as _;
    for (data, reason) in &hostile {
        let (raw, is_b64) = match std::str::from_utf8(data) {
            Ok(s) => (s.to_owned(), false),
            Err(_) => (base64::engine::general_purpose::STANDARD.encode(data), true),
        };
        let got = by_raw
            .get(&raw)
            .unwrap_or_else(|| panic!("{raw:?} not in rejects: {by_raw:?}"));
        assert_eq!((got.0.as_str(), got.1), (*reason, is_b64), "{raw:?}");
    }
    let inner = by_raw
        .get(r#"{"ind": 11, "age": "not an age"}"#)
        .expect("bad user record of the aggregate");
    assert_eq!(
        (inner.0.as_str(), inner.2),
        ("invalid_value", 1),
        "rejected alone, with its sub-sequence number"
    );

    let users = support::read_table(dir.path(), "user").await;
    assert_eq!(count(&users), 2);
    let b = &users[0];
    let names = b.column_by_name("user_name").unwrap().as_string::<i32>();
    let subs = b
        .column_by_name("_sub_sequence_number")
        .unwrap()
        .as_primitive::<Int64Type>();
    let mut got: Vec<(String, i64)> = (0..b.num_rows())
        .map(|i| (names.value(i).to_owned(), subs.value(i)))
        .collect();
    got.sort();
    assert_eq!(got, vec![("Ann Lee".to_owned(), 0), ("Solo".to_owned(), 2)]);
    assert!(b.column_by_name("age").unwrap().is_valid(0));
}
