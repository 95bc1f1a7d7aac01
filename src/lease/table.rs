//! The DynamoDB lease table: one item per shard of every configured stream, keyed
//! `"<stream>:<shard_id>"`. Every write is conditional; a failed condition is
//! [`LeaseError::Lost`] (someone else changed the lease), never retried blindly.
//!
//! Knows nothing of cleaning or Delta: it stores positions it is given.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ReturnConsumedCapacity, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;

use super::{Checkpoint, Lease, Load, RejectsMark};
use crate::aws::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A conditional write failed: the lease changed owner or counter under us.
    #[error("lease {0} was lost (changed by another worker)")]
    Lost(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("lease table {table}: {message}")]
    Table { table: String, message: String },
    #[error("lease item {key} is malformed: {message}")]
    Malformed { key: String, message: String },
}

impl LeaseError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, LeaseError::Service(e) if e.is_retryable())
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Maps a conditional-write failure to [`LeaseError::Lost`], everything else to a service error.
fn cond<E, R>(
    op: &'static str,
    key: &str,
    err: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> LeaseError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let e = ServiceError::dynamodb(op, err);
    if e.code_is("ConditionalCheckFailedException") {
        metrics::counter!("pinstream_dynamodb_condition_failures_total", "op" => op).increment(1);
        LeaseError::Lost(key.to_owned())
    } else {
        LeaseError::Service(e)
    }
}

/// What a checkpoint records (see [`LeaseTable::checkpoint`]).
#[derive(Debug, Clone, Copy)]
pub struct CommittedPosition<'a> {
    pub checkpoint: &'a Checkpoint,
    pub sub_sequence: i64,
    pub batch_version: i64,
    pub rejects: Option<&'a RejectsMark>,
    /// The shard's load, written with the checkpoint (which then stands for a renewal).
    pub load: Option<Load>,
    /// Why the reader is stalled, written (or removed, when `None`) as a renewal does.
    pub read_stall: Option<&'a str>,
}

#[derive(Clone, Debug)]
pub struct LeaseTable {
    client: Client,
    name: String,
}

impl LeaseTable {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        LeaseTable {
            client,
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the table (on-demand billing) when it does not exist, and waits until it is
    /// ACTIVE, at most `timeout`.
    pub async fn ensure_exists(&self, timeout: Duration) -> Result<(), LeaseError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.name)
            .send()
            .await;
        match described {
            Ok(out) => {
                // A table of the same name that is not a lease table (another application's,
                // a typo naming an existing table): refuse before writing anything to it.
                let keys: Vec<(String, String)> = out
                    .table()
                    .map(|t| {
                        t.key_schema()
                            .iter()
                            .map(|k| {
                                (
                                    k.attribute_name().to_owned(),
                                    k.key_type().as_str().to_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if keys != [("lease_key".to_owned(), "HASH".to_owned())] {
                    return Err(LeaseError::Table {
                        table: self.name.clone(),
                        message: format!(
                            "it exists but is not a pinstream lease table (its key is {keys:?}, a lease table's is lease_key, a string hash key); fix: give another `lease_table` (or `--lease-table`), or delete that table if it is a leftover"
                        ),
                    });
                }
            }
            Err(e) => {
                let e = ServiceError::dynamodb("DescribeTable", e);
                if !e.code_is("ResourceNotFoundException") {
                    return Err(e.into());
                }
                let created = self
                    .client
                    .create_table()
                    .table_name(&self.name)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name("lease_key")
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .map_err(|e| LeaseError::Table {
                                table: self.name.clone(),
                                message: e.to_string(),
                            })?,
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name("lease_key")
                            .key_type(KeyType::Hash)
                            .build()
                            .map_err(|e| LeaseError::Table {
                                table: self.name.clone(),
                                message: e.to_string(),
                            })?,
                    )
                    .send()
                    .await;
                if let Err(e) = created {
                    let e = ServiceError::dynamodb("CreateTable", e);
                    // Another worker created it first: fine.
                    if !e.code_is("ResourceInUseException") {
                        return Err(e.into());
                    }
                }
                tracing::info!(table = %self.name, "created lease table");
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(&self.name)
                .send()
                .await
                .map_err(|e| ServiceError::dynamodb("DescribeTable", e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LeaseError::Table {
                    table: self.name.clone(),
                    message: format!("not ACTIVE after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates the lease of a shard unless it exists, starting at `start`, without a
    /// stream identity (as leases were before pinstream recorded it). Returns whether it
    /// was created.
    pub async fn create_if_absent(
        &self,
        stream: &str,
        shard_id: &str,
        parents: &[String],
        start: &Checkpoint,
    ) -> Result<bool, LeaseError> {
        self.create_lease(stream, shard_id, parents, start, None)
            .await
    }

    /// Creates the lease of a shard of the stream created at `identity.0` (ms), whose
    /// commits use txn app id `identity.1`, unless a lease exists. Returns whether it was
    /// created.
    pub async fn create_lease(
        &self,
        stream: &str,
        shard_id: &str,
        parents: &[String],
        start: &Checkpoint,
        identity: Option<(i64, &str)>,
    ) -> Result<bool, LeaseError> {
        let key = Lease::key_of(stream, shard_id);
        let mut req = self
            .client
            .put_item()
            .table_name(&self.name)
            .item("lease_key", s(&key))
            .item("stream", s(stream))
            .item("shard_id", s(shard_id))
            .item("counter", n(0))
            .item("checkpoint", s(&start.as_str()))
            .item("sub_sequence", n(0))
            .item("batch_version", n(0))
            .item("owner_switches_since_checkpoint", n(0))
            .item(
                "parent_shard_ids",
                AttributeValue::L(parents.iter().map(|p| s(p)).collect()),
            )
            .condition_expression("attribute_not_exists(lease_key)");
        if let Some((created, app_id)) = identity {
            req = req
                .item("stream_created", n(created))
                .item("txn_app_id", s(app_id));
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) => match cond("PutItem", &key, e) {
                LeaseError::Lost(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Records the stream's creation time on a lease written before pinstream recorded it
    /// (it is taken to belong to the stream as it is now). No-op if it has one.
    pub async fn adopt(&self, key: &str, created: i64) -> Result<(), LeaseError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.name)
            .key("lease_key", s(key))
            .update_expression("SET stream_created = :c")
            .condition_expression(
                "attribute_exists(lease_key) AND attribute_not_exists(stream_created)",
            )
            .expression_attribute_values(":c", n(created))
            .send()
            .await;
        match res.map_err(|e| cond("UpdateItem", key, e)) {
            Ok(_) | Err(LeaseError::Lost(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts a lease over for the shard of the same id in a recreated stream: TRIM_HORIZON,
    /// no owner, no commit versions, the new stream's creation time, parents and txn app id.
    /// Conditional on the counter read (a holder of the old lease loses it).
    pub async fn start_over(
        &self,
        old: &Lease,
        parents: &[String],
        created: i64,
        app_id: &str,
    ) -> Result<(), LeaseError> {
        self.client
            .update_item()
            .table_name(&self.name)
            .key("lease_key", s(&old.key))
            .update_expression("SET #counter = :next, checkpoint = :th, sub_sequence = :zero, batch_version = :zero, owner_switches_since_checkpoint = :zero, parent_shard_ids = :parents, stream_created = :created, txn_app_id = :app REMOVE #owner, rejects_version, rejects_sequence, rejects_sub_sequence, millis_behind_latest, records_per_second, bytes_per_second")
            .condition_expression("#counter = :c")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":c", n(old.counter))
            .expression_attribute_values(":next", n(old.counter + 1))
            .expression_attribute_values(":th", s(&Checkpoint::TrimHorizon.as_str()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(
                ":parents",
                AttributeValue::L(parents.iter().map(|p| s(p)).collect()),
            )
            .expression_attribute_values(":created", n(created))
            .expression_attribute_values(":app", s(app_id))
            .send()
            .await
            .map_err(|e| cond("UpdateItem", &old.key, e))?;
        Ok(())
    }

    /// Deletes a lease of a stream that no longer exists under its name (the stream was
    /// recreated and has no shard of that id), conditional on the counter read.
    pub async fn delete_stale(&self, key: &str, counter: u64) -> Result<(), LeaseError> {
        self.client
            .delete_item()
            .table_name(&self.name)
            .key("lease_key", s(key))
            .condition_expression("#counter = :c")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":c", n(counter))
            .send()
            .await
            .map_err(|e| cond("DeleteItem", key, e))?;
        Ok(())
    }

    /// Every lease, read consistently.
    pub async fn scan(&self) -> Result<Vec<Lease>, LeaseError> {
        let mut leases = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.name)
                .consistent_read(true)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| ServiceError::dynamodb("Scan", e))?;
            count_units("read", out.consumed_capacity());
            for item in out.items() {
                leases.push(Lease::from_item(item)?);
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        leases.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(leases)
    }

    /// Takes a free or expired lease: succeeds only if nobody touched it since we read
    /// `observed_counter`. Returns the new counter.
    pub async fn take(
        &self,
        key: &str,
        me: &str,
        observed_counter: u64,
        from_owner: Option<&str>,
    ) -> Result<u64, LeaseError> {
        let next = observed_counter + 1;
        let switch = if from_owner.is_some_and(|o| o != me) {
            1
        } else {
            0
        };
        let out = self
            .client
            .update_item()
            .table_name(&self.name)
            .key("lease_key", s(key))
            .update_expression("SET #owner = :me, #counter = :next, owner_switches_since_checkpoint = if_not_exists(owner_switches_since_checkpoint, :zero) + :switch")
            .condition_expression("attribute_exists(lease_key) AND #counter = :observed")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":observed", n(observed_counter))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":switch", n(switch))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| cond("UpdateItem", key, e))?;
        count_units("write", out.consumed_capacity());
        Ok(next)
    }

    /// An UpdateItem of a lease we hold: conditional on `owner = me AND counter = c`, and
    /// binding `:me`, `:c` and `:next` (= c + 1) for the update expression.
    fn update_held(
        &self,
        key: &str,
        me: &str,
        counter: u64,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.name)
            .key("lease_key", s(key))
            .condition_expression("#owner = :me AND #counter = :c")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":c", n(counter))
            .expression_attribute_values(":next", n(counter + 1))
    }

    /// Renews a held lease (bumps the counter other workers watch). Also records the
    /// shard's lag and its load (for operators and for balancing) and why its reader is
    /// stalled, if it is (removed when it is not), in the same write.
    /// Returns the new counter.
    pub async fn renew(
        &self,
        key: &str,
        me: &str,
        counter: u64,
        millis_behind: Option<i64>,
        load: Load,
        read_stall: Option<&str>,
    ) -> Result<u64, LeaseError> {
        let mut set = String::from(
            "SET #counter = :next, records_per_second = :rps, bytes_per_second = :bps",
        );
        let mut req = self
            .update_held(key, me, counter)
            .expression_attribute_values(":rps", n(format!("{:.1}", load.records_per_second)))
            .expression_attribute_values(":bps", n(format!("{:.1}", load.bytes_per_second)));
        if let Some(ms) = millis_behind {
            set.push_str(", millis_behind_latest = :lag");
            req = req.expression_attribute_values(":lag", n(ms));
        }
        match read_stall {
            Some(why) => {
                set.push_str(", read_stall = :stall");
                req = req.expression_attribute_values(":stall", s(why));
            }
            None => set.push_str(" REMOVE read_stall"),
        }
        let out = req
            .update_expression(set)
            .send()
            .await
            .map_err(|e| cond("UpdateItem", key, e))?;
        count_units("write", out.consumed_capacity());
        Ok(counter + 1)
    }

    /// Records a committed position: the checkpoint, the cleaned table's txn version of
    /// the commit that reached it, and how far the shard's rejects are committed.
    /// Conditional on still holding the lease.
    pub async fn checkpoint(
        &self,
        key: &str,
        me: &str,
        counter: u64,
        position: &CommittedPosition<'_>,
    ) -> Result<u64, LeaseError> {
        let mut set = String::from("SET #counter = :next, checkpoint = :cp, sub_sequence = :sub, batch_version = :bv, owner_switches_since_checkpoint = :zero");
        let mut req = self
            .update_held(key, me, counter)
            .expression_attribute_values(":cp", s(&position.checkpoint.as_str()))
            .expression_attribute_values(":sub", n(position.sub_sequence))
            .expression_attribute_values(":bv", n(position.batch_version))
            .expression_attribute_values(":zero", n(0));
        if let Some(r) = position.rejects {
            set.push_str(
                ", rejects_version = :rv, rejects_sequence = :rs, rejects_sub_sequence = :rss",
            );
            req = req
                .expression_attribute_values(":rv", n(r.version))
                .expression_attribute_values(":rs", s(&r.sequence))
                .expression_attribute_values(":rss", n(r.sub_sequence));
        }
        if let Some(load) = position.load {
            set.push_str(", records_per_second = :rps, bytes_per_second = :bps");
            req = req
                .expression_attribute_values(":rps", n(format!("{:.1}", load.records_per_second)))
                .expression_attribute_values(":bps", n(format!("{:.1}", load.bytes_per_second)));
        }
        match position.read_stall {
            Some(why) => {
                set.push_str(", read_stall = :stall");
                req = req.expression_attribute_values(":stall", s(why));
                // A position committed: whatever error the lease recorded is over.
                set.push_str(" REMOVE last_error");
            }
            None => set.push_str(" REMOVE last_error, read_stall"),
        }
        let out = req
            .update_expression(set)
            .send()
            .await
            .map_err(|e| cond("UpdateItem", key, e))?;
        count_units("write", out.consumed_capacity());
        Ok(counter + 1)
    }

    /// Deletes a finished lease (checkpoint SHARD_END), conditional on its counter not
    /// having moved since `counter` was read. `Lost` if it changed meanwhile.
    pub async fn delete_finished(&self, key: &str, counter: u64) -> Result<(), LeaseError> {
        self.client
            .delete_item()
            .table_name(&self.name)
            .key("lease_key", s(key))
            .condition_expression("checkpoint = :end AND #counter = :c")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":end", s(&Checkpoint::ShardEnd.as_str()))
            .expression_attribute_values(":c", n(counter))
            .send()
            .await
            .map_err(|e| cond("DeleteItem", key, e))?;
        Ok(())
    }

    /// Gives a lease up so another worker can take it on its next cycle; `error` (why the
    /// shard could not go on) is recorded on the lease for `pinstream status`.
    pub async fn release(
        &self,
        key: &str,
        me: &str,
        counter: u64,
        error: Option<&str>,
    ) -> Result<(), LeaseError> {
        let mut req = self.update_held(key, me, counter);
        let expr = match error {
            Some(e) => {
                req = req.expression_attribute_values(":err", s(e));
                "REMOVE #owner SET #counter = :next, last_error = :err"
            }
            None => "REMOVE #owner SET #counter = :next",
        };
        req.update_expression(expr)
            .send()
            .await
            .map_err(|e| cond("UpdateItem", key, e))?;
        Ok(())
    }
}

impl Lease {
    pub(crate) fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Lease, LeaseError> {
        let key = item
            .get("lease_key")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default();
        let bad = |m: &str| LeaseError::Malformed {
            key: key.clone(),
            message: m.to_owned(),
        };
        let get_s = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        // Statistics: a value that does not parse is as good as none.
        let get_f = |name: &str| -> Option<f64> { item.get(name)?.as_n().ok()?.parse().ok() };
        let get_n = |name: &str| -> Result<Option<i64>, LeaseError> {
            match item.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_n()
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .map(Some)
                    .ok_or_else(|| bad(&format!("`{name}` is not a number"))),
            }
        };
        let stream = get_s("stream").ok_or_else(|| bad("no `stream`"))?;
        let shard_id = get_s("shard_id").ok_or_else(|| bad("no `shard_id`"))?;
        let checkpoint =
            Checkpoint::parse(&get_s("checkpoint").unwrap_or_else(|| "TRIM_HORIZON".into()));
        let parents = match item.get("parent_shard_ids") {
            Some(AttributeValue::L(l)) => l.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
            _ => Vec::new(),
        };
        Ok(Lease {
            owner: get_s("owner"),
            counter: get_n("counter")?.unwrap_or(0).max(0) as u64,
            checkpoint,
            sub_sequence: get_n("sub_sequence")?.unwrap_or(0),
            batch_version: get_n("batch_version")?.unwrap_or(0),
            rejects: match (get_n("rejects_version")?, get_s("rejects_sequence")) {
                (Some(version), Some(sequence)) => Some(RejectsMark {
                    version,
                    sequence,
                    sub_sequence: get_n("rejects_sub_sequence")?.unwrap_or(0),
                }),
                _ => None,
            },
            parent_shard_ids: parents,
            stream_created: get_n("stream_created")?,
            last_error: get_s("last_error"),
            read_stall: get_s("read_stall"),
            txn_app_id: get_s("txn_app_id"),
            owner_switches_since_checkpoint: get_n("owner_switches_since_checkpoint")?.unwrap_or(0),
            millis_behind_latest: get_n("millis_behind_latest")?,
            records_per_second: get_f("records_per_second"),
            bytes_per_second: get_f("bytes_per_second"),
            key,
            stream,
            shard_id,
        })
    }
}

/// Adds a call's consumed capacity to the worker's cumulative DynamoDB units (what the
/// lease table costs; the load test reports it per shard-hour). Units are fractional, so
/// these are gauges that only grow.
fn count_units(kind: &str, consumed: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>) {
    let Some(units) = consumed.and_then(|c| c.capacity_units()) else {
        return;
    };
    let milli = (units * 1000.0).round() as u64;
    if kind == "read" {
        READ_MILLIUNITS.fetch_add(milli, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("pinstream_dynamodb_read_units").increment(units);
    } else {
        WRITE_MILLIUNITS.fetch_add(milli, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("pinstream_dynamodb_write_units").increment(units);
    }
}

static READ_MILLIUNITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static WRITE_MILLIUNITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// DynamoDB read and write units this process's lease table calls consumed so far.
pub fn consumed_units() -> (f64, f64) {
    let get = |a: &std::sync::atomic::AtomicU64| {
        a.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
    };
    (get(&READ_MILLIUNITS), get(&WRITE_MILLIUNITS))
}
