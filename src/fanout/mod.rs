//! Enhanced fan-out: registered stream consumers (each with its own 2 MiB/s per shard,
//! records pushed over SubscribeToShard). [`consumer`]: registering a consumer once for a
//! fleet of workers racing to do it, listing and deregistering (`pinstream consumers`).
//! The push reader that will use it is not built yet (see the design notes in
//! docs/DESIGN.md); the workers read by polling.

pub mod consumer;
