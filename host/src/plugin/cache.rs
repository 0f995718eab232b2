//! The compile cache: native code wasmtime made from a plugin, kept on
//! disk so a restart does not recompile (the Python and JS plugins take
//! seconds to compile, tens of milliseconds to load from here).
//!
//! Loading cached code runs it, so whoever can write the cache could run
//! code as gale, which may be root at start. Two rules keep that shut:
//!
//! - The directory is opened once per runtime without following a
//!   symlink, and used only if the running user owns it and neither group
//!   nor others may write it. Every file in it is then opened relative to
//!   that open directory, so swapping the path or its parents afterwards
//!   changes nothing. A directory gale creates is created 0700.
//! - Every entry carries an HMAC-SHA256 keyed by a secret of this install
//!   (`key`, 32 random bytes, 0600), over what the entry is for (the
//!   component's SHA-256 and the engine's compatibility hash) and its
//!   bytes. An entry is read into memory, verified, and deserialized from
//!   those same bytes, so nothing can change between check and use; an
//!   entry copied over another plugin's, cut short, or written by anyone
//!   without the key is rejected and recompiled.
//!
//! The price: code is read, hashed and copied instead of mapped lazily.
//! A restart with the Python and JS plugins (78 MB of code) measured 270
//! ms median on two busy cores, against 106 ms when the entries were
//! mapped; per 40 MB entry, read and HMAC ~70 ms (SHA-NI is used),
//! wasmtime copying the bytes into code memory ~40-60 ms.

use std::ffi::CString;
use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of an entry; the MAC follows, then wasmtime's bytes.
const MAGIC: &[u8; 8] = b"galecw\0\x01";
const MAC_LEN: usize = 32;
/// Says what the MAC is over, so it means nothing in another protocol.
const DOMAIN: &[u8] = b"gale compiled plugin v1\0";
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
/// Far above the largest compiled plugin seen (~50 MB), to bound a read.
const MAX_ENTRY: u64 = 1 << 30;
/// Read and hashed at a time: fits a core's L2 cache.
const CHUNK: u64 = 256 << 10;

/// Why the cache, or one entry of it, is not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("is a symlink")]
    Symlink,
    #[error("is not a {0}")]
    Kind(&'static str),
    #[error("owned by uid {owner}, not by the running user (uid {uid})")]
    Owner { owner: u32, uid: u32 },
    #[error("writable by group or others (mode {0:o})")]
    Writable(u32),
    #[error("readable or writable by group or others (mode {0:o})")]
    KeyExposed(u32),
    #[error("holds {0} bytes, not {KEY_LEN}")]
    KeySize(u64),
    #[error("key file: {0}")]
    KeyFile(Box<CacheError>),
    #[error("{0} bytes, more than any compiled plugin")]
    TooBig(u64),
    #[error("no gale header (an older gale's entry, or not gale's)")]
    NoHeader,
    #[error("its MAC does not match: not written by this gale for this component and engine")]
    Mac,
    #[error("wasmtime: {0}")]
    Wasmtime(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The cache directory when the config names none: `$GALE_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/gale`, else `~/.cache/gale`.
pub fn default_dir() -> Option<std::path::PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    env("GALE_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("gale")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("gale")))
}

/// An open, checked cache directory and its key.
pub struct Cache {
    dir: File,
    path: PathBuf,
    /// Keyed once; cloned for each entry.
    mac: Hmac<Sha256>,
    /// The engine's compatibility hash, in every entry's name and MAC.
    engine: u64,
    uid: u32,
}

impl Cache {
    /// Open (or create) the cache at `path` for entries of `engine`, if
    /// only the running user can write it; read its key, or make one.
    pub fn open(path: &Path, engine: &Engine) -> Result<Cache, CacheError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(CacheError::Symlink),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new().recursive(true).mode(0o700).create(path)?
            }
            Err(e) => return Err(e.into()),
        }
        // O_NOFOLLOW: a symlink put there since the check fails here.
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)?;
        trust(&dir.metadata()?, uid, Trust::Directory)?;
        let key = key(&dir, uid).map_err(|e| CacheError::KeyFile(Box::new(e)))?;
        // HMAC takes a key of any length: this does not fail.
        let mac = Hmac::<Sha256>::new_from_slice(&key)
            .map_err(|e| io::Error::other(format!("HMAC key: {e}")))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Cache {
            dir,
            path: path.to_path_buf(),
            mac,
            engine: hasher.finish(),
            uid,
        })
    }

    /// Where the entry of a component whose bytes hash to `sha256` lives
    /// (for logs; files are opened relative to the checked directory).
    pub fn entry_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.path.join(self.entry_name(sha256))
    }

    fn entry_name(&self, sha256: &[u8; 32]) -> String {
        // 128 bits of the component's hash name the file, as before MACs.
        let hex: String = sha256[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}-{:016x}.cwasm", self.engine)
    }

    /// The compiled component of `sha256`, if there is a verified entry
    /// for it (`None`: no entry). Blocking.
    pub fn load(
        &self,
        engine: &Engine,
        sha256: &[u8; 32],
    ) -> Result<Option<Component>, CacheError> {
        let mut file = match open_at(&self.dir, &self.entry_name(sha256), libc::O_RDONLY, 0) {
            Ok(file) => file,
            // Permission: gale dropped root after it opened a root-only
            // cache; nothing to reject, the entry is just out of reach.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata()?;
        trust(&meta, self.uid, Trust::Entry)?;
        if meta.len() > MAX_ENTRY {
            return Err(CacheError::TooBig(meta.len()));
        }
        let code = self.read_verified(&mut file, meta.len(), sha256)?;
        // SAFETY: deserializing runs native code, which is why the bytes
        // are the ones just verified, in memory no one else can change:
        // their MAC, under this install's key, shows that this cache wrote
        // them from `Component::serialize` of this component's bytes, on
        // an engine of this compatibility hash.
        unsafe { Component::deserialize(engine, &code) }
            .map(Some)
            .map_err(|e| CacheError::Wasmtime(format!("{e:#}")))
    }

    /// Write the entry of `component`, compiled from bytes hashing to
    /// `sha256`. Blocking.
    pub fn store(&self, sha256: &[u8; 32], component: &Component) -> Result<(), CacheError> {
        let code = component
            .serialize()
            .map_err(|e| CacheError::Wasmtime(format!("{e:#}")))?;
        let tag = self.tag(sha256, &code);
        let name = self.entry_name(sha256);
        let tmp = temporary(&name);
        // Write then rename, so a reader never sees half an entry.
        let written = open_at(
            &self.dir,
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .and_then(|mut f| {
            f.write_all(MAGIC)?;
            f.write_all(&tag)?;
            f.write_all(&code)
        })
        .and_then(|()| rename_at(&self.dir, &tmp, &name));
        if written.is_err() {
            let _ = unlink_at(&self.dir, &tmp);
        }
        Ok(written?)
    }

    fn tag(&self, sha256: &[u8; 32], code: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.keyed(sha256);
        mac.update(code);
        mac.finalize().into_bytes().into()
    }

    /// The MAC state after what the entry is for; the code follows.
    fn keyed(&self, sha256: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(sha256);
        mac.update(&self.engine.to_be_bytes());
        mac
    }

    /// The code of an entry, if its MAC matches. Read and hashed a
    /// chunk at a time, so that each chunk is hashed while it is still in
    /// the CPU's cache.
    fn read_verified(
        &self,
        file: &mut File,
        len: u64,
        sha256: &[u8; 32],
    ) -> Result<Vec<u8>, CacheError> {
        let mut header = [0u8; MAGIC.len() + MAC_LEN];
        match file.read_exact(&mut header) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(CacheError::NoHeader);
            }
            read => read?,
        }
        let (magic, tag) = header.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(CacheError::NoHeader);
        }
        let mut mac = self.keyed(sha256);
        let mut code = Vec::with_capacity(len.saturating_sub(header.len() as u64) as usize);
        loop {
            let start = code.len();
            if (&mut *file).take(CHUNK).read_to_end(&mut code)? == 0 {
                break;
            }
            mac.update(&code[start..]);
            if code.len() as u64 > MAX_ENTRY {
                return Err(CacheError::TooBig(code.len() as u64));
            }
        }
        // Constant time, so timing does not tell how much of a tag is right.
        mac.verify_slice(tag).map_err(|_| CacheError::Mac)?;
        Ok(code)
    }
}

#[derive(Clone, Copy)]
enum Trust {
    Directory,
    Entry,
    Key,
}

/// Whether a file opened in the cache can be trusted: the right kind,
/// owned by the running user, writable by no one else (the key: not even
/// readable).
fn trust(meta: &Metadata, uid: u32, what: Trust) -> Result<(), CacheError> {
    let (kind_ok, kind) = match what {
        Trust::Directory => (meta.is_dir(), "directory"),
        Trust::Entry | Trust::Key => (meta.is_file(), "regular file"),
    };
    if !kind_ok {
        return Err(CacheError::Kind(kind));
    }
    if meta.uid() != uid {
        return Err(CacheError::Owner {
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    match what {
        Trust::Key if mode & 0o077 != 0 => Err(CacheError::KeyExposed(mode)),
        _ if mode & 0o022 != 0 => Err(CacheError::Writable(mode)),
        _ => Ok(()),
    }
}

/// The install's key: read from `key`, or made and published there.
fn key(dir: &File, uid: u32) -> Result<[u8; KEY_LEN], CacheError> {
    match read_key(dir, uid) {
        Err(CacheError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
        read => return read,
    }
    let mut key = [0u8; KEY_LEN];
    File::open("/dev/urandom")?.read_exact(&mut key)?;
    // Two gales starting at once on a fresh cache must agree on one key.
    // Each writes its own candidate, and `link`, which (unlike rename)
    // fails when the name exists, publishes exactly one, whole; the loser
    // reads the winner's.
    let tmp = temporary(KEY_FILE);
    let published = open_at(
        dir,
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )
    .and_then(|mut f| {
        f.write_all(&key)?;
        // A key published empty by a crash would disable the cache.
        f.sync_all()
    })
    .and_then(|()| link_at(dir, &tmp, KEY_FILE));
    let _ = unlink_at(dir, &tmp);
    match published {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_key(dir, uid),
        Err(e) => Err(e.into()),
    }
}

fn read_key(dir: &File, uid: u32) -> Result<[u8; KEY_LEN], CacheError> {
    let mut file = open_at(dir, KEY_FILE, libc::O_RDONLY, 0)?;
    let meta = file.metadata()?;
    trust(&meta, uid, Trust::Key)?;
    if meta.len() != KEY_LEN as u64 {
        return Err(CacheError::KeySize(meta.len()));
    }
    let mut key = [0u8; KEY_LEN];
    file.read_exact(&mut key)?;
    Ok(key)
}

/// A name no other writer uses: this process's id and a counter, as two
/// runtimes of one process may share a cache.
fn temporary(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}.{n}.tmp", std::process::id())
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// `openat` in `dir`, never following a symlink.
fn open_at(dir: &File, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let name = c_name(name)?;
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an
    // open descriptor for as long as `dir` is borrowed.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and belongs to nothing else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn rename_at(dir: &File, from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    // SAFETY: as in `open_at`.
    let rc =
        unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn link_at(dir: &File, from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    // SAFETY: as in `open_at`.
    let rc = unsafe {
        libc::linkat(
            dir.as_raw_fd(),
            from.as_ptr(),
            dir.as_raw_fd(),
            to.as_ptr(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unlink_at(dir: &File, name: &str) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: as in `open_at`.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gales_starting_at_once_on_a_new_cache_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let engine = Engine::default();
        let start = std::sync::Barrier::new(8);
        let tags: Vec<[u8; MAC_LEN]> = std::thread::scope(|s| {
            let opened: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let cache = Cache::open(&path, &engine).unwrap();
                        cache.tag(&[7; 32], b"code")
                    })
                })
                .collect();
            opened.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(tags.iter().all(|t| *t == tags[0]), "{tags:?}");
        let names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["key"], "no candidate key left behind");
    }

    #[test]
    fn a_key_of_the_wrong_size_refuses_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, b"short").unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let refused = Cache::open(dir.path(), &Engine::default()).err();
        assert_eq!(
            refused.map(|e| e.to_string()).as_deref(),
            Some("key file: holds 5 bytes, not 32")
        );
    }
}
