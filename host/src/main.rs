//! The `gale` command: a thin shell over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use gale::plugin::PluginRuntime;
use tokio::signal::unix::{SignalKind, signal};

/// Every request allocates (header maps, buffers, futures); glibc's malloc
/// measured ~10 % of the proxy's CPU under HTTP load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load balancer for mail-sending fleets, with policies as WebAssembly
/// plugins.
///
/// gale takes each SMTP, HTTP or tcp client connection, picks a backend of
/// a pool and joins the two. Which backend takes a session, when a backend
/// is healthy and what DNS publishes are decided by WebAssembly plugins;
/// the built-in ones are inside this binary. `gale run` serves a config,
/// reloads it on SIGHUP and drains on SIGTERM; `gale check` validates one.
/// `man gale` documents every command, the signals, the environment and
/// the files.
#[derive(Parser)]
#[command(name = "gale", version, subcommand_value_name = "COMMAND")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config: its listeners, pools, plugins and admin API.
    ///
    /// Reloads on SIGHUP, on `POST /reload` and when the config or a file
    /// it names changes (a config that does not load keeps the running
    /// one). On SIGTERM or SIGINT stops accepting and lets sessions finish
    /// for `[server] drain_timeout`. Logs to standard error; RUST_LOG sets
    /// the level (default: info).
    Run {
        /// The TOML config; config/gale.toml in the source tree (the
        /// package's /etc/gale/gale.toml) explains every key.
        #[arg(short, long, value_name = "FILE", default_value = "config/gale.toml")]
        config: PathBuf,
        /// Answer binary upgrades on this Unix socket (made mode 0600):
        /// a gale started with `--upgrade` and the same path takes over
        /// the listening sockets, and this one drains and exits.
        #[arg(long, value_name = "PATH", env = "GALE_UPGRADE_SOCKET")]
        upgrade_socket: Option<PathBuf>,
        /// Take over from the gale answering on `--upgrade-socket`: serve
        /// on its sockets, then tell it to drain. Nothing is refused
        /// meanwhile; if this gale cannot start, the old one serves on.
        #[arg(long, requires = "upgrade_socket")]
        upgrade: bool,
    },
    /// Serve the shipped config with demo backends in the same process.
    ///
    /// The backends the config names are started as in-memory SMTP sinks
    /// and small web servers; the second of each pool goes down and comes
    /// back every 10 s. Send mail with
    /// `swaks --server 127.0.0.1:2525 --to you@example.test` and watch the
    /// log. Not for production: the sinks keep nothing.
    Demo {
        /// The config whose backends are played by the demo.
        #[arg(short, long, value_name = "FILE", default_value = "config/gale.toml")]
        config: PathBuf,
    },
    /// Validate a config and load every plugin it names, then exit.
    ///
    /// Binds nothing. Exit status 0 when gale would start with the config
    /// (its pools, listeners and admin address are printed), 1 with the
    /// reason otherwise (a config error names the file, line, column and
    /// dotted key).
    Check {
        /// The TOML config to check.
        #[arg(short, long, value_name = "FILE", default_value = "config/gale.toml")]
        config: PathBuf,
    },
    /// Write or check a plugin.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// See what `[dns]` publishes.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Show a running gale's listeners, backends, DNS records and last
    /// reload.
    ///
    /// Asks the admin API (`GET /status`) and prints each listener, each
    /// backend's health, admin state, weight, sessions, failures and last
    /// probe, the plugins, the DNS records and the last reload.
    Status {
        /// The admin listener's address.
        #[arg(short, long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
        /// Bearer token, when the admin listener requires one.
        #[arg(long, env = "GALE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the JSON document of /status instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Write the man page (roff) to standard output; the package build
    /// installs it as gale(1).
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Check a plugin component and run it on sample inputs.
    ///
    /// Says which world the component implements and whether this gale
    /// runs its contract version, then calls it on sample inputs and
    /// prints what it decides. Exit status 1 when it would not load or a
    /// call fails.
    Check {
        /// The component (.wasm).
        file: PathBuf,
        /// A setting handed to the plugin's init (repeat for more).
        #[arg(short, long = "setting", value_name = "KEY=VALUE", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// CPU deadline of one call.
        #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Memory cap of the instance, in MiB.
        #[arg(long, value_name = "MIB", default_value_t = 64)]
        memory_mb: u32,
    },
    /// Write a balancer plugin skeleton.
    ///
    /// Creates DIR/NAME with a balancer that builds as it is and passes
    /// `gale plugin check`, and prints the commands that build it.
    New {
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: gale::scaffold::Lang,
        /// The plugin's name, and the directory created for it.
        name: String,
        /// Where to create NAME/.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The guest SDK for a Rust plugin (default: the one of the source
        /// tree this gale was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DnsCommand {
    /// Print the records the config would publish, and the changes, writing
    /// nothing.
    ///
    /// The records are planned with the health a running gale reports
    /// (every member healthy when none answers) and compared with what the
    /// provider has. Exit status 1 when the provider cannot be read.
    Plan {
        /// The TOML config whose [dns] is planned.
        #[arg(short, long, value_name = "FILE", default_value = "config/gale.toml")]
        config: PathBuf,
        /// The running gale's admin listener (default: the config's
        /// [admin] address).
        #[arg(short, long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// Bearer token, when the admin listener requires one (default:
        /// the config's admin.token).
        #[arg(long, env = "GALE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything logs: a server's lines are in its config's `[log]
    // format` (text if that cannot be read: loading it says why); the
    // other commands are for people at a terminal.
    let format = match &cli.command {
        Command::Run { config, .. } | Command::Demo { config } => gale::logging::format_of(config),
        _ => Default::default(),
    };
    gale::logging::init(format);
    let result = match cli.command {
        Command::Run {
            config,
            upgrade_socket,
            upgrade,
        } => run(&config, false, upgrade_socket.as_deref(), upgrade),
        Command::Demo { config } => run(&config, true, None, false),
        Command::Check { config } => check(&config),
        Command::Status { admin, token, json } => status(admin, token.as_deref(), json),
        Command::Plugin(PluginCommand::Check {
            file,
            settings,
            deadline,
            memory_mb,
        }) => plugin_check(
            &file,
            gale::plugin::check::Options {
                settings,
                deadline,
                memory_mb,
            },
        ),
        Command::Plugin(PluginCommand::New {
            lang,
            name,
            dir,
            sdk,
        }) => plugin_new(lang, &name, &dir, sdk),
        Command::Dns(DnsCommand::Plan {
            config,
            admin,
            token,
        }) => dns_plan(&config, gale::dns::plan::Options { admin, token }),
        Command::Man => {
            use std::io::Write;
            // Not print!: a full or closed stdout is an error, not a panic.
            std::io::stdout()
                .write_all(gale::manpage::render(Cli::command()).as_bytes())
                .context("writing the man page")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Where every line is JSON, so is the reason gale stopped.
            if gale::logging::running() == gale::config::LogFormat::Json {
                tracing::error!("gale: {e:#}");
            } else {
                eprintln!("gale: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let (_runtime, generation, _) = gale::control::load(path)?;
    println!("{}: ok", path.display());
    for pool in &generation.pools {
        println!(
            "  pool {}: {} backends, balancer {}, health {}",
            pool.name,
            pool.len(),
            pool.balancer_name(),
            pool.health_name()
        );
        if let Some(candidate) = pool.shadow_report() {
            println!("    candidate {} ({})", candidate.plugin, candidate.mode);
        }
    }
    if let Some(admin) = &generation.config.admin {
        println!("  admin on {}", admin.address);
    }
    for l in &generation.config.listeners {
        println!(
            "  listener {}: {:?} on {} -> pool {}",
            l.name,
            l.protocol,
            l.address,
            generation.config.pool_of(l).name
        );
    }
    Ok(())
}

fn run(
    path: &Path,
    demo: bool,
    upgrade_socket: Option<&Path>,
    upgrade: bool,
) -> anyhow::Result<()> {
    // SAFETY: no thread other than this one exists yet (the runtime is
    // built below; logging and argument parsing start none), and nothing
    // has opened a descriptor that could be one the service manager
    // passed: it takes them and edits the environment alone.
    let mut sockets = unsafe { gale::systemd::PassedSockets::take_from_env() }?;
    // A binary upgrade: answer one, or take over from the gale answering.
    let (mut takeover, mut upgrades) = (None, None);
    match (upgrade_socket, upgrade) {
        (None, _) => {}
        (Some(path), true) => {
            if !sockets.is_empty() {
                anyhow::bail!(
                    "--upgrade takes the sockets of the running gale; the service manager passed some too (restart the unit instead)"
                );
            }
            let mut from = gale::upgrade::take_over(path)?;
            sockets = from.sockets();
            takeover = Some(from);
        }
        (Some(path), false) => upgrades = Some(gale::upgrade::listen(path)?),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        // Before "gale is ready" (logged by start): a SIGTERM sent once
        // that line is out must drain, not kill.
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut control = gale::control::Control::start_with(path, demo, sockets).await?;
        if let Some(from) = takeover {
            let taken = if signalled(&mut term) {
                // Stopped while starting: the old gale, never told this
                // one is ready, serves on.
                tracing::info!(
                    pid = from.pid,
                    "SIGTERM before taking over: the old gale serves on"
                );
                // Hung up: the old gale stops waiting for this one.
                drop(from);
                Ok(None)
            } else {
                from.ready().await.map(Some)
            };
            match taken {
                Ok(Some(listener)) => upgrades = Some(listener),
                stepped_back => {
                    // Never two gales accepting: this one, which has
                    // accepted nothing, steps back.
                    control.run(std::future::ready(())).await?;
                    return stepped_back.map(drop);
                }
            }
            control.open();
        }
        if let Some(listener) = upgrades {
            control.serve_upgrades(listener);
        }
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        control.run(shutdown).await?;
        Ok(())
    })
}

/// Whether `signal` has come since it was installed (without waiting).
fn signalled(signal: &mut tokio::signal::unix::Signal) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    signal.poll_recv(&mut cx).is_ready()
}

fn plugin_check(file: &Path, options: gale::plugin::check::Options) -> anyhow::Result<()> {
    let runtime = PluginRuntime::new(gale::plugin::default_cache_dir())?;
    let report = gale::plugin::check::check(&runtime, file, options);
    print!("{}", report.text);
    if report.ok {
        Ok(())
    } else {
        anyhow::bail!("{} did not pass", file.display())
    }
}

fn plugin_new(
    lang: gale::scaffold::Lang,
    name: &str,
    dir: &Path,
    sdk: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Only a Rust plugin builds against the SDK.
    let sdk = match lang {
        gale::scaffold::Lang::Rust => Some(sdk.or_else(gale::scaffold::default_sdk).context(
            "the guest SDK of gale's source tree is not where gale was built; pass --sdk PATH/guest-sdk",
        )?),
        _ => None,
    };
    let written = gale::scaffold::create(lang, name, dir, sdk.as_deref())?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    println!(
        "next:\n{}",
        gale::scaffold::next_steps(lang, name, &dir.join(name))
    );
    Ok(())
}

fn status(admin: std::net::SocketAddr, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let doc = rt.block_on(gale::admin::table::fetch(admin, token))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", gale::admin::table::render(&doc));
    }
    Ok(())
}

fn dns_plan(path: &Path, options: gale::dns::plan::Options) -> anyhow::Result<()> {
    let (_runtime, generation, _) = gale::control::load(path)?;
    if generation.config.dns.is_none() {
        anyhow::bail!("{}: no [dns]: gale publishes no records", path.display());
    }
    let report = gale::dns::plan::plan(&generation, &options);
    print!("{}", report.text);
    match report.error {
        None => Ok(()),
        Some(error) => anyhow::bail!("{error}"),
    }
}
