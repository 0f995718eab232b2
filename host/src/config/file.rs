//! The TOML file as written: serde structs with `deny_unknown_fields`, so a
//! typo is rejected at load, not discovered under traffic. Values that need
//! checking beyond their type carry their position (`Spanned`) so that
//! the section modules can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file. Every key is documented in `config/gale.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[plugins]`: runtime-wide plugin limits and the compile cache.
    #[serde(default)]
    pub plugins: PluginsSection,
    /// `[server]`: process-wide settings.
    #[serde(default)]
    pub server: ServerSection,
    /// `[admin]`: the admin/metrics listener.
    pub admin: Option<AdminSection>,
    /// `[listeners.NAME]`.
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerSection>,
    /// `[pools.NAME]`.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSection>,
    /// `[dns]`: publish a pool's healthy members as DNS records.
    pub dns: Option<DnsSection>,
    /// `[peers]`: the other gale instances behind the same DNS name.
    pub peers: Option<PeersSection>,
    /// `[log]`: the log's format and the HTTP access lines' sampling.
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `format`: "text" (default) or "json"; read at start only.
    pub format: Option<LogFormat>,
    /// `http_sample`: the share of HTTP requests whose access line is
    /// written at `info` (0 to 1).
    pub http_sample: Option<Spanned<f64>>,
}

/// How log lines are written (`[log] format`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// tracing's human-readable lines: `LEVEL target: message key=value`.
    #[default]
    Text,
    /// One JSON object per line (see `crate::logging`).
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersSection {
    /// `address`: the IP address this instance's own record carries.
    pub address: Spanned<String>,
    /// `name`: this instance's name in the records' set ids and logs.
    pub name: Option<String>,
    /// `weight`: this instance's record weight.
    pub weight: Option<u32>,
    /// `[peers.probe]`: how peers are checked (like a pool's probe).
    #[serde(default)]
    pub probe: ProbeSection,
    /// `[[peers.members]]`: the other instances.
    #[serde(default)]
    pub members: Vec<PeerSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub name: Spanned<String>,
    /// `address`: the peer's SMTP listener, ip:port; its record carries
    /// the IP.
    pub address: Spanned<String>,
    #[serde(default = "default_peer_weight")]
    pub weight: u32,
}

fn default_peer_weight() -> u32 {
    super::dns::DEFAULT_PEER_WEIGHT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// `zone`: the zone the records live in, e.g. "example.com.".
    pub zone: Spanned<String>,
    /// `name`: the name gale publishes, e.g. "mx.example.com.".
    pub name: Spanned<String>,
    /// `ttl`: seconds resolvers may cache an answer.
    pub ttl: Option<u32>,
    /// `pool`: whose healthy backends the records point at.
    pub pool: Spanned<String>,
    /// `debounce`: how long health must hold still before records change.
    pub debounce: Option<Spanned<String>>,
    /// `max_changes`: records added or removed per minute, at most (>= 1).
    pub max_changes: Option<Spanned<u32>>,
    /// `plugin`: the DNS plugin that plans the records.
    pub plugin: Option<Spanned<PluginSection>>,
    /// `provider`: where records go ("embedded", the default, or
    /// "rfc2136").
    #[serde(default)]
    pub provider: DnsProvider,
    /// `[dns.embedded]`: gale answers for the zone itself.
    pub embedded: Option<EmbeddedDnsSection>,
    /// `[dns.rfc2136]`: gale updates a DNS server (RFC 2136, TSIG).
    pub rfc2136: Option<Rfc2136Section>,
    /// `[dns.route53]`: gale writes weighted records to Amazon Route 53.
    pub route53: Option<Route53Section>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProvider {
    #[default]
    Embedded,
    Rfc2136,
    Route53,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route53Section {
    /// `hosted_zone_id`: the hosted zone holding `dns.zone`, e.g.
    /// "Z0123456789ABCDEFGHIJ".
    pub hosted_zone_id: Spanned<String>,
    /// `region`: the SDK's region (default: from the environment or
    /// profile, else us-east-1; Route 53 itself is global).
    pub region: Option<Spanned<String>>,
    /// `endpoint_url`: another endpoint than AWS's (a test server, a
    /// Route 53-compatible API).
    pub endpoint_url: Option<Spanned<String>>,
    /// `owner`: gale's records are those whose set identifier starts with
    /// "OWNER/" (default "gale").
    pub owner: Option<Spanned<String>>,
    /// `timeout`: for one attempt of one API call.
    pub timeout: Option<Spanned<String>>,
    /// `reconcile`: how often the zone is read back and corrected.
    pub reconcile: Option<Spanned<String>>,
    /// `peer_hold`: with `pool = "peers"` and no health check, how long a
    /// peer must fail its probes before the others remove its record.
    pub peer_hold: Option<Spanned<String>>,
    /// `health_check`: with `pool = "peers"`, each instance attaches a
    /// Route 53 health check of itself to its own record.
    pub health_check: Option<Spanned<HealthCheckSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `kind`: "tcp" (a connection to `port`) or "http" (GET `path`).
    pub kind: Spanned<String>,
    /// `port`: this instance's port the checkers connect to.
    pub port: Spanned<u16>,
    /// `path`: for "http" (default "/health", answered by the admin
    /// listener without a token).
    pub path: Option<Spanned<String>>,
    /// `interval`: "10s" or "30s" (Route 53 knows no other).
    pub interval: Option<Spanned<String>>,
    /// `failure_threshold`: failed checks in a row that take the record
    /// out of answers, 1 to 10 (default 3).
    pub failure_threshold: Option<Spanned<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Section {
    /// `server`: ip:port of the primary server for the zone.
    pub server: Spanned<String>,
    /// `key_name`: the TSIG key's name as the server knows it.
    pub key_name: Spanned<String>,
    /// `key_algorithm`: hmac-sha256 (default), hmac-sha384, hmac-sha512.
    pub key_algorithm: Option<Spanned<String>>,
    /// `key_secret`: the key, base64 (as tsig-keygen prints it).
    pub key_secret: Option<Spanned<String>>,
    /// `key_file`: a file holding the key: its base64 secret alone, or
    /// the `key "..." { ... secret "..."; };` block tsig-keygen writes.
    pub key_file: Option<Spanned<String>>,
    /// `timeout`: for one DNS exchange.
    pub timeout: Option<Spanned<String>>,
    /// `reconcile`: how often the server is read back and corrected.
    pub reconcile: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedDnsSection {
    /// `address`: ip:port to answer on, over UDP and TCP (default
    /// 127.0.0.1:5353).
    pub address: Option<Spanned<String>>,
    /// `ns`: the name server name in the zone's SOA and NS records.
    pub ns: Option<Spanned<String>>,
    /// `rate_limit`: UDP responses a second per client /24 (IPv6 /56);
    /// 0 turns the limit off (default 20).
    pub rate_limit: Option<Spanned<u32>>,
    /// `rate_limit_burst`: responses a client prefix may save up
    /// (default 40, or two seconds' worth of a lower `rate_limit`).
    pub rate_limit_burst: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// `drain_timeout`: how long sessions may run on after SIGTERM/SIGINT.
    pub drain_timeout: Option<Spanned<String>>,
    /// `user`: who to run as once the sockets are bound (started as root).
    pub user: Option<Spanned<String>>,
    /// `group`: its group (default: the user's own).
    pub group: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// `cache_dir`: where compiled plugins are kept across restarts.
    pub cache_dir: Option<String>,
    /// `deadline`: default CPU deadline per plugin call, e.g. "1ms".
    pub deadline: Option<Spanned<String>>,
    /// `memory_mb`: default memory cap per plugin instance (>= 1).
    pub memory_mb: Option<Spanned<u32>>,
    /// `rollback_share`: share of a new generation's decisions that may
    /// trap or hit their deadline before it is rolled back, e.g. 0.5.
    pub rollback_share: Option<Spanned<f64>>,
    /// `rollback_window`: how long after a reload that share is watched.
    pub rollback_window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `address`: ip:port to listen on.
    pub address: Spanned<String>,
    /// `token`: bearer token required on every call.
    pub token: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Smtp,
    Http,
    /// Bytes as they are: implicit TLS passed through, LMTP, anything
    /// else (see `crate::tcp`).
    Tcp,
}

impl Protocol {
    /// As the status API and error messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// How an SMTP backend learns the client's address besides PROXY.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAddress {
    #[default]
    None,
    /// Postfix's XCLIENT, after the backend's greeting.
    Xclient,
}

/// What an SMTP listener does with a client that talks before it has
/// been greeted (`pregreet`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pregreet {
    /// `554 5.5.1` and close, as Postfix postscreen's pregreet test does:
    /// a real MTA waits for the greeting; spambots often do not.
    #[default]
    Reject,
    /// Relay what it sent to the backend after the greeting.
    Pass,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// `protocol`: "smtp", "http" or "tcp".
    pub protocol: Protocol,
    /// `address`: ip:port to listen on.
    pub address: Spanned<String>,
    /// `pool`: name of the pool that serves this listener.
    pub pool: Spanned<String>,
    /// `hostname` (SMTP): name used in replies gale writes itself (421,
    /// 554).
    pub hostname: Option<Spanned<String>>,
    /// `max_sessions`: sessions open at once (>= 1); more wait in the
    /// accept queue.
    pub max_sessions: Option<Spanned<u32>>,
    /// `max_sessions_per_client`: sessions open at once from one client IP
    /// (>= 1; unset: no limit).
    pub max_sessions_per_client: Option<Spanned<u32>>,
    /// `max_buffer_mb`: what the listener's connections may hold in
    /// buffers, in MiB (unlimited when unset).
    pub max_buffer_mb: Option<Spanned<u64>>,
    /// `max_attempts`: backends tried for one session before 421 (>= 1).
    pub max_attempts: Option<Spanned<u32>>,
    /// `queue_size`: sessions or requests that may wait at once for a
    /// backend slot when every backend is at its `max_sessions` (0: none
    /// wait, they are refused at once).
    pub queue_size: Option<Spanned<u32>>,
    /// `queue_timeout`: how long one waits for a slot before 421 / 503.
    pub queue_timeout: Option<Spanned<String>>,
    /// `allow`: client networks ("192.0.2.0/24", "2001:db8::/32", or one
    /// address) that may connect; unset: every client.
    pub allow: Option<Vec<Spanned<String>>>,
    /// `deny`: client networks that may not (checked before `allow`).
    pub deny: Option<Vec<Spanned<String>>>,
    /// `deny_reply` (SMTP): 554 (default, `554 5.7.1`: do not come back)
    /// or 421 (`421 4.7.0`: try later) for a client `allow`/`deny` refuse.
    pub deny_reply: Option<Spanned<u16>>,
    /// `client_rate`: new sessions a second from one client address (an
    /// IPv6 client: its /64); unset: no limit.
    pub client_rate: Option<Spanned<u32>>,
    /// `client_burst`: new sessions a client may open at once before
    /// `client_rate` applies (default: `client_rate`).
    pub client_burst: Option<Spanned<u32>>,
    /// `admission_plugin`: a plugin of the `admission` world asked about
    /// each client the rules above let in (`{ path = ..., settings = ... }`).
    pub admission_plugin: Option<Spanned<PluginSection>>,
    /// `connect_timeout`: per backend connection attempt.
    pub connect_timeout: Option<Spanned<String>>,
    /// `banner_timeout` (SMTP): wait for the backend's greeting.
    pub banner_timeout: Option<Spanned<String>>,
    /// `idle_timeout`: a session with no bytes either way this long ends.
    pub idle_timeout: Option<Spanned<String>>,
    /// `pregreet` (SMTP): "reject" (default) or "pass" a client that
    /// sends before the greeting.
    pub pregreet: Option<Spanned<Pregreet>>,
    /// `header_timeout` (HTTP): a client has this long to send a request's
    /// headers, the first one or the next on a kept-alive connection. (A
    /// new connection is accepted once its first bytes arrive, or after
    /// ~1 s of silence: the timeout runs from then.)
    pub header_timeout: Option<Spanned<String>>,
    /// `response_timeout` (HTTP): wait for a backend's response headers.
    pub response_timeout: Option<Spanned<String>>,
    /// `tls` (HTTP, SMTP): terminate TLS with this certificate (HTTPS;
    /// SMTPS, implicit TLS on 465).
    pub tls: Option<Spanned<TlsSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// `cert`: PEM certificate chain, leaf first (relative to the config).
    pub cert: Spanned<String>,
    /// `key`: PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
    /// `[[listeners.NAME.tls.sni]]`: more certificates, each served to clients
    /// asking for one of its `names` (SNI); `cert`/`key` above serve the
    /// rest.
    #[serde(default)]
    pub sni: Vec<SniSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniSection {
    /// `names`: host names (exact, any case) this certificate is for; each
    /// must be one the certificate is valid for.
    pub names: Spanned<Vec<String>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// `balancer`: the backend-selection plugin.
    pub balancer: Option<Spanned<PluginSection>>,
    /// `health`: the health-evaluation plugin.
    pub health: Option<Spanned<PluginSection>>,
    /// `candidate`: a balancer tried beside `balancer` (with `mode`).
    pub candidate: Option<Spanned<PluginSection>>,
    /// `keepalive_timeout` (HTTP): idle backend connections are reused
    /// only this long; keep it under the backends' own idle timeout.
    pub keepalive_timeout: Option<Spanned<String>>,
    /// `slow_start`: a backend that comes back (or is enabled) ramps from
    /// a low weight to its full weight over this long.
    pub slow_start: Option<Spanned<String>>,
    /// `max_ejection_percent`: live traffic alone never takes more than
    /// this share of the pool's backends out (probes may take any).
    pub max_ejection_percent: Option<Spanned<u32>>,
    /// `base_ejection_time`: how long a backend taken out by live traffic
    /// stays out the first time; each ejection soon after another adds
    /// as much again.
    pub base_ejection_time: Option<Spanned<String>>,
    /// `max_ejection_time`: the longest ejection.
    pub max_ejection_time: Option<Spanned<String>>,
    /// `retry_on` (HTTP): what sends a request on to the next backend:
    /// "connect", "error" (failed before a response), "502", "503",
    /// "504"; all but "connect" only for idempotent requests whose body
    /// was not sent.
    pub retry_on: Option<Spanned<Vec<String>>>,
    /// `[pools.NAME.probe]`: active health checks.
    #[serde(default)]
    pub probe: ProbeSection,
    /// `[[pools.NAME.backends]]`.
    #[serde(default)]
    pub backends: Vec<BackendSection>,
}

/// A plugin reference: a built-in name or a `.wasm` file, with settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// `builtin`: name of a plugin shipped inside gale.
    pub builtin: Option<Spanned<String>>,
    /// `path`: a component file, relative to the config file.
    pub path: Option<Spanned<String>>,
    /// `settings`: key/value pairs handed to the plugin's `init`.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingValue>,
    /// `deadline`: CPU deadline per call, overriding `[plugins] deadline`.
    pub deadline: Option<Spanned<String>>,
    /// `memory_mb`: memory cap, overriding `[plugins] memory_mb` (>= 1).
    pub memory_mb: Option<Spanned<u32>>,
    /// `mode`: how a pool's `candidate` runs ("shadow"); only there.
    pub mode: Option<Spanned<String>>,
}

/// Plugin settings reach the plugin as strings; numbers and booleans are
/// accepted unquoted for convenience.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl SettingValue {
    pub fn into_string(self) -> String {
        match self {
            SettingValue::String(s) => s,
            SettingValue::Integer(i) => i.to_string(),
            SettingValue::Float(f) => f.to_string(),
            SettingValue::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    #[default]
    Tcp,
    Smtp,
    Http,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    /// `kind`: "tcp" (default), "smtp" or "http".
    pub kind: Option<Spanned<ProbeKind>>,
    /// `interval`: time between probes of one backend, e.g. "2s".
    pub interval: Option<Spanned<String>>,
    /// `timeout`: time one probe may take, e.g. "1s".
    pub timeout: Option<Spanned<String>>,
    /// `ehlo`: name sent in the SMTP probe's EHLO.
    pub ehlo: Option<Spanned<String>>,
    /// `mail_from`: the SMTP probe also sends `MAIL FROM:<this>` ("" for
    /// the null sender), then RSET: a full spool answers it with 452.
    pub mail_from: Option<Spanned<String>>,
    /// `rcpt_to`: and `RCPT TO:<this>`, so a broken recipient check is
    /// seen too.
    pub rcpt_to: Option<Spanned<String>>,
    /// `method`: HTTP probe method.
    pub method: Option<Spanned<String>>,
    /// `path`: HTTP probe path.
    pub path: Option<Spanned<String>>,
    /// `expect_status`: HTTP statuses counted as healthy, e.g. [200, 399].
    pub expect_status: Option<Spanned<[u16; 2]>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Primary,
    Standby,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// `name`: unique in the pool.
    pub name: Spanned<String>,
    /// `address`: ip:port of the backend.
    pub address: Spanned<String>,
    /// `weight`: share of sessions (default 1; 0 takes none).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `role`: "primary" (default) or "standby".
    #[serde(default)]
    pub role: Role,
    /// `priority`: explicit tier (0 = first); defaults from `role`.
    pub priority: Option<u32>,
    /// `proxy_protocol` (SMTP, tcp): "none" (default), "v1" or "v2".
    pub proxy_protocol: Option<Spanned<ProxyProtocol>>,
    /// `client_address` (SMTP): "xclient" tells the backend who the client
    /// is with XCLIENT instead of a PROXY header; "none" (default).
    pub client_address: Option<Spanned<ClientAddress>>,
    /// `max_sessions`: sessions this backend takes at once (HAProxy's
    /// maxconn, but >= 1: unset is no limit, where maxconn says 0).
    pub max_sessions: Option<Spanned<u32>>,
    /// `agent_port`: a load agent on the backend's address answers here
    /// (HAProxy's agent-check: "up", "down", "drain", "75%").
    pub agent_port: Option<Spanned<u16>>,
    /// `tls` (SMTP, tcp): speak TLS to the backend from the first byte
    /// (after the PROXY header), as to an MTA's smtps port.
    pub tls: Option<Spanned<bool>>,
    /// `tls_ca`: PEM certificates the backend's must chain to.
    pub tls_ca: Option<Spanned<String>>,
    /// `tls_verify`: false accepts any certificate (default true: then
    /// `tls_ca` is required).
    pub tls_verify: Option<Spanned<bool>>,
    /// `tls_name`: the name sent as SNI and verified in the certificate
    /// (default: the address's IP).
    pub tls_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    None,
    V1,
    V2,
}

fn default_weight() -> u32 {
    super::pools::DEFAULT_WEIGHT
}
