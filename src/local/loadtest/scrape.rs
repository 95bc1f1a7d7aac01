//! Reading the workers' Prometheus endpoints from outside: a histogram's buckets summed
//! over every worker and label set, and its quantiles estimated as Prometheus's
//! `histogram_quantile` does (linear within the bucket that holds the rank).

use std::collections::BTreeMap;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The `/metrics` text of the worker serving on `addr`, if it answers.
async fn scrape(addr: &str) -> Option<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}/metrics").parse().ok()?;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), client.get(uri))
        .await
        .ok()?
        .ok()?;
    let body = answer.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// Cumulative counts of `metric`'s buckets by upper bound, summed over label sets.
fn buckets(text: &str, metric: &str, into: &mut BTreeMap<u64, f64>) {
    let prefix = format!("{metric}_bucket{{");
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(b) => b,
                Err(_) => continue,
            }
        };
        if let Ok(n) = count.parse::<f64>() {
            *into.entry(bound.to_bits()).or_insert(0.0) += n;
        }
    }
}

/// The `q` quantile of a histogram given as cumulative counts by upper bound (keys are
/// `f64` bits of non-negative bounds, which order as the numbers do). `None` when empty.
fn quantile(cumulative: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = *cumulative.get(&f64::INFINITY.to_bits())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (&bits, &count) in cumulative {
        let upper = f64::from_bits(bits);
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let share = if count > below {
                (rank - below) / (count - below)
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * share);
        }
        (lower, below) = (upper, count);
    }
    None
}

/// `metric`'s quantiles `qs` over the workers serving on `addrs` (those that answer).
pub(super) async fn histogram_quantiles(
    addrs: &[String],
    metric: &str,
    qs: &[f64],
) -> Option<Vec<f64>> {
    let mut cumulative = BTreeMap::new();
    for addr in addrs {
        if let Some(text) = scrape(addr).await {
            buckets(&text, metric, &mut cumulative);
        }
    }
    qs.iter().map(|q| quantile(&cumulative, *q)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE pinstream_read_delay_seconds histogram
pinstream_read_delay_seconds_bucket{stream=\"a\",le=\"0.1\"} 10
pinstream_read_delay_seconds_bucket{stream=\"a\",le=\"0.5\"} 90
pinstream_read_delay_seconds_bucket{stream=\"a\",le=\"1\"} 100
pinstream_read_delay_seconds_bucket{stream=\"a\",le=\"+Inf\"} 100
pinstream_read_delay_seconds_bucket{stream=\"b\",le=\"0.1\"} 0
pinstream_read_delay_seconds_bucket{stream=\"b\",le=\"0.5\"} 0
pinstream_read_delay_seconds_bucket{stream=\"b\",le=\"1\"} 100
pinstream_read_delay_seconds_bucket{stream=\"b\",le=\"+Inf\"} 100
pinstream_read_delay_seconds_sum{stream=\"a\"} 30
other_bucket{le=\"0.1\"} 1000
";

    #[test]
    fn quantiles_interpolate_within_the_bucket_over_every_series() {
        let mut c = BTreeMap::new();
        buckets(TEXT, "pinstream_read_delay_seconds", &mut c);
        // 200 observations: 10 <= 0.1, 80 in (0.1, 0.5], 110 in (0.5, 1].
        assert_eq!(c[&f64::INFINITY.to_bits()], 200.0);
        let median = quantile(&c, 0.5).unwrap();
        // Rank 100: the 10th of 110 in (0.5, 1].
        assert!(
            (median - (0.5 + 0.5 * 10.0 / 110.0)).abs() < 1e-9,
            "{median}"
        );
        let low = quantile(&c, 0.05).unwrap();
        assert!((low - 0.1).abs() < 1e-9, "{low}");
        assert_eq!(quantile(&BTreeMap::new(), 0.5), None);
    }
}
