//! One commit entry of a table's log, written at exactly one version and read back without
//! loading the table's state: the appender's and compaction's way of racing other writers
//! for the next version. A writer that loses reads the winner's entry (one small object)
//! and decides from it whether to try the next version; delta-rs would rebuild the whole
//! state (list the log, replay it, rebuild the file list), which costs more than the gap
//! between two appends on a busy table, so a writer retrying that way could lose every race.

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::Action;
use deltalake::logstore::{CommitOrBytes, LogStore};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, DeltaTableError};
use serde_json::{json, Value};

use super::COMMIT_INFO_KEY;

/// Writes `actions` as the commit entry of exactly `version`, prepared by delta-rs from
/// `table`'s loaded snapshot (its protocol check, the commit info, the bytes or, for
/// stores without a conditional put, a temporary file to rename) exactly as for its own
/// commits; only the write is ours. `false`: another writer's entry holds that version and
/// nothing of ours is in the log. `props` must carry `operation_id` in pinstream's part of
/// the commit info ([`identified`]): a put the store retried after it landed finds its own
/// entry, recognised by that id.
pub async fn write_at(
    table: &DeltaTable,
    version: u64,
    actions: Vec<Action>,
    props: CommitProperties,
    operation: DeltaOperation,
    operation_id: uuid::Uuid,
) -> Result<bool, DeltaTableError> {
    let log_store = table.log_store();
    let prepared = CommitBuilder::from(props)
        .with_actions(actions)
        .with_operation_id(operation_id)
        .build(Some(table.snapshot()?), log_store.clone(), operation)
        .into_prepared_commit_future()
        .await?;
    let entry = prepared.commit_or_bytes().clone();
    match log_store
        .write_commit_entry(version, entry.clone(), operation_id)
        .await
    {
        Ok(()) => Ok(true),
        Err(TransactionError::VersionAlreadyExists(_)) => {
            if matches!(entry, CommitOrBytes::TmpCommit(_)) {
                log_store
                    .abort_commit_entry(version, entry, operation_id)
                    .await?;
            }
            // The store retries a put whose answer was lost (a 5xx after it landed): the
            // entry found may be ours.
            is_ours(log_store.as_ref(), version, operation_id).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Commit properties recording `writer` and the commit's id in pinstream's part of the
/// commit info, as [`write_at`] needs them (appends add their shards' positions).
pub fn identified(writer: &str, operation_id: uuid::Uuid) -> CommitProperties {
    CommitProperties::default().with_metadata([(
        COMMIT_INFO_KEY.to_owned(),
        json!({ "writer": writer, "commit": operation_id.to_string() }),
    )])
}

/// Whether the commit entry at `version` is the one written with `operation_id` (recorded
/// in pinstream's part of the commit info).
async fn is_ours(
    log_store: &dyn LogStore,
    version: u64,
    operation_id: uuid::Uuid,
) -> Result<bool, DeltaTableError> {
    let Some(entry) = log_store.read_commit_entry(version).await? else {
        return Ok(false);
    };
    let id = operation_id.to_string();
    Ok(memchr::memmem::find(&entry, id.as_bytes()).is_some())
}

/// The txns (app id, version) of one commit entry; `None` when it changes the table's
/// metadata or protocol, or cannot be parsed (the caller loads the state afresh).
pub(super) fn txns(entry: &[u8]) -> Option<Vec<(String, i64)>> {
    let mut txns = Vec::new();
    for action in actions_marked(entry, b"\"txn\"") {
        let action = action?;
        let Some(txn) = action.get("txn") else {
            continue;
        };
        let app_id = txn.get("appId").and_then(Value::as_str)?;
        let version = txn.get("version").and_then(Value::as_i64)?;
        txns.push((app_id.to_owned(), version));
    }
    Some(txns)
}

/// The paths (decoded, as delta-rs's snapshot gives them) of the files the commit entry at
/// `version` removes; `None` when that commit changed the table's metadata or protocol,
/// or its entry is missing or cannot be parsed: a writer racing it cannot tell what changed
/// and must not commit on the strength of an older snapshot.
pub async fn removed_by(
    table: &DeltaTable,
    version: u64,
) -> Result<Option<Vec<String>>, DeltaTableError> {
    let Some(entry) = table.log_store().read_commit_entry(version).await? else {
        return Ok(None);
    };
    Ok(removals(&entry))
}

/// The removed paths of one commit entry (see [`removed_by`]).
fn removals(entry: &[u8]) -> Option<Vec<String>> {
    let mut paths = Vec::new();
    for action in actions_marked(entry, b"\"remove\"") {
        let action = action?;
        let Some(remove) = action.get("remove") else {
            continue;
        };
        let path = remove.get("path").and_then(Value::as_str)?;
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        paths.push(decoded.into_owned());
    }
    Some(paths)
}

/// The parsed actions of an entry's lines that mention `marker`, a `metaData` or a
/// `protocol` action (the others are not parsed). A line that does not parse, and any
/// `metaData` or `protocol` action, come out as `None`.
fn actions_marked<'a>(
    entry: &'a [u8],
    marker: &'a [u8],
) -> impl Iterator<Item = Option<Value>> + 'a {
    entry
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter(move |line| {
            let marked = |m: &[u8]| memchr::memmem::find(line, m).is_some();
            marked(marker) || marked(b"\"metaData\"") || marked(b"\"protocol\"")
        })
        .map(|line| {
            let action = serde_json::from_slice::<Value>(line).ok()?;
            if action.get("metaData").is_some() || action.get("protocol").is_some() {
                return None;
            }
            Some(action)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT_INFO: &str = r#"{"commitInfo":{"timestamp":1,"operation":"WRITE","operationParameters":{"note":"\"remove\" \"txn\""}}}"#;

    #[test]
    fn an_entrys_txns_and_removals_are_read_from_its_lines() {
        let entry = format!(
            "{COMMIT_INFO}\n{}\n{}\n{}\n{}\n",
            r#"{"txn":{"appId":"a/pin/shard-0","version":7}}"#,
            r#"{"add":{"path":"part-new.parquet","size":1,"dataChange":false}}"#,
            r#"{"remove":{"path":"part-a.parquet","dataChange":false}}"#,
            r#"{"remove":{"path":"date%3D2026-12-02/part%20b.parquet","dataChange":true}}"#,
        );
        assert_eq!(
            txns(entry.as_bytes()),
            Some(vec![("a/pin/shard-0".into(), 7)])
        );
        assert_eq!(
            removals(entry.as_bytes()),
            Some(vec![
                "part-a.parquet".into(),
                "date=2026-12-02/part b.parquet".into()
            ])
        );
        // An append removes nothing.
        assert_eq!(removals(COMMIT_INFO.as_bytes()), Some(vec![]));
    }

    #[test]
    fn a_metadata_or_protocol_change_or_an_unreadable_line_tells_nothing() {
        for line in [
            r#"{"metaData":{"id":"x","format":{"provider":"parquet"},"schemaString":"{}","partitionColumns":[]}}"#,
            r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2}}"#,
            r#"{"remove":{"path":"part-a.parquet""#,
            r#"{"remove":{"dataChange":true}}"#,
        ] {
            let entry = format!("{COMMIT_INFO}\n{line}\n");
            assert_eq!(removals(entry.as_bytes()), None, "{line}");
        }
        let torn_txn = format!("{COMMIT_INFO}\n{}\n", r#"{"txn":{"appId":"a"}}"#);
        assert_eq!(txns(torn_txn.as_bytes()), None);
    }
}
