//! One child process run to its end and measured from outside: CPU seconds (user + system,
//! the process's threads and any children it waited for), peak resident memory and wall
//! time, as `/usr/bin/time` would report them (Linux `/proc`).

use std::time::Duration;

use tokio::time::Instant;

/// What a finished process cost.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProcessCost {
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    pub wall_seconds: f64,
}

/// How often the child's high-water mark of resident memory is read while it runs. The
/// mark only grows, so a reading misses at most what the last interval before the exit
/// added.
const RSS_POLL: Duration = Duration::from_millis(20);

/// Runs `cmd` to its end. The CPU time is what the kernel credits this process with for
/// children it reaped (`cutime` + `cstime`) over the child's life, so no other child may be
/// reaped meanwhile (the caller runs one measured process at a time).
pub async fn run_measured(
    mut cmd: tokio::process::Command,
) -> std::io::Result<(std::process::ExitStatus, ProcessCost)> {
    let cpu_before = reaped_children_cpu_seconds()?;
    let started = Instant::now();
    let mut child = cmd.kill_on_drop(true).spawn()?;
    let pid = child.id().unwrap_or_default();
    let mut peak_kib = 0u64;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(RSS_POLL) => {
                peak_kib = peak_kib.max(peak_rss_kib(pid).unwrap_or(0));
            }
        }
    };
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = reaped_children_cpu_seconds()? - cpu_before;
    Ok((
        status,
        ProcessCost {
            cpu_seconds,
            peak_rss_mib: peak_kib as f64 / 1024.0,
            wall_seconds,
        },
    ))
}

/// `VmHWM` of a live process, KiB.
pub(super) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// CPU seconds of this process's reaped children: `cutime` and `cstime`, fields 16 and 17
/// of `/proc/self/stat`, in clock ticks (USER_HZ = 100 on Linux).
fn reaped_children_cpu_seconds() -> std::io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    parse_children_ticks(&stat)
        .map(|ticks| ticks as f64 / 100.0)
        .ok_or_else(|| std::io::Error::other("cannot parse /proc/self/stat"))
}

fn parse_children_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// The fields of a `/proc/PID/stat` line from field 3 (state) on: the command name
/// (field 2) may hold spaces and parentheses, so they start after its last `)`. Field N
/// of proc(5) is at index N - 3.
pub(super) fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_ticks_are_fields_16_and_17() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194304 10 20 0 0 7 3 250 40 20 0 1 0";
        assert_eq!(parse_children_ticks(stat), Some(290));
    }

    #[tokio::test]
    async fn a_busy_child_is_charged_its_cpu_time() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]);
        let (status, cost) = run_measured(cmd).await.unwrap();
        assert!(status.success());
        assert!(cost.cpu_seconds > 0.05, "{cost:?}");
        assert!(cost.peak_rss_mib > 0.0, "{cost:?}");
    }
}
