//! Running as a systemd service: the notify protocol ([`notify`]:
//! readiness, reloads, stopping, status lines and the watchdog) and
//! socket activation ([`sockets`]: listening sockets the service manager
//! bound and passed to gale).
//!
//! Both are inert outside a service manager: without `NOTIFY_SOCKET` no
//! message is sent and no watchdog runs; without `LISTEN_PID` equal to
//! gale's pid no descriptor is touched. Other service managers that
//! speak the same protocols (s6's `sd_notify` shim, `systemd-socket-activate`
//! in tests) work the same way.
//!
//! Owns: what gale tells the service manager, and the passed sockets
//! until a listener takes one. Does not touch: binding its own sockets
//! (`listener`), the reload itself (`reload`, `control`) or privileges
//! (`privileges`).

pub mod notify;
pub mod sockets;

pub use notify::Notifier;
pub use sockets::{PassedSockets, SocketError};
