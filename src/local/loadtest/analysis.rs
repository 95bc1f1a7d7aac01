//! What a run left in its tables, read from the Delta logs and Parquet files on local disk
//! (independently of the worker's own bookkeeping): every record's identity, to count
//! duplicates, and its latency from Kinesis arrival to the commit that made it visible.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::read::query;

/// What a run left in its tables.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Distinct records (stream, shard, sequence, sub-sequence) over cleaned and rejects tables.
    pub distinct: u64,
    /// Rows whose record was already seen.
    pub duplicates: u64,
    /// Live data files and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Per row: milliseconds from its Kinesis arrival to the timestamp of the commit that
    /// added its file (compactions, which change no data, do not count).
    pub latencies_ms: Vec<i64>,
}

/// Reads every table's log and data files on local disk: each row's key (for exactly-once)
/// and its latency from arrival to the commit that added its file.
pub fn analyse(root: &Path) -> Result<Analysis, String> {
    // A record's key: its stream (cleaned and rejects tables share one), shard, sequence and
    // sub-sequence number. Shard ids and sequence numbers repeat across streams.
    let mut keys: HashSet<(&str, String, String, i64)> = HashSet::new();
    let mut a = Analysis {
        distinct: 0,
        duplicates: 0,
        files: 0,
        bytes: 0,
        latencies_ms: Vec::new(),
    };
    for table in query::table_names() {
        let dir = root.join(table);
        let stream = table.trim_end_matches("_rejects");
        let (live, commit_ms) = match log_files(&dir.join("_delta_log")) {
            Ok(x) => x,
            Err(_) => continue,
        };
        for (path, size) in live {
            a.files += 1;
            a.bytes += size;
            let committed = commit_ms.get(&path).copied();
            let file = std::fs::File::open(dir.join(&path)).map_err(|e| format!("{path}: {e}"))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(|e| format!("{path}: {e}"))?;
            for batch in reader {
                let b = batch.map_err(|e| format!("{path}: {e}"))?;
                let col = |n: &str| b.column_by_name(n).ok_or(format!("{path}: no column {n}"));
                let shard = col("_shard_id")?.as_string::<i32>();
                let seq = col("_sequence_number")?.as_string::<i32>();
                let sub = col("_sub_sequence_number")?.as_primitive::<Int64Type>();
                let arrival = col("_approximate_arrival_timestamp")?
                    .as_primitive::<TimestampMicrosecondType>();
                for i in 0..b.num_rows() {
                    let key = (
                        stream,
                        shard.value(i).to_owned(),
                        seq.value(i).to_owned(),
                        sub.value(i),
                    );
                    if !keys.insert(key) {
                        a.duplicates += 1;
                    }
                    if let (Some(c), true) = (committed, arrival.is_valid(i)) {
                        a.latencies_ms.push(c - arrival.value(i) / 1000);
                    }
                }
            }
        }
    }
    a.distinct = keys.len() as u64;
    Ok(a)
}

/// The table's live data files (path, size) from its JSON commits, and the commit
/// timestamp of each file's `add`. (A loadtest's tables are young: all JSON commits exist.)
type LiveFiles = (Vec<(String, u64)>, HashMap<String, i64>);

fn log_files(log: &Path) -> std::io::Result<LiveFiles> {
    let mut versions: Vec<(u64, PathBuf)> = std::fs::read_dir(log)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let v = name.strip_suffix(".json")?.parse().ok()?;
            Some((v, e.path()))
        })
        .collect();
    versions.sort();
    let mut live: HashMap<String, u64> = HashMap::new();
    let mut commit_ms = HashMap::new();
    for (_, path) in versions {
        let text = std::fs::read_to_string(path)?;
        let actions: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let ts = actions
            .iter()
            .find_map(|a| a["commitInfo"]["timestamp"].as_i64())
            .unwrap_or(0);
        for a in &actions {
            if let Some(p) = a["add"]["path"].as_str() {
                live.insert(p.to_owned(), a["add"]["size"].as_u64().unwrap_or(0));
                if a["add"]["dataChange"].as_bool() != Some(false) {
                    commit_ms.insert(p.to_owned(), ts);
                }
            }
            if let Some(p) = a["remove"]["path"].as_str() {
                live.remove(p);
            }
        }
    }
    Ok((live.into_iter().collect(), commit_ms))
}
