//! `pinstream query`: SQL (Apache DataFusion, through delta-rs's table provider) over the
//! Delta tables under the configured table root, local or S3. The cleaned tables are
//! registered as `pin`, `geo`, `user`, the rejects tables as `pin_rejects`, `geo_rejects`,
//! `user_rejects`; a table that does not exist yet is simply not registered. `--as-of`
//! reads every table as it was at a version or a point in time (Delta time travel).

use std::io::Write;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};

use crate::clean::Kind;
use crate::config::TableRoot;
use crate::delta;

/// Which state of the tables to read.
#[derive(Debug, Clone, PartialEq)]
pub enum AsOf {
    /// A table version (every table is read at this version; one that has fewer versions
    /// is an error naming it).
    Version(u64),
    /// The latest version committed at or before this time, per table.
    Time(chrono::DateTime<chrono::Utc>),
}

impl AsOf {
    /// `42` (a version) or an RFC 3339 time such as `2026-11-21T10:00:00Z`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(v) = s.parse::<u64>() {
            return Ok(AsOf::Version(v));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| AsOf::Time(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                format!("`{s}`: expected a table version (e.g. 12) or an RFC 3339 time (e.g. 2026-11-21T10:00:00Z)")
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query itself is wrong (syntax, unknown table or column, types): the user's to fix.
    #[error("{0}")]
    Sql(String),
    #[error("no tables under {root}: run a worker first, or point --table-root (or table_root in the config) at the tables")]
    NoTables { root: String },
    #[error("table `{table}` at {as_of:?}: {source}")]
    TimeTravel {
        table: String,
        as_of: AsOf,
        source: Box<DeltaTableError>,
    },
    #[error(transparent)]
    Delta(Box<delta::DeltaError>),
    /// Reading the data failed (storage, corrupt files): not the query's fault.
    #[error("query execution failed: {0}")]
    Execution(String),
    #[error("writing the result: {0}")]
    Output(#[from] std::io::Error),
}

impl QueryError {
    /// True when the user's input is at fault (exit code 2).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            QueryError::Sql(_) | QueryError::NoTables { .. } | QueryError::TimeTravel { .. }
        )
    }
}

/// The names the tables are registered under, cleaned tables first.
pub fn table_names() -> Vec<&'static str> {
    Kind::ALL
        .iter()
        .map(|k| k.name())
        .chain(Kind::ALL.iter().map(|k| k.rejects_table()))
        .collect()
}

/// A DataFusion session with every existing table under `root` registered. With a version
/// to read, a table that has no such version is left out (with a warning naming it): the
/// tables advance independently, so version 12 of `pin` is not the same moment as version
/// 12 of `geo`; use a time to read all of them at one moment.
pub async fn session(root: &TableRoot, as_of: Option<&AsOf>) -> Result<SessionContext, QueryError> {
    let ctx = SessionContext::new();
    let mut registered = 0;
    let mut first_refusal = None;
    for name in table_names() {
        let table = match open(root, name, as_of).await {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e @ QueryError::TimeTravel { .. }) => {
                tracing::warn!(table = name, error = %e, "table left out of the query");
                first_refusal.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let provider = table
            .table_provider()
            .await
            .map_err(|e| QueryError::Execution(format!("table `{name}`: {e}")))?;
        ctx.register_table(name, provider)
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        registered += 1;
    }
    if registered == 0 {
        return Err(first_refusal.unwrap_or_else(|| QueryError::NoTables {
            root: root.table_url(""),
        }));
    }
    Ok(ctx)
}

/// Opens `name` read-only at `as_of`; `None` when it does not exist (nothing is created).
pub(crate) async fn open(
    root: &TableRoot,
    name: &str,
    as_of: Option<&AsOf>,
) -> Result<Option<DeltaTable>, QueryError> {
    if let TableRoot::Local(dir) = root {
        if !dir.join(name).join("_delta_log").is_dir() {
            return Ok(None);
        }
    }
    let url = delta::table_url(root, name).map_err(|e| QueryError::Delta(Box::new(e)))?;
    let de = |source| {
        QueryError::Delta(Box::new(delta::DeltaError::Delta {
            table: name.to_owned(),
            source,
        }))
    };
    let mut builder = DeltaTableBuilder::from_url(url)
        .map_err(de)?
        .with_storage_options(delta::storage_options(root));
    match as_of {
        Some(AsOf::Version(v)) => builder = builder.with_version(*v),
        Some(AsOf::Time(t)) => builder = builder.with_timestamp(*t),
        None => {}
    }
    match builder.load().await {
        Ok(t) => Ok(Some(t)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) if as_of.is_some() => Err(QueryError::TimeTravel {
            table: name.to_owned(),
            as_of: as_of.cloned().unwrap_or(AsOf::Version(0)),
            source: Box::new(e),
        }),
        Err(e) => Err(de(e)),
    }
}

/// Plans and runs `sql`. Planning errors (syntax, unknown names, types) are the user's;
/// errors while reading data are not.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let df = ctx.sql(sql).await.map_err(|e| classify(e, true))?;
    df.collect().await.map_err(|e| classify(e, false))
}

fn classify(e: DataFusionError, planning: bool) -> QueryError {
    let user = planning
        || matches!(
            e.find_root(),
            DataFusionError::Plan(_) | DataFusionError::SQL(..) | DataFusionError::SchemaError(..)
        );
    // DataFusion's messages say what is wrong and where; pass them on unchanged.
    if user {
        QueryError::Sql(e.to_string())
    } else {
        QueryError::Execution(e.to_string())
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Writes `batches` to `out` in `format`.
pub fn write(
    batches: &[RecordBatch],
    format: Format,
    out: &mut dyn Write,
) -> Result<(), QueryError> {
    use deltalake::arrow::{csv, json};
    let err = |e: deltalake::arrow::error::ArrowError| QueryError::Execution(e.to_string());
    match format {
        Format::Table => {
            let text =
                deltalake::arrow::util::pretty::pretty_format_batches(batches).map_err(err)?;
            writeln!(out, "{text}")?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" })?;
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new().with_header(true).build(&mut *out);
            for b in batches {
                w.write(b).map_err(err)?;
            }
        }
        Format::Json => {
            let mut w = json::ArrayWriter::new(&mut *out);
            w.write_batches(&batches.iter().collect::<Vec<_>>())
                .map_err(err)?;
            w.finish().map_err(err)?;
            writeln!(out)?;
        }
        Format::Ndjson => {
            let mut w = json::LineDelimitedWriter::new(&mut *out);
            w.write_batches(&batches.iter().collect::<Vec<_>>())
                .map_err(err)?;
            w.finish().map_err(err)?;
        }
    }
    Ok(())
}

/// Every row as display strings (nulls as empty strings), for tests and comparisons.
pub fn rows_as_strings(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, QueryError> {
    let opts = FormatOptions::default();
    let mut rows = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        for i in 0..b.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
        }
    }
    Ok(rows)
}
