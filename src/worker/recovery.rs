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
    // A table with `delta.setTransactionRetentionDuration` forgets the txn of a shard
    // nobody committed for within it: the lease's position is then all there is, with the
    // table's rows.
    let expired = t == 0 && b > 0 && expires_txns(table);
    if t < b && !expired {
        return Err(WorkerError::Recovery {
            lease: lease.key.clone(),
            message: format!("table txn version {t} is behind the lease's batch_version {b}: the table was replaced or rolled back; refusing to read (fix the table or reset the lease)"),
        });
    }
    let checkpoint = if t == b {
        lease.checkpoint.clone()
    } else {
        // The commit landed, the checkpoint did not (or the txn expired): take the position
        // from the commit, or from the rows when the log no longer has it.
        let pos = match expired {
            true => None,
            false => delta::position_at(table, &lease.key, t)
                .await
                .map_err(recovery)?,
        };
        let (cp, sub) = match pos {
            Some(pos) if pos.shard_end => (Checkpoint::ShardEnd, pos.last_sub_sequence),
            Some(pos) => (
                Checkpoint::Sequence(pos.last_sequence.clone()),
                pos.last_sub_sequence,
            ),
            None => position_from_rows(lease, table, expired, t)
                .await
                .map_err(recovery)?,
        };
        let mut versions = handle.versions();
        versions.batch_version = t;
        handle.checkpoint(cp.clone(), sub, versions).await?;
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

/// Whether the table expires txns (`delta.setTransactionRetentionDuration`).
fn expires_txns(table: &DeltaTable) -> bool {
    table.snapshot().is_ok_and(|s| {
        s.table_config()
            .set_transaction_retention_duration
            .is_some()
    })
}

/// The later of two positions (sequence numbers are decimal text: longer is larger).
fn later(a: Position, b: Position) -> Position {
    if (a.0.len(), &a.0, a.1) >= (b.0.len(), &b.0, b.1) {
        a
    } else {
        b
    }
}

/// Where the shard resumes when the log no longer records it: after the later of the
/// lease's checkpoint and the shard's last record in the table's rows (its cleaned rows:
/// a rejects commit lands before its cleaned one, so a reject can be past what is
/// committed). Says so in one info line.
async fn position_from_rows(
    lease: &Lease,
    table: &DeltaTable,
    expired: bool,
    t: i64,
) -> Result<(Checkpoint, i64), deltalake::DeltaTableError> {
    let in_rows = delta::last_record_of_shard(table, &lease.shard_id).await?;
    let checkpointed = match &lease.checkpoint {
        Checkpoint::Sequence(s) => Some((s.clone(), lease.sub_sequence)),
        _ => None,
    };
    let resume = match (checkpointed, in_rows.clone()) {
        (Some(a), Some(b)) => Some(later(a, b)),
        (a, b) => a.or(b),
    };
    let why = if expired {
        format!("the table expired the shard's txn (delta.setTransactionRetentionDuration; the lease recorded version {})", lease.batch_version)
    } else {
        format!("the log no longer holds commit {t} (cleaned up after its retention)")
    };
    tracing::info!(lease = %lease.key, reason = %why, last_in_rows = ?in_rows, resume_after = ?resume, "the log does not say where the shard's commits end; resuming after its last record in the table");
    Ok(match resume {
        Some((sequence, sub)) => (Checkpoint::Sequence(sequence), sub),
        None => (lease.checkpoint.clone(), lease.sub_sequence),
    })
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
    let marked = lease
        .rejects
        .as_ref()
        .map(|m| (m.sequence.clone(), m.sub_sequence));
    let expired = r == 0 && marked.is_some() && expires_txns(rejects_table);
    if r == 0 && !expired {
        return Ok(None);
    }
    if let Some(mark) = lease
        .rejects
        .as_ref()
        .filter(|m| !expired && m.version == r)
    {
        return Ok(Some(mark.clone()));
    }
    let at = match expired {
        true => None,
        false => delta::position_at(rejects_table, &lease.key, r)
            .await
            .map_err(|e| recovery(e.to_string()))?,
    };
    let pos = match at {
        Some(pos) => pos,
        None => {
            // The log no longer says (the txn expired, or commit R was cleaned up): the
            // rejects table's rows do.
            let rows = delta::last_record_of_shard(rejects_table, &lease.shard_id)
                .await
                .map_err(|e| recovery(e.to_string()))?;
            let done = match (marked, rows) {
                (Some(a), Some(b)) => later(a, b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => {
                    return Err(recovery(format!(
                        "no rejects commit carries version {r} for this shard, and the rejects table holds none of its rows"
                    )))
                }
            };
            tracing::info!(lease = %lease.key, rejects_version = r, sequence = %done.0, sub = done.1, "the log does not say how far the shard's rejects are committed; taking it from the rejects table's rows");
            return Ok(Some(RejectsMark {
                version: r,
                sequence: done.0,
                sub_sequence: done.1,
            }));
        }
    };
    tracing::info!(lease = %lease.key, rejects_version = r, sequence = %pos.last_sequence, sub = pos.last_sub_sequence, "rejects up to this position are already committed; not writing them again");
    Ok(Some(RejectsMark {
        version: r,
        sequence: pos.last_sequence,
        sub_sequence: pos.last_sub_sequence,
    }))
}
