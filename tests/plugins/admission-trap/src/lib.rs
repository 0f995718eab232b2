//! An admission plugin that traps (abort is `unreachable` in WebAssembly)
//! on every decision, after a valid init, or with `spin = "true"` never
//! returns: either way the host admits the client and counts the failure.
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
