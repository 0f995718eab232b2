//! `[server] user`: gale starts as root to bind port 25, then runs as an
//! unprivileged user. The user and group are looked up when the config is
//! read (a typo is a config error, not a surprise at start), and the
//! switch happens once every socket of the first generation is bound.

use std::ffi::{CStr, CString};

/// Who to run as once the sockets are bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// The uid of `user` and its own group's gid.
pub fn user_ids(user: &str) -> Result<(u32, u32), String> {
    let name = CString::new(user).map_err(|_| format!("`{user}` is not a user name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` outlives the use
    // of the strings it backs, and `found` is null or points at `pwd`.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!("no such user `{user}`"));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// The gid of `group`.
pub fn group_id(group: &str) -> Result<u32, String> {
    let name = CString::new(group).map_err(|_| format!("`{group}` is not a group name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: as in `lookup`, for getgrnam_r.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `lookup`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!("no such group `{group}`"));
    }
    Ok(grp.gr_gid)
}

/// Become `run_as` for good: supplementary groups, group, then user (in
/// that order: after setuid the others are no longer allowed). glibc
/// applies each to every thread of the process. Not root: fine when it
/// already is that user, an error otherwise.
pub fn drop_to(run_as: &RunAs) -> Result<(), String> {
    // SAFETY: these calls take plain integers and touch no memory of ours.
    unsafe {
        if libc::geteuid() != 0 {
            if libc::geteuid() == run_as.uid {
                return Ok(());
            }
            return Err(format!(
                "cannot become user `{}`: gale is not running as root",
                run_as.user
            ));
        }
        let groups = [run_as.gid];
        if libc::setgroups(1, groups.as_ptr()) != 0
            || libc::setgid(run_as.gid) != 0
            || libc::setuid(run_as.uid) != 0
        {
            return Err(format!(
                "cannot become user `{}`: {}",
                run_as.user,
                std::io::Error::last_os_error()
            ));
        }
        // Root must be gone for good.
        if run_as.uid != 0 && libc::setuid(0) == 0 {
            return Err("setuid(0) still succeeds after dropping root".into());
        }
    }
    Ok(())
}

/// The name of the user gale runs as now, for the log.
pub fn current_user() -> String {
    // SAFETY: getuid takes nothing; getpwuid's result is read at once,
    // before any other call could reuse its static buffer (gale calls it
    // only from `main`).
    unsafe {
        let pwd = libc::getpwuid(libc::getuid());
        if pwd.is_null() {
            return libc::getuid().to_string();
        }
        CStr::from_ptr((*pwd).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}
