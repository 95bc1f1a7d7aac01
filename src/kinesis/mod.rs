//! Kinesis Data Streams: stream administration (create, wait, list shards with their
//! lineage) and [`ShardReader`], GetRecords polling of one shard with iterator renewal.
//! Knows nothing of leases, cleaning or Delta.

use std::time::Duration;

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;

use crate::aws::ServiceError;

mod records;
mod tap;
mod wire;

pub use records::{micros, RecordRef, Records};
use tap::RecordsTap;

/// A shard and its parents (present after a split or merge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub shard_id: String,
    pub parents: Vec<String>,
    /// The shard is closed (has an ending sequence number): it will reach SHARD_END.
    pub closed: bool,
    /// The hash keys the shard covers, first and last.
    pub hash_range: (u128, u128),
}

impl ShardInfo {
    /// The hash key that splits the shard's range in two halves (for SplitShard).
    pub fn middle_hash_key(&self) -> u128 {
        let (first, last) = self.hash_range;
        first + (last - first) / 2 + 1
    }
}

/// Creates the stream with `shards` shards unless it exists, then waits until it is
/// ACTIVE, at most `timeout`.
pub async fn ensure_stream(
    client: &Client,
    name: &str,
    shards: i32,
    timeout: Duration,
) -> Result<(), ServiceError> {
    if let Err(e) = client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
    {
        let e = ServiceError::kinesis("CreateStream", e);
        if !e.code_is("ResourceInUseException") {
            return Err(e);
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let out = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .map_err(|e| ServiceError::kinesis("DescribeStreamSummary", e))?;
        if out.stream_description_summary().map(|d| d.stream_status())
            == Some(&StreamStatus::Active)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ServiceError::uncoded(
                "Kinesis",
                "DescribeStreamSummary",
                format!("stream {name} not ACTIVE after {timeout:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream's DescribeStreamSummary answer.
pub async fn describe_summary(
    client: &Client,
    stream: &str,
) -> Result<aws_sdk_kinesis::types::StreamDescriptionSummary, ServiceError> {
    let out = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| ServiceError::kinesis("DescribeStreamSummary", e))?;
    out.stream_description_summary.ok_or_else(|| {
        ServiceError::uncoded(
            "Kinesis",
            "DescribeStreamSummary",
            format!("no description of stream {stream}"),
        )
    })
}

/// When the stream was created (ms since the epoch): a stream deleted and created again
/// under the same name has another creation time.
pub async fn stream_created(client: &Client, stream: &str) -> Result<i64, ServiceError> {
    describe_summary(client, stream)
        .await?
        .stream_creation_timestamp()
        .to_millis()
        .map_err(|_| {
            ServiceError::uncoded(
                "Kinesis",
                "DescribeStreamSummary",
                format!("no creation time for stream {stream}"),
            )
        })
}

/// The names of every stream of the account (ListStreams, all pages).
pub async fn list_stream_names(client: &Client) -> Result<Vec<String>, ServiceError> {
    let mut names = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let out = client
            .list_streams()
            .set_exclusive_start_stream_name(start.take())
            .send()
            .await
            .map_err(|e| ServiceError::kinesis("ListStreams", e))?;
        names.extend(out.stream_names().iter().cloned());
        if !out.has_more_streams() || names.is_empty() {
            return Ok(names);
        }
        start = names.last().cloned();
    }
}

/// Every shard of the stream, open and closed, with parent links.
pub async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, ServiceError> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // ListShards takes either the stream name or a continuation token, never both.
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = req
            .send()
            .await
            .map_err(|e| ServiceError::kinesis("ListShards", e))?;
        for s in out.shards() {
            let parents = s
                .parent_shard_id()
                .into_iter()
                .chain(s.adjacent_parent_shard_id())
                .map(str::to_owned)
                .collect();
            let closed = s
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_some();
            let range = s.hash_key_range();
            let key = |k: Option<&str>| k.and_then(|k| k.parse::<u128>().ok()).unwrap_or(0);
            shards.push(ShardInfo {
                shard_id: s.shard_id().to_owned(),
                parents,
                closed,
                hash_range: (
                    key(range.map(|r| r.starting_hash_key())),
                    key(range.map(|r| r.ending_hash_key())),
                ),
            });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    Ok(shards)
}

/// Whether a shard is still part of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardPresence {
    Listed,
    /// The stream exists but no longer lists the shard: it aged out past the retention
    /// period (its records are gone).
    Gone,
    /// The stream itself does not exist.
    StreamGone,
}

/// Looks the shard up in the stream's shard list.
pub async fn shard_presence(
    client: &Client,
    stream: &str,
    shard_id: &str,
) -> Result<ShardPresence, ServiceError> {
    match list_shards(client, stream).await {
        Ok(shards) if shards.iter().any(|s| s.shard_id == shard_id) => Ok(ShardPresence::Listed),
        Ok(_) => Ok(ShardPresence::Gone),
        Err(e) if e.code_is("ResourceNotFoundException") => Ok(ShardPresence::StreamGone),
        Err(e) => Err(e),
    }
}

/// Whether a closed shard has nothing after the sequence number `after`: GetRecords from
/// just after it returns no records and no next iterator (the end of a closed shard), within
/// a few calls. `false` when records follow, or when the answers do not say yet (an empty
/// answer of a closed shard is not always its end).
pub async fn ended_after(
    client: &Client,
    stream: &str,
    shard_id: &str,
    after: &str,
) -> Result<bool, ServiceError> {
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard_id)
        .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(after)
        .send()
        .await
        .map_err(|e| ServiceError::kinesis("GetShardIterator", e))?
        .shard_iterator
        .ok_or_else(|| {
            ServiceError::uncoded(
                "Kinesis",
                "GetShardIterator",
                format!("no iterator returned for {stream}/{shard_id}"),
            )
        })?;
    for _ in 0..5 {
        let out = client
            .get_records()
            .shard_iterator(&iterator)
            .limit(1)
            .send()
            .await
            .map_err(|e| ServiceError::kinesis("GetRecords", e))?;
        if !out.records().is_empty() {
            return Ok(false);
        }
        match out.next_shard_iterator {
            None => return Ok(true),
            Some(next) => iterator = next,
        }
    }
    Ok(false)
}

/// Where a reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    TrimHorizon,
    Latest,
    /// Milliseconds since the epoch.
    AtTimestamp(i64),
    AfterSequence(String),
}

/// One GetRecords answer (or fan-out event).
#[derive(Debug)]
pub struct Fetched {
    pub records: Records,
    pub millis_behind_latest: Option<i64>,
    /// The shard is closed and every record has been returned.
    pub end_of_shard: bool,
}

/// Polls one shard with GetRecords. Keeps the position of the last record it returned so
/// an expired iterator is renewed from there, not from the start.
pub struct ShardReader {
    client: Client,
    stream: String,
    shard_id: String,
    max_records: i32,
    start: StartAt,
    iterator: Option<String>,
}

impl ShardReader {
    pub fn new(
        client: Client,
        stream: &str,
        shard_id: &str,
        start: StartAt,
        max_records: i32,
    ) -> Self {
        ShardReader {
            client,
            stream: stream.into(),
            shard_id: shard_id.into(),
            max_records,
            start,
            iterator: None,
        }
    }

    async fn acquire_iterator(&mut self) -> Result<String, ServiceError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&self.shard_id);
        let req = match &self.start {
            StartAt::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartAt::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            StartAt::AfterSequence(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        };
        let out = req
            .send()
            .await
            .map_err(|e| ServiceError::kinesis("GetShardIterator", e))?;
        out.shard_iterator().map(str::to_owned).ok_or_else(|| {
            ServiceError::uncoded(
                "Kinesis",
                "GetShardIterator",
                format!("no iterator returned for {}/{}", self.stream, self.shard_id),
            )
        })
    }

    /// Fetches the next records. Throttling and other retryable errors are returned to the
    /// caller at once (the SDK does not retry GetRecords), who counts them and backs off; an
    /// expired iterator is renewed here transparently.
    pub async fn next(&mut self) -> Result<Fetched, ServiceError> {
        let iterator = match self.iterator.take() {
            Some(it) => it,
            None => self.acquire_iterator().await?,
        };
        let tap = RecordsTap::new();
        let res = self
            .client
            .get_records()
            .shard_iterator(&iterator)
            .limit(self.max_records)
            .customize()
            // The reader owns the backoff (and counts every throttled call), as the KCL does:
            // SDK retries on top would hide throttles and multiply the calls.
            .config_override(
                aws_sdk_kinesis::config::Builder::default()
                    .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled()),
            )
            .interceptor(tap.clone())
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                let e = ServiceError::kinesis("GetRecords", e);
                if e.code_is("ExpiredIteratorException") {
                    tracing::debug!(stream = %self.stream, shard_id = %self.shard_id, "iterator expired; renewing from the last position");
                    let fresh = self.acquire_iterator().await?;
                    self.iterator = Some(fresh);
                    return Ok(Fetched {
                        records: Records::default(),
                        millis_behind_latest: None,
                        end_of_shard: false,
                    });
                }
                // Keep the iterator for the retry.
                self.iterator = Some(iterator);
                return Err(e);
            }
        };
        // pinstream's decoder took the records out of the answer, or (an answer it did not
        // understand) the SDK decoded them.
        let records = tap
            .take()
            .unwrap_or_else(|| Records::from_sdk(out.records()));
        if let Some(last) = records.last() {
            self.start = StartAt::AfterSequence(last.sequence_number.to_owned());
        }
        let end_of_shard = out.next_shard_iterator().is_none();
        self.iterator = out.next_shard_iterator().map(str::to_owned);
        Ok(Fetched {
            records,
            millis_behind_latest: out.millis_behind_latest(),
            end_of_shard,
        })
    }
}
