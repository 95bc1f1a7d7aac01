//! The real sample records in `tests/data/` through the cleaning operators: zero
//! rejects, and values checked against hand-computed expectations.

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use pinstream::clean::{clean_into, Kind, RecordMeta, RejectsColumns, TableColumns};

use crate::support;

fn clean_file(kind: Kind) -> (RecordBatch, usize) {
    let text = std::fs::read_to_string(support::sample_data().join(format!("{kind}.ndjson")))
        .expect("the sample records in tests/data");
    let mut rows = TableColumns::new(kind);
    let mut rejects = RejectsColumns::default();
    for (i, line) in text.lines().enumerate() {
        let seq = i.to_string();
        let meta = RecordMeta {
            shard_id: "s",
            sequence_number: &seq,
            sub_sequence_number: 0,
            arrival_micros: None,
        };
        let _ = clean_into(
            kind,
            line.as_bytes(),
            &meta,
            kind.name(),
            &mut rows,
            &mut rejects,
        );
    }
    (rows.finish().unwrap(), rejects.len())
}

fn row_of(b: &RecordBatch, ind: i64) -> usize {
    let c = b.column_by_name("ind").unwrap().as_primitive::<Int64Type>();
    (0..c.len())
        .find(|i| c.value(*i) == ind)
        .unwrap_or_else(|| panic!("ind {ind} present"))
}

fn text(b: &RecordBatch, col: &str, row: usize) -> Option<String> {
    let c = b.column_by_name(col).unwrap().as_string::<i32>();
    c.is_valid(row).then(|| c.value(row).to_owned())
}

#[test]
fn every_real_record_cleans_and_spot_checks_hold() {
    let (pin, rejected) = clean_file(Kind::Pin);
    assert_eq!((pin.num_rows(), rejected), (3675, 0));
    let r = row_of(&pin, 1);
    assert_eq!(
        pin.column_by_name("follower_count")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(r),
        2_000_000,
        "\"2M\""
    );
    assert_eq!(text(&pin, "poster_name", r).as_deref(), Some("Bored Panda"));
    let placeholders = [
        "No Title Data Available",
        "User Info Error",
        "Image src error.",
        "N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e",
        "No description available Story format",
    ];
    for col in [
        "title",
        "description",
        "poster_name",
        "tag_list",
        "image_src",
    ] {
        for i in 0..pin.num_rows() {
            if let Some(v) = text(&pin, col, i) {
                assert!(
                    !placeholders.contains(&v.as_str()) && !v.is_empty(),
                    "{col} kept placeholder {v:?}"
                );
            }
        }
    }
    let nulls = |col: &str| pin.column_by_name(col).unwrap().null_count();
    assert_eq!(
        nulls("follower_count"),
        29,
        "29 \"User Info Error\" follower counts"
    );
    assert_eq!(nulls("tag_list"), 57);
    assert_eq!(nulls("image_src"), 95 + 7);
    for i in 0..pin.num_rows() {
        let loc = text(&pin, "save_location", i).unwrap();
        assert!(
            loc.starts_with("/data/") && loc.ends_with(&text(&pin, "category", i).unwrap()),
            "{loc}"
        );
    }

    let (geo, rejected) = clean_file(Kind::Geo);
    assert_eq!((geo.num_rows(), rejected), (11154, 0));
    let r = row_of(&geo, 0);
    assert_eq!(text(&geo, "country", r).as_deref(), Some("Albania"));
    let coords = geo
        .column_by_name("coordinates")
        .unwrap()
        .as_list::<i32>()
        .value(r);
    let coords = coords.as_primitive::<Float64Type>();
    assert_eq!((coords.value(0), coords.value(1)), (-88.8298, -170.188));
    // 2019-01-01T07:21:13 UTC
    assert_eq!(
        geo.column_by_name("timestamp")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(r),
        1_546_327_273_000_000
    );

    let (user, rejected) = clean_file(Kind::User);
    assert_eq!((user.num_rows(), rejected), (11154, 0));
    let r = row_of(&user, 0);
    assert_eq!(text(&user, "user_name", r).as_deref(), Some("Adam Acosta"));
    assert_eq!(
        user.column_by_name("age")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(r),
        20
    );
    // 2015-10-21T21:26:45 UTC
    assert_eq!(
        user.column_by_name("date_joined")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(r),
        1_445_462_805_000_000
    );
}
