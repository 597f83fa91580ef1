//! Logging: to stderr at the level `RUST_LOG` sets, and to one file per server
//! (`<log-dir>/<Name>.log`) with everything the server saw and said. Both are
//! tracing-subscriber's `fmt` layers (text or JSON); the files are written by
//! tracing-appender's non-blocking workers, one per server. Events are routed to a
//! server's file by the `server{name=...}` span they happen in, so `herd up` (every
//! server in one process) still gets one file per server. Each file is rotated by
//! size and reopened on SIGHUP ([`reopen`]).

use std::{
    cell::Cell,
    fs::File,
    io::{self, IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use tracing::{
    Subscriber,
    field::{Field, Visit},
    level_filters::LevelFilter,
    span,
};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter, Layer,
    field::RecordFields,
    filter::Targets,
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter,
        format::{DefaultFields, Writer},
        time::FormatTime as _,
        writer::EitherWriter,
    },
    layer::{Context, SubscriberExt as _},
    registry::{LookupSpan, Registry},
    util::SubscriberInitExt as _,
};

/// Keeps the log files' writers running; dropping it writes out every line logged
/// before (each worker gets about a second to finish) and stops them.
#[must_use = "dropping the guard stops writing the log files"]
#[derive(Debug)]
pub struct LogGuard {
    _workers: Vec<WorkerGuard>,
}

/// The default of `[log] queue_lines`: how many lines may wait for a server's log
/// writer before new ones are dropped (and counted in `herd_log_lines_dropped_total`)
/// rather than make a worker wait. The writer keeps up with hundreds of MB/s, so the
/// queue only fills when the disk stalls or the writer thread gets no CPU: 16,384
/// lines is a fifth of a second of a busy server's WHATSAT traffic, and at most
/// about 60 MB of those 3.6 KB lines (tracing-appender's own default, 128,000, would
/// be nearly half a GB per server).
pub const DEFAULT_QUEUE_LINES: usize = 16_384;

/// How many log lines of server `name` were dropped because its log writer fell
/// [`DEFAULT_QUEUE_LINES`] (or `[log] queue_lines`) behind; 0 before [`init`].
pub fn dropped_lines(name: &str) -> u64 {
    counts(name).map_or(0, |c| c.dropped.dropped_lines() as u64)
}

/// How many times server `name`'s log file was rotated (it reached `[log]
/// max_file_bytes`); 0 before [`init`].
pub fn rotations(name: &str) -> u64 {
    counts(name).map_or(0, |c| c.rotations.load(Ordering::Relaxed))
}

fn counts(name: &str) -> Option<&'static ServerCounts> {
    COUNTS.get()?.iter().find(|c| &*c.name == name)
}

/// The target of the events for the lines a client sends, one per line with its
/// reply (at info; a WHATSAT's JSON at debug, in an event of its own). Stderr shows
/// them only when `RUST_LOG` names this target: they are the files' business.
pub const LINES: &str = "herd::lines";

/// The defaults of `[log] max_file_bytes` and `[log] max_files`: a server keeps at
/// most 500 MiB of log, its current file and four rotated ones.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 100 << 20;
pub const DEFAULT_MAX_FILES: usize = 5;

/// How the servers' files are written: the `[log]` table of the herd file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSettings {
    /// The file's level for [`LINES`]: info, or debug for WHATSAT replies' JSON too.
    pub level: LevelFilter,
    pub queue_lines: usize,
    pub max_file_bytes: u64,
    pub max_files: usize,
}

impl Default for FileSettings {
    fn default() -> FileSettings {
        FileSettings {
            level: LevelFilter::INFO,
            queue_lines: DEFAULT_QUEUE_LINES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// The format of log lines, on stderr and in the files alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines: tracing-subscriber's full format.
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

/// Installs the global subscriber: stderr filtered by `RUST_LOG` (default `info`;
/// [`LINES`] only if named), and a file per server in `log_dir` (created if
/// missing, rotated by size) with herd's own events at debug level, the lines
/// received at `settings.level`, and others' at info, each written by a worker
/// thread that holds at most `settings.queue_lines` lines.
pub fn init(
    log_dir: &Path,
    servers: &[Arc<str>],
    format: LogFormat,
    settings: FileSettings,
) -> io::Result<LogGuard> {
    let env = std::env::var("RUST_LOG").unwrap_or_default();
    let mut stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if !env.contains(LINES) {
        stderr_filter =
            stderr_filter.add_directive(format!("{LINES}=off").parse().expect("a directive"));
    }
    let ansi = io::stderr().is_terminal();
    let stderr = tracing_subscriber::fmt::layer().with_writer(io::stderr);
    let stderr: BoxedLayer = match format {
        LogFormat::Text => stderr
            .with_ansi(ansi)
            .fmt_fields(OneLine)
            .with_filter(stderr_filter)
            .boxed(),
        LogFormat::Json => stderr.json().with_filter(stderr_filter).boxed(),
    };
    let files = Files::open(log_dir, servers, format, settings)?;
    let _ = COUNTS.set(files.counts);
    let mut layers = files.layers;
    layers.push(stderr);
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| io::Error::other(format!("logging already set up: {e}")))?;
    Ok(LogGuard {
        _workers: files.workers,
    })
}

/// The file side: the layers that route events to the servers' files, and what
/// keeps those files written.
struct Files {
    layers: Vec<BoxedLayer>,
    counts: Vec<ServerCounts>,
    workers: Vec<WorkerGuard>,
}

impl Files {
    fn open(
        log_dir: &Path,
        servers: &[Arc<str>],
        format: LogFormat,
        settings: FileSettings,
    ) -> io::Result<Files> {
        std::fs::create_dir_all(log_dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create log directory {}: {e}", log_dir.display()),
            )
        })?;
        let mut writers = Vec::with_capacity(servers.len());
        let mut counts = Vec::with_capacity(servers.len());
        let mut workers = Vec::with_capacity(servers.len());
        for name in servers {
            let file = Rotating::open(
                log_dir.join(format!("{name}.log")),
                settings.max_file_bytes,
                settings.max_files,
            )?;
            let rotations = file.rotations.clone();
            let (writer, worker) = NonBlockingBuilder::default()
                .lossy(true)
                .buffered_lines_limit(settings.queue_lines)
                .thread_name(&format!("herd-log-{name}"))
                .finish(Paced::new(file));
            counts.push(ServerCounts {
                name: name.clone(),
                dropped: writer.error_counter(),
                rotations,
            });
            writers.push(writer);
            workers.push(worker);
        }
        let router = Router { writers };
        let levels = Targets::new()
            .with_target(LINES, settings.level)
            .with_target("herd", LevelFilter::DEBUG)
            .with_default(LevelFilter::INFO);
        let file = tracing_subscriber::fmt::layer()
            .with_writer(router)
            .with_timer(CachedSecond)
            .with_ansi(false);
        let file: BoxedLayer = match format {
            LogFormat::Text => file
                .fmt_fields(OneLine)
                .event_format(TextFormat::new())
                .with_filter(levels.clone())
                .boxed(),
            LogFormat::Json => file.json().with_filter(levels.clone()).boxed(),
        };
        let tags = TagServers {
            names: servers.to_vec(),
        };
        Ok(Files {
            // In this order: the tags layer sees each event first, for the router.
            // Filtered as the files are: unfiltered, it would enable every event of
            // every level for the whole process (the subscriber's max level would be
            // TRACE), so each `trace!` in herd, tonic, hyper and h2 would be built and
            // dispatched to it only for the files' filter to drop it.
            layers: vec![Box::new(tags.with_filter(levels)), file],
            counts,
            workers,
        })
    }
}

/// How much the writer gathers before it writes to the file (and whatever it holds
/// once its queue is empty).
const WRITE_SIZE: usize = 64 << 10;

/// Picks the file of the server whose span the event happens in (events outside any
/// server's span go to no file; with one server, every event goes to its file), for
/// the text and JSON formats alike.
///
/// One layer that picks its writer, rather than a layer per server each filtered to
/// its server's spans: an event then costs one look at its span's tag whatever the
/// number of servers (a filter per server would ask each of `herd up`'s five on
/// every event). A `MakeWriter` is not shown the event, and cannot ask the
/// dispatcher for the current span while it handles one (the dispatcher refuses
/// re-entry, except a global one), so [`TagServers`], the layer just before the
/// file layer, leaves the event's server in [`EVENT_SERVER`] for it.
struct Router {
    /// In the order of [`TagServers::names`].
    writers: Vec<NonBlocking>,
}

impl Router {
    fn pick(&self) -> Option<&NonBlocking> {
        if let [only] = &self.writers[..] {
            return Some(only);
        }
        let server = EVENT_SERVER.try_with(Cell::get).ok().flatten()?;
        self.writers.get(server)
    }
}

thread_local! {
    /// The server of the event this thread is handling, set by [`TagServers`].
    static EVENT_SERVER: Cell<Option<usize>> = const { Cell::new(None) };
}

impl<'a> MakeWriter<'a> for Router {
    type Writer = EitherWriter<NonBlocking, io::Sink>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::B(io::sink())
    }

    fn make_writer_for(&'a self, _: &tracing::Metadata<'_>) -> Self::Writer {
        match self.pick() {
            Some(writer) => EitherWriter::A(writer.clone()),
            None => EitherWriter::B(io::sink()),
        }
    }
}

/// The server (its index in [`TagServers::names`]) a span belongs to, kept in the
/// extensions of its `server` span and of every span inside it.
#[derive(Clone, Copy)]
struct ServerTag(usize);

/// Tags every `server` span by its `name` field, and every span inside one with the
/// same tag.
struct TagServers {
    names: Vec<Arc<str>>,
}

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
        let Some(span) = ctx.span(id) else { return };
        let tag = if attrs.metadata().name() == "server" {
            let mut visitor = NameVisitor(None);
            attrs.record(&mut visitor);
            visitor
                .0
                .and_then(|name| self.names.iter().position(|n| **n == *name))
                .map(ServerTag)
        } else {
            span.parent()
                .and_then(|p| p.extensions().get::<ServerTag>().copied())
        };
        if let Some(tag) = tag {
            span.extensions_mut().insert(tag);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        // With one server, the router needs no tag (every event goes to its file):
        // skip the span lookup and its extensions' lock.
        if self.names.len() == 1 {
            return;
        }
        // The event's own span (its explicit parent, or the current span) holds the
        // tag if any span around it does.
        let server = ctx
            .event_span(event)
            .and_then(|s| s.extensions().get::<ServerTag>().map(|t| t.0));
        let _ = EVENT_SERVER.try_with(|cell| cell.set(server));
    }
}

/// tracing-subscriber's field format, with every character that could end a line
/// or move a terminal's cursor written as an escape (`\n`, `\x1b`, `\u{2028}`): a
/// field or message made of remote text (a Google or peer error message, a
/// client's bytes) cannot start a line of its own. tracing-subscriber quotes `str`
/// fields and escapes ANSI in messages, but writes `%` values and the line ends in
/// messages as they are. Backslashes are left alone: `Escaped` values and quoted
/// strings are escaped already.
struct OneLine;

impl<'writer> FormatFields<'writer> for OneLine {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        DefaultFields::new().format_fields(Writer::new(&mut Unbroken(&mut writer)), fields)
    }
}

/// Writes to `.0` with line ends and other control characters escaped.
struct Unbroken<'a, 'w>(&'a mut Writer<'w>);

impl std::fmt::Write for Unbroken<'_, '_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let bytes = text.as_bytes();
        // Where the text not yet written starts; where the scan goes on.
        let (mut from, mut at) = (0, 0);
        let word = |w| below_space(w) | has_byte(w, 0x7f) | (w & HI);
        while let Some(found) = find(&bytes[at..], word, |b| !(0x20..0x7f).contains(&b)) {
            let i = at + found;
            let c = text[i..].chars().next().expect("a char starts here");
            at = i + c.len_utf8();
            // C0 controls, DEL, C1 controls (NEL among them), and the Unicode line
            // and paragraph separators; any other non-ASCII text is kept.
            if !(c.is_control() || c == '\u{2028}' || c == '\u{2029}') {
                continue;
            }
            self.0.write_str(&text[from..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if c.is_ascii() => write!(self.0, "\\x{:02x}", c as u32)?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            from = at;
        }
        self.0.write_str(&text[from..])
    }
}

/// The files' text format: tracing-subscriber's full format with the file layer's
/// settings (no ANSI, level and target shown, [`CachedSecond`]), its events of
/// [`LINES`] written by a shorter path that writes the same bytes. Those are one per
/// client line, nearly all that a busy server logs, and the full format's way (every
/// span name, field name and `=` painted through an ANSI style, even an empty one,
/// then written with `write!`) cost about 11,000 instructions a line in a callgrind
/// profile of a lone server under IAMATs, about half of each request's.
struct TextFormat {
    full: tracing_subscriber::fmt::format::Format<
        tracing_subscriber::fmt::format::Full,
        CachedSecond,
    >,
}

impl TextFormat {
    fn new() -> TextFormat {
        TextFormat {
            full: tracing_subscriber::fmt::format().with_timer(CachedSecond),
        }
    }
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if meta.target() != LINES || writer.has_ansi_escapes() {
            return self.full.format_event(ctx, writer, event);
        }
        if CachedSecond.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            tracing::Level::TRACE => " TRACE ",
            tracing::Level::DEBUG => " DEBUG ",
            tracing::Level::INFO => "  INFO ",
            tracing::Level::WARN => "  WARN ",
            tracing::Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = TextFields {
            out: Unbroken(&mut writer),
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The fields of an event as [`OneLine`] writes them (tracing-subscriber's
/// `DefaultVisitor` through [`Unbroken`]), less the empty ANSI styles. Its escapes
/// of the message (ESC, BEL, BS, FF, DEL, C1 controls) are Unbroken's too, byte
/// for byte, so Unbroken alone writes what the two did.
struct TextFields<'a, 'w> {
    out: Unbroken<'a, 'w>,
    first: bool,
    result: std::fmt::Result,
}

impl Visit for TextFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => self.record_debug(
                field,
                &format_args!("{value} {}.sources={}", field.name(), Sources(source)),
            ),
            None => self.record_debug(field, &format_args!("{value}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // Metadata of `log` records, shown elsewhere in the line.
        if name.starts_with("log.") {
            return;
        }
        let pad = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = match name {
            "message" => write!(self.out, "{pad}{value:?}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.out, "{pad}{name}={value:?}")
            }
        };
    }
}

/// An error and its sources as tracing-subscriber lists them: `[a, b]`.
struct Sources<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Sources<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(e) = next {
            list.entry(&format_args!("{e}"));
            next = e.source();
        }
        list.finish()
    }
}

/// tracing-subscriber's RFC 3339 time (`2026-12-02T07:00:26.617221Z`, UTC, to the
/// microsecond), with the part up to the second formatted once a second per thread
/// rather than at every line: `fmt::time::SystemTime` works out the calendar date
/// and writes the time through eight `fmt` calls on each event, which showed in a
/// profile of a busy server. A timer, not a formatter: the line is tracing-subscriber's.
struct CachedSecond;

thread_local! {
    /// The second [`CachedSecond`] last formatted on this thread, and its text.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl tracing_subscriber::fmt::time::FormatTime for CachedSecond {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        let (cached, mut text) = SECOND.get();
        if cached != secs {
            text = rfc3339_second(secs);
            SECOND.set((secs, text));
        }
        let mut frac = *b".000000Z";
        let mut micros = now.subsec_micros();
        for digit in frac[1..7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        // Both are ASCII digits and punctuation.
        w.write_str(std::str::from_utf8(&text).expect("ASCII"))?;
        w.write_str(std::str::from_utf8(&frac).expect("ASCII"))
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the Unix epoch, in UTC (years 1970-9999).
fn rfc3339_second(secs: u64) -> [u8; 19] {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days, after Howard Hinnant's `civil_from_days`.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    out
}

/// Each server's count of lines its queue had no room for, and of its file's
/// rotations (see [`dropped_lines`], [`rotations`]).
static COUNTS: OnceLock<Vec<ServerCounts>> = OnceLock::new();

struct ServerCounts {
    name: Arc<str>,
    dropped: ErrorCounter,
    rotations: Arc<AtomicU64>,
}

/// Bumped by [`reopen`]: each file's writer reopens its file (by name) before the
/// next line it writes when this moved since it last looked.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Has every server's log file reopened by name before its next line is written:
/// after logrotate (or an operator) moved the file away, lines go to a new file at
/// the old path rather than on into the moved one.
pub fn reopen() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
}

/// A server's log file, rotated by size and reopened on [`reopen`]. Before a line
/// that would take the file past `max_bytes` (unless it is the file's first), the
/// file becomes `<path>.1`, `<path>.1` becomes `<path>.2`, and so on, keeping
/// `max_files` files in all (`<path>.<max_files - 1>` is overwritten), and the line
/// starts a new file at `path`.
///
/// Ours, not a crate's: tracing-appender's `RollingFileAppender` (0.2.5) rotates by
/// time only, and the crates that rotate by size (file-rotate, logroller) write
/// through their own buffering and know nothing of line boundaries, the page-cache
/// dropping of [`DropBehind`], or reopening on a signal; this is fifty lines.
/// It sits above the `BufWriter`, where the worker hands it one whole line per
/// write, so a line is never split across two files.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    max_files: usize,
    out: io::BufWriter<DropBehind>,
    /// Bytes in the file at `path`, as far as this writer knows.
    written: u64,
    /// The [`REOPEN`] generation the file was opened in.
    opened_in: u64,
    rotations: Arc<AtomicU64>,
}

impl Rotating {
    fn open(path: PathBuf, max_bytes: u64, max_files: usize) -> io::Result<Rotating> {
        let opened_in = REOPEN.load(Ordering::Relaxed);
        let out = open_log(&path)?;
        Ok(Rotating {
            written: out.get_ref().end,
            path,
            max_bytes,
            max_files,
            out,
            opened_in,
            rotations: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Moves the files along and starts a new one at `path`. On a failure the
    /// writer goes on with the file it has (whatever name it now has): a log that
    /// cannot rotate keeps its lines rather than lose them.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let moved = (1..self.max_files).rev().try_for_each(|n| {
            let from = if n == 1 {
                self.path.clone()
            } else {
                numbered(n - 1)
            };
            match std::fs::rename(&from, numbered(n)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        });
        let fresh = moved.and_then(|()| {
            if self.max_files == 1 {
                std::fs::remove_file(&self.path).or_else(|e| match e.kind() {
                    io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })?;
            }
            open_log(&self.path)
        });
        match fresh {
            Ok(out) => {
                self.written = out.get_ref().end;
                self.out = out;
                self.rotations.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("herd: cannot rotate log file {}: {e}", self.path.display());
                // Not again at every line: at the next max_bytes.
                self.written = 0;
            }
        }
        Ok(())
    }

    fn reopen_if_asked(&mut self) -> io::Result<()> {
        let now = REOPEN.load(Ordering::Relaxed);
        if now == self.opened_in {
            return Ok(());
        }
        self.opened_in = now;
        self.out.flush()?;
        match open_log(&self.path) {
            Ok(out) => {
                self.written = out.get_ref().end;
                self.out = out;
            }
            Err(e) => eprintln!("herd: cannot reopen log file {}: {e}", self.path.display()),
        }
        Ok(())
    }
}

/// Opens (creating it if missing) the log file at `path` for appending.
fn open_log(path: &Path) -> io::Result<io::BufWriter<DropBehind>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", path.display()),
            )
        })?;
    Ok(io::BufWriter::with_capacity(
        WRITE_SIZE,
        DropBehind::new(file, path.to_path_buf()),
    ))
}

impl io::Write for Rotating {
    /// `line` is one whole log line: the worker writes each as it was queued.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.reopen_if_asked()?;
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.written += line.len() as u64;
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// How often, at most, a busy server's log writer wakes to write out what has queued.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Paces the non-blocking worker. The worker writes out after every batch it takes
/// off its queue, then sleeps until the next line: on a server answering 50,000
/// IAMATs a second that is a wake-up (a futex call by the sender, a context switch)
/// and a `write` per line or two: 16-17 us of server CPU per IAMAT, against 11-15
/// with the pacing below (and 10-12 for the writer herd had before; short runs on a
/// loaded 2-core machine, so noisy). After writing out, the worker sleeps out the
/// rest of [`WRITE_EVERY`] since it last did; lines queue meanwhile without waking it (a
/// busy server queues a few thousand, well within the queue), and none waits longer
/// than about that for the file. An idle server's first line is written at once.
struct Paced<W> {
    inner: W,
    last: std::time::Instant,
}

impl<W> Paced<W> {
    fn new(inner: W) -> Paced<W> {
        Paced {
            inner,
            last: std::time::Instant::now(),
        }
    }
}

impl<W: io::Write> io::Write for Paced<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.inner.write(data)
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        let written = self.inner.flush();
        let next = self.last + WRITE_EVERY;
        let now = std::time::Instant::now();
        if now < next {
            std::thread::sleep(next - now);
            self.last = next;
        } else {
            self.last = now;
        }
        written
    }
}

/// The log file under a server's non-blocking writer. A log is written once and
/// seldom read: written fast (a busy server logs hundreds of MB/s of WHATSAT
/// replies), it would fill memory that the kernel must first clear (on a VM each
/// fresh page-cache page cost about 3 s of CPU per GB) and push out what the machine
/// does read. So once [`DROP_EVERY`] bytes have been written since it last acted, it
/// starts writing those back, and drops from the page cache what it started writing
/// back the time before (on disk by now): drop-behind, as `dd oflag=nocache` does.
/// A slowly written log is left to the kernel's usual write-back, and the page still
/// being filled is never dropped.
struct DropBehind {
    file: File,
    path: std::path::PathBuf,
    /// Where the next write lands; where write-back was last started from, and up
    /// to; where the pages this file may still have in the page cache begin.
    end: u64,
    synced_to: u64,
    cached_from: u64,
    /// The last write failed (said once on stderr, not once a line).
    failing: bool,
}

/// How much a log is written between two rounds of [`DropBehind::forget`].
const DROP_EVERY: u64 = 1 << 20;

impl DropBehind {
    fn new(file: File, path: std::path::PathBuf) -> DropBehind {
        // What the file held before is left as it is.
        let len = file.metadata().map_or(0, |m| m.len());
        DropBehind {
            file,
            path,
            end: len,
            synced_to: len,
            cached_from: len,
            failing: false,
        }
    }

    #[cfg(target_os = "linux")]
    fn forget(&mut self) {
        use std::os::fd::AsRawFd as _;
        if self.end - self.synced_to < DROP_EVERY {
            return;
        }
        let fd = self.file.as_raw_fd();
        // Advice only: a failure (say, on a file system without page cache) changes
        // nothing that matters, so errors are ignored. DONTNEED drops only the whole
        // pages inside the range.
        // SAFETY: plain system calls on an open file descriptor this writer owns.
        unsafe {
            if self.synced_to > self.cached_from {
                // From the start of the page that straddled the last range's start:
                // its two parts were both written back a round or more ago.
                let from = self.cached_from / 4096 * 4096;
                libc::posix_fadvise(
                    fd,
                    from as i64,
                    (self.synced_to - from) as i64,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
            libc::sync_file_range(
                fd,
                self.synced_to as i64,
                (self.end - self.synced_to) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.cached_from = self.synced_to;
        self.synced_to = self.end;
    }

    #[cfg(not(target_os = "linux"))]
    fn forget(&mut self) {}
}

impl io::Write for DropBehind {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.file.write(data) {
            Ok(n) => {
                if std::mem::take(&mut self.failing) {
                    eprintln!("herd: log file {} is written again", self.path.display());
                }
                self.end += n as u64;
                self.forget();
                Ok(n)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    eprintln!("herd: cannot write log file {}: {e}", self.path.display());
                }
                // Part may have been written: page-cache advice starts over from the
                // file's real end.
                let len = self.file.metadata().map_or(self.end, |m| m.len());
                (self.end, self.synced_to, self.cached_from) = (len, len, len);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Bytes from the wire as one log-friendly line: UTF-8 text as it is; line ends,
/// tabs, other control bytes, backslashes and invalid UTF-8 escaped (`\n`, `\xff`).
pub struct Escaped<'a>(pub &'a [u8]);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Replies are mostly UTF-8 JSON: check that at once, then copy the runs
        // between the few bytes that need escaping.
        if let Ok(text) = std::str::from_utf8(self.0) {
            return write_escaped(text, f);
        }
        for chunk in self.0.utf8_chunks() {
            write_escaped(chunk.valid(), f)?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

fn write_escaped(text: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let bytes = text.as_bytes();
    let word = |w| below_space(w) | has_byte(w, 0x7f) | has_byte(w, b'\\');
    let mut from = 0;
    while let Some(at) = find(&bytes[from..], word, needs_escape) {
        let i = from + at;
        f.write_str(&text[from..i])?;
        match bytes[i] {
            b'\n' => f.write_str("\\n")?,
            b'\r' => f.write_str("\\r")?,
            b'\t' => f.write_str("\\t")?,
            b'\\' => f.write_str("\\\\")?,
            b => write!(f, "\\x{b:02x}")?,
        }
        from = i + 1;
    }
    f.write_str(&text[from..])
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == 0x7f || b == b'\\'
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Non-zero when some byte of `w` is below 0x20 (bytes of 0x80 and above never match).
fn below_space(w: u64) -> u64 {
    w.wrapping_sub(0x20 * LO) & !w & HI
}

/// Non-zero when some byte of `w` is `b`.
fn has_byte(w: u64, b: u8) -> u64 {
    let x = w ^ (u64::from(b) * LO);
    x.wrapping_sub(LO) & !x & HI
}

/// The first byte for which `byte` holds, eight bytes at a time: `word` is non-zero
/// for a word (eight bytes, little-endian) that holds such a byte.
fn find(bytes: &[u8], word: impl Fn(u64) -> u64, byte: impl Fn(u8) -> bool) -> Option<usize> {
    let mut words = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut words {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if word(w) != 0
            && let Some(i) = chunk.iter().position(|&b| byte(b))
        {
            return Some(base + i);
        }
        base += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| byte(b))
        .map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::{path::PathBuf, time::Duration};

    /// A fresh, empty directory for one test's logs.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "herd-logging-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `f` under the file layers of `servers` in `format`, then writes everything
    /// out (as at exit) and returns each server's log.
    fn logged(name: &str, servers: &[&str], format: LogFormat, f: impl FnOnce()) -> Vec<String> {
        let dir = temp_dir(name);
        let names: Vec<Arc<str>> = servers.iter().map(|&s| s.into()).collect();
        let files = Files::open(&dir, &names, format, FileSettings::default()).unwrap();
        let subscriber = tracing_subscriber::registry().with(files.layers);
        tracing::subscriber::with_default(subscriber, f);
        drop(files.workers);
        let logs = servers
            .iter()
            .map(|s| std::fs::read_to_string(dir.join(format!("{s}.log"))).unwrap())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        logs
    }

    #[test]
    fn the_file_format_is_tracing_subscribers_full_format() {
        let logs = logged("format", &["Goloman"], LogFormat::Text, || {
            let server = tracing::info_span!("server", name = "Goloman");
            let _s = server.enter();
            let client = tracing::info_span!("client", peer = "127.0.0.1:1");
            let _c = client.enter();
            tracing::debug!(line = %Escaped(b"A\tb\xff"), reason = "why", "answered");
            tracing::info!("plain");
            tracing::info!(message = "a str", n = 3);
            tracing::trace!("filtered out");
        });
        let lines: Vec<&str> = logs[0].lines().collect();
        assert_eq!(lines.len(), 3, "{}", logs[0]);
        // An RFC 3339 time, to the microsecond, in UTC.
        let (time, rest) = lines[0].split_at(27);
        assert!(
            time.ends_with('Z') && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.',
            "{time}"
        );
        assert_eq!(
            rest,
            r#" DEBUG server{name="Goloman"}:client{peer="127.0.0.1:1"}: herd::logging::tests: answered line=A\tb\xff reason="why""#
        );
        assert!(lines[1].ends_with(
            r#"  INFO server{name="Goloman"}:client{peer="127.0.0.1:1"}: herd::logging::tests: plain"#
        ));
        assert!(
            lines[2].ends_with(": herd::logging::tests: a str n=3"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn fields_a_span_records_later_join_its_text() {
        let logs = logged("record", &["Goloman"], LogFormat::Text, || {
            let late = tracing::info_span!("late", a = tracing::field::Empty);
            late.record("a", 1);
            let more = tracing::info_span!(parent: &late, "more", b = 2, c = tracing::field::Empty);
            more.record("c", "x");
            let _in = more.enter();
            tracing::info!("here");
        });
        assert!(
            logs[0].ends_with("  INFO late{a=1}:more{b=2 c=\"x\"}: herd::logging::tests: here\n"),
            "{}",
            logs[0]
        );
    }

    #[test]
    fn remote_text_cannot_start_a_log_line() {
        let google = "Quota exceeded.\n2026-12-02T00:00:00.000000Z  INFO forged: all is well";
        let logs = logged("one-line", &["Goloman"], LogFormat::Text, || {
            let server = tracing::info_span!("server", name = "Goloman");
            let _s = server.enter();
            let peer = tracing::info_span!("peer", status = %"up\r\nforged span");
            let _p = peer.enter();
            tracing::warn!(error = %google, "places lookup failed");
            tracing::warn!(reason = google, "neighbour refused the link");
            tracing::debug!("{google}");
            tracing::info!(sep = %"a\u{2028}b\u{85}c\x1b[2Jd", "separators");
        });
        let lines: Vec<&str> = logs[0].lines().collect();
        assert_eq!(lines.len(), 4, "{}", logs[0]);
        for line in &lines {
            assert!(line.contains(r"peer{status=up\r\nforged span}"), "{line}");
            assert!(!line.contains('\r'), "{line}");
        }
        assert!(
            lines[0].ends_with(r"places lookup failed error=Quota exceeded.\n2026-12-02T00:00:00.000000Z  INFO forged: all is well"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(r#"reason="Quota exceeded.\n2026"#),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with(
                r"tests: Quota exceeded.\n2026-12-02T00:00:00.000000Z  INFO forged: all is well"
            ),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].ends_with(r"separators sep=a\u{2028}b\u{85}c\x1b[2Jd"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn json_lines_are_one_object_each_and_keep_the_fields() {
        let logs = logged("json", &["Goloman"], LogFormat::Json, || {
            let server = tracing::info_span!("server", name = "Goloman");
            let _s = server.enter();
            tracing::debug!(line = %Escaped(b"IAMAT kiwi"), reply = "AT\nx", "answered");
            tracing::trace!("filtered out");
        });
        let lines: Vec<&str> = logs[0].lines().collect();
        assert_eq!(lines.len(), 1, "{}", logs[0]);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "DEBUG", "{v}");
        assert_eq!(v["fields"]["message"], "answered", "{v}");
        assert_eq!(v["fields"]["line"], "IAMAT kiwi", "{v}");
        assert_eq!(v["fields"]["reply"], "AT\nx", "{v}");
        // The server span's `name` field beside the span's own name, as
        // tracing-subscriber writes them (two `name` keys: a reader keeps one).
        assert!(
            lines[0].contains(r#""span":{"name":"Goloman","name":"server"}"#),
            "{}",
            lines[0]
        );
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    }

    #[test]
    fn each_server_gets_its_own_events_in_either_format() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let logs = logged("route", &["A", "B"], format, || {
                tracing::info!("outside every server");
                let a = tracing::info_span!("server", name = "A");
                let b = tracing::info_span!("server", name = "B");
                a.in_scope(|| {
                    tracing::info!("a's own");
                    // A span made inside A's, entered later: still A's.
                    let client = tracing::info_span!("client", peer = "1");
                    client.in_scope(|| tracing::debug!("a's client"));
                    let grpc = tracing::info_span!(parent: &b, "grpc", path = "/x");
                    grpc.in_scope(|| tracing::info!("b's grpc"));
                });
                b.in_scope(|| tracing::info!("b's own"));
            });
            let has = |log: &str, what: &str| log.contains(what);
            let (a, b) = (&logs[0], &logs[1]);
            assert!(
                has(a, "a's own") && has(a, "a's client"),
                "{format:?} A:\n{a}"
            );
            assert!(
                has(b, "b's own") && has(b, "b's grpc"),
                "{format:?} B:\n{b}"
            );
            assert!(
                !has(a, "b's") && !has(b, "a's"),
                "{format:?} A:\n{a}\nB:\n{b}"
            );
            assert!(!has(a, "outside") && !has(b, "outside"), "{format:?}");
            assert_eq!((a.lines().count(), b.lines().count()), (2, 2), "{format:?}");
        }
    }

    #[test]
    fn with_one_server_every_event_goes_to_its_file() {
        let logs = logged("lone", &["Goloman"], LogFormat::Text, || {
            tracing::info!("before the server span");
        });
        assert!(logs[0].contains("before the server span"), "{}", logs[0]);
    }

    #[test]
    fn a_worker_never_waits_for_a_stuck_log_and_drops_are_counted() {
        /// A log file that takes no writes until it is let go.
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl io::Write for Stuck {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                let _ = self.0.recv();
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (release, stuck) = std::sync::mpsc::channel();
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(4)
            .finish(Stuck(stuck));
        let counter = writer.error_counter();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut writer = writer;
            for _ in 0..100 {
                writer.write_all(b"a line\n").unwrap();
            }
            done.send(()).unwrap();
        });
        // Generous: only a writer that waited for the stuck file would take this long.
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the writes returned");
        // At most the queue and the line being written got through.
        assert!(counter.dropped_lines() >= 95, "{}", counter.dropped_lines());
        drop(release);
        drop(guard);
    }

    #[test]
    fn a_busy_writer_writes_out_at_each_flush_and_at_most_every_write_every() {
        let mut paced = Paced::new(Vec::new());
        paced.write_all(b"one\n").unwrap();
        paced.flush().unwrap();
        let first = std::time::Instant::now();
        paced.write_all(b"two\n").unwrap();
        paced.flush().unwrap();
        // Written out before the pause, and paused: sleeps never end early.
        assert_eq!(paced.inner, b"one\ntwo\n");
        assert!(first.elapsed() >= WRITE_EVERY / 2, "{:?}", first.elapsed());
    }

    #[test]
    fn drop_behind_keeps_every_byte_in_order_while_dropping_pages() {
        let dir = temp_dir("drop-behind");
        let path = dir.join("log");
        std::fs::write(&path, b"from before\n").unwrap();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut out = io::BufWriter::with_capacity(WRITE_SIZE, DropBehind::new(file, path.clone()));
        let mut want = b"from before\n".to_vec();
        for round in 0..4 {
            // About 2.4 MB a round: past DROP_EVERY, so pages are dropped as well.
            for i in 0..100_000 {
                let line = format!("round {round} line {i}\n");
                out.write_all(line.as_bytes()).unwrap();
                want.extend_from_slice(line.as_bytes());
            }
            out.flush().unwrap();
            // Written, and dropped from the page cache, yet all there.
            assert_eq!(std::fs::read(&path).unwrap(), want);
        }
        let behind = out.get_ref();
        assert_eq!(behind.end, want.len() as u64);
        // Write-back was started and pages dropped, a round behind the end.
        assert!(behind.cached_from > 12, "{}", behind.cached_from);
        assert!(behind.synced_to > behind.cached_from);
        assert!(behind.end - behind.synced_to < DROP_EVERY);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unbroken_escapes_every_control_character_at_every_position() {
        let show = |text: &str| {
            let mut out = String::new();
            std::fmt::Write::write_str(&mut Unbroken(&mut Writer::new(&mut out)), text).unwrap();
            out
        };
        for c in (0..=0x2030u32).filter_map(char::from_u32) {
            for at in 0..17 {
                let mut text = "a".repeat(17);
                text.replace_range(at..at + 1, c.encode_utf8(&mut [0; 4]));
                let want = match c {
                    '\n' => "\\n".to_owned(),
                    '\r' => "\\r".to_owned(),
                    '\t' => "\\t".to_owned(),
                    c if c.is_ascii_control() => format!("\\x{:02x}", c as u32),
                    c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                        format!("\\u{{{:x}}}", c as u32)
                    }
                    c => c.to_string(),
                };
                assert_eq!(
                    show(&text),
                    format!("{}{want}{}", "a".repeat(at), "a".repeat(16 - at)),
                    "{c:?} at {at}"
                );
            }
        }
        assert_eq!(show(r#"q="x\ny" café \ "#), r#"q="x\ny" café \ "#);
    }

    #[test]
    fn files_rotate_by_size_keep_their_count_and_never_split_or_lose_a_line() {
        let dir = temp_dir("rotate");
        let settings = FileSettings {
            max_file_bytes: 1000,
            max_files: 3,
            ..FileSettings::default()
        };
        let names: Vec<Arc<str>> = vec!["Goloman".into()];
        let files = Files::open(&dir, &names, LogFormat::Text, settings).unwrap();
        let rotations = files.counts[0].rotations.clone();
        let subscriber = tracing_subscriber::registry().with(files.layers);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..200 {
                tracing::info!(target: LINES, i = %format_args!("{i:03}"), "line");
            }
        });
        drop(files.workers);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            !dir.join("Goloman.log.3").exists(),
            "only max_files files kept"
        );
        let kept = [
            read("Goloman.log.2"),
            read("Goloman.log.1"),
            read("Goloman.log"),
        ];
        let mut numbers = Vec::new();
        for text in &kept {
            assert!(text.len() <= 1000, "{}", text.len());
            assert!(text.ends_with('\n'), "{text}");
            for line in text.lines() {
                let (_, n) = line
                    .rsplit_once(" i=")
                    .unwrap_or_else(|| panic!("{line:?}"));
                numbers.push(n.parse::<u32>().unwrap());
            }
        }
        // The newest lines, every one, in order, ending with the last.
        let first = numbers[0];
        assert_eq!(numbers, (first..200).collect::<Vec<_>>());
        // Each file was filled to within a line of the limit before it rotated.
        let line = kept[0].lines().next().unwrap().len() as u64 + 1;
        let per_file = 1000 / line;
        assert_eq!(kept[0].lines().count() as u64, per_file);
        assert_eq!(
            rotations.load(Ordering::Relaxed),
            200 / per_file - u64::from(200 % per_file == 0)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reopen_starts_a_new_file_at_the_old_path() {
        let dir = temp_dir("reopen");
        let path = dir.join("Goloman.log");
        let mut file = Rotating::open(path.clone(), 1 << 20, 2).unwrap();
        file.write_all(b"before\n").unwrap();
        file.flush().unwrap();
        std::fs::rename(&path, dir.join("moved")).unwrap();
        // Until asked, lines go on into the moved file.
        file.write_all(b"still\n").unwrap();
        reopen();
        file.write_all(b"after\n").unwrap();
        file.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("moved")).unwrap(),
            "before\nstill\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A writer into a shared buffer, for layers under test.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Shared {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer\nfailure")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_short_path_for_lines_writes_what_the_full_format_writes() {
        let (full, short) = (Shared::default(), Shared::default());
        let layer = |to: Shared| {
            tracing_subscriber::fmt::layer()
                .with_writer(move || to.clone())
                .with_timer(CachedSecond)
                .with_ansi(false)
                .fmt_fields(OneLine)
        };
        let layers: Vec<BoxedLayer> = vec![
            layer(full.clone()).boxed(),
            layer(short.clone()).event_format(TextFormat::new()).boxed(),
        ];
        let subscriber = tracing_subscriber::registry().with(layers);
        tracing::subscriber::with_default(subscriber, || {
            let line = b"IAMAT kiwi +34.06-118.44 1.5\t\x1b[2J\xff\\ \xe2\x80\xa8\xc2\x85";
            let reason = Outer(std::io::Error::other("inner\x07 cause"));
            let plain = std::io::Error::other("plain\r\nerror");
            let events = || {
                tracing::info!(target: LINES, line = %Escaped(line), reply = %Escaped(b"AT x\n"), "answered");
                tracing::info!(target: LINES, line = %Escaped(line), reply = %Escaped(b"? x\n"), reason = "unknown client", "answered");
                tracing::info!(target: LINES, json_bytes = 3412usize, n = -4i64, f = 1.5f64, ok = true, "answered");
                tracing::debug!(target: LINES, json = %Escaped(b"{\"a\":\"b\\n\"}"), "whatsat json");
                tracing::warn!(target: LINES, error = &reason as &(dyn std::error::Error + 'static), "a\x1b[1m\u{85}\u{2028}\nmessage");
                tracing::error!(target: LINES, error = &plain as &(dyn std::error::Error + 'static), r#type = "t", s = "q\"uoted\n");
                tracing::trace!(target: LINES, "trace");
                tracing::info!(target: LINES, "{} formatted {:?}", "x\ny", "z");
                tracing::info!(target: LINES, a = 1);
            };
            events();
            let server = tracing::info_span!("server", name = "Goloman");
            let _s = server.enter();
            events();
            let client = tracing::info_span!("client", peer = %"127.0.0.1:1\n");
            let _c = client.enter();
            let empty = tracing::info_span!("empty");
            let _e = empty.enter();
            events();
        });
        let text = |s: &Shared| String::from_utf8(s.0.lock().unwrap().clone()).unwrap();
        let (full, short) = (text(&full), text(&short));
        assert_eq!(full.lines().count(), 27, "{full}");
        // The same lines, to the time (each layer reads the clock itself).
        for (f, s) in full.lines().zip(short.lines()) {
            assert_eq!((&f[26..27], &s[26..27]), ("Z", "Z"), "\n{f}\n{s}");
            assert_eq!(f[27..], s[27..]);
        }
        assert_eq!(full.lines().count(), short.lines().count());
        assert!(
            full.contains(r#"client{peer=127.0.0.1:1\n}:empty: herd::lines: answered line=IAMAT"#),
            "{full}"
        );
    }

    #[test]
    fn whatsat_json_reaches_the_file_only_at_debug() {
        for (level, json) in [(LevelFilter::INFO, false), (LevelFilter::DEBUG, true)] {
            let dir = temp_dir("level");
            let names: Vec<Arc<str>> = vec!["Goloman".into()];
            let settings = FileSettings {
                level,
                ..FileSettings::default()
            };
            let files = Files::open(&dir, &names, LogFormat::Text, settings).unwrap();
            let subscriber = tracing_subscriber::registry().with(files.layers);
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(target: LINES, json_bytes = 2, "answered");
                tracing::debug!(target: LINES, json = "{}", "whatsat json");
                tracing::debug!("herd's own debug");
            });
            drop(files.workers);
            let log = std::fs::read_to_string(dir.join("Goloman.log")).unwrap();
            assert!(log.contains("answered json_bytes=2"), "{log}");
            assert!(log.contains("herd's own debug"), "{log}");
            assert_eq!(log.contains("whatsat json"), json, "{level}: {log}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn the_cached_second_is_the_calendar_date_and_time() {
        let show = |s| String::from_utf8(rfc3339_second(s).to_vec()).unwrap();
        assert_eq!(show(0), "1970-01-01T00:00:00");
        assert_eq!(show(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(show(1_520_023_934), "2018-03-02T20:52:14");
        assert_eq!(show(4_107_542_399), "2100-02-28T23:59:59");
        assert_eq!(show(4_107_542_400), "2100-03-01T00:00:00");
        assert_eq!(show(253_402_300_799), "9999-12-31T23:59:59");
        // And as tracing-subscriber's own timer writes now (retried across a second).
        use tracing_subscriber::fmt::time::FormatTime as _;
        for _ in 0..3 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            CachedSecond
                .format_time(&mut Writer::new(&mut ours))
                .unwrap();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            assert_eq!((ours.len(), &ours[26..]), (27, "Z"), "{ours}");
            if ours[..19] == theirs[..19] {
                return;
            }
        }
        panic!("the second never matched tracing-subscriber's");
    }

    #[test]
    fn escaped_keeps_text_and_shows_every_other_byte() {
        let shown = Escaped(b"AT x \xff\xfe caf\xc3\xa9 \\ a\tb\r\n\x0b\x7f\"q\"").to_string();
        assert_eq!(shown, r#"AT x \xff\xfe café \\ a\tb\r\n\x0b\x7f"q""#);
        assert_eq!(Escaped(b"").to_string(), "");
    }

    #[test]
    fn every_byte_is_escaped_at_every_position() {
        // The word-at-a-time scan must find each byte that needs escaping wherever
        // it stands in a word, and nothing else.
        for b in 0..=255u8 {
            for at in 0..17 {
                let mut bytes = vec![b'a'; 17];
                bytes[at] = b;
                let shown = Escaped(&bytes).to_string();
                let want = match b {
                    b'\n' => "\\n".to_owned(),
                    b'\r' => "\\r".to_owned(),
                    b'\t' => "\\t".to_owned(),
                    b'\\' => "\\\\".to_owned(),
                    b if !(0x20..0x7f).contains(&b) => format!("\\x{b:02x}"),
                    b => (b as char).to_string(),
                };
                assert_eq!(
                    shown,
                    format!("{}{want}{}", "a".repeat(at), "a".repeat(16 - at))
                );
            }
        }
    }
}
