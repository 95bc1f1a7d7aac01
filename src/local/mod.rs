//! The commands that run on this machine's own emulators: [`stack`] starts and stops them
//! (kinesalite, dynalite, moto, kinesis-local on loopback), [`demo`] runs the whole job
//! once, and [`loadtest`] measures worker processes (and, with `--chaos`, kills them);
//! both run as a [`session::Session`].

pub mod demo;
pub mod loadtest;
pub mod session;
pub mod stack;
