//! pinstream's integration tests: ONE test binary (link time matters on 2 cores). They talk
//! to real emulators on loopback started by `infra/local/with-stack.sh`; each test makes its
//! own uniquely named streams, lease table and table directory, and waits with deadlines.

mod balance;
mod cli;
mod compaction;
mod crash;
mod cutter;
mod deletion_vectors;
mod drain;
mod fanout;
mod fence;
mod first_mistakes;
mod flaky;
mod forgetting;
mod health;
mod infra;
mod ingest;
mod leases;
mod liveness;
mod loadtest;
mod monitoring;
mod pipeline;
mod producer;
mod readers;
mod real_data;
mod rejects;
mod reports;
mod s3;
mod scaling;
mod signals;
mod stalls;
mod standalone;
mod supply_chain;
mod support;
mod swallow;
mod telemetry;
