//! The chunked transfer coding (RFC 9112 §7.1), scanned as it streams by:
//! gale forwards chunked bodies byte for byte (extensions and trailers
//! included) and only needs to know where a body ends, or, for an
//! HTTP/1.0 client that cannot read chunks, which bytes are data.
//!
//! Strict on purpose: a line must end in CRLF, a size is at most 16 hex
//! digits (leading zeros included) and extensions follow the grammar of
//! RFC 9112 §7.1.1, so a request cannot be framed one way by gale and
//! another way by the backend (request smuggling): parsers that skip an
//! extension up to the first LF, or read a quoted `;` or CR as its end,
//! would otherwise each find a different chunk.

use std::ops::Range;

/// Longest chunk-size line (size and extensions) accepted.
const MAX_LINE: usize = 4096;
/// Most hex digits in a chunk size: 64 bits' worth, so that no size
/// overflows and a run of leading zeros is not a way to pad the line.
const MAX_SIZE_DIGITS: u8 = 16;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits; `digits` so far.
    Size {
        digits: u8,
    },
    /// After the size, up to the CR: extensions.
    Extension(Ext),
    /// Expecting the LF of a size line.
    SizeLf,
    /// This many data bytes to go.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// Where the scan is inside `chunk-ext = *( BWS ";" BWS chunk-ext-name
/// [ BWS "=" BWS chunk-ext-val ] )`, `chunk-ext-val = token /
/// quoted-string` (RFC 9112 §7.1.1, RFC 9110 §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// Whitespace after the size or a value: only `;` may follow.
    Bws,
    /// After `;`, before the name.
    NameStart,
    Name,
    /// Whitespace after a name: `=` or `;` may follow.
    AfterName,
    /// After `=`, before the value.
    ValueStart,
    Token,
    Quoted,
    /// After a backslash in a quoted string.
    Escape,
    /// After the closing quote.
    Closed,
}

/// What one byte of an extension leads to: the next state, or `None` at
/// the CR that ends the line.
fn extension(ext: Ext, b: u8) -> Result<Option<Ext>, Malformed> {
    let space = b == b' ' || b == b'\t';
    let next = match ext {
        Ext::Bws | Ext::Closed if space => Ext::Bws,
        Ext::NameStart if space => Ext::NameStart,
        Ext::NameStart | Ext::Name if tchar(b) => Ext::Name,
        Ext::Name | Ext::AfterName if space => Ext::AfterName,
        Ext::Name | Ext::AfterName if b == b'=' => Ext::ValueStart,
        Ext::ValueStart if space => Ext::ValueStart,
        Ext::ValueStart if b == b'"' => Ext::Quoted,
        Ext::ValueStart | Ext::Token if tchar(b) => Ext::Token,
        Ext::Token if space => Ext::Bws,
        Ext::Bws | Ext::Name | Ext::AfterName | Ext::Token | Ext::Closed if b == b';' => {
            Ext::NameStart
        }
        Ext::Name | Ext::Token | Ext::Closed if b == b'\r' => return Ok(None),
        Ext::Quoted if b == b'"' => Ext::Closed,
        Ext::Quoted if b == b'\\' => Ext::Escape,
        // qdtext: HTAB, SP, VCHAR but `"` and `\`, obs-text.
        Ext::Quoted if b == b'\t' || b == b' ' || b >= 0x21 && b != 0x7f => Ext::Quoted,
        // quoted-pair: HTAB, SP, VCHAR, obs-text.
        Ext::Escape if b == b'\t' || b == b' ' || b >= 0x21 && b != 0x7f => Ext::Quoted,
        _ => return Err(Malformed("malformed chunk extension")),
    };
    Ok(Some(next))
}

/// A token character (RFC 9110 §5.6.2).
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed chunked body: {0}")]
pub struct Malformed(&'static str);

/// Where a chunked body is, across the reads it arrives in.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    size: u64,
    /// Bytes of the current size line, or of all trailers.
    line: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
        }
    }
}

impl Chunked {
    /// Whether the last chunk and the trailers have been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Scan `input`, the next bytes of the body. Returns how many of them
    /// belong to it (all of them unless the body ends inside `input`) and
    /// calls `data` with the ranges of `input` that are chunk data.
    pub fn scan(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let n = left.min((input.len() - i) as u64) as usize;
                    data(i..i + n);
                    i += n;
                    self.state = if left == n as u64 {
                        State::DataCr
                    } else {
                        State::Data(left - n as u64)
                    };
                    continue;
                }
                State::Size { digits } => match hex(b) {
                    Some(v) => {
                        if digits == MAX_SIZE_DIGITS {
                            return Err(Malformed("chunk size too long"));
                        }
                        self.size = self.size << 4 | u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                        self.line += 1;
                    }
                    None if digits == 0 => return Err(Malformed("chunk size expected")),
                    None if b == b';' => {
                        self.state = State::Extension(Ext::NameStart);
                        self.line += 1;
                    }
                    None if b == b' ' || b == b'\t' => {
                        self.state = State::Extension(Ext::Bws);
                        self.line += 1;
                    }
                    None if b == b'\r' => self.state = State::SizeLf,
                    None => return Err(Malformed("bad character after chunk size")),
                },
                State::Extension(ext) => {
                    self.state = match extension(ext, b)? {
                        Some(next) => State::Extension(next),
                        None => State::SizeLf,
                    };
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(Malformed("chunk size line too long"));
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(Malformed("CR without LF in chunk size line"));
                    }
                    self.line = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(std::mem::take(&mut self.size))
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(Malformed("chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(Malformed("CR without LF after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    if b == b'\n' {
                        return Err(Malformed("bare LF in trailer"));
                    }
                    self.state = if b == b'\r' {
                        State::FinalLf
                    } else {
                        State::TrailerLine
                    };
                    self.line += 1;
                }
                State::TrailerLine => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if b == b'\n' {
                        return Err(Malformed("bare LF in trailer"));
                    }
                    self.line += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(Malformed("CR without LF in trailer"));
                    }
                    self.state = State::TrailerStart;
                    self.line += 1;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(Malformed("CR without LF at the end"));
                    }
                    self.state = State::Done;
                }
            }
            if self.line > MAX_TRAILERS {
                return Err(Malformed("trailers too long"));
            }
            i += 1;
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data of `body` fed in pieces of `step` bytes, and how many bytes
    /// belonged to the body.
    fn decode(body: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), Malformed> {
        let mut c = Chunked::default();
        let (mut out, mut used) = (Vec::new(), 0);
        for piece in body.chunks(step) {
            let n = c.scan(piece, |r| out.extend_from_slice(&piece[r]))?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((out, used, c.done()))
    }

    #[test]
    fn data_extensions_and_trailers_in_any_split() {
        let body =
            b"5;name=v\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, used, done) = decode(body, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(used, body.len() - 4, "step {step}");
            assert!(done);
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (data, used, done) = decode(b"5\r\nhel", 64).unwrap();
        assert_eq!((data.as_slice(), used, done), (&b"hel"[..], 6, false));
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"ffffffffffffffffff\r\n",
            // 17 digits, though the size is small.
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\n\nGET /x HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                decode(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn sixteen_hex_digits_are_a_size() {
        let (data, _, done) = decode(b"0000000000000005\r\nhello\r\n0\r\n\r\n", 3).unwrap();
        assert_eq!((data.as_slice(), done), (&b"hello"[..], true));
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"ffffffffffffffff\r\n", |_| {}), Ok(18));
        assert_eq!(c.state, State::Data(u64::MAX));
    }

    #[test]
    fn extensions_follow_the_rfc_grammar() {
        for good in [
            &b"5;a\r\n"[..],
            b"5;a=b\r\n",
            b"5 ; a = b ; c\r\n",
            b"5\t;\ta\t=\t\"q;\\\" x\" ;c=d\r\n",
            b"5;a=\"\"\r\n",
            b"5;name=\"v\x80\xff\"\r\n",
            b"5;!#$%&'*+-.^_`|~=x\r\n",
        ] {
            let mut body = good.to_vec();
            body.extend_from_slice(b"hello\r\n0;last=1\r\n\r\n");
            for step in [1, 3, 64] {
                let (data, _, done) = decode(&body, step)
                    .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(good)));
                assert_eq!((data.as_slice(), done), (&b"hello"[..], true));
            }
        }
    }

    #[test]
    fn extensions_outside_the_grammar_are_refused() {
        for bad in [
            &b"5;\r\n"[..],
            b"5 \r\n",
            b"5;a \r\n",
            b"5;a=\r\n",
            b"5;a=b \r\n",
            b"5;=b\r\n",
            b"5;a=b=c\r\n",
            b"5;a b\r\n",
            b"5 a\r\n",
            b"5;a=\"open\r\n",
            b"5;a=\"x\"y\r\n",
            b"5;a=\"\x01\"\r\n",
            b"5;a=\"\\\x7f\"\r\n",
            b"5;a\nhello\r\n",
            b"5;a\x00\r\n",
            b"5;a=b\rc\r\n",
            b"5;a=(b)\r\n",
            b"5;a=\"b\"\"c\"\r\n",
        ] {
            let mut body = bad.to_vec();
            body.extend_from_slice(b"hello\r\n0\r\n\r\n");
            assert!(
                decode(&body, 64).is_err() && decode(&body, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
