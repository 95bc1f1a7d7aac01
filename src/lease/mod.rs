//! Shard leases: which worker reads which shard, and where it resumes. KCL's model in
//! multi-stream mode: one DynamoDB item per shard, renewed by its owner, taken by others
//! when its counter stops moving for `failover_time` as seen by *their own* monotonic clock.
//!
//! [`table`] does the conditional DynamoDB writes; this module holds the lease values and
//! the pure decisions (what is expired, what to take); [`held`] the handle of a lease this
//! worker holds, shared by its reader and the sink, and its keeper task.

pub mod balance;
pub mod held;
pub mod table;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

pub use balance::{BalanceMode, BalancePolicy, StealStreak};
pub use held::{CommitVersions, HeldLease, KeeperSettings, Load};
pub use table::{CommittedPosition, LeaseError, LeaseTable};

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

/// How far a shard's rejects are committed: the rejects table's txn version of the shard
/// (the table version of its newest rejects commit) and the last record that commit covers.
/// Rejects at or before the position are in the rejects table and are never written again,
/// even when the cleaned table is behind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectsMark {
    pub version: i64,
    pub sequence: String,
    pub sub_sequence: i64,
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
    /// The rejects mark as of the last checkpoint, if the shard had rejects by then.
    pub rejects: Option<RejectsMark>,
    pub parent_shard_ids: Vec<String>,
    /// Creation time (ms) of the stream the lease was written for; a recreated stream of
    /// the same name has another. `None`: a lease from before pinstream recorded it.
    pub stream_created: Option<i64>,
    /// The txn app id of this shard's commits; `None`: the original
    /// `<application>/<stream>/<shard>`.
    pub txn_app_id: Option<String>,
    pub owner_switches_since_checkpoint: i64,
    pub millis_behind_latest: Option<i64>,
    /// The shard's load as its holder last wrote it (smoothed over several renewals).
    pub records_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
    /// Why the last holder gave the lease up with an error (a reader that failed, a shard
    /// that could not be resumed); cleared by the next checkpoint.
    pub last_error: Option<String>,
    /// Why the holder's reader has had no answer for longer than its bound (calls timing
    /// out or failing), as its last renewal said; absent while reading goes well.
    pub read_stall: Option<String>,
}

impl Lease {
    pub fn key_of(stream: &str, shard_id: &str) -> String {
        format!("{stream}:{shard_id}")
    }

    pub fn is_finished(&self) -> bool {
        self.checkpoint == Checkpoint::ShardEnd
    }

    /// The txn app id of this shard's commits in a Delta table of `application`: the one
    /// the lease records, or the original `<application>/<stream>/<shard>`.
    pub fn app_id(&self, application: &str) -> String {
        self.txn_app_id
            .clone()
            .unwrap_or_else(|| format!("{application}/{}/{}", self.stream, self.shard_id))
    }

    /// The txn app id of a shard of a stream created at `created` (ms): the creation time
    /// is part of it, so a stream recreated under the same name never shares txn versions
    /// with the old one.
    pub fn app_id_for(application: &str, stream: &str, created: i64, shard_id: &str) -> String {
        format!("{application}/{stream}/{created}/{shard_id}")
    }
}

#[cfg(test)]
impl Lease {
    /// A lease as sync creates it for a shard, owned by nobody, at `checkpoint` (unit tests).
    pub(crate) fn for_test(stream: &str, shard: &str, checkpoint: Checkpoint) -> Lease {
        Lease {
            key: Lease::key_of(stream, shard),
            stream: stream.into(),
            shard_id: shard.into(),
            owner: None,
            counter: 0,
            checkpoint,
            sub_sequence: 0,
            batch_version: 0,
            rejects: None,
            parent_shard_ids: vec![],
            stream_created: None,
            txn_app_id: None,
            owner_switches_since_checkpoint: 0,
            millis_behind_latest: None,
            records_per_second: None,
            bytes_per_second: None,
            last_error: None,
            read_stall: None,
        }
    }
}

/// Remembers, per lease, the counter last seen and when (on this worker's monotonic
/// clock) it last changed. A lease whose counter has not moved for `failover_time` is
/// expired. No wall clocks are compared across machines.
#[derive(Debug, Default)]
pub struct ExpiryTracker {
    seen: HashMap<String, (u64, Option<String>, Instant)>,
    /// Each lease's owner and when this worker saw it change (`None`: not seen changing).
    owners: HashMap<String, (Option<String>, Option<Instant>)>,
}

impl ExpiryTracker {
    /// Records a scan taken at `now`.
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        let keys: HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
        self.seen.retain(|k, _| keys.contains(k.as_str()));
        self.owners.retain(|k, _| keys.contains(k.as_str()));
        for l in leases {
            match self.owners.get(&l.key) {
                Some((owner, _)) if *owner == l.owner => {}
                Some(_) => {
                    self.owners
                        .insert(l.key.clone(), (l.owner.clone(), Some(now)));
                }
                None => {
                    self.owners.insert(l.key.clone(), (l.owner.clone(), None));
                }
            }
        }
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

    /// Whether this worker saw the lease change owner less than `cooldown` ago.
    pub fn moved_within(&self, lease: &Lease, now: Instant, cooldown: Duration) -> bool {
        self.owners
            .get(&lease.key)
            .and_then(|(_, at)| *at)
            .is_some_and(|at| now.duration_since(at) < cooldown)
    }

    /// Owned by someone whose renewals stopped at least `failover` ago.
    pub fn is_expired(&self, lease: &Lease, now: Instant, failover: Duration) -> bool {
        lease.owner.is_some()
            && self.seen.get(&lease.key).is_some_and(|(c, _, since)| {
                *c == lease.counter && now.duration_since(*since) >= failover
            })
    }
}

/// Why a lease is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeKind {
    /// Nobody owns it.
    Free,
    /// Its owner stopped renewing it for `failover_time`.
    Expired,
    /// Taken from the most loaded live worker to balance.
    Steal,
}

/// The leases this worker should try to take now, in order: free ones first, then expired
/// ones, up to the fair count `ceil(readable leases / live workers)` (and
/// `policy.max_leases`); then at most ONE stolen: by load, from the most loaded worker when
/// this one is below the band ([`balance::steal_by_load`]), or by count, from the worker
/// with the most leases when it holds more than the fair count and this one less. Only
/// unfinished shards whose parents are all finished count and can be taken (parents first
/// keeps per-key order across resharding). `greedy` (`--available-now`) takes all it can
/// and never steals.
#[allow(clippy::too_many_arguments)]
pub fn leases_to_take<'a>(
    leases: &'a [Lease],
    me: &str,
    tracker: &ExpiryTracker,
    now: Instant,
    failover: Duration,
    greedy: bool,
    policy: &BalancePolicy,
) -> Vec<(&'a Lease, TakeKind)> {
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
    let readable: Vec<&Lease> = leases.iter().filter(|l| ready(l)).collect();
    let alive = |l: &Lease| l.owner.is_some() && !tracker.is_expired(l, now, failover);
    let mut load: HashMap<&str, usize> = HashMap::new();
    for l in readable.iter().filter(|l| alive(l)) {
        *load
            .entry(l.owner.as_deref().unwrap_or_default())
            .or_default() += 1;
    }
    let held = load.get(me).copied().unwrap_or(0);
    let live = load.len() + usize::from(!load.contains_key(me));
    let cap = policy.max_leases.unwrap_or(usize::MAX);
    let target = if greedy {
        cap
    } else {
        readable.len().div_ceil(live).min(cap)
    };
    let mut take: Vec<(&Lease, TakeKind)> = readable
        .iter()
        .filter(|l| l.owner.is_none())
        .map(|l| (*l, TakeKind::Free))
        .collect();
    take.extend(
        readable
            .iter()
            .filter(|l| l.owner.as_deref().is_some_and(|o| o != me) && !alive(l))
            .map(|l| (*l, TakeKind::Expired)),
    );
    take.truncate(target.saturating_sub(held));
    if greedy || held + take.len() >= cap {
        return take;
    }
    if policy.mode == BalanceMode::Load {
        if !take.is_empty() {
            // Free and expired leases first; load is balanced once they are held.
            return take;
        }
        let alive_held: Vec<&Lease> = readable.iter().copied().filter(|l| alive(l)).collect();
        let mut workers: Vec<&str> = load.keys().copied().collect();
        if !load.contains_key(me) {
            workers.push(me);
        }
        let movable = |l: &Lease| !tracker.moved_within(l, now, policy.cooldown);
        if let Some(l) = balance::steal_by_load(&alive_held, me, &workers, policy.band, movable) {
            take.push((l, TakeKind::Steal));
        }
        return take;
    }
    if held < target {
        // Steal one from the most loaded live worker above the fair share (ties: by id,
        // so every thief picks the same victim and they do not all pile on different ones).
        let victim = load
            .iter()
            .filter(|(owner, n)| **owner != me && **n > target)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(owner, _)| *owner);
        if let Some(victim) = victim {
            let theirs: Vec<&Lease> = readable
                .iter()
                .copied()
                .filter(|l| l.owner.as_deref() == Some(victim) && alive(l))
                .collect();
            // Spread thieves over the victim's leases instead of all racing for the first.
            let pick = me
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                % theirs.len().max(1);
            if let Some(l) = theirs.get(pick) {
                take.push((*l, TakeKind::Steal));
            }
        }
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>, counter: u64) -> Lease {
        Lease {
            owner: owner.map(str::to_owned),
            counter,
            ..Lease::for_test("pin", shard, Checkpoint::TrimHorizon)
        }
    }

    const F: Duration = Duration::from_secs(10);
    const COUNT: BalancePolicy = BalancePolicy {
        mode: BalanceMode::Count,
        band: 0.1,
        max_leases: None,
        cooldown: Duration::from_secs(30),
    };

    #[test]
    fn expiry_follows_the_local_monotonic_clock() {
        let mut t = ExpiryTracker::default();
        let mut leases = vec![lease("s0", Some("w1"), 5)];
        let start = Instant::now();
        t.observe(&leases, start);
        let now = start + Duration::from_secs(9);
        t.observe(&leases, now);
        assert!(!t.is_expired(&leases[0], now, F));
        let now = now + Duration::from_secs(1);
        assert!(t.is_expired(&leases[0], now, F));
        // A renewal (counter moved) resets the clock.
        leases[0].counter = 6;
        t.observe(&leases, now);
        assert!(!t.is_expired(&leases[0], now, F));
    }

    #[test]
    fn takes_free_leases_up_to_the_fair_share() {
        let t = ExpiryTracker::default();
        let leases = vec![
            lease("s0", Some("w1"), 1),
            lease("s1", None, 0),
            lease("s2", None, 0),
            lease("s3", None, 0),
        ];
        // Two live workers (w1 and me), 4 shards: target 2 each.
        let take = leases_to_take(&leases, "me", &t, Instant::now(), F, false, &COUNT);
        assert_eq!(take.len(), 2);
        assert!(take
            .iter()
            .all(|(l, k)| l.owner.is_none() && *k == TakeKind::Free));
        assert_eq!(
            leases_to_take(&leases, "me", &t, Instant::now(), F, true, &COUNT).len(),
            3
        );
    }

    #[test]
    fn children_wait_for_their_parents() {
        let t = ExpiryTracker::default();
        let mut parent = lease("s0", None, 0);
        let mut child = lease("s1", None, 0);
        child.parent_shard_ids = vec!["s0".into()];
        let leases = vec![parent.clone(), child.clone()];
        let take: Vec<_> = leases_to_take(&leases, "me", &t, Instant::now(), F, true, &COUNT)
            .into_iter()
            .map(|(l, _)| l.shard_id.clone())
            .collect();
        assert_eq!(take, vec!["s0"]);
        parent.checkpoint = Checkpoint::ShardEnd;
        let leases = vec![parent, child];
        let take: Vec<_> = leases_to_take(&leases, "me", &t, Instant::now(), F, true, &COUNT)
            .into_iter()
            .map(|(l, _)| l.shard_id.clone())
            .collect();
        assert_eq!(take, vec!["s1"]);
    }

    #[test]
    fn expired_leases_are_taken_live_ones_are_not() {
        let mut t = ExpiryTracker::default();
        let leases = vec![lease("s0", Some("dead"), 3), lease("s1", Some("alive"), 3)];
        let start = Instant::now();
        t.observe(&leases, start);
        let now = start + F;
        let renewed = vec![leases[0].clone(), lease("s1", Some("alive"), 4)];
        t.observe(&renewed, now);
        let take = leases_to_take(&renewed, "me", &t, now, F, false, &COUNT);
        assert_eq!(take.len(), 1);
        assert_eq!(
            (take[0].0.shard_id.as_str(), take[0].1),
            ("s0", TakeKind::Expired)
        );
    }

    fn owned(n: usize, owner: &str, from: usize) -> Vec<Lease> {
        (from..from + n)
            .map(|i| lease(&format!("s{i:02}"), Some(owner), 1))
            .collect()
    }

    #[test]
    fn a_new_worker_steals_one_per_cycle_from_the_most_loaded() {
        let t = ExpiryTracker::default();
        // 12 leases: a holds 8, b holds 4; "me" joins: target ceil(12/3) = 4.
        let mut leases = owned(8, "a", 0);
        leases.extend(owned(4, "b", 8));
        let take = leases_to_take(&leases, "me", &t, Instant::now(), F, false, &COUNT);
        assert_eq!(take.len(), 1);
        assert_eq!(
            (take[0].0.owner.as_deref(), take[0].1),
            (Some("a"), TakeKind::Steal)
        );
        // Greedy (--available-now) never steals.
        assert!(leases_to_take(&leases, "me", &t, Instant::now(), F, true, &COUNT).is_empty());
    }

    #[test]
    fn balanced_assignments_do_not_flap() {
        let t = ExpiryTracker::default();
        // 13 leases over 3 workers: 5, 4, 4 is as fair as it gets; nobody takes anything.
        let mut leases = owned(5, "a", 0);
        leases.extend(owned(4, "b", 5));
        leases.extend(owned(4, "c", 9));
        for me in ["a", "b", "c"] {
            assert!(
                leases_to_take(&leases, me, &t, Instant::now(), F, false, &COUNT).is_empty(),
                "{me}"
            );
        }
    }

    /// Simulates workers taking turns until nothing changes: every worker ends with
    /// floor(S/W) or ceil(S/W) leases, in a bounded number of cycles.
    #[test]
    fn repeated_cycles_converge_to_floor_or_ceil() {
        let t = ExpiryTracker::default();
        for (shards, workers) in [(12usize, 3usize), (13, 3), (7, 4), (20, 6)] {
            let names: Vec<String> = (0..workers).map(|i| format!("w{i}")).collect();
            let mut leases = owned(shards, "w0", 0);
            let mut cycles = 0;
            loop {
                let mut changed = false;
                for me in &names {
                    for (l, _) in
                        leases_to_take(&leases.clone(), me, &t, Instant::now(), F, false, &COUNT)
                    {
                        let key = l.key.clone();
                        let item = leases.iter_mut().find(|x| x.key == key).unwrap();
                        item.owner = Some(me.clone());
                        item.counter += 1;
                        changed = true;
                    }
                }
                cycles += 1;
                if !changed {
                    break;
                }
                assert!(
                    cycles < 50,
                    "no convergence for {shards} shards / {workers} workers"
                );
            }
            for me in &names {
                let n = leases
                    .iter()
                    .filter(|l| l.owner.as_deref() == Some(me.as_str()))
                    .count();
                assert!(
                    n == shards / workers || n == shards.div_ceil(workers),
                    "{me} holds {n} of {shards} with {workers} workers"
                );
            }
        }
    }

    #[test]
    fn by_load_a_worker_below_the_band_steals_the_lease_that_closes_the_gap() {
        let loaded = |shard: &str, owner: &str, bps: f64| Lease {
            bytes_per_second: Some(bps),
            ..lease(shard, Some(owner), 1)
        };
        // `a` holds 600 B/s in three leases, `b` 100, `me` nothing: the mean is 233.
        let leases = vec![
            loaded("s0", "a", 300.0),
            loaded("s1", "a", 200.0),
            loaded("s2", "a", 100.0),
            loaded("s3", "b", 100.0),
        ];
        let mut t = ExpiryTracker::default();
        t.observe(&leases, Instant::now());
        let load = BalancePolicy::default();
        let take = leases_to_take(&leases, "me", &t, Instant::now(), F, false, &load);
        // The gap is 600: the best lease is the one nearest 300.
        assert_eq!(take.len(), 1);
        assert_eq!(
            (take[0].0.shard_id.as_str(), take[0].1),
            ("s0", TakeKind::Steal)
        );
        // By count `me` would take one from `a` too, but whichever its hash picks.
        assert_eq!(
            leases_to_take(&leases, "me", &t, Instant::now(), F, false, &COUNT).len(),
            1
        );
        // At its maximum a worker takes nothing.
        let capped = BalancePolicy {
            max_leases: Some(1),
            ..BalancePolicy::default()
        };
        assert!(leases_to_take(&leases, "b", &t, Instant::now(), F, false, &capped).is_empty());
        // A lease seen changing owner is in its cooldown.
        let mut moved = leases.clone();
        moved[0].owner = Some("b".into());
        moved[3].owner = Some("a".into());
        t.observe(&moved, Instant::now());
        let take = leases_to_take(&moved, "me", &t, Instant::now(), F, false, &load);
        assert!(
            take.iter()
                .all(|(l, _)| l.shard_id != "s0" && l.shard_id != "s3"),
            "{take:?}"
        );
    }
}
