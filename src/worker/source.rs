//! Where a shard task gets its records: GetRecords polling or an enhanced fan-out
//! subscription. Both answer in the same shape ([`Fetched`]); everything after (KPL
//! de-aggregation, cleaning, rejects, the memory budget, batches, checkpoints) is shared.

use std::sync::Arc;

use super::Shared;
use crate::aws::ServiceError;
use crate::fanout::subscription::ShardSubscription;
use crate::kinesis::{Fetched, ShardReader, StartAt};
use crate::lease::HeldLease;

pub(super) enum Source {
    Polling(ShardReader),
    FanOut(Box<ShardSubscription>),
}

impl Source {
    /// Fan-out when the lease's stream has a consumer for this run, else polling.
    pub(super) fn open(shared: &Shared, lease: &HeldLease, start: StartAt) -> Self {
        let reader = &shared.settings.reader;
        match shared.consumers.get(&lease.stream) {
            Some(arn) => Source::FanOut(Box::new(ShardSubscription::new(
                shared.aws.kinesis.clone(),
                arn,
                &lease.stream,
                &lease.shard_id,
                start,
                reader.quiet_timeout,
            ))),
            None => Source::Polling(ShardReader::new(
                shared.aws.kinesis.clone(),
                &lease.stream,
                &lease.shard_id,
                start,
                reader.max_records,
            )),
        }
    }

    /// The next answer. Some emulators never send ChildShards: a fan-out event with no
    /// records and no lag, of a shard the last listing saw closed, is its end once
    /// GetRecords confirms that nothing follows the event's continuation (the event may be
    /// older than the listing: records written before the shard closed can still follow).
    pub(super) async fn next(
        &mut self,
        shared: &Arc<Shared>,
        lease: &HeldLease,
    ) -> Result<Fetched, ServiceError> {
        match self {
            Source::Polling(r) => r.next().await,
            Source::FanOut(s) => {
                let mut f = s.next().await?;
                let candidate = !f.end_of_shard
                    && f.records.is_empty()
                    && f.millis_behind_latest == Some(0)
                    && shared.closed_shards.borrow().contains(&lease.key);
                if let (true, Some(after)) = (candidate, s.continuation()) {
                    f.end_of_shard = crate::kinesis::ended_after(
                        &shared.aws.kinesis,
                        &lease.stream,
                        &lease.shard_id,
                        after,
                    )
                    .await?;
                }
                Ok(f)
            }
        }
    }

    /// The error of a [`Source::next`] that did not end within `bound`.
    pub(super) fn no_answer(&self, bound: std::time::Duration) -> ServiceError {
        let op = match self {
            Source::Polling(_) => "GetRecords",
            Source::FanOut(_) => "SubscribeToShard",
        };
        crate::aws::count_timeout("Kinesis".into(), op.into());
        ServiceError::uncoded(
            "Kinesis",
            op,
            format!(
                "no answer within {} (reader.stall_timeout)",
                humantime::format_duration(bound)
            ),
        )
    }

    /// Whether the source paces itself (pushed events): no wait after an empty answer.
    pub(super) fn is_pushed(&self) -> bool {
        matches!(self, Source::FanOut(_))
    }

    /// Whether an error of this source is worth trying again beyond what
    /// [`ServiceError::is_retryable`] says: a subscription refused as ResourceInUse is the
    /// previous one of this consumer, still closing.
    pub(super) fn is_transient(&self, e: &ServiceError) -> bool {
        e.is_retryable()
            || (self.is_pushed()
                && (e.code_is("ResourceInUseException") || e.code_is("InternalFailureException")))
    }
}
