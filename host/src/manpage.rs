//! gale(1): the man page, rendered by `gale man` from the same clap
//! definitions `--help` prints, so the two cannot disagree.
//!
//! clap_mangen writes the head (name, synopsis, description, options); a
//! page of its own per subcommand would scatter `gale run`'s one option
//! over ten pages, so the commands are walked here into one COMMANDS
//! section, each with its usage, description and options. The sections
//! clap knows nothing of (signals, environment, files, exit status,
//! systemd) are written below; they describe the Debian package's layout
//! (`host/Cargo.toml` `[package.metadata.deb]`, `dist/`).
//!
//! Owns: the text of gale(1) beyond the CLI definitions. The package build
//! (`dist/deb/build`) runs `gale man`; cargo-deb compresses the page.

use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

/// The page for `cli`, gale's top-level command, as roff.
pub fn render(cli: clap::Command) -> String {
    let mut cli = cli.bin_name("gale").disable_help_subcommand(true);
    cli.build();
    // The description without Markdown backticks too (see `plain`).
    let mut described = cli.clone();
    if let Some(about) = cli.get_long_about() {
        described = described.long_about(plain(&about.to_string()));
    }
    let man = clap_mangen::Man::new(described)
        .title("GALE")
        .manual("gale manual");
    let mut head = Vec::new();
    // Writing into a Vec does not fail.
    let _ = man.render_title(&mut head);
    let _ = man.render_name_section(&mut head);
    let _ = man.render_synopsis_section(&mut head);
    let _ = man.render_description_section(&mut head);
    let _ = man.render_options_section(&mut head);

    let mut body = Roff::new();
    body.control("SH", ["COMMANDS"]);
    for sub in visible(&cli) {
        commands(&mut body, sub);
    }
    sections(&mut body);

    // Every piece starts with roff's apostrophe preamble (a string
    // definition): keep the first.
    let page = String::from_utf8_lossy(&head).into_owned() + &body.render();
    let preamble = page.lines().take(2).collect::<Vec<_>>().join("\n") + "\n";
    let rest = page[preamble.len()..].replace(&preamble, "");
    preamble + &rest
}

/// The subcommands a reader should see (not `man`, not `help`).
fn visible(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// One `.SS` per leaf command under `cmd` (`gale plugin` has none of its
/// own: its `check` and `new` get theirs).
fn commands(roff: &mut Roff, cmd: &clap::Command) {
    if cmd.has_subcommands() {
        for sub in visible(cmd) {
            commands(roff, sub);
        }
        return;
    }
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ").trim();
    roff.control("SS", [usage]);
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        paragraphs(roff, &about.to_string());
    }
    for arg in cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help")
    {
        roff.control("TP", []);
        roff.text(arg_label(arg));
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let mut notes = Vec::new();
        let values: Vec<_> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if !values.is_empty() {
            notes.push(format!("one of: {}", values.join(", ")));
        }
        // A flag's default ("false") says nothing.
        let takes_values = arg.get_action().takes_values();
        let defaults: Vec<_> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if takes_values && !defaults.is_empty() {
            notes.push(format!("default: {}", defaults.join(",")));
        }
        if let Some(env) = arg.get_env() {
            notes.push(format!("environment: {}", env.to_string_lossy()));
        }
        let mut text = help;
        if !notes.is_empty() {
            text = format!("{text} [{}]", notes.join("; "));
        }
        roff.text([roman(plain(text.trim()))]);
    }
}

/// Help text without its Markdown backticks, which a terminal shows as
/// they are but a typeset page turns into stray quotes.
fn plain(text: &str) -> String {
    text.replace('`', "")
}

/// `-c, --config FILE` in bold and italics, or `FILE` for a positional.
fn arg_label(arg: &clap::Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    if arg.is_positional() {
        return vec![italic(value)];
    }
    let mut label = Vec::new();
    if let Some(short) = arg.get_short() {
        label.push(bold(format!("-{short}")));
    }
    if let Some(long) = arg.get_long() {
        if !label.is_empty() {
            label.push(roman(", "));
        }
        label.push(bold(format!("--{long}")));
    }
    if arg.get_action().takes_values() {
        label.push(roman(" "));
        label.push(italic(value));
    }
    label
}

/// Doc-comment text: a blank line starts a paragraph.
fn paragraphs(roff: &mut Roff, text: &str) {
    for (i, paragraph) in text.split("\n\n").enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        let words: Vec<_> = paragraph.split_whitespace().collect();
        roff.text([roman(plain(&words.join(" ")))]);
    }
}

/// A section of tagged paragraphs: (tag, text).
fn tagged(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (tag, text) in items {
        roff.control("TP", []);
        roff.text([bold(*tag)]);
        roff.text([roman(*text)]);
    }
}

fn sections(roff: &mut Roff) {
    tagged(
        roff,
        "SIGNALS",
        &[
            (
                "SIGHUP",
                "Reload: read the config again and build a new generation of \
                 pools and plugins; if it loads, swap it in (sessions under way \
                 keep theirs), otherwise keep the running one and log why. \
                 Saving the config or a file it names, and POST /reload on the \
                 admin API, do the same.",
            ),
            (
                "SIGTERM, SIGINT",
                "Drain: stop accepting, let sessions finish for [server] \
                 drain_timeout (default 30s), then exit.",
            ),
            (
                "Binary upgrade",
                "No signal: gale run --upgrade-socket PATH --upgrade, started \
                 beside a gale run with the same --upgrade-socket, takes its \
                 listening sockets over that Unix socket and serves on them; \
                 the old gale then stops accepting, drains as on SIGTERM and \
                 exits. No connection is refused meanwhile; a new gale that \
                 cannot start exits and the old one serves on.",
            ),
        ],
    );
    tagged(
        roff,
        "ENVIRONMENT",
        &[
            (
                "GALE_CACHE_DIR",
                "Where compiled plugins are cached when the config sets no \
                 [plugins] cache_dir; else $XDG_CACHE_HOME/gale, else \
                 $HOME/.cache/gale. The directory must be owned by gale's user \
                 and not writable by group or others (otherwise every plugin is \
                 compiled at each start). The systemd unit sets /var/cache/gale.",
            ),
            (
                "GALE_ADMIN_TOKEN",
                "The admin API's bearer token for gale status and gale dns plan.",
            ),
            (
                "RUST_LOG",
                "Log filter (default: info), e.g. debug or gale=debug,info.",
            ),
            (
                "AWS_*",
                "With [dns] provider = \"route53\": the standard AWS credential \
                 chain (environment, profile, web identity, instance metadata).",
            ),
        ],
    );
    tagged(
        roff,
        "FILES",
        &[
            (
                "/etc/gale/gale.toml",
                "The config the package installs and its unit runs; every key \
                 gale understands is in it, with its default. Paths in it are \
                 relative to its directory.",
            ),
            (
                "/var/cache/gale",
                "Compiled plugins, owned by the gale user (the package creates \
                 both; purging the package removes the directory).",
            ),
            (
                "/usr/lib/systemd/system/gale.service",
                "The systemd unit: gale run as user gale, gale check before it, \
                 reload by SIGHUP.",
            ),
            (
                "/usr/share/doc/gale/examples/gale.socket",
                "An example socket unit: systemd binds the listener's port \
                 (the shipped config's 127.0.0.1:2525; 25 in production) and \
                 passes it to the listener whose name is the socket's \
                 FileDescriptorName.",
            ),
        ],
    );
    roff.control("SH", ["SYSTEMD"]);
    paragraphs(
        roff,
        "Under systemd (Type=notify) gale reports READY=1 once every listener \
         is bound and the plugins are loaded, RELOADING=1 around a reload and \
         STOPPING=1 when it drains, and pings the watchdog when WatchdogSec= \
         is set. A listener takes a socket passed by systemd (LISTEN_FDS) \
         whose FileDescriptorName= is the listener's name in the config, so \
         gale needs no privilege for port 25.",
    );
    roff.control("SH", ["EXIT STATUS"]);
    paragraphs(
        roff,
        "0 on success (gale run: after a drain), 1 on an error, which is \
         printed on standard error as gale: followed by the reason (with \
         [log] format = \"json\", as a JSON line whose message says so); 2 \
         for a command line clap rejects.",
    );
    roff.control("SH", ["EXAMPLES"]);
    for (what, command) in [
        (
            "Check the installed config, then reload the running service:",
            "gale check --config /etc/gale/gale.toml && systemctl reload gale",
        ),
        (
            "Send a test mail through the submission listener:",
            "swaks --server 127.0.0.1:2525 --to you@example.test",
        ),
        (
            "Show the pools and backends of the running gale:",
            "gale status --admin 127.0.0.1:9090",
        ),
    ] {
        roff.text([roman(what)]);
        roff.control("PP", []);
        roff.control("RS", []);
        roff.control("EX", []);
        roff.text([roman(command)]);
        roff.control("EE", []);
        roff.control("RE", []);
        roff.control("PP", []);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), systemd.service(5), systemd.socket(5), swaks(1); \
         README.md in the source tree.",
    )]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("gale")
            .version("1.0")
            .about("Balance")
            .subcommand(
                clap::Command::new("run")
                    .about("Serve a config.")
                    .long_about("Serve a config.\n\nReloads on SIGHUP.")
                    .arg(
                        clap::Arg::new("config")
                            .short('c')
                            .long("config")
                            .value_name("FILE")
                            .default_value("config/gale.toml")
                            .help("The TOML config."),
                    ),
            )
            .subcommand(
                clap::Command::new("plugin").subcommand(
                    clap::Command::new("check")
                        .about("Check a plugin.")
                        .arg(clap::Arg::new("file").required(true)),
                ),
            )
            .subcommand(clap::Command::new("man").hide(true))
    }

    #[test]
    fn every_visible_leaf_command_has_its_section_with_its_options() {
        let page = render(cli());
        assert!(page.starts_with(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n.TH GALE 1"));
        assert!(page.contains(".SS \"gale run [OPTIONS]\""), "{page}");
        assert!(page.contains(".SS \"gale plugin check <file>\""), "{page}");
        assert!(page.contains("\\fB\\-c\\fR, \\fB\\-\\-config\\fR \\fIFILE\\fR"));
        assert!(page.contains("The TOML config. [default: config/gale.toml]"));
        assert!(page.contains("Reloads on SIGHUP."));
        assert!(
            !page.contains(".SS \"gale man"),
            "hidden commands stay hidden"
        );
        assert!(!page.contains(".SS \"gale help"));
    }

    #[test]
    fn the_apostrophe_preamble_is_written_once() {
        let page = render(cli());
        assert_eq!(page.matches(".ds Aq").count(), 2, "{page}");
        assert!(page.contains("/etc/gale/gale.toml"));
    }
}
