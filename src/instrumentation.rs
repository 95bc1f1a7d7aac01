//! Every metric pinstream emits, in one list: name, type, labels, unit and meaning. The
//! Prometheus recorder takes each histogram's buckets (in the metric's own unit) and help
//! text from here; a unit test checks that every metric the code emits is listed, and that
//! the table in `docs/operations.md` says the same as this list.

/// What kind of metric, and for histograms, their unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram(Unit),
}

/// The unit a histogram observes; its buckets follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Rows,
    Bytes,
}

impl Unit {
    /// Bucket bounds in this unit.
    pub fn buckets(self) -> &'static [f64] {
        match self {
            Unit::Seconds => &[
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5,
                5.0, 10.0, 30.0, 60.0,
            ],
            Unit::Rows => &[
                1.0,
                10.0,
                100.0,
                1_000.0,
                10_000.0,
                50_000.0,
                100_000.0,
                200_000.0,
                1_000_000.0,
            ],
            Unit::Bytes => &[
                1024.0,
                16_384.0,
                262_144.0,
                1_048_576.0,
                4_194_304.0,
                16_777_216.0,
                67_108_864.0,
                268_435_456.0,
            ],
        }
    }
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        labels,
        help,
    }
}

const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        labels,
        help,
    }
}

const fn histogram(
    name: &'static str,
    unit: Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram(unit),
        labels,
        help,
    }
}

/// Every metric, grouped as the worker's path goes: reading, cleaning, committing, leases,
/// memory, table maintenance, the producer.
pub const METRICS: &[Metric] = &[
    counter(
        "pinstream_records_received_total",
        &["stream"],
        "Records read from Kinesis.",
    ),
    counter(
        "pinstream_bytes_received_total",
        &["stream"],
        "Bytes of record data read from Kinesis.",
    ),
    counter(
        "pinstream_get_records_throttles_total",
        &["stream"],
        "GetRecords calls Kinesis throttled.",
    ),
    counter(
        "pinstream_subscriptions_total",
        &["stream", "reason"],
        "Enhanced fan-out subscriptions opened, by why: start, ended (every 5 minutes by design), quiet (no event for reader.quiet_timeout: half-open), error.",
    ),
    gauge(
        "pinstream_millis_behind_latest",
        &["stream", "shard_id"],
        "How far a shard's reader is behind the tip of the shard, in milliseconds.",
    ),
    gauge(
        "pinstream_shard_read_age_seconds",
        &["stream", "shard_id"],
        "Seconds since this worker's reader of a shard last had an answer (records or none), set at every lease renewal: it keeps growing while the shard is not being read, whatever the reader waits on; 0 once the lease is handed back. Alert when it passes reader.stall_timeout.",
    ),
    gauge(
        "pinstream_reader_stall_timeout_seconds",
        &[],
        "This worker's reader.stall_timeout, in seconds: what pinstream_shard_read_age_seconds is compared with (the shipped stall alert does).",
    ),
    counter(
        "pinstream_reader_stalls_total",
        &["stream"],
        "Shard readers whose calls all failed for longer than reader.stall_timeout (each run of failures once); at twice it the lease is handed back.",
    ),
    counter(
        "pinstream_call_timeouts_total",
        &["service", "operation"],
        "AWS call attempts that ran out of time (network.<service>.attempt_timeout or operation_timeout, a subscription without an answer within reader.quiet_timeout, a read without one within reader.stall_timeout); each is retried on a fresh connection.",
    ),
    counter(
        "pinstream_shards_vanished_total",
        &["stream"],
        "Shards found gone from their stream (aged out) and treated as ended.",
    ),
    counter(
        "pinstream_shard_reader_failures_total",
        &[],
        "Shard readers that failed or panicked; their leases were handed back.",
    ),
    counter(
        "pinstream_records_rejected_total",
        &["stream", "reason"],
        "Records that could not be cleaned, by reason.",
    ),
    counter(
        "pinstream_records_written_total",
        &["table"],
        "Cleaned rows committed.",
    ),
    counter(
        "pinstream_records_rejected_written_total",
        &["table"],
        "Rejected records committed to a rejects table.",
    ),
    counter(
        "pinstream_delta_commits_total",
        &["table"],
        "Delta commits of appended rows.",
    ),
    counter(
        "pinstream_delta_commit_failures_total",
        &["table"],
        "Delta commits that failed (the rows stay buffered and are retried).",
    ),
    histogram(
        "pinstream_read_delay_seconds",
        Unit::Seconds,
        &["stream"],
        "From a record's arrival in Kinesis to the worker having it in hand (polling or fan-out), for up to 100 records of each GetRecords answer or fan-out event.",
    ),
    histogram(
        "pinstream_delta_commit_duration_seconds",
        Unit::Seconds,
        &["table"],
        "Time to write a flush's files and commit them.",
    ),
    histogram(
        "pinstream_flush_rows",
        Unit::Rows,
        &["table"],
        "Cleaned rows per flush.",
    ),
    histogram(
        "pinstream_flush_bytes",
        Unit::Bytes,
        &["table"],
        "Bytes of record data per flush.",
    ),
    gauge(
        "pinstream_buffer_rows",
        &["table"],
        "Rows buffered for the next commit.",
    ),
    gauge(
        "pinstream_buffer_bytes",
        &["table"],
        "Bytes of record data buffered for the next commit.",
    ),
    counter(
        "pinstream_sink_failures_total",
        &["table"],
        "Table sinks that died; restarted, their leases handed back.",
    ),
    gauge(
        "pinstream_leases_unowned",
        &[],
        "Unfinished leases no live worker holds (free, or expired), as this worker's last lease scan saw them; stays above 0 only when the fleet is short of workers or they cannot take them.",
    ),
    gauge(
        "pinstream_ready",
        &[],
        "1 while /readyz would answer 200 (the lease table answers, commits are not failing for long, every held shard is being read, no table refused), else 0; set at each scrape.",
    ),
    counter(
        "pinstream_leases_taken_total",
        &["how"],
        "Leases taken: free, expired or stolen.",
    ),
    counter(
        "pinstream_leases_released_total",
        &[],
        "Leases handed back.",
    ),
    counter(
        "pinstream_leases_lost_total",
        &[],
        "Leases lost: renewal refused or failing, or fenced by another writer's commit.",
    ),
    counter(
        "pinstream_lease_recovery_failures_total",
        &[],
        "Taken leases that could not be resumed; released and retried with backoff.",
    ),
    counter(
        "pinstream_leases_deleted_total",
        &[],
        "Finished leases of shards gone from the stream, deleted.",
    ),
    counter(
        "pinstream_stream_recreated_leases_total",
        &["stream"],
        "Leases started over (or deleted) because their stream was recreated under the same name.",
    ),
    counter(
        "pinstream_dynamodb_condition_failures_total",
        &["op"],
        "Conditional lease writes refused (another worker changed the lease).",
    ),
    gauge("pinstream_leases_held", &[], "Leases this worker holds."),
    gauge(
        "pinstream_dynamodb_read_units",
        &[],
        "DynamoDB read capacity units the lease table scans consumed so far (cumulative).",
    ),
    gauge(
        "pinstream_dynamodb_write_units",
        &[],
        "DynamoDB write capacity units lease takes, renewals and checkpoints consumed so far (cumulative).",
    ),
    gauge(
        "pinstream_memory_budget_bytes",
        &[],
        "The worker's memory budget for cleaned data (flush.max_buffered_bytes).",
    ),
    gauge(
        "pinstream_memory_budget_used_bytes",
        &[],
        "Cleaned data held between the readers and the commits.",
    ),
    counter(
        "pinstream_memory_budget_waits_total",
        &[],
        "Times a reader waited for room in the memory budget.",
    ),
    counter(
        "pinstream_pressure_flushes_total",
        &["table"],
        "Commits made early because a reader waited for room.",
    ),
    counter(
        "pinstream_compactions_total",
        &["table"],
        "Compactions committed.",
    ),
    counter(
        "pinstream_compaction_files_removed_total",
        &["table"],
        "Small files replaced by compaction.",
    ),
    counter(
        "pinstream_compaction_conflicts_total",
        &[],
        "Compactions given up because another writer removed their files first.",
    ),
    counter(
        "pinstream_vacuum_files_deleted_total",
        &["table"],
        "Data files deleted by vacuum.",
    ),
    histogram(
        "pinstream_put_records_duration_seconds",
        Unit::Seconds,
        &["stream"],
        "PutRecords call latency (producer).",
    ),
    counter(
        "pinstream_put_records_throttles_total",
        &["stream"],
        "PutRecords entries Kinesis throttled (producer).",
    ),
    counter(
        "pinstream_put_records_retries_total",
        &["stream"],
        "PutRecords entries sent again (producer).",
    ),
    counter(
        "pinstream_ingest_requests_total",
        &["api", "status"],
        "HTTP requests answered by pinstream ingest, by API (gateway, rest_proxy) and status code.",
    ),
    histogram(
        "pinstream_ingest_request_duration_seconds",
        Unit::Seconds,
        &["api"],
        "Time from a request's arrival to its answer (ingest).",
    ),
    counter(
        "pinstream_ingest_records_total",
        &["stream"],
        "Records Kinesis stored for ingest requests.",
    ),
    counter(
        "pinstream_ingest_bytes_total",
        &["stream"],
        "Bytes of record data Kinesis stored for ingest requests.",
    ),
    counter(
        "pinstream_ingest_refused_total",
        &["reason"],
        "Ingest requests refused, by reason (bad_json, bad_request, too_large, unknown_stream, unknown_topic, media_type, unauthorized, forbidden, busy, draining, not_stored).",
    ),
    gauge(
        "pinstream_ingest_in_flight_bytes",
        &[],
        "Request bytes being stored now (ingest); at ingest.max_in_flight_bytes requests get 429.",
    ),
];

/// The listed metric of that name.
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// Registers every metric's help text with the installed recorder.
pub fn describe_all() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram(Unit::Seconds) => {
                metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
            }
            Kind::Histogram(Unit::Bytes) => {
                metrics::describe_histogram!(m.name, metrics::Unit::Bytes, m.help)
            }
            Kind::Histogram(Unit::Rows) => {
                metrics::describe_histogram!(m.name, metrics::Unit::Count, m.help)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metric names and label keys the code emits, read from the source text.
    fn emitted() -> Vec<(String, Vec<String>, &'static str)> {
        let mut out = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                if p.ends_with("instrumentation.rs") {
                    continue; // this list, and the scanner's own patterns
                }
                let text = std::fs::read_to_string(&p).unwrap();
                for (kind, macro_name) in [
                    ("counter", "metrics::counter!("),
                    ("gauge", "metrics::gauge!("),
                    ("histogram", "metrics::histogram!("),
                ] {
                    for (i, _) in text.match_indices(macro_name) {
                        let args = top_level_args(&text[i + macro_name.len()..]);
                        let Some(name) = args.first().and_then(|a| a.strip_prefix('"')) else {
                            continue; // a name from this list, not a literal
                        };
                        let name = name.trim_end_matches('"').to_owned();
                        let labels = args[1..]
                            .iter()
                            .filter_map(|a| a.split_once("=>"))
                            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
                            .collect();
                        out.push((name, labels, kind));
                    }
                }
            }
        }
        out
    }

    /// The arguments of a macro call whose text starts right after its `(`, split at the
    /// commas outside strings, brackets and braces, up to the matching `)`.
    fn top_level_args(text: &str) -> Vec<String> {
        let (mut depth, mut in_string, mut escaped) = (0i32, false, false);
        let (mut args, mut current) = (Vec::new(), String::new());
        for c in text.chars() {
            if in_string {
                in_string = c != '"' || escaped;
                escaped = c == '\\' && !escaped;
                current.push(c);
                continue;
            }
            match c {
                '"' => in_string = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => break,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(current.trim().to_owned());
                    current.clear();
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        if !current.trim().is_empty() {
            args.push(current.trim().to_owned());
        }
        args
    }

    #[test]
    fn every_metric_the_code_emits_is_listed_with_its_type_and_labels() {
        let found = emitted();
        assert!(
            found.len() >= 30,
            "the scan found the call sites: {found:?}"
        );
        for (name, labels, kind) in found {
            let m = find(&name).unwrap_or_else(|| panic!("{name} is not in METRICS"));
            let listed_kind = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            assert_eq!(listed_kind, kind, "{name}");
            assert_eq!(m.labels, labels.as_slice(), "{name}: labels");
        }
    }

    #[test]
    fn the_operations_page_lists_every_metric_as_the_code_does() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
                .unwrap();
        let rows: Vec<&str> = doc
            .lines()
            .filter(|l| l.starts_with("| `pinstream_"))
            .collect();
        for m in METRICS {
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("| `{}`", m.name)))
                .unwrap_or_else(|| panic!("docs/operations.md has no row for {}", m.name));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let kind = match m.kind {
                Kind::Counter => "counter".to_owned(),
                Kind::Gauge => "gauge".to_owned(),
                Kind::Histogram(u) => format!("histogram ({})", format!("{u:?}").to_lowercase()),
            };
            assert_eq!(cells[2], kind, "{}: type", m.name);
            let labels: Vec<String> = m.labels.iter().map(|l| format!("`{l}`")).collect();
            assert_eq!(cells[3], labels.join(", "), "{}: labels", m.name);
        }
        assert_eq!(rows.len(), METRICS.len(), "a row for each metric, no more");
    }

    #[test]
    fn histogram_buckets_are_in_their_own_unit() {
        for m in METRICS {
            if let Kind::Histogram(u) = m.kind {
                let b = u.buckets();
                assert!(b.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
                match u {
                    Unit::Rows => assert!(b[0] >= 1.0 && *b.last().unwrap() >= 200_000.0),
                    Unit::Bytes => assert!(b[0] >= 1024.0 && *b.last().unwrap() >= 64e6),
                    Unit::Seconds => assert!(b[0] < 0.1 && *b.last().unwrap() >= 30.0),
                }
            }
        }
    }
}
