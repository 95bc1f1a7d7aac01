//! Table health for tables written every few seconds for months: a Delta log checkpoint
//! every `checkpoint_interval` commits with cleanup of log files older than
//! `log_retention` (aligned to a checkpoint, so time travel within the retention keeps
//! working), and an optional `vacuum` of data files no longer in the table.
//! `pinstream maintain` runs them on demand for all six tables.

use std::time::Duration;

use deltalake::checkpoints::{cleanup_expired_logs_for, create_checkpoint};
use deltalake::{DeltaTable, DeltaTableError};

use crate::clean;
use crate::config::{MaintenancePolicy, Settings};
use crate::sink::delta::{self, DeltaError};

/// What a maintenance pass did to one table.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    pub version: u64,
    pub checkpointed: bool,
    pub logs_removed: usize,
    pub files_vacuumed: usize,
}

/// Writes a checkpoint at the table's current version and removes log files older than
/// `log_retention` that the checkpoint makes unnecessary.
pub async fn checkpoint_and_clean(
    table: &DeltaTable,
    log_retention: Duration,
) -> Result<usize, DeltaTableError> {
    create_checkpoint(table, None).await?;
    let version = table.version().unwrap_or(0);
    let cutoff = chrono::Utc::now().timestamp_millis() - log_retention.as_millis() as i64;
    cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None).await
}

/// Called by the sink after each commit: checkpoints on every `checkpoint_interval`-th
/// version. A failure is logged, never fatal: the commit itself has landed.
pub async fn after_commit(table: &DeltaTable, version: u64, policy: &MaintenancePolicy) {
    if policy.checkpoint_interval == 0
        || version == 0
        || !version.is_multiple_of(policy.checkpoint_interval)
    {
        return;
    }
    match checkpoint_and_clean(table, policy.log_retention).await {
        Ok(removed) => tracing::info!(
            version,
            logs_removed = removed,
            "wrote a Delta log checkpoint"
        ),
        Err(e) => {
            tracing::warn!(version, error = %e, "log checkpoint failed; the next interval tries again")
        }
    }
}

/// `pinstream maintain`: checkpoint, clean logs and (when `vacuum` is given) vacuum every
/// table. Vacuum honours the tables' own minimum retention (7 days by default).
pub async fn run(
    settings: &Settings,
    vacuum: Option<Duration>,
) -> Result<Vec<TableReport>, DeltaError> {
    let mut reports = Vec::new();
    for &kind in settings.streams.keys() {
        for (name, schema) in [
            (kind.name(), kind.schema()),
            (kind.rejects_table(), clean::schema::REJECTS.clone()),
        ] {
            reports.push(maintain_one(settings, name, &schema, vacuum).await?);
        }
    }
    Ok(reports)
}

async fn maintain_one(
    settings: &Settings,
    name: &str,
    schema: &deltalake::arrow::datatypes::SchemaRef,
    vacuum: Option<Duration>,
) -> Result<TableReport, DeltaError> {
    let de = |source| DeltaError::Delta {
        table: name.to_owned(),
        source,
    };
    let table = delta::open_or_create(&settings.table_root, name, schema).await?;
    let logs_removed = checkpoint_and_clean(&table, settings.maintenance.log_retention)
        .await
        .map_err(de)?;
    let mut report = TableReport {
        table: name.to_owned(),
        version: table.version().unwrap_or(0),
        checkpointed: true,
        logs_removed,
        files_vacuumed: 0,
    };
    if let Some(retention) = vacuum {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            .await
            .map_err(de)?;
        report.files_vacuumed = metrics.files_deleted.len();
    }
    tracing::info!(table = name, ?report, "maintained");
    Ok(report)
}
