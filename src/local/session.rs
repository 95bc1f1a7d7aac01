//! One run of a local command (`demo`, `loadtest`): its id, its directory under
//! `--data-dir`, the local stack it runs on, and its run-specific stream names.

use std::path::{Path, PathBuf};

use super::stack::{LocalStack, StackError};
use crate::clean::Kind;

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot create the run directory {path}: {source}; choose a writable directory with --data-dir")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Stack(#[from] StackError),
}

/// A run of a local command on its own emulators.
pub struct Session {
    /// `YYYYMMDD-HHMMSS` of the start: names the streams, the application and the directory.
    pub run_id: String,
    /// `<data dir>/<command>-<run id>`: tables, worker logs, configuration.
    pub run_dir: PathBuf,
    pub stack: LocalStack,
    /// The Kinesis emulator: kinesalite (fast) or kinesis-local (enhanced fan-out).
    pub kinesis_engine: &'static str,
    command: &'static str,
}

impl Session {
    /// Creates the run directory and starts kinesalite and dynalite (state under
    /// `<data dir>/stack`).
    pub async fn start(command: &'static str, data_dir: &Path) -> Result<Session, SessionError> {
        Self::start_on(command, data_dir, "kinesalite").await
    }

    /// [`Session::start`] with `kinesis_engine` (`kinesalite` or `kinesis-local`) as the
    /// run's Kinesis: every client and worker of the run uses it.
    pub async fn start_on(
        command: &'static str,
        data_dir: &Path,
        kinesis_engine: &'static str,
    ) -> Result<Session, SessionError> {
        let run_id = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
        let run_dir = data_dir.join(format!("{command}-{run_id}"));
        std::fs::create_dir_all(&run_dir).map_err(|source| SessionError::RunDir {
            path: run_dir.clone(),
            source,
        })?;
        eprintln!("{command}: starting the local stack ({kinesis_engine}, dynalite)...");
        let mut stack =
            LocalStack::start(&[kinesis_engine, "dynalite"], &data_dir.join("stack")).await?;
        if kinesis_engine == "kinesis-local" {
            stack.use_kinesis_endpoint("PINSTREAM_KINESIS_FANOUT_ENDPOINT")?;
        }
        Ok(Session {
            run_id,
            run_dir,
            stack,
            kinesis_engine,
            command,
        })
    }

    /// Where the run's Delta tables go.
    pub fn tables(&self) -> PathBuf {
        self.run_dir.join("tables")
    }

    /// The run's stream of each kind: `<command>-<run id>-<kind>`.
    pub fn streams(&self) -> Vec<(Kind, String)> {
        Kind::ALL
            .iter()
            .map(|k| (*k, format!("{}-{}-{k}", self.command, self.run_id)))
            .collect()
    }

    /// Stops the emulators this session started.
    pub async fn stop(self) {
        self.stack.stop().await;
    }
}
