//! Shards into leases: every shard sync lists the streams, creates the missing leases,
//! starts over the leases of a stream recreated under the same name, and says which shards
//! are closed; finished leases of shards gone from the stream are deleted after a grace
//! period; and which streams' tables this worker maintains, read from the lease table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::aws::AwsClients;
use crate::clean::Kind;
use crate::config::{InitialPosition, Settings};
use crate::kinesis::{self};
use crate::lease::{Checkpoint, Lease, LeaseError, LeaseTable};

use super::WorkerError;

/// Where a shard without a committed position starts, as stored in a new lease.
fn initial_checkpoint(p: InitialPosition) -> Checkpoint {
    match p {
        InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
        InitialPosition::Latest => Checkpoint::Latest,
        InitialPosition::AtTimestamp(ms) => Checkpoint::AtTimestamp(ms),
    }
}

/// Where a new lease of a shard with `parents` starts. A child of a reshard starts at
/// TRIM_HORIZON, so nothing between its parents' end and its own start is skipped: when a
/// parent is still listed, and when the application already reads the stream (it has
/// leases of it), even if the parents aged out of the stream before this lease was made (a
/// fleet down for longer than the retention, a reshard while no sync ran). Only a shard of
/// a stream the application has never read, whose parents are gone too, starts at
/// `lease.initial_position`, as every shard of a new application does.
fn new_lease_start(
    parents: &[String],
    listed: &HashSet<&str>,
    read_before: bool,
    initial: InitialPosition,
) -> Checkpoint {
    let child =
        parents.iter().any(|p| listed.contains(p.as_str())) || (read_before && !parents.is_empty());
    if child {
        Checkpoint::TrimHorizon
    } else {
        initial_checkpoint(initial)
    }
}

/// What a shard sync listed.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// The shard ids each configured stream listed, by stream name.
    pub shards: BTreeMap<String, HashSet<String>>,
    /// Lease keys of the listed shards that are closed (they will reach SHARD_END).
    pub closed: HashSet<String>,
    /// Each stream's creation time (ms): leases recording another are not taken.
    pub created: BTreeMap<String, i64>,
}

/// Creates a lease for every shard of every configured stream that has none. Shards whose
/// parents are listed too are children of a reshard: they start at TRIM_HORIZON so nothing
/// between the parent's end and the child's start is skipped. New leases record the
/// stream's creation time and a txn app id that includes it.
///
/// A stream deleted and created again under the same name is noticed here (its leases
/// record another creation time): its leases start over at TRIM_HORIZON for the new
/// stream's shards (with a new txn app id, so the tables' old txn versions do not apply),
/// and those of shards the new stream does not have are deleted. Nothing of the new stream
/// is skipped. Leases from before pinstream recorded the creation time are taken to belong
/// to the stream as it is. Returns what was listed.
pub async fn sync_shards(
    aws: &AwsClients,
    leases: &LeaseTable,
    settings: &Settings,
) -> Result<Listing, WorkerError> {
    let mut listing = Listing::default();
    let existing = leases.scan().await?;
    for stream in settings.streams.values() {
        let created = kinesis::stream_created(&aws.kinesis, stream).await?;
        let shards = kinesis::list_shards(&aws.kinesis, stream).await?;
        let theirs: Vec<&Lease> = existing.iter().filter(|l| &l.stream == stream).collect();
        start_over_if_recreated(leases, settings, stream, created, &shards, &theirs).await?;
        let ids: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
        let read_before = !theirs.is_empty();
        for s in &shards {
            let start = new_lease_start(
                &s.parents,
                &ids,
                read_before,
                settings.lease.initial_position,
            );
            let app_id = Lease::app_id_for(&settings.application, stream, created, &s.shard_id);
            if leases
                .create_lease(
                    stream,
                    &s.shard_id,
                    &s.parents,
                    &start,
                    Some((created, &app_id)),
                )
                .await?
            {
                tracing::info!(%stream, shard_id = %s.shard_id, parents = ?s.parents, "new shard lease");
            }
        }
        listing.closed.extend(
            shards
                .iter()
                .filter(|s| s.closed)
                .map(|s| Lease::key_of(stream, &s.shard_id)),
        );
        listing.created.insert(stream.clone(), created);
        listing.shards.insert(
            stream.clone(),
            shards.into_iter().map(|s| s.shard_id).collect(),
        );
    }
    Ok(listing)
}

/// See [`sync_shards`]: leases of `stream` written for another stream of the same name.
async fn start_over_if_recreated(
    leases: &LeaseTable,
    settings: &Settings,
    stream: &str,
    created: i64,
    shards: &[kinesis::ShardInfo],
    theirs: &[&Lease],
) -> Result<(), WorkerError> {
    for l in theirs {
        let Some(was) = l.stream_created else {
            leases.adopt(&l.key, created).await?;
            continue;
        };
        if was == created {
            continue;
        }
        let res = match shards.iter().find(|s| s.shard_id == l.shard_id) {
            Some(s) => {
                let app_id = Lease::app_id_for(&settings.application, stream, created, &s.shard_id);
                leases.start_over(l, &s.parents, created, &app_id).await
            }
            None => leases.delete_stale(&l.key, l.counter).await,
        };
        match res {
            Ok(()) => {
                metrics::counter!("pinstream_stream_recreated_leases_total", "stream" => stream.to_owned()).increment(1);
                tracing::warn!(%stream, lease = %l.key, old_created_ms = was, new_created_ms = created, "the stream was deleted and created again under the same name: this lease starts over at TRIM_HORIZON of the new stream (rows of the old stream stay in the tables)");
            }
            // Another worker did it first.
            Err(LeaseError::Lost(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The kinds whose tables `me` maintains: one owner per stream, found in the lease table
/// without a row or a write of its own: the owner of the stream's unfinished lease with the
/// smallest key. Nobody maintains a stream whose first such lease is free.
pub(super) fn maintenance_owned(
    all: &[Lease],
    me: &str,
    kind_of: &HashMap<String, Kind>,
) -> BTreeSet<Kind> {
    let mut first: BTreeMap<&str, &Lease> = BTreeMap::new();
    for l in all.iter().filter(|l| !l.is_finished()) {
        let e = first.entry(l.stream.as_str()).or_insert(l);
        if l.key < e.key {
            *e = l;
        }
    }
    first
        .into_iter()
        .filter(|(_, l)| l.owner.as_deref() == Some(me))
        .filter_map(|(stream, _)| kind_of.get(stream).copied())
        .collect()
}

/// Finished leases whose shards the stream no longer lists, with the instant each was
/// first seen so; those gone for `cleanup_after` are due for deletion (KCL's lease cleanup).
#[derive(Debug, Default)]
pub(super) struct FinishedLeaseCleanup {
    gone_since: HashMap<String, Instant>,
}

impl FinishedLeaseCleanup {
    /// The finished leases (key, counter) to delete now, given a scan and the last listing.
    pub(super) fn due(
        &mut self,
        all: &[Lease],
        listing: &Listing,
        now: Instant,
        after: Duration,
    ) -> Vec<(String, u64)> {
        let mut due = Vec::new();
        let mut seen = HashSet::new();
        for l in all.iter().filter(|l| l.is_finished() && l.owner.is_none()) {
            let Some(listed) = listing.shards.get(&l.stream) else {
                continue;
            };
            if listed.contains(&l.shard_id) {
                continue;
            }
            seen.insert(l.key.clone());
            let since = *self.gone_since.entry(l.key.clone()).or_insert(now);
            if now.duration_since(since) >= after {
                due.push((l.key.clone(), l.counter));
            }
        }
        self.gone_since.retain(|k, _| seen.contains(k));
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(stream: &str, shard: &str, counter: u64) -> Lease {
        Lease {
            counter,
            ..Lease::for_test(stream, shard, Checkpoint::ShardEnd)
        }
    }

    #[test]
    fn a_child_starts_at_trim_horizon_even_when_its_parents_aged_out_of_a_stream_being_read() {
        let listed: HashSet<&str> = HashSet::from(["parent", "child", "root"]);
        let parents = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let latest = InitialPosition::Latest;
        // A parent still listed: TRIM_HORIZON, whether the stream was read before or not.
        for read_before in [false, true] {
            assert_eq!(
                new_lease_start(&parents(&["parent"]), &listed, read_before, latest),
                Checkpoint::TrimHorizon
            );
        }
        // Parents aged out of a stream this application reads: still TRIM_HORIZON (was
        // LATEST, skipping the child's records written before its lease was made).
        assert_eq!(
            new_lease_start(&parents(&["gone-a", "gone-b"]), &listed, true, latest),
            Checkpoint::TrimHorizon
        );
        // A stream the application never read: its shards start where it is told.
        assert_eq!(
            new_lease_start(&parents(&["gone-a"]), &listed, false, latest),
            Checkpoint::Latest
        );
        assert_eq!(
            new_lease_start(&[], &listed, true, latest),
            Checkpoint::Latest,
            "a shard without parents (a new stream's) starts at the initial position"
        );
    }

    #[test]
    fn one_worker_maintains_each_stream_the_owner_of_its_first_unfinished_lease() {
        let kind_of: HashMap<String, Kind> =
            [("p".to_string(), Kind::Pin), ("g".to_string(), Kind::Geo)].into();
        let mut done = finished("p", "s0", 1);
        done.owner = Some("a".into());
        let mut p1 = finished("p", "s1", 1);
        p1.checkpoint = Checkpoint::TrimHorizon;
        p1.owner = Some("b".into());
        let mut p2 = p1.clone();
        p2.shard_id = "s2".into();
        p2.key = Lease::key_of("p", "s2");
        p2.owner = Some("a".into());
        let mut g0 = p1.clone();
        g0.stream = "g".into();
        g0.key = Lease::key_of("g", "s1");
        g0.owner = None;
        let all = vec![done, p2, p1, g0];
        assert_eq!(
            maintenance_owned(&all, "b", &kind_of),
            BTreeSet::from([Kind::Pin])
        );
        assert!(maintenance_owned(&all, "a", &kind_of).is_empty());
    }

    #[test]
    fn finished_leases_are_deleted_only_after_their_shard_is_gone_for_the_grace_period() {
        let mut cleanup = FinishedLeaseCleanup::default();
        let after = Duration::from_secs(60);
        let listing = Listing {
            shards: [("s".to_string(), HashSet::from(["listed".to_string()]))].into(),
            closed: HashSet::new(),
            created: BTreeMap::new(),
        };
        let mut open = finished("s", "open", 1);
        open.checkpoint = Checkpoint::TrimHorizon;
        let mut owned = finished("s", "owned", 1);
        owned.owner = Some("w".into());
        let all = vec![
            finished("s", "listed", 1),
            finished("s", "gone", 4),
            finished("other", "x", 1), // a stream this worker was not told about
            open,
            owned,
        ];
        let t0 = Instant::now();
        assert!(cleanup.due(&all, &listing, t0, after).is_empty());
        assert!(cleanup
            .due(&all, &listing, t0 + after - Duration::from_secs(1), after)
            .is_empty());
        assert_eq!(
            cleanup.due(&all, &listing, t0 + after, after),
            vec![(Lease::key_of("s", "gone"), 4)]
        );
        // Listed again (a stale listing said it was gone): the clock starts over.
        let relisted = Listing {
            shards: [(
                "s".to_string(),
                HashSet::from(["listed".to_string(), "gone".to_string()]),
            )]
            .into(),
            closed: HashSet::new(),
            created: BTreeMap::new(),
        };
        assert!(cleanup
            .due(&all, &relisted, t0 + after * 2, after)
            .is_empty());
        assert!(cleanup
            .due(&all, &listing, t0 + after * 2, after)
            .is_empty());
    }
}
