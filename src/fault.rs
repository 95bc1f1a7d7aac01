//! Fault injection for crash tests: `pinstream run --fault POINT[:N]` aborts the process
//! (like a SIGKILL: no flush, no release) the Nth time a flush (or, for `read`, a shard
//! reader) reaches POINT; `POINT:N:fail` instead makes that step fail there, as a failed
//! commit would (the sink keeps its rows and retries); `POINT:N:panic` panics the task
//! there (a bug). Off unless the hidden flag is given; never used in production.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Where in a flush to crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Rows buffered and fenced, nothing committed.
    BeforeCommit,
    /// The rejects table committed, the cleaned table not.
    BetweenCommits,
    /// The cleaned table committed, no checkpoint written.
    AfterCommit,
    /// Everything committed and checkpointed.
    AfterCheckpoint,
    /// A shard reader cleaned a GetRecords answer and is about to hand it to the sink.
    Read,
    /// The sink is about to checkpoint a shard at SHARD_END (`fail`: as if DynamoDB failed).
    ShardEndCheckpoint,
    /// A lease keeper is about to renew (`fail`: as if DynamoDB failed).
    Renew,
    /// The coordinator is about to work out where a newly taken shard resumes.
    Recover,
}

impl FaultPoint {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "before_commit" => FaultPoint::BeforeCommit,
            "between_commits" => FaultPoint::BetweenCommits,
            "after_commit" => FaultPoint::AfterCommit,
            "after_checkpoint" => FaultPoint::AfterCheckpoint,
            "read" => FaultPoint::Read,
            "shard_end_checkpoint" => FaultPoint::ShardEndCheckpoint,
            "renew" => FaultPoint::Renew,
            "recover" => FaultPoint::Recover,
            _ => return None,
        })
    }
}

/// What happens at the planned hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The process aborts (like a SIGKILL).
    Abort,
    /// The step fails, as a failed commit would.
    Fail,
    /// The task panics, as a bug would.
    Panic,
    /// The step takes this long (only where the step awaits: `recover`).
    Stall(std::time::Duration),
}

/// A planned crash (or failure), shared by the sinks and readers of one worker.
#[derive(Debug, Clone)]
pub struct Fault {
    point: FaultPoint,
    nth: u32,
    /// Every hit from the Nth on (`POINT:N+`), not only the Nth.
    onwards: bool,
    mode: FaultMode,
    seen: Arc<AtomicU32>,
}

impl Fault {
    /// Parses `POINT[:N[+][:fail|:panic|:stall=DURATION]]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let point = parts.next().unwrap_or_default();
        let count = parts.next().unwrap_or("1");
        let mode = match parts.next() {
            None => FaultMode::Abort,
            Some("fail") => FaultMode::Fail,
            Some("panic") => FaultMode::Panic,
            Some(m) => match m.strip_prefix("stall=") {
                Some(d) => FaultMode::Stall(
                    humantime::parse_duration(d).map_err(|e| format!("`{d}`: {e}"))?,
                ),
                None => return Err(format!("`{m}`: one of fail, panic, stall=DURATION")),
            },
        };
        let (count, onwards) = match count.strip_suffix('+') {
            Some(c) => (c, true),
            None => (count, false),
        };
        let nth = count
            .parse::<u32>()
            .map_err(|_| format!("`{count}` is not a count"))?;
        let point = FaultPoint::parse(point).ok_or_else(|| {
            format!(
                "`{point}`: one of before_commit, between_commits, after_commit, after_checkpoint, read, shard_end_checkpoint, renew, recover"
            )
        })?;
        Ok(Fault {
            point,
            nth: nth.max(1),
            onwards,
            mode,
            seen: Arc::new(AtomicU32::new(0)),
        })
    }

    /// How many times a flush reached the point so far (tests: the fault did happen).
    pub fn hits(&self) -> u32 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Called at `point`: on the planned hit, aborts the process, panics, or returns
    /// `Err` for the step to fail there.
    pub fn hit(&self, point: FaultPoint) -> Result<(), FaultPoint> {
        if self.planned(point) {
            match self.mode {
                FaultMode::Fail => {
                    eprintln!(
                        "pinstream: injected failure at {point:?} (hit {})",
                        self.nth
                    );
                    return Err(point);
                }
                FaultMode::Panic => panic!("injected panic at {point:?} (hit {})", self.nth),
                FaultMode::Abort => {
                    eprintln!(
                        "pinstream: injected fault at {point:?} (hit {}): aborting",
                        self.nth
                    );
                    std::process::abort();
                }
                FaultMode::Stall(_) => {}
            }
        }
        Ok(())
    }

    /// Called at a step that awaits: on the planned hit of a `stall`, takes that long;
    /// otherwise as [`Fault::hit`].
    pub async fn hit_async(&self, point: FaultPoint) -> Result<(), FaultPoint> {
        if let FaultMode::Stall(d) = self.mode {
            if self.planned(point) {
                eprintln!("pinstream: injected stall of {d:?} at {point:?}");
                tokio::time::sleep(d).await;
            }
            return Ok(());
        }
        self.hit(point)
    }

    /// Counts a hit of `point`; whether it is a planned one.
    fn planned(&self, point: FaultPoint) -> bool {
        if point != self.point {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        n == self.nth || (self.onwards && n > self.nth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_counts() {
        let f = Fault::parse("after_commit:3").unwrap();
        assert_eq!((f.point, f.nth), (FaultPoint::AfterCommit, 3));
        assert_eq!(Fault::parse("before_commit").unwrap().nth, 1);
        assert!(Fault::parse("sometime").is_err());
        assert!(Fault::parse("after_commit:x").is_err());
        // Hits before the planned one and at other points do nothing.
        assert!(f.hit(FaultPoint::AfterCommit).is_ok());
        assert!(f.hit(FaultPoint::BeforeCommit).is_ok());
        assert!(f.hit(FaultPoint::AfterCommit).is_ok());
        let f = Fault::parse("between_commits:2:fail").unwrap();
        assert_eq!(
            (f.point, f.nth, f.mode),
            (FaultPoint::BetweenCommits, 2, FaultMode::Fail)
        );
        assert_eq!(Fault::parse("read:3:panic").unwrap().mode, FaultMode::Panic);
        assert!(f.hit(FaultPoint::BetweenCommits).is_ok());
        assert!(f.hit(FaultPoint::BetweenCommits).is_err());
        assert!(f.hit(FaultPoint::BetweenCommits).is_ok(), "once");
    }
}
