//! Which of a table's features pinstream's writes cannot honour. Other engines turn
//! features on (Databricks and Spark enable deletion vectors, column mapping, row tracking
//! and more by default or on first use); a writer that does not implement one must not
//! write to the table, and delta-rs's own protocol check lists some it does not honour in
//! pinstream's hand-written commits (deletion vectors, for a compaction reading files
//! whole). So each use of a table names the features it honours and refuses the rest.

use deltalake::{DeltaTable, DeltaTableError};
use serde_json::Value;

/// What pinstream does to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableUse {
    /// Appending new files with `dataChange = true` (the sink).
    Append,
    /// Rewriting files into larger ones with `dataChange = false` (compaction). Files with
    /// a deletion vector are left out, so the feature itself is honoured.
    Compact,
}

/// Features both uses honour: they ask nothing of a writer that adds files with every
/// column given (or rewrites the same rows with `dataChange = false`), or only of readers.
/// Compaction never touches a file with a deletion vector.
const BOTH_HONOUR: &[&str] = &[
    "appendOnly",
    "deletionVectors",
    "changeDataFeed",
    "timestampNtz",
    "domainMetadata",
    "vacuumProtocolCheck",
    "v2Checkpoint",
    "checkpointProtection",
];

/// Features only an append honours besides: new files are written in the current types.
const APPEND_ALSO_HONOURS: &[&str] = &["typeWidening", "typeWidening-preview"];

/// Features only a compaction honours besides: it writes the same rows again, so
/// constraints, generated and identity columns hold as they did.
const COMPACT_ALSO_HONOURS: &[&str] = &[
    "invariants",
    "checkConstraints",
    "generatedColumns",
    "identityColumns",
];

/// The features in use on `table` that `what` does not honour, by their protocol names
/// (empty: go ahead).
pub fn unhonoured(table: &DeltaTable, what: TableUse) -> Result<Vec<String>, DeltaTableError> {
    let state = table.snapshot()?;
    // Not knowing the features must refuse, never let everything through.
    let json = |e: serde_json::Error| {
        DeltaTableError::Generic(format!("reading the table's features: {e}"))
    };
    let protocol = serde_json::to_value(state.protocol()).map_err(json)?;
    let metadata = serde_json::to_value(state.metadata()).map_err(json)?;
    let also = match what {
        TableUse::Append => APPEND_ALSO_HONOURS,
        TableUse::Compact => COMPACT_ALSO_HONOURS,
    };
    let mut out: Vec<String> = in_use(&protocol, &metadata)
        .into_iter()
        .filter(|f| !BOTH_HONOUR.contains(&f.as_str()) && !also.contains(&f.as_str()))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The features a table uses: those its protocol lists (reader and writer features), and,
/// for the legacy protocol versions that list none, those its metadata turns on.
fn in_use(protocol: &Value, metadata: &Value) -> Vec<String> {
    let mut features: Vec<String> = ["readerFeatures", "writerFeatures"]
        .iter()
        .filter_map(|k| protocol[*k].as_array())
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    let config = metadata["configuration"].as_object();
    let setting = |key: &str| config.and_then(|c| c.get(key)).and_then(Value::as_str);
    if setting("delta.columnMapping.mode").is_some_and(|m| m != "none") {
        features.push("columnMapping".into());
    }
    if config.is_some_and(|c| c.keys().any(|k| k.starts_with("delta.constraints."))) {
        features.push("checkConstraints".into());
    }
    let schema = metadata["schemaString"].as_str().unwrap_or_default();
    for (marker, feature) in [
        ("delta.generationExpression", "generatedColumns"),
        ("delta.identity.", "identityColumns"),
        ("delta.invariants", "invariants"),
    ] {
        if schema.contains(marker) {
            features.push(feature.into());
        }
    }
    features
}

/// The beginning of the error a refused use gives: the sink tells it from other failures.
const REFUSED: &str = "pinstream cannot honour";

/// The error of a use `what` refused for `features`, naming the table and the fix.
pub fn refusal(table: &DeltaTable, what: TableUse, features: &[String]) -> DeltaTableError {
    let doing = match what {
        TableUse::Append => "append to",
        TableUse::Compact => "compact",
    };
    DeltaTableError::Generic(format!(
        "{REFUSED} the table feature(s) {} of {}, so it does not {doing} it; fix: turn the feature(s) off with the engine that enabled them (ALTER TABLE ... DROP FEATURE), or point pinstream at a table without them",
        features.join(", "),
        table.table_url()
    ))
}

/// Whether `e` is a [`refusal`]: trying again cannot help until the table changes.
pub fn is_refusal(e: &DeltaTableError) -> bool {
    e.to_string().contains(REFUSED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn features_in_use_come_from_the_protocol_lists_and_from_legacy_metadata() {
        let listed = json!({"minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": ["deletionVectors", "columnMapping"],
            "writerFeatures": ["deletionVectors", "columnMapping", "rowTracking", "appendOnly"]});
        let mut used = in_use(&listed, &json!({}));
        used.sort();
        used.dedup();
        assert_eq!(
            used,
            [
                "appendOnly",
                "columnMapping",
                "deletionVectors",
                "rowTracking"
            ]
        );
        let legacy = json!({"minReaderVersion": 2, "minWriterVersion": 5});
        let metadata = json!({
            "configuration": {"delta.columnMapping.mode": "name", "delta.constraints.positive": "ind > 0"},
            "schemaString": "{\"fields\":[{\"metadata\":{\"delta.generationExpression\":\"1\"}}]}"
        });
        let mut used = in_use(&legacy, &metadata);
        used.sort();
        assert_eq!(
            used,
            ["checkConstraints", "columnMapping", "generatedColumns"]
        );
        assert!(in_use(
            &json!({"minReaderVersion": 1, "minWriterVersion": 2}),
            &json!({"configuration": {"delta.columnMapping.mode": "none"}})
        )
        .is_empty());
    }
}
