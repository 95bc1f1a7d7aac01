//! Another engine's DELETE with deletion vectors, as Spark and Databricks write them (the
//! feature added to the protocol, then a commit that removes a file and adds it back with a
//! deletion vector: inline, or in a `deletion_vector_<uuid>.bin` file beside the data),
//! then compaction by `pinstream maintain`. Read back by an independent reader (Python
//! deltalake, the engine analysts use): the deleted rows stay deleted, every other row is
//! there once.

use std::path::Path;

use pinstream::delta;
use pinstream::producer::generator::Generator;
use serde_json::{json, Value};

use crate::support;

const Z85: &[u8] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Z85 of `bytes`, zero-padded to a multiple of 4 as Delta's encoder does.
fn z85(bytes: &[u8]) -> String {
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().div_ceil(4) * 4, 0);
    let mut out = String::new();
    for chunk in padded.chunks(4) {
        let mut n = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as u64;
        let mut five = [0u8; 5];
        for c in five.iter_mut().rev() {
            *c = Z85[(n % 85) as usize];
            n /= 85;
        }
        out.push_str(std::str::from_utf8(&five).unwrap());
    }
    out
}

/// A deletion vector's bytes: Delta's magic number, then the rows as a 64-bit
/// RoaringTreemap in the portable format (one bucket, one array container).
fn deletion_vector(rows: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&1681511377u32.to_le_bytes());
    v.extend_from_slice(&1u64.to_le_bytes()); // buckets
    v.extend_from_slice(&0u32.to_le_bytes()); // the bucket's high 32 bits
    v.extend_from_slice(&12346u32.to_le_bytes()); // no run containers
    v.extend_from_slice(&1u32.to_le_bytes()); // containers
    v.extend_from_slice(&0u16.to_le_bytes()); // the container's key
    v.extend_from_slice(&((rows.len() - 1) as u16).to_le_bytes());
    v.extend_from_slice(&16u32.to_le_bytes()); // its offset in the 32-bit bitmap
    for r in rows {
        v.extend_from_slice(&r.to_le_bytes());
    }
    v
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The table's data files (paths relative to it), oldest commit first.
fn file_paths(table: &deltalake::DeltaTable) -> Vec<String> {
    let mut files: Vec<(i64, String)> = table
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| (f.modification_time(), f.path().into_owned()))
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Writes another engine's commit entry at `version`.
fn write_entry(table: &Path, version: u64, actions: &[Value]) {
    let text: String = actions.iter().map(|a| format!("{a}\n")).collect();
    let path = table.join(format!("_delta_log/{version:020}.json"));
    std::fs::write(path, text).unwrap();
}

/// The add action of `path` in the table's latest commit entries, as written.
fn add_of(table: &Path, path: &str) -> Value {
    let mut found = None;
    for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                if v["add"]["path"] == path {
                    found = Some(v["add"].clone());
                }
            }
        }
    }
    found.unwrap_or_else(|| panic!("no add of {path}"))
}

/// A DELETE of row 0 of `add`'s file by another engine: the file removed and added back
/// with `dv` (a deletion vector descriptor).
fn delete_first_row(table: &Path, version: u64, add: &Value, dv: Value) {
    let now = chrono::Utc::now().timestamp_millis();
    let mut readded = add.clone();
    readded["deletionVector"] = dv;
    readded["dataChange"] = json!(true);
    write_entry(
        table,
        version,
        &[
            json!({"commitInfo": {"timestamp": now, "operation": "DELETE", "engineInfo": "Apache-Spark/3.5.1 Delta-Lake/3.2.0"}}),
            json!({"remove": {"path": add["path"], "deletionTimestamp": now, "dataChange": true, "extendedFileMetadata": true, "partitionValues": {}, "size": add["size"]}}),
            json!({"add": readded}),
        ],
    );
}

/// The keys (`_shard_id`, `_sequence_number`) Python deltalake reads from the table,
/// sorted, one per line.
fn keys_read_by_python(table: &Path) -> Vec<String> {
    let script = "import sys, deltalake, pyarrow\n\
q = deltalake.QueryBuilder().register('t', deltalake.DeltaTable(sys.argv[1]))\n\
t = pyarrow.table(q.execute('SELECT _shard_id, _sequence_number FROM t').read_all())\n\
for s, q in sorted(zip(t.column(0).to_pylist(), t.column(1).to_pylist())): print(f'{s} {q}')\n";
    support::run_python(&["-c", script, &table.to_string_lossy()])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_rows_deleted_by_deletion_vectors_deleted() {
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(&support::unique("dv"), &root, "");
    let pin = root.join("pin");
    let mut table = delta::open_or_create(
        &settings.table_root,
        "pin",
        &pinstream::clean::Kind::Pin.schema(),
    )
    .await
    .unwrap();
    let mut g = Generator::new(91, 0.0);
    let mut last = 0;
    let mut versions = Vec::new();
    for batch in 0..8 {
        let rows = support::pin_batch(&mut g, "shardId-000000000000", batch, 3);
        versions
            .push(support::append_as(&mut table, rows, "shardId-000000000000", &mut last).await);
    }
    let files = file_paths(&table);
    assert_eq!(files.len(), 8);
    let before = keys_read_by_python(&pin);
    assert_eq!(before.len(), 24);
    // Another engine turns deletion vectors on (Spark: ALTER TABLE ... SET TBLPROPERTIES
    // ('delta.enableDeletionVectors' = true)).
    let mut v = table.version().unwrap() + 1;
    let mut metadata: Value = serde_json::to_value(table.snapshot().unwrap().metadata()).unwrap();
    metadata["configuration"]["delta.enableDeletionVectors"] = json!("true");
    write_entry(
        &pin,
        v,
        &[
            json!({"commitInfo": {"timestamp": chrono::Utc::now().timestamp_millis(), "operation": "SET TBLPROPERTIES"}}),
            json!({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]}}),
            json!({"metaData": metadata}),
        ],
    );
    // A DELETE with an inline deletion vector: row 0 of the oldest file.
    v += 1;
    let inline = deletion_vector(&[0]);
    let first = add_of(&pin, &files[0]);
    delete_first_row(
        &pin,
        v,
        &first,
        json!({"storageType": "i", "pathOrInlineDv": z85(&inline), "sizeInBytes": inline.len(), "cardinality": 1}),
    );
    // A DELETE with a deletion vector in a file: row 0 of the second file.
    v += 1;
    let uuid = uuid::Uuid::new_v4();
    let data = deletion_vector(&[0]);
    let mut bin = vec![1u8];
    bin.extend_from_slice(&(data.len() as u32).to_be_bytes());
    bin.extend_from_slice(&data);
    bin.extend_from_slice(&crc32(&data).to_be_bytes());
    std::fs::write(pin.join(format!("deletion_vector_{uuid}.bin")), &bin).unwrap();
    let second = add_of(&pin, &files[1]);
    delete_first_row(
        &pin,
        v,
        &second,
        json!({"storageType": "u", "pathOrInlineDv": z85(uuid.as_bytes()), "offset": 1, "sizeInBytes": data.len(), "cardinality": 1}),
    );
    let deleted = keys_read_by_python(&pin);
    assert_eq!(
        deleted.len(),
        22,
        "the reader applies both deletion vectors: {deleted:?}"
    );

    // Compaction by the operator's command: every file qualifies by size and age.
    let config = support::write_config(
        dir.path(),
        &settings,
        "[maintenance]\ncompact_min_age = \"0s\"\ncompact_min_files = 2\n",
    );
    let out = support::pinstream()
        .args(["maintain", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = keys_read_by_python(&pin);
    assert_eq!(after, deleted, "compaction changed what a reader sees");
    // The two files with deletion vectors are still in the table, as they were; the six
    // others were compacted.
    let mut t = deltalake::open_table(
        url::Url::from_directory_path(std::fs::canonicalize(&pin).unwrap()).unwrap(),
    )
    .await
    .unwrap();
    t.update_state().await.unwrap();
    let now = file_paths(&t);
    assert!(
        now.contains(&files[0]) && now.contains(&files[1]),
        "{now:?}"
    );
    assert_eq!(now.len(), 3, "six files compacted into one: {now:?}");
    assert!(t.version().unwrap() > v, "a compaction committed");
}
