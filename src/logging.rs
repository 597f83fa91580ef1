//! Logging: to stderr at the level `RUST_LOG` sets, and to one file per server
//! (`<log-dir>/<Name>.log`) with everything the server saw and said. Events are
//! routed to a server's file by the `server{name=...}` span they happen in, so
//! `herd up` (every server in one process) still gets one file per server.

use std::{
    io::{self, IsTerminal as _},
    path::Path,
    sync::Arc,
};

use tracing::{
    Subscriber,
    field::{Field, Visit},
    level_filters::LevelFilter,
    span,
};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{
    EnvFilter, Layer,
    field::MakeExt as _,
    filter::{FilterExt as _, Targets, dynamic_filter_fn},
    fmt::format::debug_fn,
    layer::{Context, SubscriberExt as _},
    registry::{LookupSpan, Registry},
    util::SubscriberInitExt as _,
};

/// Keeps the file writers alive; dropping it flushes them.
#[must_use = "dropping the guard stops the log files"]
#[derive(Debug)]
pub struct LogGuard {
    _guards: Vec<WorkerGuard>,
}

/// The name of the server a span belongs to, kept in the span's extensions.
struct ServerTag(Arc<str>);

/// Records the `name` field of every `server` span as a [`ServerTag`].
struct TagServers;

struct NameVisitor(Option<String>);

impl Visit for NameVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "name" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for TagServers {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "server" {
            return;
        }
        let mut visitor = NameVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(name), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(ServerTag(name.into()));
        }
    }
}

/// The format of log lines, on stderr and in the files alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber: stderr filtered by `RUST_LOG` (default `info`),
/// and a file per server in `log_dir` (created if missing) with herd's own events
/// at debug level (every line received and reply sent) and others' at info.
pub fn init(log_dir: &Path, servers: &[Arc<str>], format: LogFormat) -> io::Result<LogGuard> {
    std::fs::create_dir_all(log_dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create log directory {}: {e}", log_dir.display()),
        )
    })?;
    let stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer().with_writer(io::stderr);
    let stderr: BoxedLayer = match format {
        LogFormat::Text => stderr
            .with_ansi(io::stderr().is_terminal())
            .with_filter(stderr_filter)
            .boxed(),
        LogFormat::Json => stderr.json().with_filter(stderr_filter).boxed(),
    };
    let mut layers: Vec<BoxedLayer> = vec![Box::new(TagServers), stderr];

    let mut guards = Vec::new();
    for name in servers {
        let path = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open log file {}: {e}", path.display()),
                )
            })?;
        // Not lossy: every line received and every reply sent must reach the file,
        // so a full buffer makes the logging task wait rather than drop lines.
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(file);
        guards.push(guard);
        let name = name.clone();
        let mine = dynamic_filter_fn(move |meta, cx| {
            // Spans must pass, or the lookup below would not see them.
            meta.is_span()
                || cx.lookup_current().is_some_and(|span| {
                    span.scope().any(|s| {
                        s.extensions()
                            .get::<ServerTag>()
                            .is_some_and(|t| t.0 == name)
                    })
                })
        });
        let levels = Targets::new()
            .with_target("herd", LevelFilter::DEBUG)
            .with_default(LevelFilter::INFO);
        let file = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false);
        layers.push(match format {
            LogFormat::Text => file
                // A field formatter of its own type: span fields are formatted once per
                // type and shared, and the terminal's copy may carry colour codes.
                .fmt_fields(
                    debug_fn(|w, field, value| match field.name() {
                        "message" => write!(w, "{value:?}"),
                        name => write!(w, "{name}={value:?}"),
                    })
                    .delimited(" "),
                )
                .with_filter(levels.and(mine))
                .boxed(),
            LogFormat::Json => file.json().with_filter(levels.and(mine)).boxed(),
        });
    }

    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| io::Error::other(format!("logging already set up: {e}")))?;
    Ok(LogGuard { _guards: guards })
}
