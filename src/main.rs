//! The `herd` command: `serve` one server of the herd file, or bring the whole herd
//! `up` in one process. The herd file is loaded and validated before any port is bound.
//! The operators' tools (`client`, `status`, `topology`, `health`) live in the library
//! (`herd::client`, `herd::status`, `herd::probe`); this file only parses and dispatches.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use herd::{
    config::{HerdConfig, ProviderKind},
    logging::{self, LogFormat},
    membership::Reloader,
    places::{self, OfflineProvider},
    server::{self, Listeners},
};
use tokio_util::sync::CancellationToken;

/// Every variable herd reads, with its default, for `--help`.
const ENVIRONMENT: &str = "\
Environment (a flag, when given, wins):
  HERD_CONFIG            the herd file (default: the built-in copy of deploy/herd.toml)
  HERD_LOG_FORMAT        text (default) or json
  RUST_LOG               stderr log filter (default: info); an invalid filter stops herd
  HERD_PLACES            offline (default) or google; wins over the herd file
  HERD_PLACES_API        new (default) or legacy: the Google API
  HERD_PLACES_URL        the Google base URL (default: Google's for the API)
  GOOGLE_PLACES_API_KEY  the Google key (read only from here; never logged)
  HERD_SECRET_FILE       a file holding the herd secret (wins over [auth] secret_file;
                         never put the secret itself on a command line)
  HERD_HISTORY           `herd client`'s history file (default: ~/.herd_history)
  HERD_DATA_DIR          the data dir (default: none, state in memory only)
  HERD_FSYNC             always, everysec (default) or no: when a reply waits for the disk

Docs: README.md and docs/PROTOCOL.md in the repository.";

#[derive(Parser, Debug)]
#[command(
    name = "herd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("HERD_COMMIT"), ")"),
    about = "A herd of location servers that flood updates over gRPC",
    after_help = ENVIRONMENT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one server of the herd file.
    Serve {
        /// The server's name in the herd file (e.g. Goloman).
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Run every server of the herd file in this process, each with its own listeners.
    Up {
        #[command(flatten)]
        common: Common,
    },
    /// Ask a server's gRPC health service whether it is SERVING (exit 0) or not (exit 1).
    Health {
        /// The server's peer address (default: --server's in the herd file, else
        /// 127.0.0.1:13001).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
        /// The service to ask about ("" for the whole server).
        #[arg(long, default_value = "")]
        service: String,
        /// The herd file whose [tls] and secret to use (default: the built-in one).
        #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The server asked (its certificate must name it, with [tls]; default: the
        /// server of the herd file whose peer port is --addr's).
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
    },
    /// Ask a running server to re-read and apply its herd file (as SIGHUP does; with
    /// `herd up`, every server of that process). Exit 0: applied (or nothing to
    /// change); 1: refused (an invalid file, or a change that needs a restart), the
    /// running herd untouched; 2: the server cannot be reached, or usage.
    Reload {
        /// The server's peer address (default: --server's in the herd file, else
        /// 127.0.0.1:13001).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
        /// The herd file whose [tls] and secret to use (default: the built-in one).
        /// The server re-reads its own file, not this one.
        #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The server asked (with [tls] its certificate must name it).
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
    },
    /// Wait until a server serves, every link of it is up, and it has caught up from
    /// its neighbours (what a rolling restart waits for before the next server).
    /// Exit 0: ready; 1: not ready within --timeout (says what is missing); 2: usage.
    Wait {
        /// The server waited for (its peer port is the herd file's).
        #[arg(long, value_name = "NAME")]
        server: String,
        /// The herd file (default: the built-in copy of deploy/herd.toml).
        #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Make a CA and a certificate and key per server of the herd file, for its [tls]
    /// table: DIR/ca.pem, DIR/NAME.pem, DIR/NAME.key (and DIR/ca.key).
    Certs {
        /// The herd file (default: the built-in copy of deploy/herd.toml).
        #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where to write them (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Talk to a client port: interactive (history, readable replies, the reason for a
    /// `?`), one command from the arguments, or lines from stdin.
    /// Exit 0: every line answered; 1: some `?` reply; 2: cannot connect, or usage.
    Client(ClientArgs),
    /// The whole herd at a glance: every server's health, records, updates/s, and
    /// every link's state and queue. Exit 0 when all serve and every link is up, else 1.
    Status {
        #[command(flatten)]
        ask: AskArgs,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The herd file and live link states as a picture (Graphviz DOT; SVG or PNG
    /// through `dot` when Graphviz is installed). Exit 0 when drawn and all serve with
    /// every link up; 1 when drawn with a server or link down (as `status`); 2 when not drawn.
    Topology {
        #[command(flatten)]
        ask: AskArgs,
        /// dot, svg or png (default: from --out's extension, else dot).
        #[arg(long, value_name = "FORMAT")]
        format: Option<String>,
        /// Where to write it (default: stdout, for dot only).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// HOST:PORT or PORT of a client port (default 127.0.0.1:12001), then, optionally,
    /// one command (e.g. `herd client 12004 IAMAT kiwi +34-118 1520023934`).
    #[arg(value_name = "ADDR] [COMMAND", num_args = 0.., trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
    /// Print the server's bytes exactly (the default when stdout is not a terminal).
    #[arg(long, conflicts_with = "pretty")]
    raw: bool,
    /// Print replies for reading (the default on a terminal).
    #[arg(long)]
    pretty: bool,
    /// How long one reply may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

#[derive(Args, Debug)]
struct AskArgs {
    /// The herd file (default: the built-in copy of deploy/herd.toml).
    #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dial every server at this host instead of the file's (e.g. 127.0.0.1 for the
    /// compose herd, whose file names containers).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Between the two metrics scrapes that give updates/s.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    interval: Duration,
    /// For each call to a server.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

/// `500ms`, `2s`, `1m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 2s, 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: the unit is ms, s or m")),
    }
}

#[derive(Args, Debug)]
struct Common {
    /// The herd file (default: the built-in copy of deploy/herd.toml).
    #[arg(long, env = "HERD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where each server writes its log file, <NAME>.log (created if missing).
    #[arg(long, default_value = "logs", value_name = "DIR")]
    log_dir: PathBuf,
    /// Log lines as `text` or `json` (one object per line), on stderr and in the files.
    #[arg(
        long,
        env = "HERD_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
    /// Keep state in DIR across restarts (`herd up`: DIR/<NAME> per server); without
    /// it (and without HERD_DATA_DIR or the herd file's data_dir) state is in memory only.
    #[arg(long, env = "HERD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When an IAMAT's reply may leave: `always` (its record is on disk), `everysec`
    /// (written; synced about once a second; the default) or `no` (written).
    #[arg(long, env = "HERD_FSYNC", value_name = "POLICY")]
    fsync: Option<herd::durable::Fsync>,
}

fn main() -> ExitCode {
    // Two rustls providers are in the dependency tree (ring, chosen here, and the one
    // reqwest's feature set could pull in): without a process default, building a TLS
    // config panics. Err only means one was installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let (common, only) = match &cli.command {
        Command::Serve { name, common } => (common, Some(name.as_str())),
        Command::Up { common } => (common, None),
        Command::Health {
            addr,
            service,
            config,
            server,
        } => {
            return health(
                addr.as_deref(),
                service,
                config.as_deref(),
                server.as_deref(),
            );
        }
        Command::Certs { config, out } => return certs(config.as_deref(), out),
        Command::Reload {
            addr,
            config,
            server,
        } => return reload(addr.as_deref(), config.as_deref(), server.as_deref()),
        Command::Wait {
            server,
            config,
            timeout,
        } => return wait(server, config.as_deref(), *timeout),
        Command::Client(args) => return client(args),
        Command::Status { ask, json } => return status(ask, *json),
        Command::Topology { ask, format, out } => {
            return topology(ask, format.as_deref(), out.as_deref());
        }
    };

    // An invalid filter would otherwise be dropped for the default without a word.
    if let Ok(filter) = std::env::var("RUST_LOG")
        && let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&filter)
    {
        return fail(
            2,
            &format!("RUST_LOG={filter:?} is not a valid log filter: {e}"),
        );
    }
    let herd = match load_herd(common, only.is_none()) {
        Ok(herd) => herd,
        Err(e) => return fail(2, &e),
    };
    let names: Vec<Arc<str>> = match only {
        Some(name) => match herd.server(name) {
            Ok(s) => vec![s.name.clone()],
            Err(e) => return fail(2, &e),
        },
        None => herd.servers.iter().map(|s| s.name.clone()).collect(),
    };

    if let Err(e) = herd::raise_open_file_limit() {
        eprintln!("herd: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
    };
    let mut logs = None;
    let code = runtime.block_on(run(Arc::new(herd), names, common, &mut logs));
    // Tasks that outlived the servers' grace period get a moment more, but blocking
    // work (the places index may still be loading when a signal comes early) is not
    // waited for. Only then are the logs written out, so those tasks' lines are kept.
    runtime.shutdown_timeout(Duration::from_millis(200));
    drop(logs);
    code
}

/// The herd file as a server reads it, at start and on every reload: the file (or
/// the built-in one), the environment, then the command line's overrides.
fn load_herd(common: &Common, per_server: bool) -> Result<HerdConfig, String> {
    let mut herd = HerdConfig::load(common.config.as_deref()).map_err(|e| e.to_string())?;
    herd.apply_env(|var| std::env::var(var).ok())
        .map_err(|e| e.to_string())?;
    if let Some(dir) = &common.data_dir {
        herd.data_dir = Some(dir.clone());
    }
    if let Some(fsync) = common.fsync {
        herd.data.fsync = fsync;
    }
    herd.data_per_server = per_server;
    Ok(herd)
}

/// The herd file a tool that asks servers uses, with `HERD_SECRET_FILE` applied (the
/// rest of the environment is the servers' business), and how to reach its servers.
fn herd_for_asking(path: Option<&Path>) -> Result<(HerdConfig, herd::probe::Access), ExitCode> {
    let mut herd = HerdConfig::load(path).map_err(|e| fail(2, &e))?;
    herd.apply_env(|var| {
        (var == "HERD_SECRET_FILE")
            .then(|| std::env::var(var).ok())
            .flatten()
    })
    .map_err(|e| fail(2, &e))?;
    let access = herd::probe::Access::of(&herd).map_err(|e| fail(2, &e))?;
    Ok((herd, access))
}

/// The address and name of the server a tool asks: `--addr`, else `--server`'s in
/// the herd file, else 127.0.0.1:13001; the name is `--server`, else the server of
/// the file whose peer port `addr` is (with [tls] one is needed).
fn target(
    herd: &HerdConfig,
    access: &herd::probe::Access,
    addr: Option<&str>,
    server: Option<&str>,
) -> Result<(String, String), ExitCode> {
    let named = server
        .map(|name| herd.server(name))
        .transpose()
        .map_err(|e| fail(2, &e))?;
    let addr = match (addr, named) {
        (Some(a), _) => a.to_owned(),
        (None, Some(s)) => format!("{}:{}", s.host, s.peer_port),
        (None, None) => "127.0.0.1:13001".to_owned(),
    };
    let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let name = match named {
        Some(s) => s.name.to_string(),
        None => match herd.servers.iter().find(|s| Some(s.peer_port) == port) {
            Some(s) => s.name.to_string(),
            None if access.tls.is_some() => {
                return Err(fail(
                    2,
                    &format!(
                        "{addr} is no server's peer port in the herd file: say --server NAME, the name its certificate must carry"
                    ),
                ));
            }
            None => String::new(),
        },
    };
    Ok((addr, name))
}

/// `herd wait`: until the server is ready for the next step of a rolling restart.
fn wait(server: &str, config: Option<&Path>, timeout: Duration) -> ExitCode {
    let (herd, access) = match herd_for_asking(config) {
        Ok(h) => h,
        Err(code) => return code,
    };
    if let Err(e) = herd.server(server) {
        return fail(2, &e);
    }
    let runtime = match current_thread() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(herd::probe::wait_ready(&herd, &access, server, timeout)) {
        Ok(r) => {
            println!(
                "{server} ready: serving after {:.1}s, links up after {:.1}s, caught up after {:.1}s",
                r.serving.as_secs_f64(),
                r.links_up.as_secs_f64(),
                r.caught_up.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e),
    }
}

/// `herd reload`: one Admin/Reload call.
fn reload(addr: Option<&str>, config: Option<&Path>, server: Option<&str>) -> ExitCode {
    let (access, addr, name, runtime) = match one_server(config, addr, server) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match runtime.block_on(herd::probe::reload(
        &addr,
        &name,
        &access,
        Duration::from_secs(10),
    )) {
        Ok(reply) => {
            println!("{}", reply.result);
            for s in &reply.servers {
                let list = |l: &[String]| {
                    if l.is_empty() {
                        "-".to_owned()
                    } else {
                        l.join(",")
                    }
                };
                println!(
                    "{}: added {} removed {} redialled {}",
                    s.server,
                    list(&s.added),
                    list(&s.removed),
                    list(&s.redialled)
                );
            }
            ExitCode::SUCCESS
        }
        Err(herd::probe::ReloadError::Refused(why)) => fail(1, &format!("reload refused: {why}")),
        Err(herd::probe::ReloadError::Probe(e)) => fail(2, &format!("reload failed: {e}")),
    }
}

/// `herd health`: one Check call, for container health checks.
fn health(
    addr: Option<&str>,
    service: &str,
    config: Option<&Path>,
    server: Option<&str>,
) -> ExitCode {
    use herd::probe::ServingStatus;
    let (access, addr, name, runtime) = match one_server(config, addr, server) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match runtime.block_on(herd::probe::health(
        &addr,
        &name,
        &access,
        service,
        Duration::from_secs(2),
    )) {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{}", status.as_str_name());
            ExitCode::from(1)
        }
        Err(e) => fail(1, &format!("health check failed: {e}")),
    }
}

/// `herd certs`: a CA and a certificate per server of the herd file.
fn certs(config: Option<&Path>, out: &Path) -> ExitCode {
    let herd = match HerdConfig::load(config) {
        Ok(herd) => herd,
        Err(e) => return fail(2, &e),
    };
    match herd::auth::make_certs(&herd, out) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e),
    }
}

/// What `herd health` and `herd reload` ask with: the herd file's secret and TLS, the
/// server's peer address and name (`target`), and a runtime for the one call.
fn one_server(
    config: Option<&Path>,
    addr: Option<&str>,
    server: Option<&str>,
) -> Result<(herd::probe::Access, String, String, tokio::runtime::Runtime), ExitCode> {
    let (herd, access) = herd_for_asking(config)?;
    let (addr, name) = target(&herd, &access, addr, server)?;
    Ok((access, addr, name, current_thread()?))
}

fn current_thread() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(1, &format!("cannot start the runtime: {e}")))
}

/// `herd client`: exit 0 when every line was answered, 1 when some got `?`, 2 when
/// the server cannot be reached (or the arguments are wrong).
fn client(args: &ClientArgs) -> ExitCode {
    use herd::client::{ClientOptions, Outcome, Output};
    let mut words = args.words.as_slice();
    // The first word is the address when it looks like one (HOST:PORT or PORT);
    // commands are upper-case words, never numbers or HOST:PORT.
    let addr = match words.first() {
        Some(w) if w.parse::<u16>().is_ok() => {
            words = &words[1..];
            format!("127.0.0.1:{w}")
        }
        Some(w) if w.contains(':') => {
            words = &words[1..];
            w.clone()
        }
        _ => "127.0.0.1:12001".to_owned(),
    };
    let output = if args.raw {
        Some(Output::Raw)
    } else if args.pretty {
        Some(Output::Pretty)
    } else {
        None
    };
    let history = std::env::var_os("HERD_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".herd_history")));
    let opts = ClientOptions {
        addr,
        command: (!words.is_empty()).then(|| words.join(" ")),
        output,
        timeout: args.timeout,
        history,
    };
    match herd::client::run(&opts) {
        Ok(Outcome::Answered) => ExitCode::SUCCESS,
        Ok(Outcome::SomeRejected) => ExitCode::from(1),
        Err(e) => fail(2, &e),
    }
}

/// Loads the herd file for `status` and `topology` and asks every server.
fn ask_herd(ask: &AskArgs) -> Result<herd::status::HerdStatus, ExitCode> {
    let (herd, access) = herd_for_asking(ask.config.as_deref())?;
    let opts = herd::status::StatusOptions {
        host: ask.host.clone(),
        interval: ask.interval,
        timeout: ask.timeout,
        access,
    };
    Ok(current_thread()?.block_on(herd::status::gather(&herd, &opts)))
}

fn status(ask: &AskArgs, json: bool) -> ExitCode {
    let st = match ask_herd(ask) {
        Ok(st) => st,
        Err(code) => return code,
    };
    if json {
        println!("{}", herd::status::render_json(&st));
    } else {
        print!("{}", herd::status::render_text(&st));
    }
    if st.all_well() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn topology(ask: &AskArgs, format: Option<&str>, out: Option<&std::path::Path>) -> ExitCode {
    let format = format
        .map(str::to_owned)
        .or_else(|| {
            out.and_then(|p| p.extension())
                .map(|e| e.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "dot".to_owned());
    if !matches!(format.as_str(), "dot" | "svg" | "png") {
        return fail(2, &format!("--format {format}: dot, svg or png"));
    }
    if format != "dot" && out.is_none() {
        return fail(2, &format!("--format {format} needs --out FILE"));
    }
    let st = match ask_herd(ask) {
        Ok(st) => st,
        Err(code) => return code,
    };
    let dot = herd::status::render_dot(&st);
    let written = match (format.as_str(), out) {
        ("dot", None) => {
            print!("{dot}");
            Ok(())
        }
        ("dot", Some(path)) => {
            std::fs::write(path, &dot).map_err(|e| format!("{}: {e}", path.display()))
        }
        (_, Some(path)) => render(&dot, &format, path),
        _ => unreachable!("checked above"),
    };
    match written {
        Ok(()) if st.all_well() => ExitCode::SUCCESS,
        // Drawn, but something is down: scripts can tell without reading the picture.
        Ok(()) => ExitCode::from(1),
        Err(e) => fail(2, &e),
    }
}

/// Runs Graphviz's `dot` to draw `dot` as `format` into `path`.
fn render(dot: &str, format: &str, path: &std::path::Path) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("dot")
        .arg(format!("-T{format}"))
        .arg("-o")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "Graphviz's `dot` is not installed (Debian: apt-get install graphviz); \
                 --format dot writes the graph without it"
                    .to_owned()
            } else {
                format!("cannot run dot: {e}")
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot.as_bytes())
            .map_err(|e| format!("writing to dot: {e}"))?;
    }
    match child.wait() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("dot failed ({s})")),
        Err(e) => Err(format!("dot: {e}")),
    }
}

async fn run(
    herd: Arc<HerdConfig>,
    names: Vec<Arc<str>>,
    common: &Common,
    logs: &mut Option<logging::LogGuard>,
) -> ExitCode {
    let offline = OfflineProvider::new();
    let places = match places::stack(&herd.places, offline.clone()) {
        Ok(p) => p,
        Err(e) => return fail(2, &format!("places: {e}")),
    };

    let mut bound = Vec::with_capacity(names.len());
    for name in &names {
        let Ok(server) = herd.server(name) else {
            continue;
        };
        match Listeners::bind(server).await {
            Ok(l) => bound.push((server.clone(), l)),
            Err(e) => return fail(1, &e),
        }
    }

    match logging::init(&common.log_dir, &names, common.log_format, herd.log) {
        Ok(guard) => *logs = Some(guard),
        Err(e) => return fail(1, &e),
    }
    if herd.places.provider == ProviderKind::Offline {
        offline.preload();
    }

    let shutdown = CancellationToken::new();
    let per_server = herd.data_per_server;
    let reload_args = Common {
        config: common.config.clone(),
        log_dir: common.log_dir.clone(),
        log_format: common.log_format,
        data_dir: common.data_dir.clone(),
        fsync: common.fsync,
    };
    let reloader = Reloader::new(
        herd.clone(),
        Some(Box::new(move || load_herd(&reload_args, per_server))),
    );
    tokio::spawn(signals(shutdown.clone(), names.clone(), reloader.clone()));

    let mut runs: futures_util::stream::FuturesUnordered<_> = bound
        .into_iter()
        .map(|(server, listeners)| {
            let reloader = reloader.clone();
            let places = places.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(server::run_reloadable(
                reloader, server, listeners, places, shutdown,
            ))
        })
        .collect();
    let mut code = ExitCode::SUCCESS;
    while let Some(result) = futures_util::StreamExt::next(&mut runs).await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "server failed");
                code = ExitCode::from(1);
            }
            Err(e) => {
                tracing::error!(error = %e, "server task panicked");
                code = ExitCode::from(1);
            }
        }
        // One server failing takes the process down cleanly rather than half-running.
        shutdown.cancel();
    }
    code
}

/// The process's signals, all handled here: SIGTERM or SIGINT cancels `shutdown`;
/// SIGHUP (which would otherwise kill the process) reopens the log files, for
/// logrotate, then reloads the herd file (every server of the process; see
/// `herd::membership`), and never stops a server.
async fn signals(shutdown: CancellationToken, servers: Vec<Arc<str>>, reloader: Arc<Reloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return;
    };
    let which = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                logging::reopen();
                // In each server's span, so that the line lands in each one's
                // (reopened) file.
                for name in &servers {
                    tracing::info_span!("server", name = &**name).in_scope(|| {
                        tracing::info!(signal = "SIGHUP", "log file reopened");
                    });
                }
                // Logged on every server, applied or refused; reading the file blocks.
                let reloader = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        }
    };
    tracing::info!(signal = which, "shutting down");
    shutdown.cancel();
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("herd: {e}");
    ExitCode::from(code)
}
