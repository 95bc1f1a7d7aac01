//! How long to wait before trying again after consecutive failures: exponential with a cap,
//! shared by the shard readers (GetRecords) and the sinks (commits).

use std::time::Duration;

/// 200 ms after the first failure, doubling per failure, at most 25.6 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << failures.min(8).saturating_sub(1));
    Duration::from_millis(ms.min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(50), Duration::from_millis(25_600));
    }
}
