//! Admission decisions through an admission plugin (contract 0.1.3): one
//! call per connection the listener's built-in rules let in. What the
//! host does with the answer (the reply, the tarpit's cap) is
//! [`crate::admission`]'s; here the answer is only checked, like a
//! balancer's order, so that an answer the host would have to guess at
//! is a failed call (counted, and the client admitted).

use std::sync::Arc;

use super::bindings::admission::Admission;
pub use super::bindings::admission::exports::gale::plugin::admitter::{
    AdmissionContext, Decision, Rejection, Service,
};
use super::instance::Guest;
use super::runtime::PluginRuntime;
use super::state::LiveCounters;
use super::{CallFailure, PluginError};
use crate::config::PluginSpec;

/// Longest reply text the host sends (bytes, after sanitising): an SMTP
/// reply line is at most 512 bytes with its code and CRLF (RFC 5321
/// 4.5.3.1.5), and a refusal needs far fewer.
pub const MAX_REPLY_TEXT: usize = 200;

/// A loaded admission plugin.
pub struct AdmissionPlugin {
    guest: Guest<Admission>,
}

impl AdmissionPlugin {
    /// Load and start the plugin (blocking: compiles on a cache miss).
    pub fn load(
        runtime: &PluginRuntime,
        spec: &PluginSpec,
        name: &str,
    ) -> Result<Self, PluginError> {
        Ok(Self {
            guest: Guest::load(runtime, spec, name, Arc::new(LiveCounters::default()))?,
        })
    }

    pub fn name(&self) -> &str {
        self.guest.name()
    }

    /// Which build runs, for `/status`.
    pub fn info(&self) -> &super::PluginInfo {
        &self.guest.info
    }

    /// The plugin's decision on `ctx`, checked: a rejection's code is 400
    /// to 599 and its text is printable ASCII of at most
    /// [`MAX_REPLY_TEXT`] bytes (anything else in it is dropped: a CR or
    /// LF would let a plugin write a second reply).
    pub fn admit(&self, ctx: &AdmissionContext) -> Result<Decision, CallFailure> {
        let budget = self.guest.budget;
        self.guest.call(
            |runtime, live, _| {
                runtime.arm(&mut live.store, budget);
                live.exports
                    .gale_plugin_admitter()
                    .call_admit(&mut live.store, ctx)
            },
            check_decision,
        )
    }
}

fn check_decision(decision: &mut Decision) -> Result<(), CallFailure> {
    if let Decision::Reject(rejection) = decision {
        if !(400..=599).contains(&rejection.code) {
            return Err(CallFailure::Malformed(format!(
                "reject code {} is not 400 to 599",
                rejection.code
            )));
        }
        rejection.text = sanitize(&rejection.text);
    }
    Ok(())
}

/// `text` as one reply line may carry it: printable ASCII only (control
/// characters, CR and LF and non-ASCII dropped), runs of spaces kept as
/// the plugin wrote them, at most [`MAX_REPLY_TEXT`] bytes.
fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_REPLY_TEXT)
        .collect();
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(code: u16, text: &str) -> Decision {
        Decision::Reject(Rejection {
            code,
            text: text.to_string(),
        })
    }

    #[test]
    fn a_rejection_keeps_one_printable_line_of_bounded_length() {
        let mut d = reject(554, "5.7.1 no\r\n250 ok\t\u{e9}");
        check_decision(&mut d).unwrap();
        assert_eq!(d, reject(554, "5.7.1 no250 ok"));
        let mut long = reject(421, &"x".repeat(1000));
        check_decision(&mut long).unwrap();
        let Decision::Reject(r) = long else {
            unreachable!()
        };
        assert_eq!(r.text.len(), MAX_REPLY_TEXT);
    }

    #[test]
    fn a_rejection_code_outside_4xx_and_5xx_is_malformed() {
        for code in [0, 250, 399, 600, 65535] {
            let failure = check_decision(&mut reject(code, "x")).unwrap_err();
            assert_eq!(failure.reason(), "malformed", "{code}");
        }
        for code in [400, 421, 554, 599] {
            assert!(check_decision(&mut reject(code, "x")).is_ok(), "{code}");
        }
        assert!(check_decision(&mut Decision::Tarpit(u32::MAX)).is_ok());
    }
}
