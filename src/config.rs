//! The herd file: servers, their ports and neighbours, and the places settings,
//! loaded and validated before any port is bound.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

/// The default herd of PROTOCOL.md, compiled in.
pub const DEFAULT_HERD: &str = include_str!("../deploy/herd.toml");

/// Why a herd file cannot be used. Each message names the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read herd file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("herd file {origin} is malformed: {message}")]
    Malformed { origin: String, message: String },
    #[error("herd file {origin}: {problem}")]
    Invalid { origin: String, problem: String },
    #[error("no server named {name:?} in herd file {origin} (servers: {known})")]
    UnknownServer {
        name: String,
        origin: String,
        known: String,
    },
    #[error("{var}: {problem}")]
    Env { var: &'static str, problem: String },
}

/// Which places provider answers WHATSAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The embedded GeoNames dataset.
    Offline,
    /// Google Places over HTTPS.
    Google,
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "offline" => Ok(ProviderKind::Offline),
            "google" => Ok(ProviderKind::Google),
            other => Err(format!(
                "unknown places provider {other:?} (expected \"offline\" or \"google\")"
            )),
        }
    }
}

/// Which Google Places API the google provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GoogleApi {
    /// Places API (New): `POST /v1/places:searchNearby`. The only one new Google projects can enable.
    New,
    /// The legacy Nearby Search: `GET /maps/api/place/nearbysearch/json`.
    Legacy,
}

impl GoogleApi {
    /// Google's own base URL for this API.
    pub fn default_url(self) -> &'static str {
        match self {
            GoogleApi::New => "https://places.googleapis.com",
            GoogleApi::Legacy => "https://maps.googleapis.com",
        }
    }
}

impl std::str::FromStr for GoogleApi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(GoogleApi::New),
            "legacy" => Ok(GoogleApi::Legacy),
            other => Err(format!(
                "unknown Google Places API {other:?} (expected \"new\" or \"legacy\")"
            )),
        }
    }
}

/// A Google API key. It comes from the environment only and is never printed:
/// `Debug` redacts it, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// None for an empty or blank key.
    pub fn new(key: &str) -> Option<ApiKey> {
        let key = key.trim();
        (!key.is_empty()).then(|| ApiKey(key.into()))
    }

    /// The key itself, for the one place that sends it to Google.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The places settings of a herd: the herd file's `[places]` table, then the environment.
#[derive(Clone, Debug)]
pub struct PlacesConfig {
    pub provider: ProviderKind,
    /// The overall deadline of one lookup: past it, WHATSAT answers with a failure status.
    pub timeout: Duration,
    /// How the google provider reaches Google, retries, and saves requests.
    pub google: GoogleConfig,
    /// Settings of the herd file that are accepted but no longer used, each with what
    /// took its place: every server logs them as warnings when it starts.
    pub deprecated: Vec<String>,
}

/// The google provider's settings. Each field is a key of the `[places]` table
/// (named in the comment), with the default that [`GoogleConfig::default`] gives.
#[derive(Clone, Debug)]
pub struct GoogleConfig {
    /// `api`: which API to speak (`HERD_PLACES_API` wins). Default `new`.
    pub api: GoogleApi,
    /// `url`: the base URL Google's paths are appended to (`HERD_PLACES_URL` wins);
    /// None means Google's own for `api`. Validated: http or https, no query.
    pub url: Option<String>,
    /// `GOOGLE_PLACES_API_KEY`, from the environment only.
    pub key: Option<ApiKey>,
    /// `attempt_timeout_ms`: the deadline of one HTTP attempt. Default 2000.
    pub attempt_timeout: Duration,
    /// `max_attempts`: attempts per lookup, the first included (1 = no retry). Default 3.
    pub max_attempts: u32,
    /// `backoff_min_ms`, `backoff_max_ms`: the first wait before a retry, and the most
    /// any wait grows to (doubling each time). Defaults 100 and 1000.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// `backoff_jitter`: up to this fraction of each wait is added at random, so
    /// servers that failed together do not retry together. Default 0.5.
    pub backoff_jitter: f64,
    /// `max_concurrency`: requests in flight to Google at once, across the process. Default 8.
    pub max_concurrency: usize,
    /// `cache_entries`: answers kept (0 turns the cache off). Default 10000.
    pub cache_entries: usize,
    /// `cache_ttl_s`: how long an answer is kept. Default 300.
    pub cache_ttl: Duration,
    /// `cache_grid_fraction`: how far, as a fraction of the radius asked, the centre of
    /// the search that answers a lookup may be from the client's own location. Google is
    /// always asked at the exact location; the cache key (and the coalescing of lookups
    /// in flight) groups locations into cells no wider than this fraction of the radius,
    /// so a cached answer was searched within `fraction × radius` of the client (0: only
    /// lookups at the very same location share an answer). Default 0.01, at most 0.05.
    pub cache_grid_fraction: f64,
    /// `max_response_bytes`: the most bytes of one Google answer read; a larger body is
    /// cut off while it streams in and answered as a failure (not retried). Default 4 MiB.
    pub max_response_bytes: usize,
}

impl Default for GoogleConfig {
    fn default() -> GoogleConfig {
        GoogleConfig {
            api: GoogleApi::New,
            url: None,
            key: None,
            attempt_timeout: Duration::from_millis(2_000),
            max_attempts: 3,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
            backoff_jitter: 0.5,
            max_concurrency: 8,
            cache_entries: 10_000,
            cache_ttl: Duration::from_secs(300),
            cache_grid_fraction: 0.01,
            max_response_bytes: 4 << 20,
        }
    }
}

impl GoogleConfig {
    /// The base URL in use: the configured one, else Google's for the API, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        self.url
            .as_deref()
            .unwrap_or(self.api.default_url())
            .trim_end_matches('/')
    }
}

/// Checks a base URL: absolute, http or https, with a host and no query or fragment.
fn check_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?} must start with http:// or https://"));
    }
    if !parsed.has_host() {
        return Err(format!("{url:?} has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{url:?} must not have a query or fragment (Google's paths are appended to it)"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The client gateway's settings: the herd file's `[gateway]` table. Every limit a
/// hostile client meets is here, with a default a real deployment can live with
/// (README.md, "Hostile clients", has the table of attacks, limits and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `max_held_reply_bytes`: the replies one client connection may hold before they
    /// are written. Past it, they are written before the rest of a read's lines are
    /// answered, instead of all together once the read is answered (a reply is never
    /// split: a connection holds at most this plus one reply). While a write is under
    /// way the connection is not read (backpressure). Default 262144 (256 KiB).
    pub max_held_replies: usize,
    /// `max_clients`: client connections one server holds at once; past it a new one is
    /// accepted and closed at once. None (the default): no cap of its own; the process's
    /// open file limit less `fd_reserve` (shared by the process's servers) is the cap.
    pub max_clients: Option<usize>,
    /// `fd_reserve`: file descriptors client connections never take, so that the peer
    /// port, health, `/metrics`, log files and places requests keep working when the
    /// client port is full. Default 1024 (at most half the open file limit is kept).
    pub fd_reserve: usize,
    /// `max_clients_per_ip`: client connections from one IPv4 address (or IPv6 /64)
    /// at once. Default 1024.
    pub max_clients_per_ip: usize,
    /// `idle_timeout_ms`: a connection that completes no line for this long is closed.
    /// Default 300000 (5 minutes).
    pub idle_timeout: Duration,
    /// `line_timeout_ms`: a line that has started must end within this (slowloris).
    /// Default 10000 (10 s).
    pub line_timeout: Duration,
    /// `write_timeout_ms`: a connection whose held replies (at most
    /// `max_held_reply_bytes` and one more) are not all taken within this is closed:
    /// a client that reads nothing, or a trickle. Default 30000 (30 s).
    pub write_timeout: Duration,
    /// `max_client_id_bytes`: the longest client ID an IAMAT or WHATSAT may carry; a
    /// longer one is answered `? line`. Default [`DEFAULT_MAX_CLIENT_ID`].
    pub max_client_id: usize,
}

/// The default of `gateway.max_client_id_bytes`: far above any real ID (a host name is
/// at most 253 bytes, a UUID 36), far below the 64 KiB line limit.
pub const DEFAULT_MAX_CLIENT_ID: usize = 1024;

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            max_held_replies: 256 * 1024,
            max_clients: None,
            fd_reserve: 1024,
            max_clients_per_ip: 1024,
            idle_timeout: Duration::from_secs(300),
            line_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_client_id: DEFAULT_MAX_CLIENT_ID,
        }
    }
}

/// The backbone's bounds: the herd file's `[backbone]` table. Each field is a key
/// (named in the comment), with the default [`BackboneConfig::default`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackboneConfig {
    /// `queue_bytes`: updates queued for one neighbour, in encoded bytes, before
    /// new ones are dropped and the link is repaired from floors. Default 4 MiB.
    pub queue_bytes: usize,
    /// `max_message_bytes`: the largest message accepted from a neighbour; what
    /// this server sends is batched to half of it. Default 4 MiB.
    pub max_message_bytes: usize,
    /// `anti_entropy_interval_ms`: how often each link sends its floors, so that
    /// any lost update heals. Default 3000.
    pub anti_entropy_interval: Duration,
    /// `queue_wait_ms`: how long a client connection or a neighbour's stream waits
    /// for a neighbour's queue past half of `queue_bytes` to drain to a quarter of it
    /// before it goes on; a queue that does not drain in time is not waited for
    /// again until it has (it drops and is repaired instead). 0: never wait.
    /// Default 1000.
    pub queue_wait: Duration,
    /// `max_record_bytes`: the client records a server holds, in bytes (each its AT
    /// line and 64 more); past it the oldest by client time are evicted, the same
    /// on every server (`crate::replica::Replica::evict`). Default 1 GiB.
    pub max_record_bytes: u64,
    /// The herd's server names (not a key: the `[[server]]` entries): an update that
    /// names another server is out of contract. Empty: not checked.
    pub members: Vec<Arc<str>>,
}

impl Default for BackboneConfig {
    fn default() -> BackboneConfig {
        BackboneConfig {
            queue_bytes: 4 << 20,
            max_message_bytes: 4 << 20,
            anti_entropy_interval: Duration::from_millis(3_000),
            queue_wait: Duration::from_millis(1_000),
            max_record_bytes: 1 << 30,
            members: Vec::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    max_held_reply_bytes: Option<usize>,
    max_clients: Option<usize>,
    fd_reserve: Option<usize>,
    max_clients_per_ip: Option<usize>,
    idle_timeout_ms: Option<u64>,
    line_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    max_client_id_bytes: Option<usize>,
}

impl RawGateway {
    fn validate(self) -> Result<GatewayConfig, String> {
        let d = GatewayConfig::default();
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        let gateway = GatewayConfig {
            max_held_replies: self.max_held_reply_bytes.unwrap_or(d.max_held_replies),
            max_clients: self.max_clients,
            fd_reserve: self.fd_reserve.unwrap_or(d.fd_reserve),
            max_clients_per_ip: self.max_clients_per_ip.unwrap_or(d.max_clients_per_ip),
            idle_timeout: ms(self.idle_timeout_ms, d.idle_timeout),
            line_timeout: ms(self.line_timeout_ms, d.line_timeout),
            write_timeout: ms(self.write_timeout_ms, d.write_timeout),
            max_client_id: self.max_client_id_bytes.unwrap_or(d.max_client_id),
        };
        let above_zero = [
            ("max_held_reply_bytes", gateway.max_held_replies),
            ("max_clients", gateway.max_clients.unwrap_or(1)),
            ("max_clients_per_ip", gateway.max_clients_per_ip),
            ("max_client_id_bytes", gateway.max_client_id),
        ];
        for (key, value) in above_zero {
            if value == 0 {
                return Err(format!("gateway.{key} must be above 0"));
            }
        }
        for (key, value) in [
            ("idle_timeout_ms", gateway.idle_timeout),
            ("line_timeout_ms", gateway.line_timeout),
            ("write_timeout_ms", gateway.write_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("gateway.{key} must be above 0"));
            }
        }
        if gateway.max_client_id > crate::gateway::MAX_LINE {
            return Err(format!(
                "gateway.max_client_id_bytes must be at most the {}-byte line limit",
                crate::gateway::MAX_LINE
            ));
        }
        Ok(gateway)
    }
}

/// Who may use the peer port: the herd file's `[auth]` table, and `HERD_SECRET_FILE`
/// (which wins over `auth.secret_file`). The secret itself is read when the herd file
/// is loaded, so a missing or weak one stops start-up before any port is bound.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// The herd secret every `Link` stream and `Inspect` call must carry; None: no
    /// secret (anyone who reaches the peer port is taken for a member).
    pub secret: Option<crate::auth::Secret>,
    /// Where the secret was read from (shown in logs; the secret never is).
    pub secret_file: Option<PathBuf>,
    /// `health_needs_secret`: the health service asks for the secret too. Default false,
    /// so that orchestrators' probes need nothing.
    pub health_needs_secret: bool,
    /// `metrics_needs_secret`: `GET /metrics` asks for it too. Default false.
    pub metrics_needs_secret: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    secret_file: Option<PathBuf>,
    #[serde(default)]
    health_needs_secret: bool,
    #[serde(default)]
    metrics_needs_secret: bool,
}

/// Mutual TLS on the peer port: the herd file's `[tls]` table. Every server serves
/// TLS with its own certificate and asks peers for theirs (signed by `ca`); a `Link`
/// stream is accepted only when the client certificate names the server in
/// `herd-from`, and a server dials its neighbours with TLS and checks that their
/// certificates name them. `{server}` in `cert` and `key` is each server's name.
/// Relative paths are relative to the herd file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA certificate (PEM) that signs every server's certificate.
    pub ca: PathBuf,
    /// Each server's certificate chain (PEM), e.g. `certs/{server}.pem`.
    pub cert: String,
    /// Each server's private key (PEM), e.g. `certs/{server}.key`.
    pub key: String,
}

impl TlsConfig {
    pub fn cert_path(&self, server: &str) -> PathBuf {
        PathBuf::from(self.cert.replace("{server}", server))
    }
    pub fn key_path(&self, server: &str) -> PathBuf {
        PathBuf::from(self.key.replace("{server}", server))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: String,
    key: String,
}

/// `path` relative to `dir` (the herd file's directory) unless it is absolute.
fn relative_to(dir: Option<&Path>, path: &Path) -> PathBuf {
    match dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackbone {
    queue_bytes: Option<usize>,
    max_message_bytes: Option<usize>,
    anti_entropy_interval_ms: Option<u64>,
    queue_wait_ms: Option<u64>,
    max_record_bytes: Option<u64>,
}

/// The smallest cap on records held: two of the longest client line.
const MIN_RECORD_BYTES: u64 = 128 << 10;

/// The smallest message bound: one update of the largest client line, with room.
const MIN_MESSAGE_BYTES: usize = 1 << 20;

impl RawBackbone {
    fn validate(self) -> Result<BackboneConfig, String> {
        let d = BackboneConfig::default();
        let b = BackboneConfig {
            queue_bytes: self.queue_bytes.unwrap_or(d.queue_bytes),
            max_message_bytes: self.max_message_bytes.unwrap_or(d.max_message_bytes),
            anti_entropy_interval: self
                .anti_entropy_interval_ms
                .map_or(d.anti_entropy_interval, Duration::from_millis),
            queue_wait: self
                .queue_wait_ms
                .map_or(d.queue_wait, Duration::from_millis),
            max_record_bytes: self.max_record_bytes.unwrap_or(d.max_record_bytes),
            members: Vec::new(),
        };
        if b.max_record_bytes < MIN_RECORD_BYTES {
            return Err(format!(
                "backbone.max_record_bytes is {}; it must be at least {MIN_RECORD_BYTES} (128 KiB, room for two records of the longest client line)",
                b.max_record_bytes
            ));
        }
        if !(MIN_MESSAGE_BYTES..=(256 << 20)).contains(&b.max_message_bytes) {
            return Err(format!(
                "backbone.max_message_bytes is {}; it must be {MIN_MESSAGE_BYTES} (1 MiB, room for one update of the longest client line) to 268435456 (256 MiB)",
                b.max_message_bytes
            ));
        }
        if !((64 << 10)..=(1 << 30)).contains(&b.queue_bytes) {
            return Err(format!(
                "backbone.queue_bytes is {}; it must be 65536 (64 KiB) to 1073741824 (1 GiB)",
                b.queue_bytes
            ));
        }
        let ms = b.anti_entropy_interval.as_millis();
        if !(50..=3_600_000).contains(&ms) {
            return Err(format!(
                "backbone.anti_entropy_interval_ms is {ms}; it must be 50 to 3600000"
            ));
        }
        let ms = b.queue_wait.as_millis();
        if ms > 60_000 {
            return Err(format!(
                "backbone.queue_wait_ms is {ms}; it must be 0 (never wait) to 60000"
            ));
        }
        Ok(b)
    }
}

/// One server of the herd, validated.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub name: Arc<str>,
    /// Where neighbours reach this server's peer port (an IP address or a host name).
    pub host: String,
    /// The address the listeners bind.
    pub listen: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
    pub neighbours: Vec<Arc<str>>,
}

impl ServerConfig {
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.client_port)
    }
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.peer_port)
    }
    /// The URI neighbours dial to reach this server's gRPC side (`https` with `[tls]`:
    /// tonic speaks TLS only to an https URI, and plaintext to an http one whatever
    /// its TLS settings).
    pub fn peer_uri(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.peer_port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.peer_port)
        }
    }
}

/// A whole herd, validated: every link two-sided, every name known, no port used twice.
#[derive(Clone, Debug)]
pub struct HerdConfig {
    /// Where the file came from, for messages.
    pub origin: String,
    pub servers: Vec<ServerConfig>,
    pub places: PlacesConfig,
    pub gateway: GatewayConfig,
    pub log: LogConfig,
    pub backbone: BackboneConfig,
    /// `data_dir` (or `--data-dir`, `HERD_DATA_DIR`): None keeps state in memory only.
    pub data_dir: Option<PathBuf>,
    /// Whether each server gets `<data_dir>/<name>` (`herd up`) or `data_dir` itself.
    pub data_per_server: bool,
    /// `fsync` and the `[data]` table.
    pub data: DataSettings,
    pub auth: AuthConfig,
    /// None: the peer port is plain HTTP/2 (and HTTP/1.1 for `/metrics`).
    pub tls: Option<TlsConfig>,
    /// `shutdown_grace_ms`: how long a server stopping (SIGTERM, SIGINT) gives its
    /// connections and links to finish what they have before it exits anyway.
    pub shutdown_grace: Duration,
}

/// The default of `shutdown_grace_ms`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

pub use crate::durable::{DataConfig, DataSettings, Fsync};

/// The `[log]` table: how the servers' log files are written.
pub type LogConfig = crate::logging::FileSettings;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    queue_lines: Option<usize>,
    level: Option<String>,
    max_file_bytes: Option<u64>,
    max_files: Option<usize>,
}

impl RawLog {
    fn validate(self) -> Result<LogConfig, String> {
        use tracing::level_filters::LevelFilter;
        let d = LogConfig::default();
        let level = match self.level.as_deref() {
            None | Some("info") => LevelFilter::INFO,
            Some("debug") => LevelFilter::DEBUG,
            Some(other) => {
                return Err(format!(
                    "log.level {other:?}: expected \"info\" (every line and its reply, a \
                     WHATSAT's as its AT line and JSON size) or \"debug\" (WHATSAT JSON too)"
                ));
            }
        };
        let log = LogConfig {
            level,
            queue_lines: self.queue_lines.unwrap_or(d.queue_lines),
            max_file_bytes: self.max_file_bytes.unwrap_or(d.max_file_bytes),
            max_files: self.max_files.unwrap_or(d.max_files),
        };
        if log.queue_lines == 0 {
            return Err("log.queue_lines must be above 0".into());
        }
        if log.max_file_bytes == 0 {
            return Err("log.max_file_bytes must be above 0".into());
        }
        if !(1..=1000).contains(&log.max_files) {
            return Err("log.max_files must be from 1 to 1000".into());
        }
        Ok(log)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHerd {
    #[serde(default)]
    places: RawPlaces,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    backbone: RawBackbone,
    /// The data dir (with `herd up`, one subdirectory per server); none: in memory.
    data_dir: Option<PathBuf>,
    fsync: Option<String>,
    shutdown_grace_ms: Option<u64>,
    #[serde(default)]
    data: RawData,
    #[serde(default)]
    auth: RawAuth,
    tls: Option<RawTls>,
    #[serde(default)]
    server: Vec<RawServer>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawData {
    segment_bytes: Option<u64>,
    compact_min_bytes: Option<u64>,
    max_unwritten_bytes: Option<usize>,
}

impl RawData {
    fn validate(self, fsync: Option<String>) -> Result<DataSettings, String> {
        let d = DataSettings::default();
        let data = DataSettings {
            fsync: match fsync {
                Some(f) => f.parse()?,
                None => d.fsync,
            },
            segment_bytes: self.segment_bytes.unwrap_or(d.segment_bytes),
            compact_min_bytes: self.compact_min_bytes.unwrap_or(d.compact_min_bytes),
            max_unwritten_bytes: self.max_unwritten_bytes.unwrap_or(d.max_unwritten_bytes),
        };
        if !((64 << 10)..=(1 << 40)).contains(&data.segment_bytes) {
            return Err(format!(
                "data.segment_bytes is {}; it must be 65536 (64 KiB) to 2^40",
                data.segment_bytes
            ));
        }
        if !((64 << 10)..=(1 << 40)).contains(&data.compact_min_bytes) {
            return Err(format!(
                "data.compact_min_bytes is {}; it must be 65536 (64 KiB) to 2^40",
                data.compact_min_bytes
            ));
        }
        if !((1 << 20)..=(1 << 34)).contains(&data.max_unwritten_bytes) {
            return Err(format!(
                "data.max_unwritten_bytes is {}; it must be 1048576 (1 MiB) to 2^34",
                data.max_unwritten_bytes
            ));
        }
        Ok(data)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlaces {
    provider: Option<ProviderKind>,
    timeout_ms: Option<u64>,
    api: Option<GoogleApi>,
    url: Option<String>,
    attempt_timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    backoff_min_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    backoff_jitter: Option<f64>,
    max_concurrency: Option<usize>,
    cache_entries: Option<usize>,
    cache_ttl_s: Option<u64>,
    /// Deprecated (it rounded the request sent to Google, not only the cache key):
    /// accepted, ignored, and reported. See `cache_grid_fraction`.
    cache_decimals: Option<u8>,
    cache_grid_fraction: Option<f64>,
    max_response_bytes: Option<usize>,
}

impl RawPlaces {
    /// Fills in defaults and checks every figure; the error names the key.
    fn validate(self) -> Result<PlacesConfig, String> {
        let d = GoogleConfig::default();
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let google = GoogleConfig {
            api: self.api.unwrap_or(d.api),
            url: self
                .url
                .map(|u| check_url(&u))
                .transpose()
                .map_err(|e| format!("places.url: {e}"))?,
            key: None,
            attempt_timeout: ms(self.attempt_timeout_ms, d.attempt_timeout),
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            backoff_min: ms(self.backoff_min_ms, d.backoff_min),
            backoff_max: ms(self.backoff_max_ms, d.backoff_max),
            backoff_jitter: self.backoff_jitter.unwrap_or(d.backoff_jitter),
            max_concurrency: self.max_concurrency.unwrap_or(d.max_concurrency),
            cache_entries: self.cache_entries.unwrap_or(d.cache_entries),
            cache_ttl: self.cache_ttl_s.map_or(d.cache_ttl, Duration::from_secs),
            cache_grid_fraction: self.cache_grid_fraction.unwrap_or(d.cache_grid_fraction),
            max_response_bytes: self.max_response_bytes.unwrap_or(d.max_response_bytes),
        };
        let deprecated = self
            .cache_decimals
            .map(|n| {
                format!(
                    "places.cache_decimals = {n} is deprecated and ignored: Google is now asked \
                     at the client's exact location, and cache keys are cells of at most \
                     places.cache_grid_fraction ({}) of the radius",
                    google.cache_grid_fraction
                )
            })
            .into_iter()
            .collect();
        let places = PlacesConfig {
            provider: self.provider.unwrap_or(ProviderKind::Offline),
            timeout: ms(self.timeout_ms, Duration::from_millis(5_000)),
            google,
            deprecated,
        };
        let g = &places.google;
        if places.timeout.is_zero() {
            return Err("places.timeout_ms must be above 0".into());
        }
        if g.attempt_timeout.is_zero() {
            return Err("places.attempt_timeout_ms must be above 0".into());
        }
        if !(1..=10).contains(&g.max_attempts) {
            return Err(format!(
                "places.max_attempts is {}; it must be 1 to 10",
                g.max_attempts
            ));
        }
        if g.backoff_max.is_zero() {
            return Err("places.backoff_max_ms must be above 0".into());
        }
        if g.backoff_min > g.backoff_max {
            return Err(format!(
                "places.backoff_min_ms ({}) is above places.backoff_max_ms ({})",
                g.backoff_min.as_millis(),
                g.backoff_max.as_millis()
            ));
        }
        if !(0.0..=1.0).contains(&g.backoff_jitter) {
            return Err(format!(
                "places.backoff_jitter is {}; it must be 0 to 1",
                g.backoff_jitter
            ));
        }
        if g.max_concurrency == 0 {
            return Err("places.max_concurrency must be above 0".into());
        }
        if !(0.0..=0.05).contains(&g.cache_grid_fraction) {
            return Err(format!(
                "places.cache_grid_fraction is {}; it must be 0 to 0.05",
                g.cache_grid_fraction
            ));
        }
        if g.max_response_bytes < 1024 {
            return Err(format!(
                "places.max_response_bytes is {}; it must be at least 1024",
                g.max_response_bytes
            ));
        }
        Ok(places)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: String,
    host: Option<String>,
    listen: Option<String>,
    client_port: u16,
    peer_port: u16,
    #[serde(default)]
    neighbours: Vec<String>,
}

/// A server name appears in AT lines and in peer metadata: keep it to a safe set.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl HerdConfig {
    /// Loads the herd file: `path` if given, else the compiled-in default herd.
    pub fn load(path: Option<&Path>) -> Result<HerdConfig, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                HerdConfig::parse_in(&text, &path.display().to_string(), path.parent())
            }
            None => HerdConfig::parse(DEFAULT_HERD, "(built-in deploy/herd.toml)"),
        }
    }

    /// Parses and validates a herd file's text; `origin` names it in messages. Paths
    /// in it are relative to the working directory.
    pub fn parse(text: &str, origin: &str) -> Result<HerdConfig, ConfigError> {
        HerdConfig::parse_in(text, origin, None)
    }

    /// [`HerdConfig::parse`] for a file in `dir`: its relative paths are relative to `dir`.
    pub fn parse_in(
        text: &str,
        origin: &str,
        dir: Option<&Path>,
    ) -> Result<HerdConfig, ConfigError> {
        let raw: RawHerd = toml::from_str(text).map_err(|e| ConfigError::Malformed {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |problem: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            problem,
        };
        if raw.server.is_empty() {
            return Err(invalid("no [[server]] entries".into()));
        }

        let mut names = BTreeSet::new();
        for s in &raw.server {
            if !valid_name(&s.name) {
                return Err(invalid(format!(
                    "server name {:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
                    s.name
                )));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(format!("server {:?} is defined twice", s.name)));
            }
        }

        let mut neighbours: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in &raw.server {
            let set = neighbours.entry(&s.name).or_default();
            for n in &s.neighbours {
                if n == &s.name {
                    return Err(invalid(format!(
                        "server {:?} lists itself as a neighbour",
                        s.name
                    )));
                }
                if !names.contains(n.as_str()) {
                    return Err(invalid(format!(
                        "server {:?} has neighbour {:?}, which is not a server of this herd",
                        s.name, n
                    )));
                }
                if !set.insert(n) {
                    return Err(invalid(format!(
                        "server {:?} lists neighbour {:?} twice",
                        s.name, n
                    )));
                }
            }
        }
        for (a, set) in &neighbours {
            for b in set {
                if !neighbours[b].contains(a) {
                    return Err(invalid(format!(
                        "link {a} -> {b} is one-sided: {b:?} does not list {a:?} as a neighbour"
                    )));
                }
            }
        }

        let mut servers = Vec::with_capacity(raw.server.len());
        for s in raw.server {
            let host = s.host.unwrap_or_else(|| "127.0.0.1".to_owned());
            if host.is_empty() {
                return Err(invalid(format!("server {:?} has an empty host", s.name)));
            }
            let listen = match &s.listen {
                Some(l) => l.parse::<IpAddr>().map_err(|_| {
                    invalid(format!(
                        "server {:?}: listen {l:?} is not an IP address",
                        s.name
                    ))
                })?,
                None => host
                    .parse::<IpAddr>()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            };
            for (what, port) in [("client_port", s.client_port), ("peer_port", s.peer_port)] {
                if port == 0 {
                    return Err(invalid(format!(
                        "server {:?}: {what} is 0; every port must be fixed so neighbours and clients can find it",
                        s.name
                    )));
                }
            }
            servers.push(ServerConfig {
                name: s.name.as_str().into(),
                host,
                listen,
                client_port: s.client_port,
                peer_port: s.peer_port,
                neighbours: s.neighbours.iter().map(|n| Arc::from(n.as_str())).collect(),
            });
        }

        // Two listeners clash when they share a port on the same or an overlapping address.
        let mut bound: Vec<(SocketAddr, String)> = Vec::new();
        for s in &servers {
            for (what, addr) in [("client", s.client_addr()), ("peer", s.peer_addr())] {
                let label = format!("{} {what} port", s.name);
                if let Some((_, other)) = bound.iter().find(|(b, _)| {
                    b.port() == addr.port()
                        && (b.ip() == addr.ip()
                            || b.ip().is_unspecified()
                            || addr.ip().is_unspecified())
                }) {
                    return Err(invalid(format!(
                        "{label} and {other} are both {}",
                        addr.port()
                    )));
                }
                bound.push((addr, label));
            }
        }

        let places = raw.places.validate().map_err(invalid)?;
        let gateway = raw.gateway.validate().map_err(invalid)?;
        let log = raw.log.validate().map_err(invalid)?;
        let mut backbone = raw.backbone.validate().map_err(invalid)?;
        backbone.members = servers.iter().map(|s| s.name.clone()).collect();
        let data = raw.data.validate(raw.fsync).map_err(invalid)?;
        let shutdown_grace = match raw.shutdown_grace_ms {
            None => SHUTDOWN_GRACE,
            Some(ms) if (100..=600_000).contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(invalid(format!(
                    "shutdown_grace_ms is {ms}; it must be 100 to 600000 (10 minutes)"
                )));
            }
        };
        if raw
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid("data_dir is empty".into()));
        }
        let secret_file = raw.auth.secret_file.map(|p| relative_to(dir, &p));
        let auth = AuthConfig {
            secret: match &secret_file {
                Some(path) => Some(
                    crate::auth::Secret::read(path)
                        .map_err(|e| invalid(format!("auth.secret_file: {e}")))?,
                ),
                None => None,
            },
            secret_file,
            health_needs_secret: raw.auth.health_needs_secret,
            metrics_needs_secret: raw.auth.metrics_needs_secret,
        };
        let tls = raw.tls.map(|t| TlsConfig {
            ca: relative_to(dir, &t.ca),
            cert: relative_to(dir, Path::new(&t.cert))
                .to_string_lossy()
                .into_owned(),
            key: relative_to(dir, Path::new(&t.key))
                .to_string_lossy()
                .into_owned(),
        });
        if tls.is_some() {
            // A certificate names its server as a DNS name.
            if let Some(s) = servers.iter().find(|s| {
                rustls::pki_types::DnsName::try_from(&*s.name).is_err()
                    || s.name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            }) {
                return Err(invalid(format!(
                    "server name {:?} cannot be a TLS certificate's DNS name; with [tls] every name must be one",
                    s.name
                )));
            }
        }

        Ok(HerdConfig {
            origin: origin.to_owned(),
            servers,
            places,
            gateway,
            log,
            backbone,
            data_dir: raw.data_dir,
            data_per_server: false,
            data,
            auth,
            tls,
            shutdown_grace,
        })
    }

    /// Why `self` (a reloaded herd file) cannot replace `old` in a running process
    /// that runs the servers `running`: None when it can apply live. Only the
    /// `[[server]]` entries may change live (servers added and removed, neighbours,
    /// other servers' addresses); anything a running server bound, opened or read at
    /// start needs a restart.
    pub fn restart_needed(&self, old: &HerdConfig, running: &[Arc<str>]) -> Option<String> {
        for name in running {
            let Some(was) = old.servers.iter().find(|s| s.name == *name) else {
                continue;
            };
            let Some(now) = self.servers.iter().find(|s| s.name == *name) else {
                return Some(format!(
                    "server {name} (running here) is no longer in the herd file: stop it instead"
                ));
            };
            for (what, changed) in [
                ("listen", was.listen != now.listen),
                ("client_port", was.client_port != now.client_port),
                ("peer_port", was.peer_port != now.peer_port),
            ] {
                if changed {
                    return Some(format!(
                        "server {name}'s {what} changed: this server's own ports need a restart"
                    ));
                }
            }
        }
        // What every server read at start, compared table by table. The places
        // settings are compared as printed (their key is redacted there, but it
        // comes from the environment, which a reload does not change).
        let places = |p: &PlacesConfig| format!("{:?}", (p.provider, p.timeout, &p.google));
        let mut backbone = self.backbone.clone();
        backbone.members.clone_from(&old.backbone.members);
        let auth = |a: &AuthConfig| {
            (
                a.secret.clone(),
                a.secret_file.clone(),
                a.health_needs_secret,
                a.metrics_needs_secret,
            )
        };
        for (what, changed) in [
            ("[places]", places(&self.places) != places(&old.places)),
            ("[gateway]", self.gateway != old.gateway),
            ("[log]", self.log != old.log),
            ("[backbone]", backbone != old.backbone),
            ("data_dir", self.data_dir != old.data_dir),
            ("fsync or [data]", self.data != old.data),
            (
                "shutdown_grace_ms",
                self.shutdown_grace != old.shutdown_grace,
            ),
            (
                "[auth] (the herd secret)",
                auth(&self.auth) != auth(&old.auth),
            ),
            ("[tls]", self.tls != old.tls),
        ] {
            if changed {
                return Some(format!("{what} changed: that needs a restart"));
            }
        }
        None
    }

    /// Server `name`'s data dir and settings, if the herd has a data dir.
    pub fn data_for(&self, name: &str) -> Option<DataConfig> {
        let dir = self.data_dir.as_ref()?;
        Some(DataConfig {
            dir: if self.data_per_server {
                dir.join(name)
            } else {
                dir.clone()
            },
            settings: self.data.clone(),
        })
    }

    /// Applies the environment, which wins over the herd file: `HERD_DATA_DIR`,
    /// `HERD_FSYNC`, `HERD_PLACES`, `HERD_PLACES_API`, `HERD_PLACES_URL`,
    /// `GOOGLE_PLACES_API_KEY` and `HERD_SECRET_FILE` (read here) (PROTOCOL.md's
    /// operating contract). `get` reads a variable; an empty value counts as unset.
    /// A google provider without a key is an error here, before any port is bound.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |var: &'static str| get(var).filter(|v| !v.trim().is_empty());
        let env = |var: &'static str, problem: String| ConfigError::Env { var, problem };
        if let Some(v) = get("HERD_DATA_DIR") {
            self.data_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("HERD_FSYNC") {
            self.data.fsync = v.trim().parse().map_err(|e| env("HERD_FSYNC", e))?;
        }
        let places = &mut self.places;
        if let Some(v) = get("HERD_PLACES") {
            places.provider = v.trim().parse().map_err(|e| env("HERD_PLACES", e))?;
        }
        if let Some(v) = get("HERD_PLACES_API") {
            places.google.api = v.trim().parse().map_err(|e| env("HERD_PLACES_API", e))?;
        }
        if let Some(v) = get("HERD_PLACES_URL") {
            places.google.url = Some(check_url(v.trim()).map_err(|e| env("HERD_PLACES_URL", e))?);
        }
        if let Some(v) = get("GOOGLE_PLACES_API_KEY") {
            places.google.key = ApiKey::new(&v);
        }
        if let Some(v) = get("HERD_SECRET_FILE") {
            let path = PathBuf::from(v.trim());
            self.auth.secret =
                Some(crate::auth::Secret::read(&path).map_err(|e| env("HERD_SECRET_FILE", e))?);
            self.auth.secret_file = Some(path);
        }
        let places = &mut self.places;
        if places.provider == ProviderKind::Google && places.google.key.is_none() {
            return Err(env(
                "GOOGLE_PLACES_API_KEY",
                "not set; the google places provider needs a Google API key (or use HERD_PLACES=offline)".into(),
            ));
        }
        Ok(())
    }

    /// The server named `name`, or an error listing the herd's servers.
    pub fn server(&self, name: &str) -> Result<&ServerConfig, ConfigError> {
        self.servers
            .iter()
            .find(|s| &*s.name == name)
            .ok_or_else(|| ConfigError::UnknownServer {
                name: name.to_owned(),
                origin: self.origin.clone(),
                known: self
                    .servers
                    .iter()
                    .map(|s| &*s.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        HerdConfig::parse(text, "t.toml").unwrap_err().to_string()
    }

    const TWO: &str = r#"
[[server]]
name = "A"
client_port = 1
peer_port = 2
neighbours = ["B"]
[[server]]
name = "B"
client_port = 3
peer_port = 4
neighbours = ["A"]
"#;

    #[test]
    fn shutdown_grace_is_named_bounded_and_defaults_to_three_seconds() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        assert_eq!(herd.shutdown_grace, Duration::from_secs(3));
        let herd = HerdConfig::parse(&format!("shutdown_grace_ms = 500\n{TWO}"), "t").unwrap();
        assert_eq!(herd.shutdown_grace, Duration::from_millis(500));
        assert!(err(&format!("shutdown_grace_ms = 99\n{TWO}")).contains("shutdown_grace_ms is 99"));
        assert!(err(&format!("shutdown_grace_ms = 600001\n{TWO}")).contains("100 to 600000"));
    }

    #[test]
    fn a_reload_may_change_servers_but_not_own_ports_nor_other_tables() {
        let old = HerdConfig::parse(TWO, "t").unwrap();
        let running: Vec<Arc<str>> = vec!["A".into()];
        let three = r#"
[[server]]
name = "A"
client_port = 1
peer_port = 2
neighbours = ["B", "C"]
[[server]]
name = "B"
client_port = 3
peer_port = 4
neighbours = ["A"]
[[server]]
name = "C"
host = "10.0.0.9"
client_port = 5
peer_port = 6
neighbours = ["A"]
"#;
        let grown = HerdConfig::parse(three, "t").unwrap();
        assert_eq!(grown.restart_needed(&old, &running), None);
        // B's ports are not this process's: they may move.
        let b_moved =
            HerdConfig::parse(&TWO.replace("peer_port = 4", "peer_port = 9"), "t").unwrap();
        assert_eq!(b_moved.restart_needed(&old, &running), None);
        let a_moved =
            HerdConfig::parse(&TWO.replace("peer_port = 2", "peer_port = 9"), "t").unwrap();
        let why = a_moved.restart_needed(&old, &running).unwrap();
        assert!(
            why.contains("A's peer_port changed") && why.contains("restart"),
            "{why}"
        );
        let gateway =
            HerdConfig::parse(&format!("[gateway]\nidle_timeout_ms = 1000\n{TWO}"), "t").unwrap();
        assert!(
            gateway
                .restart_needed(&old, &running)
                .unwrap()
                .contains("[gateway]")
        );
        let backbone =
            HerdConfig::parse(&format!("[backbone]\nqueue_bytes = 1048576\n{TWO}"), "t").unwrap();
        assert!(
            backbone
                .restart_needed(&old, &running)
                .unwrap()
                .contains("[backbone]")
        );
        let grace = HerdConfig::parse(&format!("shutdown_grace_ms = 500\n{TWO}"), "t").unwrap();
        assert!(
            grace
                .restart_needed(&old, &running)
                .unwrap()
                .contains("shutdown_grace_ms")
        );
        let gone = HerdConfig::parse(
            "[[server]]\nname = \"B\"\nclient_port = 3\npeer_port = 4\n",
            "t",
        )
        .unwrap();
        assert!(
            gone.restart_needed(&old, &running)
                .unwrap()
                .contains("no longer in the herd file")
        );
    }

    #[test]
    fn default_herd_is_the_protocol_herd() {
        let herd = HerdConfig::load(None).unwrap();
        let summary: Vec<_> = herd
            .servers
            .iter()
            .map(|s| {
                let mut n: Vec<&str> = s.neighbours.iter().map(|n| &**n).collect();
                n.sort();
                (&*s.name, s.client_port, s.peer_port, n.join(","))
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("Goloman", 12001, 13001, "Hands,Holiday,Wilkes".to_owned()),
                ("Hands", 12002, 13002, "Goloman,Wilkes".to_owned()),
                ("Holiday", 12003, 13003, "Goloman,Welsh,Wilkes".to_owned()),
                ("Welsh", 12004, 13004, "Holiday".to_owned()),
                ("Wilkes", 12005, 13005, "Goloman,Hands,Holiday".to_owned()),
            ]
        );
        assert_eq!(herd.places.provider, ProviderKind::Offline);
        assert_eq!(
            herd.server("Welsh").unwrap().peer_uri(false),
            "http://127.0.0.1:13004"
        );
    }

    #[test]
    fn a_valid_two_server_herd_parses() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        assert_eq!(herd.servers.len(), 2);
        assert_eq!(herd.server("B").unwrap().client_port, 3);
    }

    #[test]
    fn unknown_server_names_the_known_ones() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        let e = herd.server("C").unwrap_err().to_string();
        assert!(e.contains("\"C\"") && e.contains("A, B"), "{e}");
    }

    #[test]
    fn bad_files_name_their_problem() {
        assert!(err("[[server]\nname=").contains("malformed"));
        assert!(err("").contains("no [[server]]"));
        assert!(err(&TWO.replace("[\"B\"]", "[\"C\"]")).contains("neighbour \"C\""));
        assert!(err(&TWO.replace("neighbours = [\"A\"]", "neighbours = []")).contains("one-sided"));
        assert!(err(&TWO.replace("peer_port = 4", "peer_port = 2")).contains("are both 2"));
        assert!(err(&TWO.replace("client_port = 3", "client_port = 2")).contains("are both 2"));
        assert!(err(&TWO.replace("name = \"B\"", "name = \"A\"")).contains("defined twice"));
        assert!(err(&TWO.replace("name = \"B\"", "name = \"B x\"")).contains("server name"));
        assert!(err(&TWO.replace("peer_port = 4", "peer_port = 0")).contains("is 0"));
        assert!(err(&TWO.replace("peer_port = 4", "peer_port = 70000")).contains("malformed"));
        assert!(err(&format!("{TWO}\nbogus = 1")).contains("bogus"));
        assert!(err(&TWO.replace("[\"B\"]", "[\"A\"]")).contains("itself"));
        assert!(
            err(&format!("[places]\nprovider = \"bing\"\n{TWO}")).contains("bing"),
            "unknown provider"
        );
    }

    #[test]
    fn same_port_on_different_addresses_is_fine() {
        let text = TWO
            .replace("client_port = 3", "host = \"127.0.0.2\"\nclient_port = 1")
            .replace("peer_port = 4", "peer_port = 2");
        assert!(HerdConfig::parse(&text, "t.toml").is_ok());
        let text = text.replace("host = \"127.0.0.2\"", "host = \"b\"");
        assert!(
            err(&text).contains("are both"),
            "a host name listens on 0.0.0.0"
        );
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn places_defaults_and_every_key() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        let g = &herd.places.google;
        assert_eq!(herd.places.timeout, Duration::from_secs(5));
        assert_eq!(g.api, GoogleApi::New);
        assert_eq!(g.base_url(), "https://places.googleapis.com");
        assert_eq!((g.max_attempts, g.max_concurrency), (3, 8));
        assert_eq!((g.cache_entries, g.cache_grid_fraction), (10_000, 0.01));
        assert_eq!(g.max_response_bytes, 4 * 1024 * 1024);
        assert!(herd.places.deprecated.is_empty());

        let text = format!(
            r#"[places]
provider = "google"
timeout_ms = 900
api = "legacy"
url = "http://127.0.0.1:9/proxy/"
attempt_timeout_ms = 300
max_attempts = 5
backoff_min_ms = 10
backoff_max_ms = 80
backoff_jitter = 0.25
max_concurrency = 2
cache_entries = 7
cache_ttl_s = 60
cache_grid_fraction = 0.02
max_response_bytes = 65536
{TWO}"#
        );
        let herd = HerdConfig::parse(&text, "t.toml").unwrap();
        let (p, g) = (&herd.places, &herd.places.google);
        assert_eq!(p.provider, ProviderKind::Google);
        assert_eq!(p.timeout, Duration::from_millis(900));
        assert_eq!(g.api, GoogleApi::Legacy);
        assert_eq!(g.base_url(), "http://127.0.0.1:9/proxy");
        assert_eq!(g.attempt_timeout, Duration::from_millis(300));
        assert_eq!(g.max_attempts, 5);
        assert_eq!(
            (g.backoff_min, g.backoff_max),
            (Duration::from_millis(10), Duration::from_millis(80))
        );
        assert_eq!(g.backoff_jitter, 0.25);
        assert_eq!((g.max_concurrency, g.cache_entries), (2, 7));
        assert_eq!(g.cache_ttl, Duration::from_secs(60));
        assert_eq!(g.cache_grid_fraction, 0.02);
        assert_eq!(g.max_response_bytes, 65_536);
    }

    #[test]
    fn cache_decimals_is_accepted_and_reported_as_deprecated() {
        let herd =
            HerdConfig::parse(&format!("[places]\ncache_decimals = 4\n{TWO}"), "t.toml").unwrap();
        let [notice] = &herd.places.deprecated[..] else {
            panic!("{:?}", herd.places.deprecated);
        };
        assert!(
            notice.contains("places.cache_decimals = 4 is deprecated"),
            "{notice}"
        );
        assert!(notice.contains("places.cache_grid_fraction"), "{notice}");
        assert_eq!(herd.places.google.cache_grid_fraction, 0.01);
    }

    #[test]
    fn bad_places_figures_are_named() {
        let bad = |line: &str| err(&format!("[places]\n{line}\n{TWO}"));
        assert!(bad("timeout_ms = 0").contains("places.timeout_ms"));
        assert!(bad("attempt_timeout_ms = 0").contains("places.attempt_timeout_ms"));
        assert!(bad("max_attempts = 0").contains("places.max_attempts"));
        assert!(bad("max_attempts = 11").contains("places.max_attempts"));
        assert!(bad("backoff_max_ms = 0").contains("places.backoff_max_ms"));
        assert!(
            bad("backoff_min_ms = 500\nbackoff_max_ms = 100").contains("places.backoff_min_ms")
        );
        assert!(bad("backoff_jitter = 1.5").contains("places.backoff_jitter"));
        assert!(bad("backoff_jitter = nan").contains("places.backoff_jitter"));
        assert!(bad("max_concurrency = 0").contains("places.max_concurrency"));
        assert!(bad("cache_grid_fraction = 0.5").contains("places.cache_grid_fraction"));
        assert!(bad("cache_grid_fraction = -0.01").contains("places.cache_grid_fraction"));
        assert!(bad("cache_grid_fraction = nan").contains("places.cache_grid_fraction"));
        assert!(bad("max_response_bytes = 10").contains("places.max_response_bytes"));
        assert!(bad("url = \"ftp://x\"").contains("places.url"));
        assert!(bad("url = \"http://x/?a=b\"").contains("places.url"));
        assert!(bad("url = \"places\"").contains("places.url"));
        assert!(bad("api = \"old\"").contains("old"));
        assert!(
            bad("api_key = \"k\"").contains("api_key"),
            "no key in the file"
        );
        assert!(bad("max_attempts = -1").contains("malformed"));
    }

    #[test]
    fn gateway_settings_have_defaults_and_are_checked() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        assert_eq!(herd.gateway.max_held_replies, 256 * 1024);
        let text = format!("[gateway]\nmax_held_reply_bytes = 4096\n{TWO}");
        let herd = HerdConfig::parse(&text, "t.toml").unwrap();
        assert_eq!(herd.gateway.max_held_replies, 4096);
        let bad = |line: &str| err(&format!("[gateway]\n{line}\n{TWO}"));
        assert!(bad("max_held_reply_bytes = 0").contains("gateway.max_held_reply_bytes"));
        assert!(bad("max_held_reply_bytes = -1").contains("malformed"));
        assert!(bad("max_line = 10").contains("max_line"));
    }

    #[test]
    fn auth_and_tls_tables_resolve_paths_and_read_the_secret() {
        let dir = std::env::temp_dir().join(format!("herd-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "0123456789abcdef-secret\n").unwrap();
        let text = format!(
            "[auth]\nsecret_file = \"s\"\nmetrics_needs_secret = true\n\
             [tls]\nca = \"c/ca.pem\"\ncert = \"c/{{server}}.pem\"\nkey = \"/k/{{server}}.key\"\n{TWO}"
        );
        let herd = HerdConfig::parse_in(&text, "t.toml", Some(&dir)).unwrap();
        assert!(herd.auth.secret.is_some());
        assert_eq!(herd.auth.secret_file.as_deref(), Some(&*dir.join("s")));
        assert!(herd.auth.metrics_needs_secret && !herd.auth.health_needs_secret);
        let tls = herd.tls.unwrap();
        assert_eq!(tls.ca, dir.join("c/ca.pem"));
        assert_eq!(tls.cert_path("Goloman"), dir.join("c/Goloman.pem"));
        assert_eq!(tls.key_path("Goloman"), PathBuf::from("/k/Goloman.key"));
        // No secret file, a weak secret: refused before anything runs, never shown.
        let missing = HerdConfig::parse_in(
            &format!("[auth]\nsecret_file = \"nope\"\n{TWO}"),
            "t",
            Some(&dir),
        );
        assert!(format!("{}", missing.unwrap_err()).contains("cannot read the secret file"));
        std::fs::write(dir.join("weak"), "short\n").unwrap();
        let e = HerdConfig::parse_in(
            &format!("[auth]\nsecret_file = \"weak\"\n{TWO}"),
            "t",
            Some(&dir),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least 16") && !e.contains("short"), "{e}");
        // HERD_SECRET_FILE wins over the herd file.
        let mut herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        assert!(herd.auth.secret.is_none());
        let path = dir.join("s").display().to_string();
        herd.apply_env(|v| (v == "HERD_SECRET_FILE").then(|| path.clone()))
            .unwrap();
        assert!(herd.auth.secret.is_some());
        let e = herd
            .apply_env(|v| (v == "HERD_SECRET_FILE").then(|| "/no/such/file".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("HERD_SECRET_FILE: cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn with_tls_every_server_name_must_be_a_dns_name() {
        let text = "[tls]\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n\
                    [[server]]\nname = \"123\"\nclient_port = 1\npeer_port = 2\n";
        assert!(err(text).contains("DNS name"), "{}", err(text));
        assert!(HerdConfig::parse(&text[text.find("[[server]]").unwrap()..], "t").is_ok());
    }

    #[test]
    fn hostile_client_limits_have_defaults_and_keys() {
        let d = HerdConfig::parse(TWO, "t.toml").unwrap().gateway;
        assert_eq!(d, GatewayConfig::default());
        assert_eq!(d.max_clients, None);
        assert_eq!((d.fd_reserve, d.max_clients_per_ip), (1024, 1024));
        assert_eq!(d.idle_timeout, Duration::from_secs(300));
        assert_eq!(d.line_timeout, Duration::from_secs(10));
        assert_eq!(d.write_timeout, Duration::from_secs(30));
        assert_eq!(d.max_client_id, 1024);
        let text = format!(
            "[gateway]\nmax_clients = 7\nfd_reserve = 64\nmax_clients_per_ip = 3\n\
             idle_timeout_ms = 1500\nline_timeout_ms = 250\nwrite_timeout_ms = 900\n\
             max_client_id_bytes = 16\n{TWO}"
        );
        let g = HerdConfig::parse(&text, "t.toml").unwrap().gateway;
        assert_eq!(
            (g.max_clients, g.fd_reserve, g.max_clients_per_ip),
            (Some(7), 64, 3)
        );
        assert_eq!(g.idle_timeout, Duration::from_millis(1500));
        assert_eq!(g.line_timeout, Duration::from_millis(250));
        assert_eq!(g.write_timeout, Duration::from_millis(900));
        assert_eq!(g.max_client_id, 16);
        let bad = |line: &str| err(&format!("[gateway]\n{line}\n{TWO}"));
        for key in [
            "max_clients",
            "max_clients_per_ip",
            "idle_timeout_ms",
            "line_timeout_ms",
            "write_timeout_ms",
            "max_client_id_bytes",
        ] {
            assert!(
                bad(&format!("{key} = 0")).contains(&format!("gateway.{key} must be above 0")),
                "{key}"
            );
        }
        assert!(bad("max_client_id_bytes = 65537").contains("line limit"));
        assert!(bad("idle_timeout_ms = -1").contains("malformed"));
    }

    #[test]
    fn the_log_queue_has_a_default_and_a_key() {
        let parse = |text: &str| HerdConfig::parse(text, "test");
        assert_eq!(
            parse(TWO).unwrap().log.queue_lines,
            crate::logging::DEFAULT_QUEUE_LINES
        );
        let set = parse(&format!("[log]\nqueue_lines = 100\n{TWO}")).unwrap();
        assert_eq!(set.log.queue_lines, 100);
        assert!(err(&format!("[log]\nqueue_lines = 0\n{TWO}")).contains("log.queue_lines"));
        assert!(err(&format!("[log]\nlines = 1\n{TWO}")).contains("lines"));
    }

    #[test]
    fn the_log_level_and_rotation_have_defaults_keys_and_bounds() {
        use tracing::level_filters::LevelFilter;
        let parse = |text: &str| HerdConfig::parse(text, "test");
        let d = parse(TWO).unwrap().log;
        assert_eq!(d.level, LevelFilter::INFO);
        assert_eq!(d.max_file_bytes, crate::logging::DEFAULT_MAX_FILE_BYTES);
        assert_eq!(d.max_files, crate::logging::DEFAULT_MAX_FILES);
        let set = parse(&format!(
            "[log]\nlevel = \"debug\"\nmax_file_bytes = 4096\nmax_files = 2\n{TWO}"
        ))
        .unwrap()
        .log;
        assert_eq!(
            (set.level, set.max_file_bytes, set.max_files),
            (LevelFilter::DEBUG, 4096, 2)
        );
        assert!(err(&format!("[log]\nlevel = \"trace\"\n{TWO}")).contains("log.level"));
        assert!(err(&format!("[log]\nmax_file_bytes = 0\n{TWO}")).contains("max_file_bytes"));
        assert!(err(&format!("[log]\nmax_files = 0\n{TWO}")).contains("max_files"));
        assert!(err(&format!("[log]\nmax_files = 1001\n{TWO}")).contains("max_files"));
    }

    #[test]
    fn data_dir_fsync_and_the_data_table() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        assert_eq!(herd.data_dir, None, "memory only by default");
        assert_eq!(herd.data, DataSettings::default());
        assert_eq!(herd.data.fsync, Fsync::EverySec);
        let text = format!(
            "data_dir = \"/var/lib/herd\"\nfsync = \"always\"\n[data]\nsegment_bytes = 1048576\ncompact_min_bytes = 65536\nmax_unwritten_bytes = 2097152\n{TWO}"
        );
        let mut herd = HerdConfig::parse(&text, "t.toml").unwrap();
        assert_eq!(herd.data.fsync, Fsync::Always);
        assert_eq!(herd.data.segment_bytes, 1 << 20);
        assert_eq!(
            herd.data_for("A").unwrap().dir,
            PathBuf::from("/var/lib/herd")
        );
        herd.data_per_server = true;
        assert_eq!(
            herd.data_for("A").unwrap().dir,
            PathBuf::from("/var/lib/herd/A")
        );
        let bad = |head: &str| err(&format!("{head}\n{TWO}"));
        assert!(bad("fsync = \"sometimes\"").contains("always, everysec"));
        assert!(bad("[data]\nsegment_bytes = 10").contains("data.segment_bytes"));
        assert!(bad("[data]\nmax_unwritten_bytes = 10").contains("data.max_unwritten_bytes"));
        assert!(
            bad("[data]\ncompact = 1").contains("compact"),
            "unknown keys are named"
        );
        let mut herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        herd.apply_env(env(&[("HERD_DATA_DIR", "/d"), ("HERD_FSYNC", "no")]))
            .unwrap();
        assert_eq!(herd.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(herd.data.fsync, Fsync::No);
        let e = herd
            .apply_env(env(&[("HERD_FSYNC", "never")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HERD_FSYNC"), "{e}");
    }

    #[test]
    fn backbone_defaults_keys_and_bad_figures() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        let members = herd.backbone.members.clone();
        assert_eq!(members.len(), 2, "every server of the file");
        assert_eq!(
            herd.backbone,
            BackboneConfig {
                members: members.clone(),
                ..BackboneConfig::default()
            }
        );
        assert_eq!(herd.backbone.queue_bytes, 4 << 20);
        let text = format!(
            "[backbone]\nqueue_bytes = 100000\nmax_message_bytes = 2000000\nanti_entropy_interval_ms = 500\nqueue_wait_ms = 250\nmax_record_bytes = 200000\n{TWO}"
        );
        let b = HerdConfig::parse(&text, "t.toml").unwrap().backbone;
        assert_eq!(
            b,
            BackboneConfig {
                queue_bytes: 100_000,
                max_message_bytes: 2_000_000,
                anti_entropy_interval: Duration::from_millis(500),
                queue_wait: Duration::from_millis(250),
                max_record_bytes: 200_000,
                members,
            }
        );
        let bad = |line: &str| err(&format!("[backbone]\n{line}\n{TWO}"));
        assert!(bad("queue_bytes = 10").contains("backbone.queue_bytes"));
        assert!(bad("queue_wait_ms = 60001").contains("backbone.queue_wait_ms"));
        assert!(bad("max_message_bytes = 1000").contains("backbone.max_message_bytes"));
        assert!(bad("max_message_bytes = 1000000000").contains("backbone.max_message_bytes"));
        assert!(bad("anti_entropy_interval_ms = 0").contains("backbone.anti_entropy_interval_ms"));
        assert!(bad("max_record_bytes = 1000").contains("backbone.max_record_bytes"));
        assert!(bad("queue = 1").contains("queue"), "unknown keys are named");
    }

    #[test]
    fn the_environment_wins_and_google_needs_a_key() {
        let mut herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        herd.apply_env(env(&[("HERD_PLACES", ""), ("GOOGLE_PLACES_API_KEY", "")]))
            .unwrap();
        assert_eq!(herd.places.provider, ProviderKind::Offline);

        let e = herd
            .clone()
            .apply_env(env(&[("HERD_PLACES", "google")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("GOOGLE_PLACES_API_KEY: not set"), "{e}");
        let e = herd
            .clone()
            .apply_env(env(&[
                ("HERD_PLACES", "google"),
                ("GOOGLE_PLACES_API_KEY", "  "),
            ]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("GOOGLE_PLACES_API_KEY"), "{e}");
        for (var, value) in [
            ("HERD_PLACES", "bing"),
            ("HERD_PLACES_API", "v2"),
            ("HERD_PLACES_URL", "localhost:80"),
        ] {
            let e = herd
                .clone()
                .apply_env(env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(var), "{e}");
        }

        herd.apply_env(env(&[
            ("HERD_PLACES", "google"),
            ("HERD_PLACES_API", "legacy"),
            ("HERD_PLACES_URL", "http://127.0.0.1:8080/"),
            ("GOOGLE_PLACES_API_KEY", "s3cret-key"),
        ]))
        .unwrap();
        let g = &herd.places.google;
        assert_eq!(herd.places.provider, ProviderKind::Google);
        assert_eq!(g.api, GoogleApi::Legacy);
        assert_eq!(g.base_url(), "http://127.0.0.1:8080");
        assert_eq!(g.key.as_ref().map(ApiKey::expose), Some("s3cret-key"));
        let shown = format!("{herd:?}");
        assert!(
            !shown.contains("s3cret"),
            "the key is never printed: {shown}"
        );
        assert!(shown.contains("redacted"));
    }
}
