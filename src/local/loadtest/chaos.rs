//! `pinstream loadtest --chaos`: while the producer runs, a randomly chosen worker is
//! killed with SIGKILL every `--kill-every` and a replacement started; with `--split`, the
//! first open shard of every stream is split halfway through. The workers compact on a
//! short schedule meanwhile (see [`worker_defaults`]), and reach Kinesis and DynamoDB through
//! fault proxies (`netfault`) that delay, swallow and reset answers. At the end the load test checks what
//! it always checks (every record exactly once in the cleaned and rejects tables) and that
//! no shard was left unread (every closed shard's lease at SHARD_END).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::Fleet;
use super::LoadtestError;
use crate::aws::AwsClients;

/// What chaos to cause.
#[derive(Debug, Clone)]
pub struct Chaos {
    /// Kill a random worker (and start a replacement) this often.
    pub kill_every: Duration,
    /// Split the first open shard of every stream halfway through the run.
    pub split: bool,
    /// The share of answer chunks the fault proxies fault (0: no network faults).
    pub network_faults: f64,
}

/// What the chaos did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ChaosReport {
    pub kills: u32,
    pub splits: u32,
    /// The network faults the workers met, per service (see `netfault`).
    pub network: Vec<super::netfault::NetworkFaults>,
}

/// Worker settings a chaos run uses unless the worker config sets them: failover within a
/// few seconds of a kill, compaction every few seconds of files of any age, so that
/// compactions overlap appends, hand-overs and each other, and calls bounded tightly enough
/// that a swallowed answer costs seconds (sections may be dotted: `network.kinesis`).
pub fn worker_defaults() -> [(&'static str, &'static str, toml::Value); 10] {
    [
        ("lease", "failover_time", "3s".into()),
        ("maintenance", "compact_interval", "3s".into()),
        ("maintenance", "compact_min_age", "0s".into()),
        ("maintenance", "compact_min_files", 2.into()),
        ("network.kinesis", "attempt_timeout", "2s".into()),
        ("network.kinesis", "operation_timeout", "6s".into()),
        ("network.dynamodb", "attempt_timeout", "1s".into()),
        ("network.dynamodb", "operation_timeout", "3s".into()),
        ("reader", "quiet_timeout", "5s".into()),
        ("reader", "stall_timeout", "15s".into()),
    ]
}

/// Kills and replaces workers (and splits shards) until `stop` is cancelled.
pub(super) async fn run(
    chaos: &Chaos,
    fleet: &mut Fleet,
    aws: &AwsClients,
    streams: &[String],
    duration: Duration,
    stop: &CancellationToken,
) -> Result<ChaosReport, LoadtestError> {
    let started = Instant::now();
    let mut report = ChaosReport::default();
    let mut next_kill = started + chaos.kill_every;
    let mut split_at = chaos.split.then_some(started + duration / 2);
    loop {
        let next = split_at.map_or(next_kill, |s| s.min(next_kill));
        tokio::select! {
            _ = stop.cancelled() => return Ok(report),
            _ = tokio::time::sleep_until(next) => {}
        }
        if split_at.is_some_and(|s| Instant::now() >= s) {
            split_at = None;
            for stream in streams {
                split_first_open_shard(aws, stream).await?;
                report.splits += 1;
            }
            eprintln!("loadtest: chaos: split one shard of each stream");
        }
        if Instant::now() >= next_kill {
            if let Some(pid) = fleet.kill_one_at_random().await {
                report.kills += 1;
                let new = fleet.start_one()?;
                eprintln!("loadtest: chaos: killed worker pid {pid} (SIGKILL), started pid {new}");
            }
            next_kill = Instant::now() + chaos.kill_every;
        }
    }
}

async fn split_first_open_shard(aws: &AwsClients, stream: &str) -> Result<(), LoadtestError> {
    let shards = crate::kinesis::list_shards(&aws.kinesis, stream).await?;
    let Some(shard) = shards.iter().find(|s| !s.closed) else {
        return Ok(());
    };
    aws.kinesis
        .split_shard()
        .stream_name(stream)
        .shard_to_split(&shard.shard_id)
        .new_starting_hash_key(shard.middle_hash_key().to_string())
        .send()
        .await
        .map_err(|e| crate::aws::ServiceError::kinesis("SplitShard", e))?;
    Ok(())
}

/// Closed shards whose leases are not at SHARD_END (or have no lease): shards left unread.
pub(super) async fn unfinished_closed_shards(
    aws: &AwsClients,
    lease_table: &str,
    streams: &[String],
) -> Result<Vec<String>, LoadtestError> {
    let leases = crate::lease::LeaseTable::new(aws.dynamodb.clone(), lease_table)
        .scan()
        .await
        .map_err(|e| LoadtestError::Io(format!("reading the lease table: {e}")))?;
    let mut unfinished = Vec::new();
    for stream in streams {
        for s in crate::kinesis::list_shards(&aws.kinesis, stream).await? {
            let key = crate::lease::Lease::key_of(stream, &s.shard_id);
            let finished = leases.iter().any(|l| l.key == key && l.is_finished());
            if s.closed && !finished {
                unfinished.push(key);
            }
        }
    }
    Ok(unfinished)
}
