//! Reading an SMTP reply (RFC 5321 §4.2): one or more lines `CODE-text`
//! ending with `CODE text` (or a bare `CODE`), all with the same code.
//! Bounded: a backend that streams garbage cannot make gale buffer it.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest reply accepted (RFC 5321 allows 512 bytes a line; greetings
/// with many lines stay well below this).
pub const MAX_REPLY: usize = 8 * 1024;

/// A complete reply and any bytes that arrived after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The reply exactly as received, CRLFs included.
    pub raw: Vec<u8>,
    /// Bytes read past the end of the reply (pipelined data); forwarded.
    pub rest: Vec<u8>,
}

impl Reply {
    /// First line without its line ending, for logs, probe details and
    /// `/status`: at most 200 characters, whatever the backend sent.
    pub fn first_line(&self) -> String {
        let end = self.raw.iter().position(|&b| b == b'\r' || b == b'\n');
        let line = String::from_utf8_lossy(&self.raw[..end.unwrap_or(self.raw.len())]);
        match line.char_indices().nth(200) {
            Some((cut, _)) => format!("{}...", &line[..cut]),
            None => line.into_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("connection closed before a complete reply")]
    Closed,
    #[error("not an SMTP reply: {0:?}")]
    Garbage(String),
    #[error("reply longer than {MAX_REPLY} bytes")]
    TooLong,
    #[error("read failed: {0}")]
    Io(String),
}

/// What one buffer holds so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete reply: its code and its length in bytes.
    Complete {
        code: u16,
        len: usize,
    },
    Incomplete,
}

/// Parse the start of `buf` as a reply.
pub fn parse(buf: &[u8]) -> Result<Parsed, ReplyError> {
    let mut start = 0;
    let mut code: Option<u16> = None;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let end = start + nl + 1;
        let mut line = &buf[start..start + nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let garbage =
            || ReplyError::Garbage(String::from_utf8_lossy(line).chars().take(80).collect());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(garbage());
        }
        let this = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        if !(200..=599).contains(&this) || code.is_some_and(|c| c != this) {
            return Err(garbage());
        }
        code = Some(this);
        match line.get(3) {
            // However the reply was split across reads: longer is too long.
            None | Some(b' ') if end > MAX_REPLY => return Err(ReplyError::TooLong),
            None | Some(b' ') => {
                return Ok(Parsed::Complete {
                    code: this,
                    len: end,
                });
            }
            Some(b'-') => start = end,
            Some(_) => return Err(garbage()),
        }
    }
    if buf.len() > MAX_REPLY {
        return Err(ReplyError::TooLong);
    }
    // An incomplete first line that already cannot be a reply.
    let partial = &buf[start..];
    if partial.len() >= 3 && !partial[..3].iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Garbage(
            String::from_utf8_lossy(partial).chars().take(80).collect(),
        ));
    }
    Ok(Parsed::Incomplete)
}

/// Read one reply from `stream` (callers bound the time).
pub async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Reply, ReplyError> {
    // Read straight into the reply's own buffer: a chunk on the stack
    // would be reserved in the future of every session that waits here.
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.reserve(512);
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| ReplyError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ReplyError::Closed);
        }
        if let Parsed::Complete { code, len } = parse(&buf)? {
            let rest = buf.split_off(len);
            return Ok(Reply {
                code,
                raw: buf,
                rest,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        assert_eq!(
            parse(b"220 mx ESMTP\r\n"),
            Ok(Parsed::Complete { code: 220, len: 14 })
        );
        let multi = b"220-mx ESMTP\r\n220-second\r\n220 done\r\nEXTRA";
        assert_eq!(parse(multi), Ok(Parsed::Complete { code: 220, len: 36 }));
        assert_eq!(
            parse(b"220\r\n"),
            Ok(Parsed::Complete { code: 220, len: 5 })
        );
        assert_eq!(parse(b"220-mx\r\n220 "), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"22"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn refusals_and_garbage() {
        assert_eq!(
            parse(b"421 busy\r\n"),
            Ok(Parsed::Complete { code: 421, len: 10 })
        );
        assert!(matches!(
            parse(b"HTTP/1.1 400\r\n"),
            Err(ReplyError::Garbage(_))
        ));
        assert!(matches!(parse(b"SSH-2.0"), Err(ReplyError::Garbage(_))));
        assert!(matches!(
            parse(b"220-a\r\n250 b\r\n"),
            Err(ReplyError::Garbage(_))
        ));
        assert!(matches!(parse(b"220xmx\r\n"), Err(ReplyError::Garbage(_))));
        assert!(matches!(
            parse(&[b'2'; MAX_REPLY + 2]),
            Err(ReplyError::TooLong)
        ));
    }
}
