//! [`ShardSubscription`]: one shard read through enhanced fan-out. It keeps one
//! SubscribeToShard open and hands its events out one at a time, in the shape GetRecords
//! answers have ([`Fetched`]), so the shard task treats both readers alike.
//!
//! A subscription ends by design after 5 minutes, on ResourceInUse (this consumer's previous
//! subscription to the shard is still open), on throttling and on network errors; the next
//! call subscribes again after the last event's continuation sequence number. A
//! subscription that sends nothing for `quiet_timeout` is half-open (Kinesis sends an event
//! at least every 5 s, even on an idle shard): it is dropped and renewed, so a shard never
//! stalls while its lease keeps renewing. Records at or before the last one handed out are
//! dropped, whatever a renewed subscription sends again.

use std::time::Duration;

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    Record, ShardIteratorType, StartingPosition, SubscribeToShardEvent, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;

use crate::aws::ServiceError;
use crate::kinesis::{Fetched, Records, StartAt};

type Events = aws_sdk_kinesis::primitives::event_stream::EventReceiver<
    SubscribeToShardEventStream,
    SubscribeToShardEventStreamError,
>;

/// Why a subscription was (re)opened; a label of `pinstream_subscriptions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The reader's first subscription.
    Start,
    /// The previous one ended (every 5 minutes by design).
    Ended,
    /// The previous one sent nothing for `quiet_timeout`.
    Quiet,
    /// The previous one failed, or subscribing failed.
    Error,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Ended => "ended",
            Reason::Quiet => "quiet",
            Reason::Error => "error",
        }
    }
}

/// Reads one shard through a registered consumer.
pub struct ShardSubscription {
    client: Client,
    consumer_arn: String,
    stream: String,
    shard_id: String,
    /// Where the next subscription starts: the lease's start, then after each event's
    /// continuation sequence number.
    start: StartAt,
    quiet_timeout: Duration,
    events: Option<Events>,
    /// Why the next subscription is opened.
    reason: Reason,
    /// Whether the open subscription has sent an event.
    got_event: bool,
    /// The last record handed out: nothing at or before it is handed out again.
    last_handed_out: Option<String>,
}

impl ShardSubscription {
    pub fn new(
        client: Client,
        consumer_arn: &str,
        stream: &str,
        shard_id: &str,
        start: StartAt,
        quiet_timeout: Duration,
    ) -> Self {
        let last_handed_out = match &start {
            StartAt::AfterSequence(s) => Some(s.clone()),
            _ => None,
        };
        ShardSubscription {
            client,
            consumer_arn: consumer_arn.into(),
            stream: stream.into(),
            shard_id: shard_id.into(),
            start,
            quiet_timeout,
            events: None,
            reason: Reason::Start,
            got_event: false,
            last_handed_out,
        }
    }

    /// The next event's records. Subscribes first when no subscription is open; renews one
    /// that ended or went quiet. A failure is returned once (the caller backs off) and the
    /// next call subscribes again from the last continuation.
    pub async fn next(&mut self) -> Result<Fetched, ServiceError> {
        let quiet = self.quiet_timeout;
        loop {
            let events = match self.events.as_mut() {
                Some(e) => e,
                None => self.subscribe().await?,
            };
            match tokio::time::timeout(quiet, events.recv()).await {
                Err(_) => {
                    tracing::warn!(stream = %self.stream, shard_id = %self.shard_id, quiet_for = ?self.quiet_timeout, "no event on the subscription (half-open?); subscribing again");
                    self.renew(Reason::Quiet);
                }
                Ok(Ok(None)) if !self.got_event => {
                    // Ended before saying anything: not a subscription's normal end. The
                    // caller backs off before the next one.
                    self.renew(Reason::Error);
                    return Err(ServiceError::uncoded(
                        "Kinesis",
                        "SubscribeToShard",
                        "the subscription ended before its first event",
                    ));
                }
                Ok(Ok(None)) => {
                    tracing::debug!(stream = %self.stream, shard_id = %self.shard_id, "subscription ended; subscribing again");
                    self.renew(Reason::Ended);
                }
                Ok(Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)))) => {
                    self.got_event = true;
                    return Ok(self.hand_out(event));
                }
                // An event type newer than this SDK: nothing to read in it.
                Ok(Ok(Some(_))) => {}
                Ok(Err(e)) => {
                    self.renew(Reason::Error);
                    return Err(ServiceError::kinesis("SubscribeToShard", e));
                }
            }
        }
    }

    /// The sequence number the next subscription starts after (the last event's
    /// continuation), if an event or the lease's checkpoint gave one.
    pub fn continuation(&self) -> Option<&str> {
        match &self.start {
            StartAt::AfterSequence(s) => Some(s),
            _ => None,
        }
    }

    /// Drops the open subscription (closing its connection frees the consumer's slot on
    /// the shard); the next call subscribes again.
    fn renew(&mut self, reason: Reason) {
        self.events = None;
        self.reason = reason;
        self.got_event = false;
    }

    /// Opens a subscription at `start`. The SDK's answer comes with the first event (the
    /// service sends an initial response first; some emulators do not), so the wait is
    /// bounded by the quiet timeout too.
    async fn subscribe(&mut self) -> Result<&mut Events, ServiceError> {
        metrics::counter!("pinstream_subscriptions_total", "stream" => self.stream.clone(), "reason" => self.reason.as_str()).increment(1);
        let request = self
            .client
            .subscribe_to_shard()
            .consumer_arn(&self.consumer_arn)
            .shard_id(&self.shard_id)
            .starting_position(starting_position(&self.start))
            .customize()
            // The reader owns the backoff (ResourceInUse is retried at its pace, not the SDK's),
            // and the quiet timeout bounds the wait (the SDK's call timeouts are for calls
            // that answer once, not a stream that stays open for 5 minutes).
            .config_override(
                aws_sdk_kinesis::config::Builder::default()
                    .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
                    .timeout_config(aws_sdk_kinesis::config::timeout::TimeoutConfig::disabled()),
            )
            .send();
        let answer = match tokio::time::timeout(self.quiet_timeout, request).await {
            Ok(a) => a,
            Err(_) => {
                tracing::warn!(stream = %self.stream, shard_id = %self.shard_id, quiet_for = ?self.quiet_timeout, "no answer to SubscribeToShard (half-open?); subscribing again");
                crate::aws::count_timeout("Kinesis".into(), "SubscribeToShard".into());
                self.reason = Reason::Quiet;
                return Err(ServiceError::uncoded(
                    "Kinesis",
                    "SubscribeToShard",
                    format!(
                        "no answer within {} (reader.quiet_timeout)",
                        humantime::format_duration(self.quiet_timeout)
                    ),
                ));
            }
        };
        match answer {
            Ok(out) => Ok(self.events.insert(out.event_stream)),
            Err(e) => {
                self.reason = Reason::Error;
                Err(ServiceError::kinesis("SubscribeToShard", e))
            }
        }
    }

    /// One event as a GetRecords-shaped answer: records not handed out before, the lag,
    /// and whether the shard ended. Moves the next subscription's start past the event.
    fn hand_out(&mut self, event: SubscribeToShardEvent) -> Fetched {
        let end_of_shard = ends_the_shard(&event);
        let SubscribeToShardEvent {
            records,
            continuation_sequence_number,
            millis_behind_latest,
            ..
        } = event;
        let records = Records::from_sdk(&after(records, self.last_handed_out.as_deref()));
        if let Some(last) = records.last() {
            self.last_handed_out = Some(last.sequence_number.to_owned());
        }
        if !continuation_sequence_number.is_empty() {
            self.start = StartAt::AfterSequence(continuation_sequence_number);
        }
        Fetched {
            records,
            millis_behind_latest: Some(millis_behind_latest),
            end_of_shard,
        }
    }
}

/// The shard ended: the event names its child shards, or has no continuation.
fn ends_the_shard(event: &SubscribeToShardEvent) -> bool {
    !event.child_shards().is_empty() || event.continuation_sequence_number().is_empty()
}

/// The records after `last` (sequence numbers are decimal strings without leading zeros).
fn after(mut records: Vec<Record>, last: Option<&str>) -> Vec<Record> {
    if let Some(last) = last {
        let key = |s: &str| (s.len(), s.to_owned());
        let last = key(last);
        records.retain(|r| key(r.sequence_number()) > last);
    }
    records
}

fn starting_position(start: &StartAt) -> StartingPosition {
    let p = StartingPosition::builder();
    let p = match start {
        StartAt::TrimHorizon => p.r#type(ShardIteratorType::TrimHorizon),
        StartAt::Latest => p.r#type(ShardIteratorType::Latest),
        StartAt::AtTimestamp(ms) => p
            .r#type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(*ms)),
        StartAt::AfterSequence(seq) => p
            .r#type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(seq),
    };
    p.build().expect("the starting position has its type")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::ChildShard;

    fn record(seq: &str) -> Record {
        Record::builder()
            .sequence_number(seq)
            .data(Blob::new("{}"))
            .partition_key("k")
            .build()
            .unwrap()
    }

    fn event(records: &[&str], continuation: &str, children: &[&str]) -> SubscribeToShardEvent {
        let mut e = SubscribeToShardEvent::builder()
            .set_records(Some(records.iter().map(|s| record(s)).collect()))
            .continuation_sequence_number(continuation)
            .millis_behind_latest(0);
        for c in children {
            e = e.child_shards(
                ChildShard::builder()
                    .shard_id(*c)
                    .parent_shards("shardId-000000000000")
                    .hash_key_range(
                        aws_sdk_kinesis::types::HashKeyRange::builder()
                            .starting_hash_key("0")
                            .ending_hash_key("1")
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            );
        }
        e.build().unwrap()
    }

    fn subscription(start: StartAt) -> ShardSubscription {
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .build();
        ShardSubscription::new(
            Client::from_conf(conf),
            "arn",
            "s",
            "shardId-000000000000",
            start,
            Duration::from_secs(5),
        )
    }

    #[test]
    fn records_already_handed_out_are_not_handed_out_again() {
        let mut s = subscription(StartAt::AfterSequence("100".into()));
        // A renewed subscription that starts at (not after) a position sends it again.
        let f = s.hand_out(event(&["99", "100", "101", "1000"], "1000", &[]));
        let seqs: Vec<_> = f.records.iter().map(|r| r.sequence_number).collect();
        assert_eq!(seqs, ["101", "1000"], "numbers compare as numbers");
        let f = s.hand_out(event(&["1000", "1001"], "1001", &[]));
        assert_eq!(f.records.len(), 1);
        assert_eq!(s.start, StartAt::AfterSequence("1001".into()));
    }

    #[test]
    fn the_next_subscription_starts_after_the_continuation_even_of_an_empty_event() {
        let mut s = subscription(StartAt::TrimHorizon);
        let f = s.hand_out(event(&[], "555", &[]));
        assert!(f.records.is_empty() && !f.end_of_shard);
        assert_eq!(s.start, StartAt::AfterSequence("555".into()));
        assert_eq!(f.millis_behind_latest, Some(0));
    }

    #[test]
    fn child_shards_or_no_continuation_end_the_shard() {
        let mut s = subscription(StartAt::TrimHorizon);
        let f = s.hand_out(event(&["7"], "7", &["shardId-000000000001"]));
        assert!(f.end_of_shard);
        assert_eq!(f.records.len(), 1, "the last event's records are kept");
        assert!(s.hand_out(event(&[], "", &[])).end_of_shard);
        assert!(!s.hand_out(event(&[], "9", &[])).end_of_shard);
    }
}
