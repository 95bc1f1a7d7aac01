//! A shard's last record in a table's rows: where the shard resumes when the log no longer
//! says (the commit entry that recorded the position was cleaned away, or the table expired
//! the shard's txn). Reads only the metadata columns of the shard's rows, through
//! DataFusion over the table's current files, so deletion vectors and compaction do not
//! matter: the largest `(_sequence_number, _sub_sequence_number)` of `_shard_id`.

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableError};

/// The last record of shard `shard_id` the table holds (`None`: no row of the shard).
/// Sequence numbers are decimal text without leading zeros: longer is larger.
pub async fn last_record_of_shard(
    table: &DeltaTable,
    shard_id: &str,
) -> Result<Option<(String, i64)>, DeltaTableError> {
    let df_error = |e: deltalake::datafusion::error::DataFusionError| {
        DeltaTableError::Generic(format!("reading the shard's last record: {e}"))
    };
    let ctx = SessionContext::new();
    ctx.register_table("t", table.table_provider().await?)
        .map_err(df_error)?;
    let shard = shard_id.replace('\'', "''");
    let sql = format!(
        "SELECT _sequence_number, _sub_sequence_number FROM t WHERE _shard_id = '{shard}' \
         ORDER BY length(_sequence_number) DESC, _sequence_number DESC, _sub_sequence_number DESC LIMIT 1"
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(df_error)?
        .collect()
        .await
        .map_err(df_error)?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let sequence =
        deltalake::arrow::compute::cast(b.column(0), &deltalake::arrow::datatypes::DataType::Utf8)?;
    let sub = b.column(1).as_primitive::<Int64Type>();
    Ok(Some((
        sequence.as_string::<i32>().value(0).to_owned(),
        if sub.is_null(0) { 0 } else { sub.value(0) },
    )))
}
