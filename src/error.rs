//! The crate's one error type: what a command can fail with, each layer's error kept whole
//! as its source, and [`Error::kind`], which the binary maps to an exit code (2: the
//! user's input, 1: anything else).

use crate::aws::ServiceError;
use crate::config::ConfigError;
use crate::delta::DeltaError;
use crate::lease::LeaseError;

/// Whose the failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad configuration, flags or query: fixable by the user as the message says.
    Input,
    /// Anything else: AWS, storage, a run that did not complete.
    Failure,
}

impl ErrorKind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Input => 2,
            ErrorKind::Failure => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("worker failed: {0}")]
    Worker(#[from] crate::worker::WorkerError),
    #[error(transparent)]
    Query(#[from] crate::read::query::QueryError),
    #[error(transparent)]
    Produce(#[from] crate::producer::ProduceError),
    #[error("{0} records could not be sent")]
    Unsent(u64),
    #[error(transparent)]
    Loadtest(#[from] crate::local::loadtest::LoadtestError),
    #[error(transparent)]
    Demo(#[from] crate::local::demo::DemoError),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error("ingest: {0}")]
    Ingest(#[from] crate::ingest::IngestError),
    #[error("reading the lease table: {0}")]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Aws(#[from] ServiceError),
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot serve metrics on {addr}: {source}")]
    Serve {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("did not stop within --shutdown-timeout ({0:?}) after the signal; the leases it still held expire for the other workers after failover_time")]
    ShutdownTimeout(std::time::Duration),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("writing the report: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Input,
            Error::Ingest(crate::ingest::IngestError::ApiKey(_)) => ErrorKind::Input,
            Error::Query(q) if q.is_user_error() => ErrorKind::Input,
            Error::Demo(d) if d.is_user_error() => ErrorKind::Input,
            _ => ErrorKind::Failure,
        }
    }
}
