//! The worker-wide memory budget: bytes of cleaned Arrow data held anywhere between the
//! shard readers and the commits (chunks waiting in a sink's queue and rows buffered for
//! the next flush), for all tables together (`flush.max_buffered_bytes`).
//!
//! A reader reserves room for each chunk before handing it to its sink; the room comes
//! back when the chunk's rows are committed or dropped. A reader that has to wait tells
//! the sinks, and the sinks holding the most flush early instead of waiting for their age
//! or size limits, so memory stays bounded by bytes whatever the backlog, and a worker
//! catching up on three full streams slows its reads instead of growing. Only the sinks
//! holding at least an equal share flush (see [`MemoryBudget::should_flush`]): while one
//! stream catches up, the others keep committing at their own pace instead of committing
//! their few live rows every time the backlogged stream's readers wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How often a waiting reader repeats its call for flushes (a sink busy committing when
/// the first call came has missed it).
const RENOTIFY: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct MemoryBudget {
    total: usize,
    room: Arc<Semaphore>,
    pressure: Notify,
    /// What each sink holds buffered, as it last said (see [`Holding`]).
    holdings: Mutex<Vec<Arc<AtomicUsize>>>,
}

/// One sink's entry in the budget: the bytes it holds buffered, for
/// [`MemoryBudget::should_flush`]. Counts as nothing once dropped.
#[derive(Debug)]
pub struct Holding(Arc<AtomicUsize>);

impl Holding {
    pub fn set(&self, bytes: usize) {
        self.0.store(bytes, Ordering::Relaxed);
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Room held for one chunk; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    budget: Arc<MemoryBudget>,
}

impl Reservation {
    /// Bytes of the budget this reservation holds.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // The permit is returned right after this; count it as returned already.
        let held = self.permit.num_permits();
        let used = self.budget.in_use().saturating_sub(held);
        metrics::gauge!("pinstream_memory_budget_used_bytes").set(used as f64);
    }
}

impl MemoryBudget {
    /// A budget of `total` bytes (at most what one semaphore can count).
    pub fn new(total: usize) -> Arc<Self> {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        metrics::gauge!("pinstream_memory_budget_bytes").set(total as f64);
        Arc::new(MemoryBudget {
            total,
            room: Arc::new(Semaphore::new(total)),
            pressure: Notify::new(),
            holdings: Mutex::new(Vec::new()),
        })
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.total - self.room.available_permits()
    }

    /// Waits for room for `bytes` (a chunk larger than the whole budget waits for all of
    /// it), calling for early flushes while it waits.
    pub async fn reserve(self: &Arc<Self>, bytes: usize) -> Reservation {
        let n = bytes.clamp(1, self.total).min(u32::MAX as usize) as u32;
        let permit = match self.room.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!("pinstream_memory_budget_waits_total").increment(1);
                let acquire = self.room.clone().acquire_many_owned(n);
                tokio::pin!(acquire);
                loop {
                    self.pressure.notify_waiters();
                    tokio::select! {
                        p = &mut acquire => break p.expect("the budget's semaphore is never closed"),
                        _ = tokio::time::sleep(RENOTIFY) => {}
                    }
                }
            }
        };
        metrics::gauge!("pinstream_memory_budget_used_bytes").set(self.in_use() as f64);
        Reservation {
            permit,
            budget: self.clone(),
        }
    }

    /// Resolves when a reader is waiting for room (sinks flush then).
    pub async fn pressed(&self) {
        self.pressure.notified().await
    }

    /// A new sink's entry, holding nothing.
    pub fn holding(&self) -> Holding {
        let h = Arc::new(AtomicUsize::new(0));
        let mut all = self.holdings.lock().expect("holdings lock");
        // Entries of dropped sinks hold nothing: forget them instead of growing.
        all.retain(|h| Arc::strong_count(h) > 1);
        all.push(h.clone());
        Holding(h)
    }

    /// Whether a sink holding `mine` bytes flushes when readers wait for room: when it
    /// holds at least an equal share of what all sinks hold. The largest holder always
    /// does, so room is always made; as each flush empties a holder, the next largest
    /// qualifies at the next call. A sink that cannot flush now (waiting to retry a failed
    /// commit) should say it holds nothing, so that the others make the room instead.
    pub fn should_flush(&self, mine: usize) -> bool {
        let all = self.holdings.lock().expect("holdings lock");
        let (sum, holders) = all
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .filter(|&b| b > 0)
            .fold((0usize, 0usize), |(sum, n), b| (sum + b, n + 1));
        mine.saturating_mul(holders) >= sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_comes_back_when_a_reservation_drops_and_waiters_call_for_flushes() {
        let budget = MemoryBudget::new(100);
        let a = budget.reserve(60).await;
        assert_eq!(budget.in_use(), 60);
        // Larger than the whole budget: waits for all of it, not forever.
        let b2 = budget.clone();
        let pressed = budget.pressure.notified();
        tokio::pin!(pressed);
        // Registered before the waiter starts, so its call cannot be missed.
        pressed.as_mut().enable();
        let waiter = tokio::spawn(async move { b2.reserve(1_000).await });
        tokio::time::timeout(Duration::from_secs(5), pressed)
            .await
            .expect("a call for flushes within 5 s");
        assert!(!waiter.is_finished());
        drop(a);
        let all = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the room within 5 s")
            .unwrap();
        assert_eq!(budget.in_use(), 100);
        drop(all);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn under_pressure_the_largest_holders_flush_and_a_trickle_waits_its_turn() {
        let budget = MemoryBudget::new(100);
        let (backlog, trickle, idle) = (budget.holding(), budget.holding(), budget.holding());
        backlog.set(90);
        trickle.set(5);
        idle.set(0);
        assert!(budget.should_flush(90));
        assert!(!budget.should_flush(5));
        // Once the largest has flushed, the next largest is the one to make room.
        backlog.set(0);
        assert!(budget.should_flush(5));
        // Equal shares all flush.
        backlog.set(5);
        assert!(budget.should_flush(5));
        // A sink that cannot flush says it holds nothing, and a dropped one holds nothing.
        backlog.set(90);
        drop(backlog);
        assert!(budget.should_flush(5));
        assert_eq!(budget.holdings.lock().unwrap().len(), 3);
        let _again = budget.holding();
        assert_eq!(
            budget.holdings.lock().unwrap().len(),
            3,
            "the dropped entry is reused"
        );
    }
}
