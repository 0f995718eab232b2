//! gale: a load balancer for mail-sending fleets whose policies are
//! WebAssembly components.
//!
//! - [`access`]: the access lines of sessions and requests (their JSON
//!   records).
//! - [`logging`]: the log subscriber, text or JSON lines.
//! - [`admin`]: the admin API (`/status`, `/metrics`, `POST /reload`).
//! - [`config`]: the TOML file, parsed strictly and validated.
//! - [`plugin`]: the wasmtime runtime that runs policy plugins under a
//!   deadline and a memory cap.
//! - [`pool`]: backends, their health, and the decisions over them.
//! - [`connect`]: the one way gale connects to a backend.
//! - [`relay`]: joining a client and a backend both ways (SMTP and tcp
//!   sessions, WebSockets).
//! - [`attempts`]: trying backends in the balancer's order, the request
//!   policy SMTP and both HTTP engines share.
//! - [`rate`]: token buckets per client in a bounded table (DNS response
//!   rate limit, admission).
//! - [`queue`]: the short wait for a backend slot when every backend is at
//!   `max_sessions`.
//! - [`generation`]: one consistent set of config, pools and plugins.
//! - [`smtp`]: SMTP listeners (retry while holding the client, 421).
//! - [`health`]: active health probes.
//! - [`http`]: HTTP listeners (reverse proxy).
//! - [`tls`]: TLS on session streams (SMTPS clients, TLS backends).
//! - [`tcp`]: tcp listeners (bytes as they are: implicit TLS passed
//!   through, LMTP).
//! - [`dns`]: DNS publishing of healthy members (embedded server).
//! - [`listener`]: the accept loop every protocol shares.
//! - [`admission`]: who may open sessions on a listener, and how often.
//! - [`metrics`]: Prometheus metrics.
//! - [`demo`]: in-process demo backends for `gale demo`.
//! - [`manpage`]: gale(1), rendered from the CLI definitions (`gale man`).
//! - [`server`]: binds listeners, starts probes, swaps generations,
//!   drains on shutdown.
//! - [`reload`]: builds the next generation on SIGHUP or a file change.
//! - [`control`]: the loop around the server (reloads, rollback, the
//!   admin API, shutdown) that `gale run` runs and tests run in-process.
//! - [`systemd`]: the service manager's protocols: readiness, reload and
//!   stop notifications, the watchdog, sockets passed by socket
//!   activation.
//! - [`upgrade`]: binary upgrade: a new gale takes over a running one's
//!   sockets over a Unix socket, and the old one drains.

pub mod access;
pub mod admin;
pub mod admission;
pub mod attempts;
pub mod buffers;
pub mod config;
pub mod connect;
pub mod control;
pub mod demo;
pub mod dns;
pub mod generation;
pub mod health;
pub mod http;
pub mod listener;
pub mod logging;
pub mod manpage;
pub mod metrics;
pub mod plugin;
pub mod pool;
pub mod privileges;
pub mod queue;
pub mod rate;
pub mod relay;
pub mod reload;
pub mod scaffold;
pub mod server;
pub mod smtp;
pub mod systemd;
pub mod tcp;
pub mod tls;
pub mod upgrade;
