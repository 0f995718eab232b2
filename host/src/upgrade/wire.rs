//! One line of text with descriptors attached to its first byte
//! (`SCM_RIGHTS`), and the plain lines around it.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use anyhow::bail;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most descriptors one answer carries (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_SOCKETS: usize = 250;
/// Longest line either side reads.
pub const MAX_LINE: usize = 64 * 1024;

/// Write `line` with `fds` attached to its first byte, on a stream
/// without a timeout of its own: the caller bounds it.
pub fn send(stream: impl AsFd, line: &[u8], fds: &[OwnedFd]) -> std::io::Result<usize> {
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    Ok(rustix::net::sendmsg(
        stream,
        &[IoSlice::new(line)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Read one line, and the descriptors attached to its first byte (made
/// close-on-exec), from a stream with a read timeout.
pub fn receive(stream: &UnixStream) -> anyhow::Result<(Vec<u8>, Vec<OwnedFd>)> {
    // Room for a few more than are ever sent: more is an error, not a
    // silent cut.
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS + 3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; MAX_LINE];
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        bail!("more descriptors than an answer carries");
    }
    if got.bytes == 0 {
        bail!("the running gale closed the connection without answering");
    }
    let mut line = buf[..got.bytes].to_vec();
    if !line.ends_with(b"\n") {
        let mut rest = BufReader::new(stream).take((MAX_LINE - line.len()) as u64);
        rest.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            bail!("the answer is cut short or longer than {MAX_LINE} bytes");
        }
    }
    Ok((line, fds))
}

/// Write a plain line (`READY`, or a refusal), best effort.
pub fn say(mut stream: &UnixStream, line: &[u8]) -> std::io::Result<()> {
    stream.write_all(line)?;
    stream.write_all(b"\n")
}
