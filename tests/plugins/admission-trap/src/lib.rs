//! An admission plugin that traps (abort is `unreachable` in WebAssembly)
//! on every decision about a loopback client, or with `spin = "true"`
//! never returns from one: either way the host admits the client and
//! counts the failure. Other clients (the host's self-check asks about
//! 198.51.100.1) are accepted, so that it loads.
use gale_sdk::{AdmissionContext, AdmissionPolicy, Decision, Settings};

struct Broken {
    spin: bool,
}

impl AdmissionPolicy for Broken {
    fn new(settings: &Settings) -> Result<Self, String> {
        Ok(Broken {
            spin: settings.parse_or("spin", false)?,
        })
    }
    fn admit(&mut self, ctx: &AdmissionContext) -> Decision {
        if !ctx.client_ip().is_loopback() {
            return Decision::Accept;
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
