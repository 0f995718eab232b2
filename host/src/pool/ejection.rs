//! The host's rules around the health plugin's verdicts, so that what a
//! client can provoke never empties a pool (Envoy's outlier detection is
//! the model):
//!
//! - a traffic success ends a backend's failure run, as deep as itself
//!   ([`Depth`]): the plugin sees it, so rise/fall streaks break;
//! - within a run, failures that may be about one client (an MTA refusing
//!   a client it knows through PROXY) count once per client
//!   ([`client_key`]: an IPv4 address or an IPv6 /64);
//! - a verdict to take a backend out on traffic evidence is an ejection:
//!   refused while it would leave more than `max_ejection_percent` of the
//!   pool out, and it lasts `base_ejection_time`, once more for each
//!   ejection that follows soon after another, up to `max_ejection_time`;
//!   the backend returns on the first passing probe after that, or at
//!   once (probes passing) when probes took others out so that the
//!   ejections would keep more than the cap out;
//! - an ejection or a return ends the run: its failures count no more;
//! - probes may take any backend out, as before.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::plugin::types::ProbeSource;

/// Distinct clients remembered per failure run; past this many the run
/// has long been judged.
const RUN_CLIENTS: usize = 16;
/// A backend whose latest 220 greeting is older than this is not taken
/// to be greeting other clients (see `Pool::vouches_for_refusal`).
pub const WELCOME_WINDOW: Duration = Duration::from_secs(60);

/// Origin of the millisecond stamps kept in atomics.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn stamp(at: Instant) -> u64 {
    // 0 means never: a stamp is at least 1.
    at.saturating_duration_since(*EPOCH).as_millis() as u64 + 1
}

/// How deep into a session a traffic result goes. A success ends a
/// failure run only as deep as itself: an MTA that greets every client
/// with 220 and then defers every message stays in its run of deferrals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Depth {
    /// Connecting, greeting, an HTTP exchange.
    Session = 1,
    /// An SMTP transaction: MAIL FROM, DATA, the end of a message.
    Transaction = 2,
}

/// Why a backend is out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// Its probes failed (the health plugin's verdict on them).
    Probe,
    /// Ejected on live-traffic evidence until `until`, then back on the
    /// first passing probe.
    Traffic { until: Instant },
}

/// A failure run that holds a deferral and saw no failure for this long
/// ends on the next session success: most sessions of a fleet are inside STARTTLS,
/// where no transaction success can be seen, and one old deferral must not
/// let unrelated failures add up for hours.
const STALE_RUN: Duration = Duration::from_secs(60);

/// A client as the rules count it: an IPv4 address, or an IPv6 /64 (one
/// host holds a whole /64). Never 0.
pub fn client_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => (1 << 63) | u64::from(v4.to_bits()),
        IpAddr::V6(v6) => ((v6.to_bits() >> 64) as u64).max(1),
    }
}

/// Per-backend state of the rules above.
#[derive(Debug, Default)]
pub(super) struct Ejection {
    /// The deepest failure of the open failure run (0: none), as a
    /// [`Depth`]: read on every success, so that a success with nothing
    /// to reset costs one load.
    failing: AtomicU8,
    /// When the last failure of the run came.
    failed_at: AtomicU64,
    /// When the backend last greeted a client with 220, and which one
    /// ([`client_key`]).
    welcomed: AtomicU64,
    welcomed_client: AtomicU64,
    state: std::sync::Mutex<EjectionState>,
}

#[derive(Debug, Default, Clone)]
pub(super) struct EjectionState {
    /// Clients ([`client_key`]) whose refusals counted in the current
    /// failure run.
    run_clients: Vec<u64>,
    pub out: Option<Out>,
    /// Ejections in a row, each soon after the last return.
    pub ejections: u32,
    returned: Option<Instant>,
    /// A capped ejection was logged in this run.
    capped_logged: bool,
}

impl Ejection {
    pub fn state(&self) -> std::sync::MutexGuard<'_, EjectionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take over `old`'s state (a reload).
    pub fn inherit(&self, old: &Ejection) {
        for (new, old) in [
            (&self.failed_at, &old.failed_at),
            (&self.welcomed, &old.welcomed),
            (&self.welcomed_client, &old.welcomed_client),
        ] {
            new.store(old.load(Ordering::Acquire), Ordering::Release);
        }
        self.failing
            .store(old.failing.load(Ordering::Acquire), Ordering::Release);
        *self.state() = old.state().clone();
    }

    /// A failure joins the run; whether it counts (a client's second
    /// refusal in one run does not).
    pub fn failed(&self, about_client: Option<IpAddr>, depth: Depth) -> bool {
        self.failing.fetch_max(depth as u8, Ordering::AcqRel);
        self.failed_at
            .store(stamp(Instant::now()), Ordering::Release);
        let Some(ip) = about_client else {
            return true;
        };
        let key = client_key(ip);
        let mut state = self.state();
        if state.run_clients.contains(&key) {
            return false;
        }
        if state.run_clients.len() < RUN_CLIENTS {
            state.run_clients.push(key);
        }
        true
    }

    /// A success as deep as `depth`; whether it ended a failure run.
    pub fn succeeded(&self, depth: Depth) -> bool {
        let failing = self.failing.load(Ordering::Acquire);
        if failing == 0 {
            return false;
        }
        let stale = || {
            stamp(Instant::now()).saturating_sub(self.failed_at.load(Ordering::Acquire))
                > STALE_RUN.as_millis() as u64
        };
        if (failing > depth as u8 && !stale())
            || self
                .failing
                .compare_exchange(failing, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        self.end_run();
        true
    }

    /// Forget the failure run (it ended, or it ejected the backend).
    pub fn end_run(&self) {
        self.failing.store(0, Ordering::Release);
        let mut state = self.state();
        state.run_clients.clear();
        state.capped_logged = false;
    }

    /// The backend greeted `client` with 220 in a session begun `at`.
    pub fn welcome(&self, at: Instant, client: IpAddr) {
        self.welcomed.store(stamp(at), Ordering::Relaxed);
        self.welcomed_client
            .store(client_key(client), Ordering::Relaxed);
    }

    /// Greeted a client other than `refused` with 220 within
    /// [`WELCOME_WINDOW`]. Probes do not count: an MTA's blocklist that
    /// misfires for everyone still lets gale's own address in.
    pub fn welcomed_another(&self, refused: IpAddr) -> bool {
        let at = self.welcomed.load(Ordering::Relaxed);
        at != 0
            && stamp(Instant::now()).saturating_sub(at) <= WELCOME_WINDOW.as_millis() as u64
            && self.welcomed_client.load(Ordering::Relaxed) != client_key(refused)
    }
}

/// What the host makes of the plugin's wish for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ruling {
    /// Nothing changes.
    Stays,
    /// Out, for this reason.
    Leaves(Out),
    /// Back in rotation.
    Returns,
    /// Traffic would take it out, but `max_ejection_percent` forbids it.
    Capped,
}

impl EjectionState {
    /// Back in rotation now.
    pub fn return_now(&mut self) {
        self.out = None;
        self.returned = Some(Instant::now());
    }

    /// The ruling when the plugin wants the backend `wanted` (healthy or
    /// not) after a result from `source`; `ok`: that result passed.
    /// `may_eject`: one more backend out stays within the cap;
    /// `over_cap`: with this one out, more of the pool is out than the cap.
    pub fn rule(
        &mut self,
        (current, wanted): (bool, bool),
        (source, ok): (ProbeSource, bool),
        (may_eject, over_cap): (bool, bool),
        config: &crate::config::EjectionConfig,
    ) -> Ruling {
        let now = Instant::now();
        match (current, wanted) {
            (true, false) if source == ProbeSource::Probe => {
                self.out = Some(Out::Probe);
                Ruling::Leaves(Out::Probe)
            }
            (true, false) if !may_eject => Ruling::Capped,
            (true, false) => {
                // An ejection long after the last return starts over.
                if self
                    .returned
                    .is_none_or(|r| now.duration_since(r) > config.max_time)
                {
                    self.ejections = 0;
                }
                self.ejections = self.ejections.saturating_add(1);
                let time = config
                    .base_time
                    .saturating_mul(self.ejections)
                    .min(config.max_time);
                // `max_time` is at most a day (config), so this holds.
                let out = Out::Traffic {
                    until: now.checked_add(time).unwrap_or(now),
                };
                self.out = Some(out);
                Ruling::Leaves(out)
            }
            (false, true) => match self.out {
                // Early only if others left on their probes meanwhile.
                Some(Out::Traffic { until })
                    if now < until && !(over_cap && source == ProbeSource::Probe && ok) =>
                {
                    Ruling::Stays
                }
                Some(Out::Traffic { .. }) if !(source == ProbeSource::Probe && ok) => Ruling::Stays,
                _ => {
                    self.return_now();
                    Ruling::Returns
                }
            },
            // An ejection over, its probes failing: out by the probes now.
            (false, false) if source == ProbeSource::Probe && !ok => {
                if matches!(self.out, Some(Out::Traffic { until }) if now >= until) {
                    self.out = Some(Out::Probe);
                }
                Ruling::Stays
            }
            _ => Ruling::Stays,
        }
    }

    /// Log a capped ejection once per run.
    pub fn first_cap_in_run(&mut self) -> bool {
        !std::mem::replace(&mut self.capped_logged, true)
    }
}
