//! [`StallWatch`]: notices a shard reader whose calls have all failed (timed out, refused,
//! unanswered) for longer than `reader.stall_timeout`. It says so once (a warning naming
//! the shard and the call, `pinstream_reader_stalls_total`, the lease row for
//! `pinstream status`, `/readyz`), and at twice the bound ends the reader so that its lease
//! is handed back and read again, here or by another worker. An answer clears it all.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::aws::ServiceError;
use crate::lease::HeldLease;
use crate::telemetry::Health;

pub(super) struct StallWatch {
    lease: Arc<HeldLease>,
    health: Option<Arc<Health>>,
    bound: Duration,
    /// When the first call of the current run of failures began.
    failing_since: Option<Instant>,
    /// Whether this run of failures was reported.
    reported: bool,
}

/// What to do after a failed call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Back off and call again.
    Retry,
    /// No answer for twice the bound: give the lease up, with this reason.
    GiveUp(String),
}

impl StallWatch {
    pub(super) fn new(lease: Arc<HeldLease>, health: Option<Arc<Health>>, bound: Duration) -> Self {
        StallWatch {
            lease,
            health,
            bound,
            failing_since: None,
            reported: false,
        }
    }

    /// A call that began at `started` failed with `e`.
    pub(super) fn failed(&mut self, started: Instant, e: &ServiceError) -> Verdict {
        let since = *self.failing_since.get_or_insert(started);
        let stalled = since.elapsed();
        if stalled < self.bound {
            return Verdict::Retry;
        }
        let why = format!(
            "no answer from {} {} for {} s (reader.stall_timeout {}); last: {}",
            e.service,
            e.op,
            stalled.as_secs(),
            humantime::format_duration(self.bound),
            e.message
        );
        if !self.reported {
            self.reported = true;
            tracing::warn!(stream = %self.lease.stream, shard_id = %self.lease.shard_id, call = e.op, stalled_for = ?stalled, error = %e, "the shard is not being read: every call has failed for longer than reader.stall_timeout; the lease is handed back at twice it");
            metrics::counter!("pinstream_reader_stalls_total", "stream" => self.lease.stream.clone())
                .increment(1);
        }
        self.lease.note_stalled(Some(why.clone()));
        if let Some(h) = &self.health {
            h.shard_stalled(&self.lease.key, Some(&why));
        }
        if stalled >= self.bound * 2 {
            return Verdict::GiveUp(format!("handed back: {why}"));
        }
        Verdict::Retry
    }

    /// A call answered: the shard is being read.
    pub(super) fn answered(&mut self) {
        self.failing_since = None;
        if std::mem::take(&mut self.reported) {
            tracing::info!(stream = %self.lease.stream, shard_id = %self.lease.shard_id, "the shard is being read again");
            self.clear();
        }
    }

    fn clear(&self) {
        if let Some(h) = &self.health {
            h.shard_stalled(&self.lease.key, None);
        }
    }
}

impl Drop for StallWatch {
    /// The reader ended: this worker no longer reports on the shard.
    fn drop(&mut self) {
        self.clear();
    }
}
