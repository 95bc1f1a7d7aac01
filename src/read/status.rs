//! `pinstream status`: every lease of the application, for operators. Reads the lease table
//! only; never changes it.

use serde_json::{json, Value};

use crate::lease::{Lease, LeaseError, LeaseTable};

/// All leases, sorted by stream and shard.
pub async fn leases(table: &LeaseTable) -> Result<Vec<Lease>, LeaseError> {
    let mut all = table.scan().await?;
    all.sort_by(|a, b| (&a.stream, &a.shard_id).cmp(&(&b.stream, &b.shard_id)));
    Ok(all)
}

pub fn to_json(leases: &[Lease]) -> Value {
    Value::Array(
        leases
            .iter()
            .map(|l| {
                json!({
                    "stream": l.stream,
                    "shard_id": l.shard_id,
                    "owner": l.owner,
                    "checkpoint": l.checkpoint.as_str(),
                    "sub_sequence": l.sub_sequence,
                    "batch_version": l.batch_version,
                    "millis_behind_latest": l.millis_behind_latest,
                    "records_per_second": l.records_per_second,
                    "bytes_per_second": l.bytes_per_second,
                    "parent_shard_ids": l.parent_shard_ids,
                    "counter": l.counter,
                    "last_error": l.last_error,
                    "read_stall": l.read_stall,
                })
            })
            .collect(),
    )
}

/// An aligned text table, one lease a line.
pub fn to_text(leases: &[Lease]) -> String {
    let dash = || "-".to_owned();
    let rows: Vec<[String; 8]> = leases
        .iter()
        .map(|l| {
            [
                l.stream.clone(),
                l.shard_id.clone(),
                l.owner.clone().unwrap_or_else(dash),
                l.checkpoint.as_str().into_owned(),
                l.millis_behind_latest
                    .map(|m| m.to_string())
                    .unwrap_or_else(dash),
                l.records_per_second
                    .map(|r| format!("{r:.1}"))
                    .unwrap_or_else(dash),
                l.bytes_per_second
                    .map(|b| format!("{b:.0}"))
                    .unwrap_or_else(dash),
                if l.parent_shard_ids.is_empty() {
                    dash()
                } else {
                    l.parent_shard_ids.join(",")
                },
            ]
        })
        .collect();
    let header = [
        "STREAM",
        "SHARD",
        "OWNER",
        "CHECKPOINT",
        "LAG_MS",
        "REC/S",
        "BYTES/S",
        "PARENTS",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |r: &[String; 8]| {
        r.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(&header);
    for r in &rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    let owners: std::collections::BTreeSet<&str> =
        leases.iter().filter_map(|l| l.owner.as_deref()).collect();
    for l in leases {
        if let Some(e) = &l.last_error {
            out.push_str(&format!("\nerror  {}:{}: {e}", l.stream, l.shard_id));
        }
        if let Some(why) = &l.read_stall {
            out.push_str(&format!("\nSTALLED {}:{}: {why}", l.stream, l.shard_id));
        }
    }
    for (owner, (n, rps, bps)) in per_worker(leases) {
        out.push_str(&format!(
            "\nworker {owner}: {n} leases, {rps:.1} rec/s, {bps:.0} bytes/s"
        ));
    }
    out.push_str(&format!(
        "\n{} leases, {} owned by {} workers",
        leases.len(),
        leases.iter().filter(|l| l.owner.is_some()).count(),
        owners.len()
    ));
    out
}

/// Per owner: leases held, and the sum of their records/s and bytes/s (the load the
/// balancing compares).
pub fn per_worker(leases: &[Lease]) -> std::collections::BTreeMap<&str, (usize, f64, f64)> {
    let mut sums = std::collections::BTreeMap::new();
    for l in leases.iter().filter(|l| !l.is_finished()) {
        if let Some(owner) = l.owner.as_deref() {
            let e = sums.entry(owner).or_insert((0, 0.0, 0.0));
            e.0 += 1;
            e.1 += l.records_per_second.unwrap_or(0.0);
            e.2 += l.bytes_per_second.unwrap_or(0.0);
        }
    }
    sums
}
