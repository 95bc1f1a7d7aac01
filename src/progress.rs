//! Live counters of a running worker, written by its readers and sinks and read by whoever
//! runs it (the demo waits on them, the summary reports them).

use std::sync::atomic::AtomicU64;

/// Live counters of a running worker.
#[derive(Debug, Default)]
pub struct RunProgress {
    pub records_read: AtomicU64,
    /// Rows committed to cleaned and rejects tables together.
    pub rows_committed: AtomicU64,
}
