//! gale's log: tracing's text lines, or one JSON object per line
//! (`[log] format = "json"`), chosen once at start.
//!
//! Owns: the subscriber and the JSON line format. Does not touch: what is
//! logged where (each module logs its own events; the access lines are
//! [`crate::access`]'s).
//!
//! A JSON line is flat: `ts` (RFC 3339, UTC, milliseconds), `level`
//! (`error`, `warn`, `info`, `debug`, `trace`), `target` (the module, or
//! `gale::access` for access lines), `message`, then the event's fields
//! in their order, numbers and booleans as JSON numbers and booleans,
//! anything else as a string. An access line carries its record's fields
//! (`kind`, `client`, ...) at the top level instead of the one field that
//! holds them: the formatter splices that field only for events of the
//! access target, which gale's own code alone can write (plugins log
//! under `gale::plugin`), so no string a peer or plugin controls can
//! pass for fields. Spans are not written (gale opens none; those of
//! libraries would only repeat their events).
//!
//! Written by our own [`FormatEvent`] rather than tracing-subscriber's
//! `json` feature: that one nests fields under `fields` unless flattened,
//! names the time `timestamp` in its own format, and could only write the
//! access record as a string inside a string.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The format the subscriber was installed with.
static RUNNING: OnceLock<LogFormat> = OnceLock::new();

/// The format lines are written in (text when no subscriber was
/// installed by [`init`], as in tests that run gale in their process).
pub fn running() -> LogFormat {
    RUNNING.get().copied().unwrap_or_default()
}

/// `[log] format` of the config at `path`, read before the config is
/// loaded (the subscriber must exist before anything is logged, loading
/// included). Text when the file cannot be read or parsed, or says
/// nothing: loading it then reports what is wrong, in text.
pub fn format_of(path: &Path) -> LogFormat {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        log: Section,
    }
    #[derive(serde::Deserialize, Default)]
    struct Section {
        format: Option<LogFormat>,
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str::<File>(&text).ok())
        .and_then(|file| file.log.format)
        .unwrap_or_default()
}

/// Install the subscriber: stderr, `RUST_LOG` (default `info`), in
/// `format`.
pub fn init(format: LogFormat) {
    let _ = RUNNING.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.with_ansi(false).event_format(Json).init(),
    }
}

/// The JSON line format (see the module doc).
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        writer.write_str(&line(event, &now.to_string()))
    }
}

/// `event` as one JSON line, stamped `ts`.
fn line(event: &Event<'_>, ts: &str) -> String {
    let meta = event.metadata();
    let mut fields = Fields {
        access: meta.target() == crate::access::TARGET,
        ..Fields::default()
    };
    event.record(&mut fields);
    let mut out = String::with_capacity(96 + fields.message.len() + fields.rest.len());
    out.push_str("{\"ts\":");
    string(&mut out, ts);
    out.push_str(",\"level\":");
    string(&mut out, &meta.level().as_str().to_ascii_lowercase());
    out.push_str(",\"target\":");
    // An event of the `log` crate carries its own target.
    string(
        &mut out,
        fields.log_target.as_deref().unwrap_or(meta.target()),
    );
    out.push_str(",\"message\":");
    string(&mut out, &fields.message);
    out.push_str(&fields.rest);
    out.push_str("}\n");
    out
}

/// An event's fields as they are visited.
#[derive(Default)]
struct Fields {
    /// An access line: its `access` field is spliced in.
    access: bool,
    message: String,
    /// `,"key":value` for every other field.
    rest: String,
    log_target: Option<String>,
}

impl Fields {
    /// `,"name":` for a field, unless it is one of the `log` crate's
    /// (whose target replaces the event's; the rest is where in its
    /// source, which tracing's own events do not say either). A field
    /// named as a fixed key is written as `field.NAME`.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        self.rest.push(',');
        if matches!(name, "ts" | "level" | "target" | "message") {
            string(&mut self.rest, &format!("field.{name}"));
        } else {
            string(&mut self.rest, name);
        }
        self.rest.push(':');
        true
    }

    fn text(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" if self.message.is_empty() => value.clone_into(&mut self.message),
            "log.target" => self.log_target = Some(value.to_string()),
            "access"
                if self.access
                    && value.len() > 2
                    && value.starts_with('{')
                    && value.ends_with('}') =>
            {
                self.rest.push(',');
                self.rest.push_str(&value[1..value.len() - 1]);
            }
            _ => {
                if self.key(field) {
                    string(&mut self.rest, value);
                }
            }
        }
    }

    fn number(&mut self, field: &Field, value: impl std::fmt::Display) {
        if self.key(field) {
            let _ = write!(self.rest, "{value}");
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.text(field, &format!("{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, &value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.number(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.number(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.number(field, value);
        } else {
            // JSON has no NaN or infinity.
            self.text(field, &value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }
}

/// `s` as a JSON string: quotes, backslashes and control characters
/// escaped (a line break in a value cannot start a line of its own).
fn string(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The JSON lines of the events `log` emits.
    fn lines(log: impl FnOnce()) -> Vec<serde_json::Value> {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .event_format(Json)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn fields_are_flat_and_numbers_stay_numbers() {
        let lines = lines(|| {
            tracing::info!(
                listener = "in",
                bytes = 12u64,
                ok = true,
                ratio = 0.5,
                "a \"quoted\"\nline"
            );
        });
        let line = lines[0].as_object().unwrap();
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 8, "{line:?}");
        assert_eq!(line["level"], "info");
        assert_eq!(line["target"], "gale::logging::tests");
        assert_eq!(line["message"], "a \"quoted\"\nline");
        assert_eq!(line["listener"], "in");
        assert_eq!(line["bytes"], 12);
        assert_eq!(line["ok"], true);
        assert_eq!(line["ratio"], 0.5);
        let ts = line["ts"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(ts).is_ok() && ts.len() == 24,
            "{ts}"
        );
    }

    #[test]
    fn only_access_lines_splice_their_record_and_controls_are_escaped() {
        let lines = lines(|| {
            tracing::info!(target: "gale::access", access = r#"{"kind":"smtp","bytes_up":3}"#, "smtp session");
            // Anywhere else, a field that looks like a record is a string.
            tracing::warn!(access = r#"{"kind":"forged"}"#, "x\u{1b}[31m");
        });
        assert_eq!(lines[0]["kind"], "smtp");
        assert_eq!(lines[0]["bytes_up"], 3);
        assert!(lines[0].get("access").is_none());
        assert_eq!(lines[1]["access"], r#"{"kind":"forged"}"#);
        assert!(lines[1].get("kind").is_none());
        assert_eq!(lines[1]["message"], "x\u{1b}[31m");
    }

    #[test]
    fn a_field_named_as_a_fixed_key_keeps_both() {
        let lines = lines(|| tracing::info!(level = 3, "m"));
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["field.level"], 3);
    }
}
