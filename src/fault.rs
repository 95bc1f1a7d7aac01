//! Fault injection for crash tests: `pinstream run --fault POINT[:N]` aborts the process
//! (like a SIGKILL: no flush, no release) the Nth time a flush reaches POINT. Off unless the
//! hidden flag is given; never used in production.

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
}

impl FaultPoint {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "before_commit" => FaultPoint::BeforeCommit,
            "between_commits" => FaultPoint::BetweenCommits,
            "after_commit" => FaultPoint::AfterCommit,
            "after_checkpoint" => FaultPoint::AfterCheckpoint,
            _ => return None,
        })
    }
}

/// A planned crash, shared by the sinks of one worker.
#[derive(Debug, Clone)]
pub struct Fault {
    point: FaultPoint,
    nth: u32,
    seen: Arc<AtomicU32>,
}

impl Fault {
    /// Parses `POINT[:N]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (point, nth) = match s.split_once(':') {
            Some((p, n)) => (
                p,
                n.parse::<u32>()
                    .map_err(|_| format!("`{n}` is not a count"))?,
            ),
            None => (s, 1),
        };
        let point = FaultPoint::parse(point).ok_or_else(|| {
            format!(
                "`{point}`: one of before_commit, between_commits, after_commit, after_checkpoint"
            )
        })?;
        Ok(Fault {
            point,
            nth: nth.max(1),
            seen: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Called by a flush at `point`: aborts the process on the planned hit.
    pub fn hit(&self, point: FaultPoint) {
        if point == self.point && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            eprintln!(
                "pinstream: injected fault at {point:?} (hit {}): aborting",
                self.nth
            );
            std::process::abort();
        }
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
        f.hit(FaultPoint::AfterCommit);
        f.hit(FaultPoint::BeforeCommit);
        f.hit(FaultPoint::AfterCommit);
    }
}
