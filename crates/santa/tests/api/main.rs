//! The HTTP API end to end: a real server on port 0 with a fresh data directory per test.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod auth;
mod backpressure;
mod bench;
mod commands;
mod concurrency;
mod dead_letters;
mod errors;
mod helpers;
mod idempotency;
mod lifecycle;
mod queries;
mod rebuild;
