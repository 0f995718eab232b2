//! `[server]`: process-wide settings: how long a shutdown waits for
//! sessions, and who gale becomes once its sockets are bound.

use std::time::Duration;

use super::file::ServerSection;
use super::{ConfigError, Errors, parse_duration};

/// `drain_timeout` unless set.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `[server]` validated; [`super::Config`] carries its fields at the top
/// level, where the rest of gale has always read them.
pub(super) struct ServerConfig {
    pub drain_timeout: Duration,
    pub run_as: Option<crate::privileges::RunAs>,
}

pub(super) fn validate(
    errors: &Errors<'_>,
    section: &ServerSection,
) -> Result<ServerConfig, ConfigError> {
    let run_as = match (&section.user, &section.group) {
        (None, None) => None,
        (None, Some(group)) => {
            return Err(errors.at(group.span(), "server.group", "needs server.user"));
        }
        (Some(user), group) => {
            let (uid, own_gid) = crate::privileges::user_ids(user.get_ref())
                .map_err(|e| errors.at(user.span(), "server.user", e))?;
            let gid = match group {
                None => own_gid,
                Some(group) => crate::privileges::group_id(group.get_ref())
                    .map_err(|e| errors.at(group.span(), "server.group", e))?,
            };
            Some(crate::privileges::RunAs {
                user: user.get_ref().clone(),
                uid,
                gid,
            })
        }
    };
    Ok(ServerConfig {
        run_as,
        drain_timeout: parse_duration(
            errors,
            section.drain_timeout.as_ref(),
            "server.drain_timeout",
            DEFAULT_DRAIN_TIMEOUT,
        )?,
    })
}
