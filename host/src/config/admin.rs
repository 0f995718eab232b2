//! `[admin]`: where the admin API (status, metrics, reload, steering)
//! listens, and the token that guards it.

use std::net::SocketAddr;

use super::file::AdminSection;
use super::{ConfigError, Errors, parse_addr};

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token: Option<AdminToken>,
}

/// The admin bearer token; its `Debug` does not show it, so no log line
/// or error that prints the config can leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// `[admin]`, if present.
pub(super) fn validate(
    errors: &Errors<'_>,
    section: Option<&AdminSection>,
) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(a) = section else {
        return Ok(None);
    };
    let address = parse_addr(errors, &a.address, "admin.address")?;
    let token = a.token.clone().filter(|t| !t.is_empty()).map(AdminToken);
    // The admin API can reload and will steer backends: off the host only
    // with a token.
    if !address.ip().is_loopback() && token.is_none() {
        return Err(errors.spanned(
            &a.address,
            "admin.address",
            format!("{address} is not a loopback address; set admin.token to expose the admin API"),
        ));
    }
    Ok(Some(AdminConfig { address, token }))
}
