//! The local AWS-compatible stack, driven from Rust for `pinstream demo` and
//! `pinstream loadtest`: runs
//! `infra/local/start.sh` (which installs, starts and waits for the emulators) and
//! `infra/local/stop.sh` for exactly the servers this call started.

use std::path::{Path, PathBuf};

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(
        "cannot find infra/local/start.sh (looked in {0}); run the demo from a pinstream checkout"
    )]
    NotFound(String),
    #[error("cannot run {script}: {source}")]
    Spawn {
        script: String,
        source: std::io::Error,
    },
    #[error("the local stack did not export {0}")]
    MissingExport(&'static str),
    #[error("local stack did not start (exit {code:?}); see the lines above")]
    Failed { code: Option<i32> },
}

/// A running local stack and the endpoints it exported.
#[derive(Debug)]
pub struct LocalStack {
    dir: PathBuf,
    state_dir: PathBuf,
    started: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Finds `infra/local` from the working directory, else from where the crate was built.
pub fn locate() -> Result<PathBuf, StackError> {
    let candidates = [
        PathBuf::from("infra/local"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/local"),
    ];
    candidates
        .iter()
        .find(|p| p.join("start.sh").is_file())
        .cloned()
        .ok_or_else(|| {
            StackError::NotFound(
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

impl LocalStack {
    /// The process id `start.sh` recorded for `service` (to measure it from outside).
    pub fn pid(&self, service: &str) -> Option<u32> {
        std::fs::read_to_string(self.state_dir.join(format!("{service}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Starts `services` with state (pids, logs) under `state_dir`.
    pub async fn start(services: &[&str], state_dir: &Path) -> Result<Self, StackError> {
        let dir = locate()?;
        let script = dir.join("start.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(services)
            .env("PINSTREAM_STACK_DIR", state_dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .map_err(|source| StackError::Spawn {
                script: script.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(StackError::Failed {
                code: out.status.code(),
            });
        }
        let env = parse_exports(&String::from_utf8_lossy(&out.stdout));
        let started = env
            .iter()
            .find(|(k, _)| k == "PINSTREAM_STACK_STARTED")
            .map(|(_, v)| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(LocalStack {
            dir,
            state_dir: state_dir.to_owned(),
            started,
            env,
        })
    }

    /// The `infra/local` directory the stack was started from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Points `AWS_ENDPOINT_URL_KINESIS` (what the clients and the workers use) at the
    /// endpoint the stack exported as `export` (kinesis-local's, for fan-out).
    pub fn use_kinesis_endpoint(&mut self, export: &'static str) -> Result<(), StackError> {
        let url = self
            .var(export)
            .ok_or(StackError::MissingExport(export))?
            .to_owned();
        self.env.retain(|(k, _)| k != "AWS_ENDPOINT_URL_KINESIS");
        self.env.push(("AWS_ENDPOINT_URL_KINESIS".into(), url));
        Ok(())
    }

    /// Clients for the stack's Kinesis and DynamoDB endpoints.
    pub async fn aws(&self) -> Result<crate::aws::AwsClients, StackError> {
        let var = |k: &'static str| self.var(k).ok_or(StackError::MissingExport(k));
        let (kinesis, dynamodb) = (
            var("AWS_ENDPOINT_URL_KINESIS")?,
            var("AWS_ENDPOINT_URL_DYNAMODB")?,
        );
        Ok(crate::aws::AwsClients::for_emulators(kinesis, dynamodb).await)
    }

    /// Stops the servers this stack started (none if it reused running ones).
    pub async fn stop(&self) {
        if self.started.is_empty() {
            return;
        }
        let status = Command::new("bash")
            .arg(self.dir.join("stop.sh"))
            .args(&self.started)
            .env("PINSTREAM_STACK_DIR", &self.state_dir)
            .status()
            .await;
        if let Err(e) = status {
            tracing::warn!(error = %e, "could not stop the local stack");
        }
    }
}

/// Parses `export K=V` lines; `${X:-default}` values yield the environment's `X` or the default.
fn parse_exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.trim_matches('"');
            let v = match v
                .strip_prefix("${")
                .and_then(|r| r.strip_suffix('}'))
                .and_then(|r| r.split_once(":-"))
            {
                Some((var, default)) => std::env::var(var)
                    .ok()
                    .filter(|x| !x.is_empty())
                    .unwrap_or_else(|| default.to_owned()),
                None => v.to_owned(),
            };
            (k.to_owned(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_sh_output() {
        let env = parse_exports("export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:1\nexport PINSTREAM_STACK_STARTED=\"kinesalite dynalite\"\nexport PINSTREAM_UNSET_X=${PINSTREAM_UNSET_X:-dflt}\n");
        assert_eq!(
            env[0],
            (
                "AWS_ENDPOINT_URL_KINESIS".into(),
                "http://127.0.0.1:1".into()
            )
        );
        assert_eq!(env[1].1, "kinesalite dynalite");
        assert_eq!(env[2].1, "dflt");
    }
}
