//! Enhanced fan-out: registered stream consumers (each with its own 2 MiB/s per shard,
//! records pushed over SubscribeToShard). [`consumer`]: registering a consumer once for a
//! fleet of workers racing to do it, listing and deregistering (`pinstream consumers`).
//! [`subscription`]: one shard read through a consumer, renewed when it ends, fails or goes
//! quiet.

pub mod consumer;
pub mod subscription;
