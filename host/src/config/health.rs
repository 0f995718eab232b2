//! What a pool does about failing backends: its probe
//! (`[pools.NAME.probe]`), the limits on ejecting backends on
//! live-traffic evidence, and which failures send an HTTP request on to
//! the next backend (`retry_on`).

use std::time::Duration;

use super::file::{PoolSection, ProbeKind, ProbeSection};
use toml::Spanned;

use super::{ConfigError, Errors, parse_duration};

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub ehlo: String,
    /// SMTP: a transaction after EHLO, `MAIL FROM` then `RCPT TO` if
    /// set (then RSET), so a backend that greets but defers mail fails.
    pub mail_from: Option<String>,
    pub rcpt_to: Option<String>,
    pub method: String,
    pub path: String,
    /// Inclusive range of HTTP statuses counted as healthy.
    pub expect_status: (u16, u16),
}

/// A probe's `interval` unless set.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A probe's `timeout` unless set.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The SMTP probe's `ehlo` unless set: `.invalid` is reserved (RFC 2606),
/// so the name claims no real host.
pub const DEFAULT_EHLO: &str = "gale.invalid";
/// The HTTP probe's `method` unless set.
pub const DEFAULT_PROBE_METHOD: &str = "GET";
/// The HTTP probe's `path` unless set.
pub const DEFAULT_PROBE_PATH: &str = "/";
/// The HTTP probe's `expect_status` unless set: success and redirects.
pub const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 399);

/// Limits on taking backends out on live-traffic evidence (Envoy's
/// outlier detection): the health plugin says when, these say whether and
/// for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionConfig {
    /// Share of the pool, in percent, that traffic evidence alone may
    /// take out, counting backends already out for any reason.
    pub max_percent: u32,
    pub base_time: Duration,
    pub max_time: Duration,
}

/// `max_ejection_percent` unless set: half a pool always stays to prove
/// a client wrong, as Envoy's documentation suggests for small pools.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
/// `base_ejection_time` unless set (Envoy's default).
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// The longest ejection time a config may set.
const MAX_EJECTION: Duration = Duration::from_secs(24 * 3600);
/// `max_ejection_time` unless set (Envoy's default).
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

pub(super) fn ejection(
    errors: &Errors<'_>,
    pool: &PoolSection,
    key: &str,
) -> Result<EjectionConfig, ConfigError> {
    let max_percent = match &pool.max_ejection_percent {
        None => DEFAULT_MAX_EJECTION_PERCENT,
        Some(p) if *p.get_ref() <= 100 => *p.get_ref(),
        Some(p) => {
            return Err(errors.spanned(
                p,
                &format!("{key}.max_ejection_percent"),
                "must be a percentage from 0 (traffic never ejects) to 100",
            ));
        }
    };
    let base_time = parse_duration(
        errors,
        pool.base_ejection_time.as_ref(),
        &format!("{key}.base_ejection_time"),
        DEFAULT_BASE_EJECTION_TIME,
    )?;
    let max_time = parse_duration(
        errors,
        pool.max_ejection_time.as_ref(),
        &format!("{key}.max_ejection_time"),
        DEFAULT_MAX_EJECTION_TIME.max(base_time),
    )?;
    for (value, parsed, key_name) in [
        (&pool.base_ejection_time, base_time, "base_ejection_time"),
        (&pool.max_ejection_time, max_time, "max_ejection_time"),
    ] {
        if let Some(v) = value
            && parsed > MAX_EJECTION
        {
            return Err(errors.spanned(
                v,
                &format!("{key}.{key_name}"),
                "must be at most a day (\"1d\")",
            ));
        }
    }
    if max_time < base_time {
        let value = pool
            .max_ejection_time
            .as_ref()
            .expect("set: the default is not less");
        return Err(errors.spanned(
            value,
            &format!("{key}.max_ejection_time"),
            "must not be shorter than base_ejection_time",
        ));
    }
    Ok(EjectionConfig {
        max_percent,
        base_time,
        max_time,
    })
}

pub(super) fn probe_config(
    errors: &Errors<'_>,
    p: &ProbeSection,
    key: &str,
) -> Result<ProbeConfig, ConfigError> {
    let kind = p.kind.as_ref().map(|k| *k.get_ref()).unwrap_or_default();
    refuse_other_kind_keys(errors, p, kind, key)?;
    let expect_status = match &p.expect_status {
        None => DEFAULT_EXPECT_STATUS,
        Some(s) => {
            let [lo, hi] = *s.get_ref();
            if !(100..=599).contains(&lo) || !(lo..=599).contains(&hi) {
                return Err(errors.spanned(
                    s,
                    &format!("{key}.expect_status"),
                    "expected [low, high] with 100 <= low <= high <= 599",
                ));
            }
            (lo, hi)
        }
    };
    Ok(ProbeConfig {
        kind,
        interval: parse_duration(
            errors,
            p.interval.as_ref(),
            &format!("{key}.interval"),
            DEFAULT_PROBE_INTERVAL,
        )?,
        timeout: parse_duration(
            errors,
            p.timeout.as_ref(),
            &format!("{key}.timeout"),
            DEFAULT_PROBE_TIMEOUT,
        )?,
        ehlo: word(
            errors,
            p.ehlo.as_ref(),
            &format!("{key}.ehlo"),
            DEFAULT_EHLO,
            "a host name",
        )?,
        mail_from: address(errors, p.mail_from.as_ref(), &format!("{key}.mail_from"))?,
        rcpt_to: match (&p.rcpt_to, &p.mail_from) {
            (Some(rcpt), None) => {
                return Err(errors.spanned(
                    rcpt,
                    &format!("{key}.rcpt_to"),
                    "needs mail_from: RCPT TO comes after MAIL FROM",
                ));
            }
            _ => address(errors, p.rcpt_to.as_ref(), &format!("{key}.rcpt_to"))?,
        },
        method: word(
            errors,
            p.method.as_ref(),
            &format!("{key}.method"),
            DEFAULT_PROBE_METHOD,
            "an HTTP method",
        )?,
        path: match &p.path {
            Some(path) if !path.get_ref().starts_with('/') => {
                return Err(errors.spanned(path, &format!("{key}.path"), "must start with /"));
            }
            path => word(
                errors,
                path.as_ref(),
                &format!("{key}.path"),
                DEFAULT_PROBE_PATH,
                "a path",
            )?,
        },
        expect_status,
    })
}

/// A key of another kind of probe would be ignored without a word (an
/// `ehlo` on a "tcp" probe sends nothing), so it is an error.
fn refuse_other_kind_keys(
    errors: &Errors<'_>,
    p: &ProbeSection,
    kind: ProbeKind,
    key: &str,
) -> Result<(), ConfigError> {
    let keys = [
        ("ehlo", p.ehlo.as_ref().map(Spanned::span), ProbeKind::Smtp),
        (
            "mail_from",
            p.mail_from.as_ref().map(Spanned::span),
            ProbeKind::Smtp,
        ),
        (
            "rcpt_to",
            p.rcpt_to.as_ref().map(Spanned::span),
            ProbeKind::Smtp,
        ),
        (
            "method",
            p.method.as_ref().map(Spanned::span),
            ProbeKind::Http,
        ),
        ("path", p.path.as_ref().map(Spanned::span), ProbeKind::Http),
        (
            "expect_status",
            p.expect_status.as_ref().map(Spanned::span),
            ProbeKind::Http,
        ),
    ];
    for (name, span, applies_to) in keys {
        if let Some(span) = span
            && kind != applies_to
        {
            return Err(errors.at(
                span,
                &format!("{key}.{name}"),
                format!(
                    "only kind = {:?} probes use it (this probe's kind is {:?})",
                    kind_name(applies_to),
                    kind_name(kind)
                ),
            ));
        }
    }
    Ok(())
}

/// `kind` as written in the file.
fn kind_name(kind: ProbeKind) -> &'static str {
    match kind {
        ProbeKind::Tcp => "tcp",
        ProbeKind::Smtp => "smtp",
        ProbeKind::Http => "http",
    }
}

/// A value sent inside a probe's command line: printable ASCII without
/// spaces, so that it cannot end the line or add a command.
fn word(
    errors: &Errors<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
    default: &str,
    what: &str,
) -> Result<String, ConfigError> {
    let Some(value) = value else {
        return Ok(default.to_string());
    };
    let v = value.get_ref();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(errors.spanned(
            value,
            key,
            format!("expected {what}: printable ASCII without spaces"),
        ));
    }
    Ok(v.clone())
}

/// A mail address for the SMTP probe, without the angle brackets; ""
/// is the null sender.
fn address(
    errors: &Errors<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let v = value.get_ref();
    if !v
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
    {
        return Err(errors.spanned(
            value,
            key,
            "expected a mail address like probe@example.com, without <> or spaces",
        ));
    }
    Ok(Some(v.clone()))
}

/// Which failures send an HTTP request on to the next backend, as nginx's
/// `proxy_next_upstream` and Envoy's `retry_on` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// No connection could be made: the backend saw nothing.
    pub connect: bool,
    /// The exchange failed before a response (idempotent requests only).
    pub error: bool,
    /// 502, 503, 504 (idempotent requests only).
    statuses: [bool; 3],
}

impl Default for RetryOn {
    /// Today's rules: a connection that could not be made, and a failure
    /// before any response to an idempotent request.
    fn default() -> Self {
        RetryOn {
            connect: true,
            error: true,
            statuses: [false; 3],
        }
    }
}

impl RetryOn {
    /// Whether a response with `status` is tried again elsewhere.
    pub fn status(&self, status: u16) -> bool {
        match status {
            502..=504 => self.statuses[usize::from(status - 502)],
            _ => false,
        }
    }
}

pub(super) fn retry_on(
    errors: &Errors<'_>,
    value: Option<&Spanned<Vec<String>>>,
    key: &str,
) -> Result<RetryOn, ConfigError> {
    let Some(value) = value else {
        return Ok(RetryOn::default());
    };
    let mut retry = RetryOn {
        connect: false,
        error: false,
        statuses: [false; 3],
    };
    for item in value.get_ref() {
        match item.as_str() {
            "connect" => retry.connect = true,
            "error" => retry.error = true,
            "502" => retry.statuses[0] = true,
            "503" => retry.statuses[1] = true,
            "504" => retry.statuses[2] = true,
            other => {
                return Err(errors.spanned(
                    value,
                    key,
                    format!(
                        "unknown {other:?}: expected \"connect\", \"error\", \"502\", \"503\" or \"504\""
                    ),
                ));
            }
        }
    }
    Ok(retry)
}
