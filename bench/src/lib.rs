//! The Piko benchmark harness: runs the same load against a local service reached directly,
//! through Piko, through rathole (a TCP tunnel) and through an nginx hop, alternating the
//! systems round by round, and writes medians and ratios to `bench/results/`.
//!
//! Layout:
//! - [`service`]: the local service (hyper HTTP/1.1 routes, WebSocket echo, TCP source/sink).
//! - [`systems`]: starting the systems under test as child processes (killed on drop).
//! - [`load`]: HTTP load with `oha` or the built-in hyper client.
//! - [`websocket`], [`tcp`]: the WebSocket echo and raw TCP throughput clients.
//! - [`idle`]: many idle upstream registrations over the project's own yamux session.
//! - [`procfs`]: RSS and CPU of processes, machine info.
//! - [`run`]: one run, scenario by scenario; [`report`]: the JSON and Markdown results.

#![warn(missing_docs)]

pub mod idle;
pub mod load;
pub mod procfs;
pub mod report;
pub mod run;
pub mod service;
pub mod systems;
pub mod tcp;
pub mod websocket;
