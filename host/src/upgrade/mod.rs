//! Binary upgrade: a new gale process takes over a running one's
//! listening sockets, and the old one drains its sessions and exits, so
//! that upgrading the binary refuses no connection (as HAProxy's `-x` and
//! Pingora's graceful upgrade do).
//!
//! How, over the Unix socket `gale run --upgrade-socket PATH` listens on:
//!
//! 1. The new process (`gale run --upgrade-socket PATH --upgrade`)
//!    connects, checks that the old one runs as root or as itself
//!    (`SO_PEERCRED`), and says `GALE-UPGRADE 1 pid=N version=V`.
//! 2. The old one answers with one JSON line naming the sockets
//!    ([`Role`]: each listener, `[admin]`, the embedded DNS server's UDP
//!    and TCP sockets, and the Unix socket itself), their descriptors
//!    attached in the same order (`SCM_RIGHTS`). It goes on serving.
//! 3. The new process checks each descriptor is what its role says,
//!    loads its config and plugins, binds what its config adds, drops
//!    privileges, and says `READY`, all without accepting anything. If
//!    it fails (or is told to stop) instead, it exits: the old one sees
//!    the connection close, logs why it did not hand over, and serves on.
//! 4. The old one stops accepting, answers `DRAINING N` (its sessions in
//!    flight), drains them as on SIGTERM and exits.
//! 5. The new one starts accepting and answers the next upgrade on the
//!    same Unix socket.
//!
//! No listening socket closes at any step: both processes hold each one
//! until the old exits, and between 4 and 5 (a few milliseconds) clients
//! wait in the kernel's backlog, so none is refused, and none is accepted
//! by a process that might still fail.
//!
//! Who may ask: the socket file is made mode 0600, and a peer whose uid
//! is neither root's nor gale's own is refused. One upgrade runs at a
//! time: the request line must come within 5 s, and `READY` within 5
//! minutes (plugins compiled without a cache); others wait meanwhile.
//!
//! - [`take`]: the new process's side.
//! - [`give`]: the old process's side.
//! - [`wire`]: lines with descriptors attached.

mod give;
mod take;
mod wire;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{Context, bail};

pub use crate::server::Role;
pub use give::{Ask, Offered, serve};
pub use take::{TakeOver, take_over};

/// The first line of a request: the protocol and its version.
const HELLO: [&str; 2] = ["GALE-UPGRADE", "1"];

/// What the old process answers a request with.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Answer {
    /// These sockets, their descriptors attached in this order.
    Offer {
        pid: u32,
        version: String,
        generation: u64,
        sockets: Vec<Role>,
    },
    Refused {
        reason: String,
    },
}

/// Whether a peer of `uid` may take part: root, or gale's own user.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Bind `path` for upgrade requests. A socket file no gale answers on
/// (one left by a gale that exited) is replaced; one a gale answers on,
/// or a file that is not a socket, is an error.
pub fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "--upgrade-socket {}: a file that is not a socket is there",
                path.display()
            );
        }
        match UnixStream::connect(path) {
            Ok(_) => bail!(
                "a gale already listens for upgrades on {}: start with --upgrade to take over from it",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).with_context(|| {
                    format!("removing the stale upgrade socket {}", path.display())
                })?;
            }
            Err(e) => bail!("--upgrade-socket {}: {e}", path.display()),
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the upgrade socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    tracing::info!(path = %path.display(), "listening for binary upgrades");
    Ok(listener)
}
