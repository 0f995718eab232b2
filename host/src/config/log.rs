//! `[log]`: how log lines are written and how many HTTP requests get an
//! access line at `info`.
//!
//! `format` is read once, at start, before anything is logged (see
//! [`crate::logging::format_of`]): a reload cannot swap the subscriber
//! every thread writes through, so a changed `format` is reported and
//! waits for a restart. `http_sample` follows reloads.

use super::file::{LogFormat, LogSection};
use super::{ConfigError, Errors};

/// `[log]` validated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LogConfig {
    /// `format`: what this config asks for; the running format is
    /// [`crate::logging::running`].
    pub format: LogFormat,
    /// `http_sample`: the share of HTTP requests whose access line is
    /// written at `info`, the others' at `debug`; a request answered 5xx,
    /// or with an error reply gale wrote itself, is always at `info` or
    /// above. Unset: every request in JSON, and in text, as before
    /// `[log]` existed, every request's line at `debug`.
    pub http_sample: Option<f64>,
}

pub(super) fn validate(
    errors: &Errors<'_>,
    section: &LogSection,
) -> Result<LogConfig, ConfigError> {
    let http_sample = match &section.http_sample {
        None => None,
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => Some(*v.get_ref()),
        Some(v) => {
            return Err(errors.spanned(
                v,
                "log.http_sample",
                "must be from 0 to 1 (a share of requests, e.g. 0.01 for one in a hundred)",
            ));
        }
    };
    Ok(LogConfig {
        format: section.format.unwrap_or_default(),
        http_sample,
    })
}
