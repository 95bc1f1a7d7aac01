//! The load test's worker processes: started, measured from outside (`/proc`), killed with
//! SIGKILL and replaced (chaos), and stopped with SIGTERM at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{io, LoadtestError, WorkerUsage};

/// A running `pinstream run` process.
struct Worker {
    pid: u32,
    child: tokio::process::Child,
    log: PathBuf,
}

/// Worker processes sharing one configuration.
pub(super) struct Fleet {
    exe: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
    started: usize,
    live: Vec<Worker>,
    /// The last reading of every worker ever started, killed ones included.
    usage: BTreeMap<u32, WorkerUsage>,
}

impl Fleet {
    /// Starts `n` workers with `config`; their logs go to `logs/worker-<i>.log`.
    pub(super) fn start(
        n: usize,
        config: &Path,
        env: Vec<(String, String)>,
        logs: &Path,
    ) -> Result<Fleet, LoadtestError> {
        let mut fleet = Fleet {
            exe: std::env::current_exe().map_err(io("locating the pinstream binary"))?,
            config: config.to_owned(),
            env,
            logs: logs.to_owned(),
            started: 0,
            live: Vec::new(),
            usage: BTreeMap::new(),
        };
        for _ in 0..n.max(1) {
            fleet.start_one()?;
        }
        Ok(fleet)
    }

    /// Starts one more worker; returns its pid.
    pub(super) fn start_one(&mut self) -> Result<u32, LoadtestError> {
        let i = self.started;
        let log_path = self.logs.join(format!("worker-{i}.log"));
        let log = std::fs::File::create(&log_path).map_err(io("creating a worker log"))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--worker-id")
            .arg(format!("loadtest-worker-{i}"))
            // Any free port; the worker logs the one it got.
            .args(["--metrics-addr", "127.0.0.1:0"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(io("starting a worker"))?;
        let pid = child.id().unwrap_or_default();
        self.started += 1;
        self.live.push(Worker {
            pid,
            child,
            log: log_path,
        });
        Ok(pid)
    }

    /// Where the live workers serve their metrics (as each logged it).
    pub(super) fn metrics_addrs(&self) -> Vec<String> {
        self.live
            .iter()
            .filter_map(|w| {
                let text = std::fs::read_to_string(&w.log).ok()?;
                let line = text.lines().find(|l| l.contains("serving /metrics"))?;
                // Text logs say `addr=HOST:PORT`, JSON logs `"addr":"HOST:PORT"`.
                let addr = match line.split("addr=").nth(1) {
                    Some(rest) => rest.split_whitespace().next()?,
                    None => line.split("\"addr\":\"").nth(1)?.split('"').next()?,
                };
                Some(addr.trim_matches('"').to_owned())
            })
            .collect()
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        self.live.iter().map(|w| w.pid).collect()
    }

    /// Kills a randomly chosen live worker with SIGKILL (no flush, no release) and waits
    /// for it to be gone; returns its pid.
    pub(super) async fn kill_one_at_random(&mut self) -> Option<u32> {
        use rand::Rng as _;
        if self.live.is_empty() {
            return None;
        }
        self.sample_usage();
        let i = rand::rng().random_range(0..self.live.len());
        let mut w = self.live.swap_remove(i);
        let _ = w.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
        Some(w.pid)
    }

    /// Reads every live worker's peak RSS and CPU time.
    pub(super) fn sample_usage(&mut self) {
        for w in &self.live {
            if let Some(u) = read_usage(w.pid) {
                self.usage.insert(w.pid, u);
            }
        }
    }

    /// Every worker's last reading, killed ones included.
    pub(super) fn usage(&self) -> Vec<WorkerUsage> {
        self.usage.values().cloned().collect()
    }

    /// SIGTERM to every live worker (they flush, checkpoint and release), then waits up to
    /// a minute for each.
    pub(super) async fn stop(mut self) {
        self.sample_usage();
        for w in &self.live {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &w.pid.to_string()])
                .status()
                .await;
        }
        for w in &mut self.live {
            let _ = tokio::time::timeout(Duration::from_secs(60), w.child.wait()).await;
        }
    }
}

/// DynamoDB read and write units the workers' lease table calls consumed, from the
/// `run finished` line each worker that stopped gracefully logs (`logs/worker-<i>.log`).
pub(super) fn consumed_units(logs: &Path) -> (f64, f64) {
    let mut sum = (0.0, 0.0);
    let Ok(dir) = std::fs::read_dir(logs) else {
        return sum;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("worker-") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Some(line) = text.lines().rev().find(|l| l.contains("run finished")) else {
            continue;
        };
        let field = |key: &str| -> f64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.trim_matches('"').parse().ok())
                .unwrap_or(0.0)
        };
        sum.0 += field("dynamodb_read_units");
        sum.1 += field("dynamodb_write_units");
    }
    sum
}

/// Peak RSS and CPU seconds of a live process, from `/proc` (Linux).
pub(super) fn read_usage(pid: u32) -> Option<WorkerUsage> {
    let hwm_kib = super::measure::peak_rss_kib(pid)? as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ = 100 on Linux).
    let fields = super::measure::stat_fields(&stat)?;
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(WorkerUsage {
        pid,
        peak_rss_mib: hwm_kib / 1024.0,
        cpu_seconds: ticks / 100.0,
    })
}
