//! Where a newly taken shard resumes: the cleaned table's txn version against the lease's
//! `batch_version`, and how far the shard's rejects are committed (docs/DESIGN.md,
//! "Recovery on take" and "Rejects on take").

use deltalake::DeltaTable;

use crate::delta::{self};
use crate::fault::FaultPoint;
use crate::kinesis::StartAt;
use crate::lease::{Checkpoint, HeldLease, Lease, RejectsMark};

use super::shard::Position;
use super::{Shared, WorkerError};

/// Decides where a newly taken shard resumes, comparing the table's txn version `T` for
/// the shard with the lease's `batch_version` `B` (docs/DESIGN.md, exactly once).
/// `Ok(None)`: the shard is already finished. Also returns the position up to which the
/// rejects table already holds this shard's rejects: those are never written again.
pub(super) async fn resume_position(
    shared: &Shared,
    lease: &Lease,
    handle: &HeldLease,
    table: &mut DeltaTable,
    rejects_table: &mut DeltaTable,
) -> Result<Option<(StartAt, Option<Position>)>, WorkerError> {
    let recovery = |e: deltalake::DeltaTableError| WorkerError::Recovery {
        lease: lease.key.clone(),
        message: e.to_string(),
    };
    if let Some(f) = &shared.fault {
        let _ = f.hit_async(FaultPoint::Recover).await;
    }
    let app_id = handle.app_id(&shared.settings.application);
    let rejects = rejects_committed(lease, &app_id, rejects_table).await?;
    handle.update_versions(|v| {
        v.rejects_version = rejects.as_ref().map_or(0, |r| r.version);
        v.rejects_position = rejects
            .as_ref()
            .map(|r| (r.sequence.clone(), r.sub_sequence));
    });
    let t = delta::txn_version(table, &app_id)
        .await
        .map_err(recovery)?
        .unwrap_or(0);
    let b = lease.batch_version;
    if t < b {
        return Err(WorkerError::Recovery {
            lease: lease.key.clone(),
            message: format!("table txn version {t} is behind the lease's batch_version {b}: the table was replaced or rolled back; refusing to read (fix the table or reset the lease)"),
        });
    }
    let checkpoint = if t == b {
        lease.checkpoint.clone()
    } else {
        // The commit landed, the checkpoint did not: take the position from the commit.
        let pos = delta::position_at(table, &lease.key, t)
            .await
            .map_err(recovery)?
            .ok_or_else(|| WorkerError::Recovery {
                lease: lease.key.clone(),
                message: format!("no commit carries version {t} for this shard"),
            })?;
        let cp = if pos.shard_end {
            Checkpoint::ShardEnd
        } else {
            Checkpoint::Sequence(pos.last_sequence.clone())
        };
        let mut versions = handle.versions();
        versions.batch_version = t;
        handle
            .checkpoint(cp.clone(), pos.last_sub_sequence, versions)
            .await?;
        handle.update_versions(|v| v.batch_version = t);
        tracing::info!(lease = %lease.key, version = t, checkpoint = %cp.as_str(), "recovered a position committed but not checkpointed");
        cp
    };
    let rejects_done = rejects.map(|r| (r.sequence, r.sub_sequence));
    let start = match checkpoint {
        Checkpoint::ShardEnd => return Ok(None),
        Checkpoint::TrimHorizon => StartAt::TrimHorizon,
        Checkpoint::Latest => StartAt::Latest,
        Checkpoint::AtTimestamp(ms) => StartAt::AtTimestamp(ms),
        Checkpoint::Sequence(s) => StartAt::AfterSequence(s),
    };
    Ok(Some((start, rejects_done)))
}

/// How far the shard's rejects are committed, whatever the cleaned table says: the rejects
/// table's txn version `R` of the shard and the position of that commit. When `R` is the
/// one the lease recorded at its last checkpoint, the lease has the position; otherwise
/// (rejects committed after the last checkpoint) it is read from commit `R`.
async fn rejects_committed(
    lease: &Lease,
    app_id: &str,
    rejects_table: &mut DeltaTable,
) -> Result<Option<RejectsMark>, WorkerError> {
    let recovery = |message: String| WorkerError::Recovery {
        lease: lease.key.clone(),
        message,
    };
    let r = delta::txn_version(rejects_table, app_id)
        .await
        .map_err(|e| recovery(e.to_string()))?
        .unwrap_or(0);
    if r == 0 {
        return Ok(None);
    }
    if let Some(mark) = lease.rejects.as_ref().filter(|m| m.version == r) {
        return Ok(Some(mark.clone()));
    }
    let pos = delta::position_at(rejects_table, &lease.key, r)
        .await
        .map_err(|e| recovery(e.to_string()))?
        .ok_or_else(|| {
            recovery(format!(
                "no rejects commit carries version {r} for this shard"
            ))
        })?;
    tracing::info!(lease = %lease.key, rejects_version = r, sequence = %pos.last_sequence, sub = pos.last_sub_sequence, "rejects up to this position are already committed; not writing them again");
    Ok(Some(RejectsMark {
        version: r,
        sequence: pos.last_sequence,
        sub_sequence: pos.last_sub_sequence,
    }))
}
