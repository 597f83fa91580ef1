//! The `herd` command: `serve` one server of the herd file, or bring the whole herd
//! `up` in one process. The herd file is loaded and validated before any port is bound.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use herd::{
    config::{HerdConfig, ProviderKind},
    logging::{self, LogFormat},
    places::{self, OfflineProvider},
    server::{self, Listeners},
};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "herd",
    version,
    about = "A herd of location servers that flood updates over gRPC"
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
        /// The server's peer address.
        #[arg(long, default_value = "127.0.0.1:13001", value_name = "HOST:PORT")]
        addr: String,
        /// The service to ask about ("" for the whole server).
        #[arg(long, default_value = "")]
        service: String,
    },
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, only) = match &cli.command {
        Command::Serve { name, common } => (common, Some(name.as_str())),
        Command::Up { common } => (common, None),
        Command::Health { addr, service } => return health(addr, service),
    };

    let mut herd = match HerdConfig::load(common.config.as_deref()) {
        Ok(herd) => herd,
        Err(e) => return fail(2, &e),
    };
    if let Err(e) = herd.apply_env(|var| std::env::var(var).ok()) {
        return fail(2, &e);
    }
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

/// `herd health`: one Check call, for container health checks.
fn health(addr: &str, service: &str) -> ExitCode {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect()
            .await?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(reply.into_inner().status())
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(check) {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{}", status.as_str_name());
            ExitCode::from(1)
        }
        Err(e) => fail(1, &format!("health check of {addr} failed: {e}")),
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

    match logging::init(
        &common.log_dir,
        &names,
        common.log_format,
        herd.log.queue_lines,
    ) {
        Ok(guard) => *logs = Some(guard),
        Err(e) => return fail(1, &e),
    }
    if herd.places.provider == ProviderKind::Offline {
        offline.preload();
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));

    let mut runs: futures_util::stream::FuturesUnordered<_> = bound
        .into_iter()
        .map(|(server, listeners)| {
            let herd = herd.clone();
            let places = places.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(server::run(herd, server, listeners, places, shutdown))
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

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
    shutdown.cancel();
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("herd: {e}");
    ExitCode::from(code)
}
