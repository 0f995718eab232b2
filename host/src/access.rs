//! Access lines: one per SMTP session, tcp session and HTTP request, the
//! records log systems read. Each kind is one serde record here, and its
//! field names are the contract the README documents: new fields may be
//! added, none renamed or removed.
//!
//! In JSON (`[log] format = "json"`) the record is the line: written
//! under the target [`TARGET`] as one field that [`crate::logging`]
//! splices into the line's top level. In text the sessions and requests
//! write the lines they always have (`smtp session listener=in ...`),
//! from the same values; those are for people, and `tried=` is the text
//! of the same [`Steps`].
//!
//! Owns: the records and when an HTTP request's line is written at
//! `info` (`[log] http_sample`). Does not touch: the sessions and
//! requests themselves, which build a record at their end.

use std::net::SocketAddr;

use serde::Serialize;
use tracing::Level;

use crate::attempts::Steps;
use crate::config::{LogConfig, LogFormat};

/// The target of every JSON access line.
pub const TARGET: &str = "gale::access";

/// Whether lines are JSON, and so access records are written as such.
pub fn json() -> bool {
    crate::logging::running() == LogFormat::Json
}

/// What an access line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Smtp,
    Tcp,
    Http,
}

/// The fields every access line has.
#[derive(Serialize)]
pub struct Common<'a> {
    pub kind: Kind,
    /// The client's address and port (an IPv4 client of a dual-stack
    /// listener as IPv4).
    pub client: SocketAddr,
    pub listener: &'a str,
    /// The generation (config) the session or request ran on.
    pub generation: u64,
    /// The backend that took it; absent when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'a str>,
    /// Every backend tried or skipped and every wait in the queue, in
    /// order.
    pub attempts: Steps<'a>,
    /// Bytes from the client (SMTP and tcp: all it sent; HTTP: the
    /// request body).
    pub bytes_up: u64,
    /// Bytes to the client (SMTP and tcp: all it got; HTTP: the response
    /// body).
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// How it ended.
    pub end: &'a str,
}

/// An SMTP session's access line.
#[derive(Serialize)]
pub struct Smtp<'a> {
    #[serde(flatten)]
    pub common: Common<'a>,
    /// The TLS version of an SMTPS listener's client; absent in plain
    /// text (STARTTLS is the backend's, passed through).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'static str>,
    /// The backend's queue ids, from its replies to the end of each
    /// message (see [`QueueIds`]).
    pub queue_ids: &'a [Box<str>],
}

/// A tcp session's access line.
#[derive(Serialize)]
pub struct Tcp<'a> {
    #[serde(flatten)]
    pub common: Common<'a>,
}

/// An HTTP request's access line (HTTP/1 or HTTP/2).
#[derive(Serialize)]
pub struct Http<'a> {
    #[serde(flatten)]
    pub common: Common<'a>,
    /// Absent when the request head could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    /// `Host` (or HTTP/2's `:authority`); absent when the request had
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    /// The request target, its first 256 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    /// The status the client got; absent when it got none (it left, or
    /// reset its stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// Write `record` as a JSON access line, `message` at `level`, if that
/// level is on for [`TARGET`].
pub fn emit(level: Level, message: &str, record: &impl Serialize) {
    if !enabled(level) {
        return;
    }
    let access = match serde_json::to_string(record) {
        Ok(access) => access,
        Err(e) => return tracing::warn!("access line not written: {e}"),
    };
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(target: TARGET, $level, access = access.as_str(), "{message}")
        };
    }
    match level {
        Level::ERROR => at!(Level::ERROR),
        Level::WARN => at!(Level::WARN),
        Level::INFO => at!(Level::INFO),
        Level::DEBUG => at!(Level::DEBUG),
        Level::TRACE => at!(Level::TRACE),
    }
}

/// Whether an access line at `level` would be written: what a request
/// notes only for its line is noted only then.
pub fn enabled(level: Level) -> bool {
    match level {
        Level::ERROR => tracing::enabled!(target: TARGET, Level::ERROR),
        Level::WARN => tracing::enabled!(target: TARGET, Level::WARN),
        Level::INFO => tracing::enabled!(target: TARGET, Level::INFO),
        Level::DEBUG => tracing::enabled!(target: TARGET, Level::DEBUG),
        Level::TRACE => tracing::enabled!(target: TARGET, Level::TRACE),
    }
}

/// `tracing::event!` at a level known only when it runs (the macro wants
/// a constant), from the caller's module.
macro_rules! event_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::event!(tracing::Level::ERROR, $($rest)+),
            tracing::Level::WARN => tracing::event!(tracing::Level::WARN, $($rest)+),
            tracing::Level::INFO => tracing::event!(tracing::Level::INFO, $($rest)+),
            tracing::Level::DEBUG => tracing::event!(tracing::Level::DEBUG, $($rest)+),
            tracing::Level::TRACE => tracing::event!(tracing::Level::TRACE, $($rest)+),
        }
    };
}
pub(crate) use event_at;

/// The level of the access line of an HTTP request the client got an
/// answer to (`always`: a 5xx, or gale's own error reply): `info` for the
/// requests [`LogConfig::http_sample`] picks, `debug` for the others.
/// Without `http_sample`, JSON picks every request and text none (its
/// request lines were always at `debug`: a line per request costs a few
/// microseconds, a fifth of what proxying one does).
pub fn http_level(log: &LogConfig, always: bool) -> Level {
    let share = match log.http_sample {
        Some(share) => share,
        None if json() => 1.0,
        None => return Level::DEBUG,
    };
    if always || share >= 1.0 || (share > 0.0 && fastrand::f64() < share) {
        Level::INFO
    } else {
        Level::DEBUG
    }
}

/// A request path as logs show it: its first 256 bytes, so that one
/// request cannot write a 64 KiB log line.
pub fn loggable(path: &str) -> &str {
    &path[..path.floor_char_boundary(256)]
}

/// Queue ids a backend gave one SMTP session's messages, from the
/// `250 ... queued as ID` that ended each (Postfix's words; read only
/// while the session is in the clear, never after STARTTLS). At most
/// [`QueueIds::MAX`] are kept (the first), each at most
/// [`QueueIds::MAX_LEN`] bytes of letters, digits, `.`, `-` and `_`: a
/// backend's reply cannot write anything else into the line.
#[derive(Debug, Default)]
// Boxed: 8 bytes in every session's task while it relays (a `Vec` is 24,
// a boxed slice 16), one allocation more in a session that sends mail.
#[allow(clippy::box_collection)]
pub struct QueueIds(Option<Box<Vec<Box<str>>>>);

impl QueueIds {
    pub const MAX: usize = 16;
    pub const MAX_LEN: usize = 32;

    /// The id in a reply line (its first line: `250 2.0.0 Ok: queued as
    /// 4XyZ1b2C3d`), if it names one that fits; `cut`: the line may go on
    /// past `reply`, so an id at its very end may be cut short too.
    pub fn parse(reply: &[u8], cut: bool) -> Option<Box<str>> {
        const MARK: &[u8] = b"queued as ";
        let at = memchr::memmem::find(reply, MARK)? + MARK.len();
        let rest = &reply[at..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
            .unwrap_or(rest.len());
        // What follows the id must end it: a space or the line's end, not
        // a byte that was cut from it.
        let id = &rest[..end];
        let ends = if end == rest.len() {
            !cut
        } else {
            rest[end] == b' '
        };
        (!id.is_empty() && id.len() <= Self::MAX_LEN && ends)
            .then(|| std::str::from_utf8(id).ok().map(Into::into))
            .flatten()
    }

    /// Keep `id`, unless [`QueueIds::MAX`] are kept. Allocated at the
    /// first: a session that sends no message keeps a null pointer while
    /// it relays.
    pub fn push(&mut self, id: Box<str>) {
        let ids = self.0.get_or_insert_default();
        if ids.len() < Self::MAX {
            ids.push(id);
        }
    }

    pub fn as_slice(&self) -> &[Box<str>] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_id_is_read_from_postfix_replies_and_nothing_else() {
        let id = |reply: &str| QueueIds::parse(reply.as_bytes(), false).map(String::from);
        assert_eq!(
            id("250 2.0.0 Ok: queued as 4F2A1B2C3D").as_deref(),
            Some("4F2A1B2C3D")
        );
        // Long queue ids, and text after the id.
        assert_eq!(
            id("250 2.0.0 Ok: queued as 4bX9kz0Yq1zNp3m by mx").as_deref(),
            Some("4bX9kz0Yq1zNp3m")
        );
        // The end of a line kept in part: the id may be cut.
        assert_eq!(QueueIds::parse(b"250 Ok: queued as 4F2A", true), None);
        assert!(QueueIds::parse(b"250 Ok: queued as 4F2A by", true).is_some());
        for not in [
            "250 2.0.0 Ok",
            "250 2.0.0 Ok: queued as ",
            "250 2.0.0 Ok: queued as \x1b[31mred",
            "250 2.0.0 Ok: queued as a\"b",
            "250 2.0.0 Ok: queued as 0123456789012345678901234567890123456789",
        ] {
            assert_eq!(id(not), None, "{not:?}");
        }
        let mut ids = QueueIds::default();
        for n in 0..20 {
            ids.push(n.to_string().into());
        }
        assert_eq!(ids.as_slice().len(), QueueIds::MAX);
        assert_eq!(&*ids.as_slice()[0], "0");
    }

    #[test]
    fn with_a_sample_of_zero_only_errors_are_at_info() {
        let log = |http_sample| LogConfig {
            format: LogFormat::Text,
            http_sample,
        };
        assert_eq!(http_level(&log(None), true), Level::DEBUG, "text as before");
        assert_eq!(http_level(&log(Some(0.0)), false), Level::DEBUG);
        assert_eq!(http_level(&log(Some(0.0)), true), Level::INFO);
        assert_eq!(http_level(&log(Some(1.0)), false), Level::INFO);
        let picked = (0..10_000)
            .filter(|_| http_level(&log(Some(0.1)), false) == Level::INFO)
            .count();
        assert!((700..1300).contains(&picked), "{picked} of 10,000 at 0.1");
    }
}
