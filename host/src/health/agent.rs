//! Load reports from a backend's agent, in HAProxy's agent-check words: gale
//! connects to the agent port on the backend's address, reads one line
//! and closes. The line holds words separated by spaces, commas or tabs:
//! a state (`up` or `ready`; `down`, `fail`, `stopped` or `maint`;
//! `drain`) and/or a weight as a share of the configured one (`75%`).
//! Unknown words are ignored, as HAProxy does, so an agent written for
//! HAProxy works unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::timeout;

/// Longest answer read; agents send a few words.
const MAX_LINE: usize = 256;
/// Highest weight share accepted: HAProxy caps at 256 % of the weight.
pub const MAX_PERCENT: u32 = 256;

/// What the agent said of the backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Up,
    Down,
    Drain,
}

/// One agent answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    pub state: Option<AgentState>,
    /// Share of the configured weight, in percent.
    pub weight_percent: Option<u32>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.map(|s| match s {
            AgentState::Up => "up",
            AgentState::Down => "down",
            AgentState::Drain => "drain",
        });
        match (state, self.weight_percent) {
            (Some(s), Some(p)) => write!(f, "{s} {p}%"),
            (Some(s), None) => f.write_str(s),
            (None, Some(p)) => write!(f, "{p}%"),
            (None, None) => f.write_str("nothing"),
        }
    }
}

/// Ask the agent at `address` within `limit`.
pub async fn ask(address: SocketAddr, limit: Duration) -> Result<LoadReport, String> {
    let read = async {
        let mut stream = crate::connect::connect(address, limit)
            .await
            .map_err(|e| format!("agent connect: {e}"))?;
        let mut buf = Vec::with_capacity(MAX_LINE);
        let mut chunk = [0u8; MAX_LINE];
        while buf.len() < MAX_LINE && !buf.contains(&b'\n') {
            let n = stream
                .read(&mut chunk[..MAX_LINE - buf.len()])
                .await
                .map_err(|e| format!("agent read: {}", e.kind()))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, String>(buf)
    };
    let line = timeout(limit, read)
        .await
        .map_err(|_| "agent: no answer in time".to_string())??;
    parse(&line).ok_or_else(|| "agent: nothing understood in its answer".to_string())
}

/// The report in `line` (up to its first line end), if it says anything
/// gale understands.
pub fn parse(line: &[u8]) -> Option<LoadReport> {
    let end = line
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(line.len());
    let text = std::str::from_utf8(&line[..end]).ok()?;
    let mut report = LoadReport::default();
    for word in text.split([' ', ',', '\t']).filter(|w| !w.is_empty()) {
        match word.to_ascii_lowercase().as_str() {
            "up" | "ready" => report.state = Some(AgentState::Up),
            "down" | "fail" | "stopped" | "maint" => report.state = Some(AgentState::Down),
            "drain" => report.state = Some(AgentState::Drain),
            w => {
                if let Some(p) = w.strip_suffix('%').and_then(|p| p.parse::<u32>().ok()) {
                    report.weight_percent = Some(p.min(MAX_PERCENT));
                }
            }
        }
    }
    (report != LoadReport::default()).then_some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_agent_answers_parse() {
        let up = |p| LoadReport {
            state: Some(AgentState::Up),
            weight_percent: p,
        };
        assert_eq!(parse(b"up\n"), Some(up(None)));
        assert_eq!(
            parse(b"75%\r\n"),
            Some(LoadReport {
                state: None,
                weight_percent: Some(75)
            })
        );
        assert_eq!(parse(b"ready,50%"), Some(up(Some(50))));
        assert_eq!(parse(b"DRAIN\n").unwrap().state, Some(AgentState::Drain));
        assert_eq!(
            parse(b"maint #comment\n").unwrap().state,
            Some(AgentState::Down)
        );
        assert_eq!(parse(b"9000%").unwrap().weight_percent, Some(MAX_PERCENT));
        assert_eq!(parse(b"hello\nup"), None, "only the first line counts");
        assert_eq!(parse(b"\xff\xfe"), None);
    }
}
