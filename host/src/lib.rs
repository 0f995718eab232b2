//! gale: a load balancer for mail-sending fleets whose policies are
//! WebAssembly components.
//!
//! - [`config`]: the TOML file, parsed strictly and validated.
//! - [`plugin`]: the wasmtime runtime that runs policy plugins under a
//!   deadline and a memory cap.
//! - [`pool`]: backends, their health, and the decisions over them.
//! - [`generation`]: one consistent set of config, pools and plugins.
//! - [`metrics`]: Prometheus metrics.

pub mod config;
pub mod generation;
pub mod metrics;
pub mod plugin;
pub mod pool;
