//! The sd_notify(3) protocol: what gale tells the service manager, one
//! datagram per event to the socket `NOTIFY_SOCKET` names.
//!
//! - `READY=1` with a `STATUS=` once the first generation serves: every
//!   listener bound, every plugin loaded, root dropped (where "gale is
//!   ready" is logged). With `Type=notify` systemd holds `systemctl start`
//!   and the units ordered after gale until then, so "started" means
//!   "accepting mail".
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a reload starts (SIGHUP,
//!   a file change, `POST /reload`), and `READY=1` with a `STATUS=` that
//!   says how it ended once it has: a failed reload leaves the running
//!   generation serving, which is ready, and the status line says why the
//!   new one was refused. systemd 253's `Type=notify-reload` drops a
//!   `RELOADING=1` without `MONOTONIC_USEC` (the clock is how it tells a
//!   reload that began after its SIGHUP from an older one); older systemd
//!   ignores the field. A rollback changes only the status line.
//! - `STOPPING=1` when the drain starts, then a `STATUS=` every
//!   [`DRAIN_STATUS_EVERY`] with the sessions still in flight.
//! - `STATUS=` every [`STATUS_EVERY`] while serving, so the session count
//!   `systemctl status` shows is never older than that.
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC` when the unit sets
//!   `WatchdogSec=` (below).
//!
//! Messages go out from a thread of their own, in order: the send is a
//! blocking call on a Unix socket, and a service manager that reads
//! slowly (its queue full) must block that thread, never a runtime
//! worker. Failing to send is logged once at warn (then at debug): gale
//! serves whether or not anyone listens.
//!
//! # The watchdog
//!
//! The ping comes from a task on gale's tokio runtime, woken by the
//! runtime's timer, so it shows what every session, accept loop, probe
//! and reload needs: the runtime runs tasks and fires timers. A gale hung
//! as a whole stops pinging and systemd kills it (and restarts it with
//! `Restart=on-failure`): every worker thread blocked (a deadlock, a
//! blocking call on each worker), the timer driver stalled, the process
//! stopped (SIGSTOP, a debugger) or stuck in the kernel, the notify
//! thread stuck on a service manager that no longer reads.
//!
//! What it does not see, on purpose: one worker blocked while another
//! runs (the ping goes on; the blocked worker's queued tasks are stolen
//! by the others, except the one in its LIFO slot, which waits), an
//! accept loop stuck waiting for slots, a reload that never ends, every
//! backend down. Those are a degraded gale, shown by `/status` and the
//! metrics; a restart would cut every session in flight to mend one
//! part. For the same reason the ping does not wait on the control loop:
//! a reload compiling a large plugin for seconds is not a hang.
//! Half the interval, as sd_watchdog_enabled(3) advises, leaves one late
//! tick of slack. `WatchdogSec=` should outlast the longest pause the
//! host may impose (swapping, a stalled disk): tens of seconds, not one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::server::Server;

/// How often the status line is refreshed while serving.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How often the status line is refreshed while draining: the count is
/// what an operator waiting on `systemctl stop` watches.
pub const DRAIN_STATUS_EVERY: Duration = Duration::from_secs(1);
/// Messages waiting for the notify thread; past it new ones are dropped
/// (the service manager is not reading, and pings to it would not help).
const QUEUE: usize = 64;
/// systemd shows a status line on one row; longer ones are cut here.
const MAX_STATUS: usize = 400;
/// How long [`Notifier::flush`] waits for the thread to send what is
/// queued before gale exits.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// One event for the service manager, owned so it can cross to the
/// notify thread.
enum Message {
    Ready(String),
    /// With the monotonic clock at the start of the reload, in µs.
    Reloading(Option<i128>),
    Stopping(String),
    Status(String),
    Watchdog,
    /// Answered once every message before it was sent.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Sends notify messages when gale runs under a service manager; does
/// nothing otherwise. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    /// `None` without `NOTIFY_SOCKET`.
    queue: Option<SyncSender<Message>>,
    dropped_warned: Arc<AtomicBool>,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, or a silent one when it is unset.
    /// The variable stays set: `gale run` starts no processes that could
    /// inherit it, and the crate reads it on each send.
    pub fn from_env() -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier::silent();
        }
        let (queue, messages) = std::sync::mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("gale-notify".into())
            .spawn(move || send_all(messages));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the notify thread; systemd will not hear from gale: {e}");
            return Notifier::silent();
        }
        Notifier {
            queue: Some(queue),
            dropped_warned: Arc::default(),
        }
    }

    /// A notifier that sends nothing.
    pub fn silent() -> Notifier {
        Notifier {
            queue: None,
            dropped_warned: Arc::default(),
        }
    }

    /// Whether messages go anywhere.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// `READY=1`: serving, after the start or at the end of a reload.
    pub fn ready(&self, status: &str) {
        self.send(Message::Ready(one_line(status)));
    }

    /// `RELOADING=1` with the monotonic clock now.
    pub fn reloading(&self) {
        if !self.enabled() {
            return;
        }
        let now = match NotifyState::monotonic_usec_now() {
            Ok(NotifyState::MonotonicUsec(usec)) => Some(usec),
            _ => None,
        };
        self.send(Message::Reloading(now));
    }

    /// `STOPPING=1`: the drain starts.
    pub fn stopping(&self, status: &str) {
        self.send(Message::Stopping(one_line(status)));
    }

    /// `STATUS=`.
    pub fn status(&self, status: &str) {
        if self.enabled() {
            self.send(Message::Status(one_line(status)));
        }
    }

    /// Ping every half of `WATCHDOG_USEC` from a task on the current
    /// runtime (see the module doc for what that proves), when systemd
    /// asked for a watchdog. Returns the ping interval, if any.
    pub fn spawn_watchdog(&self) -> Option<Duration> {
        // watchdog_enabled checks WATCHDOG_PID against our pid too.
        let limit = sd_notify::watchdog_enabled()?;
        if !self.enabled() {
            tracing::warn!(
                ?limit,
                "WATCHDOG_USEC is set but NOTIFY_SOCKET is not: no watchdog pings"
            );
            return None;
        }
        // A limit under 2 ms would ping in a loop: systemd allows no such
        // WatchdogSec, so this only guards a hand-set variable.
        let every = (limit / 2).max(Duration::from_millis(1));
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            // After a stall one ping is enough; a burst says nothing more.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.send(Message::Watchdog);
            }
        });
        tracing::info!(?limit, ?every, "systemd watchdog: pinging");
        Some(every)
    }

    /// Run `drain` to its end, saying every [`DRAIN_STATUS_EVERY`] how
    /// many sessions are left.
    pub async fn while_draining<T>(&self, server: &Server, drain: impl Future<Output = T>) -> T {
        let generation = server.current.load().id;
        let deadline = tokio::time::Instant::now() + server.current.load().config.drain_timeout;
        tokio::pin!(drain);
        let mut tick = tokio::time::interval(DRAIN_STATUS_EVERY);
        loop {
            tokio::select! {
                done = &mut drain => return done,
                _ = tick.tick(), if self.enabled() => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    self.status(&format!(
                        "draining: {} in flight (generation {generation}), at most {} s left",
                        sessions(server.sessions_in_flight()),
                        left.as_secs()
                    ));
                }
            }
        }
    }

    /// Wait (at most a second) until every message queued so far was
    /// sent: the last ones (`STOPPING=1`, the final status) must leave
    /// before gale exits.
    pub async fn flush(&self) {
        if !self.enabled() {
            return;
        }
        let (done, sent) = tokio::sync::oneshot::channel();
        self.send(Message::Flush(done));
        let _ = tokio::time::timeout(FLUSH_WAIT, sent).await;
    }

    fn send(&self, message: Message) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if !self.dropped_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the service manager is not reading notify messages; dropping them"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The notify thread: each message as one datagram, in order.
fn send_all(messages: Receiver<Message>) {
    let mut warned = false;
    for message in messages {
        let message = match message {
            Message::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            other => other,
        };
        let states = match &message {
            Message::Ready(status) => vec![NotifyState::Ready, NotifyState::Status(status)],
            Message::Reloading(usec) => {
                let mut states = vec![NotifyState::Reloading];
                states.extend(usec.map(NotifyState::MonotonicUsec));
                states.push(NotifyState::Status("reloading"));
                states
            }
            Message::Stopping(status) => vec![NotifyState::Stopping, NotifyState::Status(status)],
            Message::Status(status) => vec![NotifyState::Status(status)],
            Message::Watchdog => vec![NotifyState::Watchdog],
            Message::Flush(_) => continue,
        };
        if let Err(e) = sd_notify::notify(&states) {
            if warned {
                tracing::debug!("cannot notify the service manager: {e}");
            } else {
                tracing::warn!(
                    "cannot notify the service manager at NOTIFY_SOCKET: {e} (further failures logged at debug level)"
                );
                warned = true;
            }
        }
    }
}

/// A status line as the protocol wants it: one line (the message is
/// newline-separated), of bounded length.
fn one_line(status: &str) -> String {
    let mut line: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_STATUS {
        let mut cut = MAX_STATUS;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// The status line while serving: the generation, the sessions in
/// flight, and how the last reload or rollback went, if there was one.
pub fn serving(server: &Server, last_change: Option<&str>) -> String {
    let generation = server.current.load().id;
    let sessions = sessions(server.sessions_in_flight());
    match last_change {
        Some(change) => format!("serving generation {generation}, {sessions} in flight; {change}"),
        None => format!("serving generation {generation}, {sessions} in flight"),
    }
}

/// "1 session", "2 sessions".
pub fn sessions(n: usize) -> String {
    if n == 1 {
        "1 session".to_string()
    } else {
        format!("{n} sessions")
    }
}

/// What the status line says of a failed reload: where the config is
/// wrong (`FILE:LINE:COL: KEY`), not what it says there. `systemctl
/// status` shows the line to every local user, and a type error quotes
/// the value (an admin token, a TSIG key); the log has the whole reason.
pub fn failure(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let parts: Vec<&str> = text.split(": ").collect();
    let at = parts.iter().position(|part| {
        let mut numbers = part.rsplit(':');
        let col = numbers.next().is_some_and(|n| n.parse::<u32>().is_ok());
        let line = numbers.next().is_some_and(|n| n.parse::<u32>().is_ok());
        col && line && numbers.next().is_some()
    });
    match at {
        Some(i) if i + 1 < parts.len() => {
            format!(
                "{}: {} (the reason is in the log)",
                parts[..=i].join(": "),
                parts[i + 1]
            )
        }
        _ => "the reason is in the log".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_is_one_bounded_line() {
        assert_eq!(
            one_line("reload failed: a.toml:1:2:\nbad\r\tkey"),
            "reload failed: a.toml:1:2: bad  key"
        );
        let long = "é".repeat(MAX_STATUS);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_STATUS + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_failed_reload_shows_where_not_what() {
        let e = anyhow::anyhow!(
            "/etc/gale/gale.toml:11:9: admin.token: invalid type: integer `98765432109876`, expected a string"
        );
        assert_eq!(
            failure(&e),
            "/etc/gale/gale.toml:11:9: admin.token (the reason is in the log)"
        );
        let e = anyhow::anyhow!("plugin mta/balancer: cannot compile").context("reload");
        assert_eq!(failure(&e), "the reason is in the log");
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_no_thread_runs() {
        let silent = Notifier::silent();
        assert!(!silent.enabled());
        // Must not panic or block.
        silent.ready("x");
        silent.reloading();
        silent.stopping("x");
        silent.status("x");
    }
}
