//! An admission plugin that traps (abort is `unreachable` in WebAssembly)
//! on every decision about a loopback client, with `spin = "true"` never
//! returns from one, and with `code = "N"` rejects it with code N (a
//! code outside 400 to 599 is a malformed answer): in each case the host
//! admits the client and counts the failure. Other clients (the host's
//! self-check asks about 198.51.100.1) are accepted, so that it loads.
use gale_sdk::{AdmissionContext, AdmissionPolicy, Decision, Settings};

struct Broken {
    spin: bool,
    code: Option<u16>,
}

impl AdmissionPolicy for Broken {
    fn new(settings: &Settings) -> Result<Self, String> {
        Ok(Broken {
            spin: settings.parse_or("spin", false)?,
            code: settings
                .get("code")
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("code: {e}"))?,
        })
    }
    fn admit(&mut self, ctx: &AdmissionContext) -> Decision {
        if !ctx.client_ip().is_loopback() {
            return Decision::Accept;
        }
        if let Some(code) = self.code {
            return Decision::reject(code, "5.7.1 from a broken plugin");
        }
        if self.spin {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(u64::from(ctx.client_port)));
            }
        }
        std::process::abort()
    }
}

gale_sdk::export_admission!(Broken);
