//! Integration tests: the real server on an ephemeral port, real WebSocket clients.
//!
//! One binary with shared helpers (`support`); one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

mod abuse;
mod autobahn;
mod backend;
mod browser;
mod close;
mod cluster;
mod cluster_api;
mod compression;
mod core;
mod durable;
mod echo;
mod exhaustion;
mod history;
mod http;
mod js_client;
mod lifecycle;
mod payloads;
mod protocol_errors;
mod rolling;
mod server_api;
