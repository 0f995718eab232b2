//! Write gale policy plugins in Rust.
//!
//! A plugin is a type that implements one of [`Balancer`], [`HealthPolicy`],
//! [`DnsPolicy`] or [`AdmissionPolicy`], plus one macro call that exports it as a WebAssembly
//! component for the matching world of the `gale:plugin` contract:
//!
//! ```ignore
//! use gale_sdk::{Balancer, BackendId, Pool, RequestContext, Settings};
//!
//! struct FirstHealthy;
//!
//! impl Balancer for FirstHealthy {
//!     fn new(_settings: &Settings) -> Result<Self, String> {
//!         Ok(FirstHealthy)
//!     }
//!     fn select(&mut self, pool: &Pool, _ctx: &RequestContext) -> Vec<BackendId> {
//!         // Every backend that may take the session, primaries first.
//!         let mut order: Vec<_> = pool
//!             .iter()
//!             .filter(|b| b.healthy && !b.draining && b.weight > 0)
//!             .collect();
//!         order.sort_by_key(|b| b.priority);
//!         order.into_iter().map(|b| b.id).collect()
//!     }
//! }
//!
//! gale_sdk::export_balancer!(FirstHealthy);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm`
//! in `target/wasm32-wasip2/release/` is the component gale loads.
//!
//! The policy helpers ([`wrr`], [`threshold`]) are plain Rust and also work
//! outside WebAssembly (gale's own fallback balancer uses [`wrr`]).
#![deny(missing_docs)]

pub mod threshold;
pub mod wrr;

#[cfg(feature = "bindings")]
mod api;
#[cfg(feature = "bindings")]
pub use api::*;
