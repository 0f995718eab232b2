//! Watching a relayed SMTP session in the clear for what mail operators
//! fear most: an MTA that greets `220` and then defers every message (a
//! full spool's `452 4.3.1`, a dead policy service's `451 4.3.0`, a
//! `421 4.3.0` when DATA comes).
//!
//! The relay hands over each chunk it forwards; the watcher splits the
//! client's bytes into commands (skipping message bodies, DATA and BDAT)
//! and the backend's into replies, pairs them in order (pipelining keeps
//! the order) and judges the replies that say something about the
//! backend:
//!
//! - a `250` to the end of a message (or to `BDAT ... LAST`) is a success,
//!   and carries the backend's queue id when it says `queued as ID`
//!   (Postfix), for the session's access line;
//! - a `4xx` with an enhanced code of class `4.3` (mail system) to MAIL
//!   FROM, DATA, a BDAT chunk or the end of a message is a failure, and so
//!   is a `421 4.3.x`; at most one per session, so that one client cannot
//!   pile them up. A `452 4.3.1` to a MAIL FROM that declared a SIZE is
//!   about that client (Postfix says it when the size does not fit), and
//!   so is a `421` without a class (`4.0.0` or none): each counts once per
//!   client, like a refused greeting;
//! - nothing else counts: replies to RCPT are about one recipient, and a
//!   `421` of another class ("4.7.0 too many errors", "4.4.2 timeout") is
//!   what a client can provoke; a real shutdown fails the probes too.
//!
//! It stops for good, costing nothing more, once the session turns to TLS
//! (STARTTLS answered `220`), after a failure or a `421`, at AUTH (`334`),
//! or when the two sides stop pairing up (a reply nobody asked for, a
//! `354` to anything but DATA, more than [`IN_FLIGHT`] commands waiting).

use std::collections::VecDeque;

/// Commands awaiting their reply, at most; past that the watcher stops
/// (Postfix takes 1000 recipients a message by default).
const IN_FLIGHT: usize = 1024;
/// Bytes kept from the start of each line: enough for a verb and a BDAT
/// size, or a reply code, its enhanced code and some text for the log.
const PREFIX: usize = 64;

/// A reply that says something about the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message or transaction was accepted, with the backend's queue id
    /// if its reply named one (see [`crate::access::QueueIds`]).
    Accepted { queue_id: Option<Box<str>> },
    /// The backend deferred for its own reasons; `per_client`: it may be
    /// about this client (a `421` outside class 4.3).
    Deferred {
        code: u16,
        detail: String,
        per_client: bool,
    },
}

/// What a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// `sized`: it declared a SIZE.
    Mail {
        sized: bool,
    },
    Rcpt,
    Data,
    EndOfData,
    Bdat {
        last: bool,
    },
    StartTls,
    Quit,
    Other,
}

impl Asked {
    fn name(self) -> &'static str {
        match self {
            Asked::Mail { .. } => "MAIL FROM",
            Asked::Rcpt => "RCPT TO",
            Asked::Data => "DATA",
            Asked::EndOfData => "end of data",
            Asked::Bdat { .. } => "BDAT",
            Asked::StartTls => "STARTTLS",
            Asked::Quit => "QUIT",
            Asked::Other => "a command",
        }
    }
}

/// Where the client's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Commands,
    /// Inside a DATA body, until a line that is a lone ".".
    Body,
    /// Inside a BDAT chunk: bytes left.
    Chunk {
        left: u64,
        last: bool,
    },
}

/// The start of the line being read, and whether it went past `PREFIX`.
#[derive(Debug)]
struct Line {
    bytes: [u8; PREFIX],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            bytes: [0; PREFIX],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, part: &[u8]) {
        let take = part.len().min(PREFIX - self.len);
        self.bytes[self.len..self.len + take].copy_from_slice(&part[..take]);
        self.len += take;
    }

    /// The line without its CR LF (or bare LF).
    fn text(&self) -> &[u8] {
        let t = &self.bytes[..self.len];
        let t = t.strip_suffix(b"\n").unwrap_or(t);
        t.strip_suffix(b"\r").unwrap_or(t)
    }
}

/// Split `data` into lines, handing each complete one (its first `PREFIX`
/// bytes) to `done`; a line cut by the end of `data` waits in `line`.
/// Returns where `done` asked to stop, if it did.
fn lines(line: &mut Line, data: &[u8], mut done: impl FnMut(&Line) -> bool) -> Option<usize> {
    let mut at = 0;
    while at < data.len() {
        match memchr::memchr(b'\n', &data[at..]) {
            None => {
                line.push(&data[at..]);
                return None;
            }
            Some(n) => {
                line.push(&data[at..at + n + 1]);
                at += n + 1;
                let stop = done(line);
                line.len = 0;
                if stop {
                    return Some(at);
                }
            }
        }
    }
    None
}

/// The watcher of one session.
#[derive(Debug)]
pub struct Watch {
    on: bool,
    client: ClientState,
    client_line: Line,
    backend_line: Line,
    /// The first line of the reply being read, for the log.
    first: Line,
    asked: VecDeque<Asked>,
    /// The MTA answered the client's QUIT with `221`: in cleartext, the
    /// session is over and neither side will send more.
    said_goodbye: bool,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            on: true,
            client: ClientState::Commands,
            client_line: Line::default(),
            backend_line: Line::default(),
            first: Line::default(),
            asked: VecDeque::new(),
            said_goodbye: false,
        }
    }
}

impl Watch {
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Whether the MTA has answered the client's QUIT with `221`, both
    /// seen in the clear (never after STARTTLS: the watch is off then).
    pub fn said_goodbye(&self) -> bool {
        self.said_goodbye
    }

    /// Bytes the client sent on to the backend.
    pub fn client(&mut self, mut data: &[u8]) {
        while self.on && !data.is_empty() {
            match self.client {
                ClientState::Chunk { left, last } => {
                    let take = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    data = &data[take..];
                    self.chunk(left - take as u64, last);
                }
                ClientState::Body => {
                    let mut line = std::mem::take(&mut self.client_line);
                    let stop = lines(&mut line, data, |l| l.text() == b".");
                    self.client_line = line;
                    let Some(at) = stop else { return };
                    data = &data[at..];
                    self.client = ClientState::Commands;
                    self.ask(Asked::EndOfData);
                }
                ClientState::Commands => {
                    let mut line = std::mem::take(&mut self.client_line);
                    let mut opens = None;
                    let stop = lines(&mut line, data, |l| {
                        match command(l.text(), l.len == PREFIX) {
                            // Its reply comes after the chunk.
                            (_, Some((left, last))) => {
                                opens = Some(ClientState::Chunk { left, last });
                                true
                            }
                            (asked, None) => {
                                self.ask(asked);
                                if asked == Asked::Data {
                                    // A client waits for 354 before the body,
                                    // and sends none after a refusal (see
                                    // `judge`).
                                    opens = Some(ClientState::Body);
                                }
                                opens.is_some() || !self.on
                            }
                        }
                    });
                    self.client_line = line;
                    let (Some(at), Some(state)) = (stop, opens) else {
                        return;
                    };
                    data = &data[at..];
                    self.client = state;
                    if let ClientState::Chunk { left: 0, last } = state {
                        self.chunk(0, last);
                    }
                }
            }
        }
    }

    /// `left` bytes of a BDAT chunk to go.
    fn chunk(&mut self, left: u64, last: bool) {
        self.client = ClientState::Chunk { left, last };
        if left == 0 {
            self.client = ClientState::Commands;
            self.ask(Asked::Bdat { last });
        }
    }

    fn ask(&mut self, asked: Asked) {
        if self.asked.len() == IN_FLIGHT {
            self.on = false;
            return;
        }
        self.asked.push_back(asked);
    }

    /// Bytes the backend sent on to the client; `report` hears what they
    /// said about it.
    pub fn backend(&mut self, data: &[u8], mut report: impl FnMut(Event)) {
        if !self.on {
            return;
        }
        let mut line = std::mem::take(&mut self.backend_line);
        lines(&mut line, data, |l| {
            let text = l.text();
            if self.first.len == 0 {
                self.first.push(text);
            }
            // "250-..." goes on; "250 ..." or a bare "250" ends the reply.
            if text.get(3) == Some(&b'-') {
                return false;
            }
            let first = std::mem::take(&mut self.first);
            let asked = match self.asked.pop_front() {
                Some(asked) => asked,
                // A shutdown notice may come unasked.
                None if first.text().starts_with(b"421") => Asked::Other,
                None => {
                    // A reply nobody asked for: the sides do not pair up.
                    self.on = false;
                    return true;
                }
            };
            if let Some(event) = self.judge(asked, &first) {
                report(event);
            }
            !self.on
        });
        self.backend_line = line;
    }

    /// What the reply whose first line is `first` to `asked` says.
    fn judge(&mut self, asked: Asked, first: &Line) -> Option<Event> {
        let text = &first.bytes[..first.len];
        let Some(code) = reply_code(text) else {
            self.on = false;
            return None;
        };
        if asked == Asked::Data && code != 354 {
            if self.client == ClientState::Body {
                // No body follows a refused DATA.
                self.client = ClientState::Commands;
            } else {
                // The client sent a "body" without waiting for 354: the
                // MTA read it as commands, the watch as a message.
                self.on = false;
                return None;
            }
        }
        // Out of step, or a SASL exchange whose lines are not commands.
        if (code == 354 && asked != Asked::Data) || code == 334 {
            self.on = false;
            return None;
        }
        let system = enhanced_class(text) == Some(3);
        let deferred = |per_client| {
            Some(Event::Deferred {
                code,
                detail: format!(
                    "{} answered {:?}",
                    asked.name(),
                    String::from_utf8_lossy(text)
                ),
                per_client,
            })
        };
        match asked {
            Asked::StartTls if code == 220 => {
                self.on = false;
                None
            }
            Asked::Quit if code == 221 => {
                self.said_goodbye = true;
                None
            }
            _ if code == 421 => {
                self.on = false;
                match enhanced_class(text) {
                    Some(3) => deferred(false),
                    // "421 4.0.0 closing connection": it may be about this
                    // client, so once per client.
                    Some(0) | None => deferred(true),
                    // 4.4 timeouts, 4.5 protocol errors, 4.7 policy: what
                    // a client provokes.
                    Some(_) => None,
                }
            }
            Asked::EndOfData | Asked::Bdat { last: true } if code == 250 => Some(Event::Accepted {
                queue_id: crate::access::QueueIds::parse(text, first.len == PREFIX),
            }),
            Asked::Mail { .. } | Asked::Data | Asked::EndOfData | Asked::Bdat { .. }
                if (400..500).contains(&code) && system =>
            {
                // One failure a session: the rest of it tells no more.
                self.on = false;
                deferred(matches!(asked, Asked::Mail { sized: true }))
            }
            _ => None,
        }
    }
}

/// The three-digit code at the start of a reply line.
fn reply_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The middle digit of an enhanced status code ("452 4.3.1 ..." gives 3).
pub(super) fn enhanced_class(line: &[u8]) -> Option<u8> {
    let rest = line.get(4..)?;
    match rest {
        [c, b'.', d, ..] if c.is_ascii_digit() && d.is_ascii_digit() => Some(d - b'0'),
        _ => None,
    }
}

/// What a command line asks, and for BDAT its chunk size and whether it
/// is the last. Words are split as MTAs split them: on spaces and tabs,
/// trailing ones ignored ("DATA \r\n" is DATA to Postfix).
/// `cut`: the line was longer than what was kept of it (a MAIL FROM whose
/// parameters are past it counts as sized).
fn command(line: &[u8], cut: bool) -> (Asked, Option<(u64, bool)>) {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let mut words = line.split(blank).filter(|w| !w.is_empty());
    let verb = words.next().unwrap_or_default();
    let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
    if is(b"MAIL") {
        let sized = cut || words.any(|w| w.len() > 5 && w[..5].eq_ignore_ascii_case(b"SIZE="));
        (Asked::Mail { sized }, None)
    } else if is(b"RCPT") {
        (Asked::Rcpt, None)
    } else if is(b"DATA") && words.next().is_none() {
        (Asked::Data, None)
    } else if is(b"STARTTLS") {
        (Asked::StartTls, None)
    } else if is(b"QUIT") && words.next().is_none() {
        (Asked::Quit, None)
    } else if is(b"BDAT") {
        let size = words
            .next()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u64>().ok());
        let last = words
            .next()
            .is_some_and(|a| a.eq_ignore_ascii_case(b"LAST"));
        match size {
            Some(size) => (Asked::Other, Some((size, last))),
            // A malformed BDAT is refused and no chunk follows.
            None => (Asked::Other, None),
        }
    } else {
        (Asked::Other, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed a session as (client, backend) chunks; the events, in order,
    /// and whether the watch is still on.
    fn run(steps: &[(&str, &str)]) -> (Vec<Event>, bool) {
        let mut watch = Watch::default();
        let mut events = Vec::new();
        for (client, backend) in steps {
            watch.client(client.as_bytes());
            watch.backend(backend.as_bytes(), |e| events.push(e));
        }
        (events, watch.is_on())
    }

    /// A message accepted by a reply without a queue id.
    const ACCEPTED: Event = Event::Accepted { queue_id: None };

    fn deferred(code: u16, per_client: bool) -> impl Fn(&Event) -> bool {
        move |e| matches!(e, Event::Deferred { code: c, per_client: p, .. } if *c == code && *p == per_client)
    }

    #[test]
    fn an_accepted_message_is_one_success_with_its_queue_id() {
        let (events, on) = run(&[
            ("EHLO c\r\n", "250-mx\r\n250 PIPELINING\r\n"),
            (
                "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
            ),
            ("Subject: x\r\n\r\nMAIL FROM:<not a command>\r\n.\r", ""),
            ("\n", "250 2.0.0 Ok: queued as 4F2A1B2C3D\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ]);
        assert_eq!(
            events,
            vec![Event::Accepted {
                queue_id: Some("4F2A1B2C3D".into())
            }]
        );
        assert!(on);
    }

    #[test]
    fn a_quit_answered_221_is_a_goodbye_and_nothing_else_is() {
        let mut watch = Watch::default();
        watch.client(b"EHLO c\r\nQUIT\r\n");
        watch.backend(b"250 mx\r\n", |_| {});
        assert!(!watch.said_goodbye());
        watch.backend(b"221 2.0.0 Bye\r\n", |_| {});
        assert!(watch.said_goodbye());
        // A 421 is not one, and after STARTTLS the watch sees nothing.
        let mut closing = Watch::default();
        closing.client(b"MAIL FROM:<a@b>\r\n");
        closing.backend(b"421 4.4.2 timeout\r\n", |_| {});
        assert!(!closing.said_goodbye());
        let mut tls = Watch::default();
        tls.client(b"STARTTLS\r\n");
        tls.backend(b"220 go ahead\r\n", |_| {});
        tls.client(b"QUIT\r\n");
        tls.backend(b"221 bye\r\n", |_| {});
        assert!(!tls.said_goodbye());
    }

    #[test]
    fn mail_accepted_is_no_success_until_the_message_is() {
        let (events, _) = run(&[
            ("MAIL FROM:<a@b>\r\n", "250 2.1.0 Ok\r\n"),
            ("RCPT TO:<c@d>\r\n", "250 2.1.5 Ok\r\n"),
            ("DATA\r\n", "421 4.0.0 Server closing connection\r\n"),
        ]);
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(deferred(421, true)(&events[0]), "{events:?}");
        let (events, _) = run(&[
            ("MAIL FROM:<a@b>\r\n", "250 2.1.0 Ok\r\n"),
            ("RSET\r\nMAIL FROM:<a@b>\r\n", "250 ok\r\n250 2.1.0 Ok\r\n"),
            ("QUIT\r\n", "221 bye\r\n"),
        ]);
        assert!(
            events.is_empty(),
            "MAIL/RSET loops prove nothing: {events:?}"
        );
    }

    #[test]
    fn a_full_spool_defers_mail_from_once_and_recipients_never_count() {
        let (events, _) = run(&[
            (
                "RCPT TO:<c@d>\r\n",
                "451 4.3.0 <c@d>: Temporary lookup failure\r\n",
            ),
            (
                "MAIL FROM:<a@b>\r\n",
                "452 4.3.1 Insufficient system storage\r\n",
            ),
            (
                "MAIL FROM:<a@b>\r\n",
                "452 4.3.1 Insufficient system storage\r\n",
            ),
        ]);
        assert_eq!(events.len(), 1, "one failure a session: {events:?}");
        assert!(deferred(452, false)(&events[0]));
        let Event::Deferred { detail, .. } = &events[0] else {
            unreachable!()
        };
        assert_eq!(
            detail,
            "MAIL FROM answered \"452 4.3.1 Insufficient system storage\""
        );
        // A declared SIZE that does not fit is about the client.
        let (events, _) = run(&[(
            "MAIL FROM:<a@b> BODY=8BITMIME SIZE=999999999999\r\n",
            "452 4.3.1 Insufficient system storage\r\n",
        )]);
        assert!(deferred(452, true)(&events[0]), "{events:?}");
    }

    #[test]
    fn a_421_counts_by_its_class() {
        let (events, on) = run(&[("DATA\r\n", "421 4.3.0 shutting down\r\n")]);
        assert!(deferred(421, false)(&events[0]));
        assert!(!on);
        for provoked in [
            "421 4.7.0 Error: too many errors",
            "421 4.4.2 Error: timeout exceeded",
        ] {
            let (events, _) = run(&[("NOOP\r\n", &format!("{provoked}\r\n"))]);
            assert!(events.is_empty(), "a client can provoke {provoked:?}");
        }
        let (events, _) = run(&[("", "421 4.3.2 shutting down\r\n")]);
        assert!(
            deferred(421, false)(&events[0]),
            "an unasked shutdown notice"
        );
    }

    #[test]
    fn a_refused_data_sends_no_body_and_bdat_chunks_are_skipped() {
        let (events, on) = run(&[
            ("DATA\r\n", "554 5.5.1 no valid recipients\r\n"),
            ("MAIL FROM:<a@b>\r\n", "250 ok\r\n"),
            ("BDAT 15 LAST\r\nMAIL FROM:<x", ""),
            (">\r\n", "250 2.0.0 queued\r\n"),
        ]);
        assert_eq!(events, vec![ACCEPTED]);
        assert!(on);
    }

    #[test]
    fn commands_split_as_mtas_split_them() {
        // "DATA " and tabs are DATA and BDAT to Postfix: the body that
        // follows is no command, and a RCPT reply is not a MAIL reply.
        let (events, on) = run(&[
            ("DATA \r\n", "354 go\r\n"),
            ("MAIL FROM:<x>\r\nMAIL FROM:<y>\r\n.\r\n", "250 queued\r\n"),
            ("BDAT\t6\tLAST\r\nRCPT\r\n", "250 queued\r\n"),
            ("RCPT TO:<x>\r\n", "451 4.3.0 lookup failure\r\n"),
        ]);
        assert_eq!(events, vec![ACCEPTED, ACCEPTED]);
        assert!(on);
    }

    #[test]
    fn the_watch_stops_at_tls_auth_and_anything_out_of_step() {
        let (events, on) = run(&[
            ("STARTTLS\r\n", "220 go ahead\r\n"),
            ("\x16\x03\x01garbage", ""),
        ]);
        assert!(events.is_empty() && !on);
        let (_, on) = run(&[("", "250 unasked\r\n")]);
        assert!(!on);
        let (_, on) = run(&[("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n")]);
        assert!(!on);
        let (_, on) = run(&[("NOOP\r\n", "354 what\r\n")]);
        assert!(!on);
    }
}
