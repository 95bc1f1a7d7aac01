//! Shard leases: which worker reads which shard, and where it resumes. KCL's model in
//! multi-stream mode: one DynamoDB item per shard, renewed by its owner, taken by others
//! when its counter stops moving for `failover_time` as seen by *their own* monotonic clock.
//!
//! [`table`] does the conditional DynamoDB writes; this module holds the lease values, the
//! pure decisions (what is expired, what to take) and [`HeldLease`], the handle a shard
//! task and the flusher share.

pub mod table;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use table::{LeaseError, LeaseTable};

/// Where a shard's reading resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    TrimHorizon,
    Latest,
    /// Start at the first record that arrived at or after this time (ms since the epoch).
    AtTimestamp(i64),
    /// Resume after this sequence number.
    Sequence(String),
    /// The (closed) shard was read to its end.
    ShardEnd,
}

impl Checkpoint {
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Checkpoint::TrimHorizon => "TRIM_HORIZON".into(),
            Checkpoint::Latest => "LATEST".into(),
            Checkpoint::AtTimestamp(ms) => format!("AT_TIMESTAMP:{ms}").into(),
            Checkpoint::Sequence(s) => s.as_str().into(),
            Checkpoint::ShardEnd => "SHARD_END".into(),
        }
    }

    pub fn parse(s: &str) -> Checkpoint {
        match s {
            "TRIM_HORIZON" => Checkpoint::TrimHorizon,
            "LATEST" => Checkpoint::Latest,
            "SHARD_END" => Checkpoint::ShardEnd,
            other => match other
                .strip_prefix("AT_TIMESTAMP:")
                .and_then(|ms| ms.parse().ok())
            {
                Some(ms) => Checkpoint::AtTimestamp(ms),
                None => Checkpoint::Sequence(other.to_owned()),
            },
        }
    }
}

/// One lease item as read from the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub key: String,
    pub stream: String,
    pub shard_id: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: Checkpoint,
    pub sub_sequence: i64,
    pub batch_version: i64,
    pub parent_shard_ids: Vec<String>,
    pub owner_switches_since_checkpoint: i64,
    pub millis_behind_latest: Option<i64>,
}

impl Lease {
    pub fn key_of(stream: &str, shard_id: &str) -> String {
        format!("{stream}:{shard_id}")
    }

    pub fn is_finished(&self) -> bool {
        self.checkpoint == Checkpoint::ShardEnd
    }
}

/// Remembers, per lease, the counter last seen and when (on this worker's monotonic
/// clock) it last changed. A lease whose counter has not moved for `failover_time` is
/// expired. No wall clocks are compared across machines.
#[derive(Debug, Default)]
pub struct ExpiryTracker {
    seen: HashMap<String, (u64, Option<String>, Instant)>,
}

impl ExpiryTracker {
    /// Records a scan taken at `now`.
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        let keys: HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
        self.seen.retain(|k, _| keys.contains(k.as_str()));
        for l in leases {
            match self.seen.get_mut(&l.key) {
                Some((c, owner, since)) if *c == l.counter && *owner == l.owner => {
                    let _ = since;
                }
                _ => {
                    self.seen
                        .insert(l.key.clone(), (l.counter, l.owner.clone(), now));
                }
            }
        }
    }

    /// Owned by someone whose renewals stopped at least `failover` ago.
    pub fn is_expired(&self, lease: &Lease, now: Instant, failover: Duration) -> bool {
        lease.owner.is_some()
            && self.seen.get(&lease.key).is_some_and(|(c, _, since)| {
                *c == lease.counter && now.duration_since(*since) >= failover
            })
    }
}

/// The leases this worker should try to take now, in order: free ones first, then expired
/// ones; only unfinished shards whose parents are all finished (parents first keeps
/// per-key order across resharding); at most up to the fair share
/// `ceil(unfinished / live workers)`, or all of them when `greedy` (used by
/// `--available-now`, which drains everything it can).
pub fn leases_to_take<'a>(
    leases: &'a [Lease],
    me: &str,
    tracker: &ExpiryTracker,
    now: Instant,
    failover: Duration,
    greedy: bool,
) -> Vec<&'a Lease> {
    let finished: HashSet<(&str, &str)> = leases
        .iter()
        .filter(|l| l.is_finished())
        .map(|l| (l.stream.as_str(), l.shard_id.as_str()))
        .collect();
    let known: HashSet<(&str, &str)> = leases
        .iter()
        .map(|l| (l.stream.as_str(), l.shard_id.as_str()))
        .collect();
    let ready = |l: &Lease| {
        !l.is_finished()
            && l.parent_shard_ids.iter().all(|p| {
                let id = (l.stream.as_str(), p.as_str());
                // A parent without a lease (trimmed away, or never ours) does not block.
                finished.contains(&id) || !known.contains(&id)
            })
    };
    let unfinished: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
    let mut live: HashSet<&str> = unfinished
        .iter()
        .filter(|l| !tracker.is_expired(l, now, failover))
        .filter_map(|l| l.owner.as_deref())
        .collect();
    live.insert(me);
    let held = unfinished
        .iter()
        .filter(|l| l.owner.as_deref() == Some(me))
        .count();
    let target = if greedy {
        usize::MAX
    } else {
        unfinished.len().div_ceil(live.len())
    };
    let mut free: Vec<&Lease> = unfinished
        .iter()
        .copied()
        .filter(|l| l.owner.is_none() && ready(l))
        .collect();
    let expired = unfinished.iter().copied().filter(|l| {
        l.owner.as_deref().is_some_and(|o| o != me)
            && tracker.is_expired(l, now, failover)
            && ready(l)
    });
    free.extend(expired);
    free.truncate(target.saturating_sub(held));
    free
}

/// Mutable part of a held lease, changed only under its lock so that renewals and
/// checkpoints (both conditional on the counter) never race each other.
#[derive(Debug)]
pub struct HeldState {
    pub counter: u64,
    /// `batch_version` of the last checkpoint; the next commit carries `+ 1`.
    pub batch_version: i64,
    pub lost: bool,
    pub millis_behind: Option<i64>,
}

/// A lease this worker holds, shared by the coordinator, the shard's reader and the flusher.
#[derive(Debug)]
pub struct HeldLease {
    pub key: String,
    pub stream: String,
    pub shard_id: String,
    /// Cancelled when the lease is lost or released: the reader stops at once and the
    /// flusher drops the shard's uncommitted rows.
    pub token: CancellationToken,
    pub state: Mutex<HeldState>,
}

impl HeldLease {
    pub fn new(lease: &Lease, counter: u64, parent: &CancellationToken) -> Self {
        HeldLease {
            key: lease.key.clone(),
            stream: lease.stream.clone(),
            shard_id: lease.shard_id.clone(),
            token: parent.child_token(),
            state: Mutex::new(HeldState {
                counter,
                batch_version: lease.batch_version,
                lost: false,
                millis_behind: None,
            }),
        }
    }

    /// The txn app id of this shard in a Delta table of `application`.
    pub fn app_id(&self, application: &str) -> String {
        format!("{application}/{}/{}", self.stream, self.shard_id)
    }

    /// Marks the lease lost: stop reading, never commit or checkpoint for it again.
    pub fn mark_lost(&self, state: &mut HeldState) {
        if !state.lost {
            state.lost = true;
            metrics::counter!("pinstream_leases_lost_total").increment(1);
            tracing::warn!(lease = %self.key, "lease lost; stopping the shard and dropping its uncommitted rows");
        }
        self.token.cancel();
    }

    pub async fn is_lost(&self) -> bool {
        self.state.lock().await.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>, counter: u64) -> Lease {
        Lease {
            key: Lease::key_of("pin", shard),
            stream: "pin".into(),
            shard_id: shard.into(),
            owner: owner.map(str::to_owned),
            counter,
            checkpoint: Checkpoint::TrimHorizon,
            sub_sequence: 0,
            batch_version: 0,
            parent_shard_ids: vec![],
            owner_switches_since_checkpoint: 0,
            millis_behind_latest: None,
        }
    }

    const F: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn expiry_follows_the_local_monotonic_clock() {
        let mut t = ExpiryTracker::default();
        let mut leases = vec![lease("s0", Some("w1"), 5)];
        t.observe(&leases, Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        t.observe(&leases, Instant::now());
        assert!(!t.is_expired(&leases[0], Instant::now(), F));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.is_expired(&leases[0], Instant::now(), F));
        // A renewal (counter moved) resets the clock.
        leases[0].counter = 6;
        t.observe(&leases, Instant::now());
        assert!(!t.is_expired(&leases[0], Instant::now(), F));
    }

    #[tokio::test(start_paused = true)]
    async fn takes_free_leases_up_to_the_fair_share() {
        let t = ExpiryTracker::default();
        let leases = vec![
            lease("s0", Some("w1"), 1),
            lease("s1", None, 0),
            lease("s2", None, 0),
            lease("s3", None, 0),
        ];
        // Two live workers (w1 and me), 4 shards: target 2 each.
        let take = leases_to_take(&leases, "me", &t, Instant::now(), F, false);
        assert_eq!(take.len(), 2);
        assert!(take.iter().all(|l| l.owner.is_none()));
        assert_eq!(
            leases_to_take(&leases, "me", &t, Instant::now(), F, true).len(),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn children_wait_for_their_parents() {
        let t = ExpiryTracker::default();
        let mut parent = lease("s0", None, 0);
        let mut child = lease("s1", None, 0);
        child.parent_shard_ids = vec!["s0".into()];
        let leases = vec![parent.clone(), child.clone()];
        let take: Vec<_> = leases_to_take(&leases, "me", &t, Instant::now(), F, true)
            .into_iter()
            .map(|l| l.shard_id.clone())
            .collect();
        assert_eq!(take, vec!["s0"]);
        parent.checkpoint = Checkpoint::ShardEnd;
        let leases = vec![parent, child];
        let take: Vec<_> = leases_to_take(&leases, "me", &t, Instant::now(), F, true)
            .into_iter()
            .map(|l| l.shard_id.clone())
            .collect();
        assert_eq!(take, vec!["s1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_leases_are_taken_live_ones_are_not() {
        let mut t = ExpiryTracker::default();
        let leases = vec![lease("s0", Some("dead"), 3), lease("s1", Some("alive"), 3)];
        t.observe(&leases, Instant::now());
        tokio::time::advance(F).await;
        let renewed = vec![leases[0].clone(), lease("s1", Some("alive"), 4)];
        t.observe(&renewed, Instant::now());
        let take = leases_to_take(&renewed, "me", &t, Instant::now(), F, false);
        assert_eq!(take.len(), 1);
        assert_eq!(take[0].shard_id, "s0");
    }
}
