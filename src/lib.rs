//! Caxton: offline sentence embeddings for edge devices.
//!
//! `caxtond` verifies zstd-compressed model packages, loads them into its own engine (candle
//! reads the weights) and serves embeddings over HTTP on a Unix socket; `caxton` is its
//! command-line companion. See ARCHITECTURE.md for the map.
#![deny(missing_docs)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod engine;
pub mod images;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod monitor;
pub mod package;
pub mod registry;
pub mod reload;
pub mod serve;
pub mod server;
pub mod sideload;
pub mod socket;
pub mod state;
pub mod systemd;
pub mod tcp_listeners;
pub mod watchdog;
