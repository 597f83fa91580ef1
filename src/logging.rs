//! Logging: to stderr at the level `RUST_LOG` sets, and to one file per server
//! (`<log-dir>/<Name>.log`) with everything the server saw and said. Events are
//! routed to a server's file by the `server{name=...}` span they happen in, so
//! `herd up` (every server in one process) still gets one file per server.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, IsTerminal as _, Write as _},
    path::Path,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tracing::{
    Subscriber,
    field::{Field, Visit},
    level_filters::LevelFilter,
    span,
};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::Targets,
    fmt::{MakeWriter, writer::EitherWriter},
    layer::{Context, SubscriberExt as _},
    registry::{LookupSpan, Registry},
    util::SubscriberInitExt as _,
};

/// Keeps the log files flushed; dropping it writes out what is buffered.
#[must_use = "dropping the guard stops flushing the log files"]
#[derive(Debug)]
pub struct LogGuard {
    _flusher: Flusher,
}

/// How often buffered log lines reach the files.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One server's log file. Events are formatted straight into an in-memory buffer
/// under a short lock; the flusher swaps the buffer out and writes it to the file
/// outside that lock every [`FLUSH_EVERY`], or at once when a buffer passes
/// [`SPILL_AT`]: no allocation, channel or thread wake-up per event, no event waits
/// for the disk (unless the disk falls [`HARD_CAP`] behind), nothing is dropped.
#[derive(Clone, Debug)]
struct Sink(Arc<SinkInner>);

#[derive(Debug)]
struct SinkInner {
    buf: Mutex<Vec<u8>>,
    file: Mutex<Out>,
    /// Wakes the flusher early.
    wake: Arc<Wake>,
    /// The flusher was woken for this buffer and has not written it yet.
    woken: AtomicBool,
}

/// What the flusher waits on: its period, an early wake-up, or the stop. Both are
/// flags under the mutex, so a wake-up asked while the flusher is busy is not lost.
#[derive(Debug, Default)]
struct Wake {
    state: Mutex<WakeState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct WakeState {
    stopped: bool,
    asked: bool,
}

impl Wake {
    fn ask(&self) {
        crate::lock(&self.state).asked = true;
        self.cv.notify_one();
    }
}

/// The file and the buffer last written to it, kept to be swapped in next: the two
/// buffers take turns, so a busy server's log reuses memory it has already touched
/// instead of growing a fresh buffer (and faulting in its pages) every flush.
#[derive(Debug)]
struct Out {
    file: File,
    spare: Vec<u8>,
    /// Where the next write lands; where write-back was last started from, and up
    /// to; where the pages this sink may still have in the page cache begin.
    end: u64,
    synced_to: u64,
    cached_from: u64,
}

/// How much a sink buffers before the flusher is woken early to write it (a busy
/// server's WHATSAT replies fill that in 15 ms), and the most it ever buffers:
/// past that, writers wait for the disk rather than drop a line or grow without bound.
const SPILL_AT: usize = 4 << 20;
const HARD_CAP: usize = 256 << 20;
const BUFFER: usize = 1 << 20;
/// A buffer that grew past this (a burst) is not kept for reuse.
const KEEP: usize = 2 * SPILL_AT;

impl Out {
    /// Called after each write. Once [`FORGET_EVERY`] bytes have been written since it
    /// last acted: starts writing those back, and drops from the page cache what it
    /// started writing back the time before (on disk by now). A log is written once
    /// and seldom read: it should not fill memory that the kernel must first clear
    /// (on a VM each fresh page-cache page cost about 3 s of CPU per GB), nor push
    /// out what the machine does read. A slowly written log is left to the kernel's
    /// usual write-back, and the page still being filled is never dropped.
    #[cfg(target_os = "linux")]
    fn forget(&mut self) {
        use std::os::fd::AsRawFd as _;
        if self.end - self.synced_to < FORGET_EVERY {
            return;
        }
        let fd = self.file.as_raw_fd();
        // Advice only: a failure (say, on a file system without page cache) changes
        // nothing that matters, so errors are ignored. DONTNEED drops only the whole
        // pages inside the range.
        // SAFETY: plain system calls on an open file descriptor this sink owns.
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

/// How much a log is written between two rounds of [`Out::forget`].
const FORGET_EVERY: u64 = 1 << 20;

impl Sink {
    fn new(file: File, wake: Arc<Wake>) -> Sink {
        let len = file.metadata().map_or(0, |m| m.len());
        Sink(Arc::new(SinkInner {
            wake,
            woken: AtomicBool::new(false),
            buf: Mutex::new(Vec::with_capacity(BUFFER)),
            file: Mutex::new(Out {
                end: len,
                // What the file held before is left as it is.
                synced_to: len,
                cached_from: len,
                file,
                spare: Vec::with_capacity(BUFFER),
            }),
        }))
    }

    fn buf(&self) -> MutexGuard<'_, Vec<u8>> {
        crate::lock(&self.0.buf)
    }

    fn file(&self) -> MutexGuard<'_, Out> {
        crate::lock(&self.0.file)
    }

    /// Writes out what `buf` holds. The file is locked before the buffer is let go,
    /// so lines reach the file in the order they were buffered.
    fn write_out(&self, mut buf: MutexGuard<'_, Vec<u8>>, mut out: MutexGuard<'_, Out>) {
        if buf.is_empty() {
            return;
        }
        let spare = std::mem::take(&mut out.spare);
        let mut data = std::mem::replace(&mut *buf, spare);
        self.0.woken.store(false, Ordering::Relaxed);
        drop(buf);
        match out.file.write_all(&data) {
            Ok(()) => {
                out.end += data.len() as u64;
                out.forget();
            }
            Err(e) => {
                eprintln!("herd: cannot write a log file: {e}");
                // Part may have been written: page-cache advice starts over from the
                // file's real end.
                let len = out.file.metadata().map_or(out.end, |m| m.len());
                (out.end, out.synced_to, out.cached_from) = (len, len, len);
            }
        }
        data.clear();
        if data.capacity() > KEEP {
            data = Vec::with_capacity(BUFFER);
        }
        out.spare = data;
    }

    /// Appends a writer's bytes; then wakes the flusher once the buffer passes
    /// [`SPILL_AT`] (once per buffer: `woken` changes only under the buffer's lock, and
    /// is cleared when the buffer is swapped out), or waits for the disk when it is
    /// [`HARD_CAP`] behind.
    fn append(&self, data: &[u8]) {
        let mut buf = self.buf();
        buf.extend_from_slice(data);
        let held = buf.len();
        let wake = held >= SPILL_AT && !self.0.woken.swap(true, Ordering::Relaxed);
        drop(buf);
        if held >= HARD_CAP {
            self.flush();
        } else if wake {
            // The writer goes on serving; the flusher writes.
            self.0.wake.ask();
        }
    }

    fn flush(&self) {
        let file = self.file();
        self.write_out(self.buf(), file);
    }
}

/// Writes one event into a sink.
struct SinkWriter<'a>(&'a Sink);

impl io::Write for SinkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.append(data);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends each event to the file of the server whose span it happens in (events
/// outside any server's span go to no file).
struct Router {
    /// The one sink when the process runs one server: no lookup needed.
    only: Option<Sink>,
    sinks: HashMap<Arc<str>, Sink>,
}

impl Router {
    /// The sink of the server whose span `spans` (an event's spans, innermost first)
    /// holds; with one server, that one without looking.
    fn pick<'s, R: LookupSpan<'s> + 's>(
        &self,
        spans: impl FnOnce() -> Option<tracing_subscriber::registry::Scope<'s, R>>,
    ) -> Option<&Sink> {
        if let Some(only) = &self.only {
            return Some(only);
        }
        let name = spans()?.find_map(|s| s.extensions().get::<ServerTag>().map(|t| t.0.clone()))?;
        self.sinks.get(&name)
    }

    /// The sink for an event in the current span (the JSON format's writer).
    fn sink(&self) -> Option<&Sink> {
        tracing::Span::current()
            .with_subscriber(|(id, dispatch)| {
                let registry = dispatch.downcast_ref::<Registry>()?;
                self.pick(|| registry.span(id).map(|s| s.scope()))
            })
            .flatten()
    }
}

impl<'a> MakeWriter<'a> for Router {
    type Writer = EitherWriter<SinkWriter<'a>, io::Sink>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::B(io::sink())
    }

    fn make_writer_for(&'a self, _: &tracing::Metadata<'_>) -> Self::Writer {
        match self.sink() {
            Some(sink) => EitherWriter::A(SinkWriter(sink)),
            None => EitherWriter::B(io::sink()),
        }
    }
}

/// The text format of the log files, written straight into the server's buffer: the
/// same lines as tracing-subscriber's full format without colours (`TIME LEVEL
/// span{fields}:span{fields}: target: message field=value ...`), with no string built
/// per event and copied again, each span's text made once when the span is created, and
/// the date and time of day formatted once a second. Logging every line and reply is
/// a large part of what a server does per request, so it is kept this lean.
struct FileText {
    router: Router,
}

/// A span's `name{field=value ...}`, made when the span is created (and again when
/// it records more fields), from its fields kept as written.
struct SpanText {
    fields: Vec<u8>,
    text: String,
}

impl SpanText {
    fn new(name: &str, fields: Vec<u8>) -> SpanText {
        let mut text = name.to_owned();
        if !fields.is_empty() {
            text.push('{');
            text.push_str(&String::from_utf8_lossy(&fields));
            text.push('}');
        }
        SpanText { fields, text }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for FileText {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Vec::new();
        attrs.record(&mut FieldText::new(&mut fields));
        span.extensions_mut()
            .insert(SpanText::new(attrs.metadata().name(), fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanText { fields, .. }) = ext.remove::<SpanText>() {
            let mut fields = fields;
            values.record(&mut FieldText {
                any: !fields.is_empty(),
                out: &mut fields,
            });
            ext.insert(SpanText::new(span.name(), fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let Some(sink) = self.router.pick(|| ctx.event_scope(event)) else {
            return;
        };
        // Formatted outside the sink's lock (escaping a 3 KB reply takes a while, and
        // a worker that finds the lock taken sleeps in the kernel), then copied in.
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let write = |line: &mut Vec<u8>| {
            line.clear();
            self.format(event, &ctx, line);
            sink.append(line);
        };
        // The thread's line buffer, unless it is in use (an event logged while one is
        // formatted) or already gone (a thread that is exiting): then a fresh one.
        let done = LINE
            .try_with(|cell| {
                let Ok(mut line) = cell.try_borrow_mut() else {
                    return false;
                };
                write(&mut line);
                if line.capacity() > 64 * 1024 {
                    *line = Vec::new();
                }
                true
            })
            .unwrap_or(false);
        if !done {
            write(&mut Vec::new());
        }
    }
}

impl FileText {
    fn format<S: Subscriber + for<'a> LookupSpan<'a>>(
        &self,
        event: &tracing::Event<'_>,
        ctx: &Context<'_, S>,
        buf: &mut Vec<u8>,
    ) {
        write_time(buf);
        let meta = event.metadata();
        buf.extend_from_slice(match *meta.level() {
            tracing::Level::TRACE => b" TRACE ",
            tracing::Level::DEBUG => b" DEBUG ",
            tracing::Level::INFO => b"  INFO ",
            tracing::Level::WARN => b"  WARN ",
            tracing::Level::ERROR => b" ERROR ",
        });
        if let Some(scope) = ctx.event_scope(event) {
            let mut any = false;
            for span in scope.from_root() {
                if let Some(SpanText { text, .. }) = span.extensions().get::<SpanText>() {
                    buf.extend_from_slice(text.as_bytes());
                    buf.push(b':');
                    any = true;
                }
            }
            if any {
                buf.push(b' ');
            }
        }
        buf.extend_from_slice(meta.target().as_bytes());
        buf.extend_from_slice(b": ");
        event.record(&mut FieldText::new(buf));
        buf.push(b'\n');
    }
}

/// Writes fields as `message field=value ...`, each value by its `Debug` form (which
/// for `%` values is their `Display`).
struct FieldText<'a> {
    out: &'a mut Vec<u8>,
    any: bool,
}

impl FieldText<'_> {
    fn new(out: &mut Vec<u8>) -> FieldText<'_> {
        FieldText { out, any: false }
    }
}

impl Visit for FieldText<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let out = &mut *self.out;
        if std::mem::replace(&mut self.any, true) {
            out.push(b' ');
        }
        // Writing into a Vec cannot fail.
        let _ = if field.name() == "message" {
            write!(out, "{value:?}")
        } else {
            write!(out, "{}={value:?}", field.name())
        };
    }
}

/// `2026-11-27T05:56:54.570609Z`, as tracing-subscriber writes it; the part up to the
/// second is made once a second per thread.
fn write_time(out: &mut Vec<u8>) {
    use std::cell::Cell;
    thread_local! {
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let text = SECOND
        .try_with(|cached| match cached.get() {
            (second, text) if second == secs => text,
            _ => {
                let text = date_time(secs);
                cached.set((secs, text));
                text
            }
        })
        // A thread that is exiting has no cache left.
        .unwrap_or_else(|_| date_time(secs));
    out.extend_from_slice(&text);
    let _ = write!(out, ".{:06}Z", now.subsec_micros());
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), by Howard Hinnant's days-to-civil.
fn date_time(unix: u64) -> [u8; 19] {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = [0u8; 19];
    let _ = write!(
        &mut text[..],
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    );
    text
}

/// The thread that writes buffered log lines out every [`FLUSH_EVERY`], or sooner
/// when a sink asks.
#[derive(Debug)]
struct Flusher {
    sinks: Vec<Sink>,
    wake: Arc<Wake>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(sinks: Vec<Sink>, wake: Arc<Wake>) -> io::Result<Flusher> {
        let thread = {
            let (sinks, wake) = (sinks.clone(), wake.clone());
            std::thread::Builder::new()
                .name("herd-log-flush".into())
                .spawn(move || {
                    let mut state = crate::lock(&wake.state);
                    while !state.stopped {
                        if !state.asked {
                            state = wake
                                .cv
                                .wait_timeout(state, FLUSH_EVERY)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        state.asked = false;
                        // Writers asking for a flush take this lock: write without it.
                        drop(state);
                        sinks.iter().for_each(Sink::flush);
                        state = crate::lock(&wake.state);
                    }
                })?
        };
        Ok(Flusher {
            sinks,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    /// Stops the thread and writes out what is left.
    fn drop(&mut self) {
        crate::lock(&self.wake.state).stopped = true;
        self.wake.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sinks.iter().for_each(Sink::flush);
    }
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

    let mut sinks = HashMap::new();
    let wake = Arc::new(Wake::default());
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
        sinks.insert(name.clone(), Sink::new(file, wake.clone()));
    }
    let router = Router {
        only: if sinks.len() == 1 {
            sinks.values().next().cloned()
        } else {
            None
        },
        sinks: sinks.clone(),
    };
    let levels = Targets::new()
        .with_target("herd", LevelFilter::DEBUG)
        .with_default(LevelFilter::INFO);
    layers.push(match format {
        LogFormat::Text => FileText { router }.with_filter(levels).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(router)
            .with_ansi(false)
            .json()
            .with_filter(levels)
            .boxed(),
    });
    let flusher = Flusher::start(sinks.into_values().collect(), wake).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start the log flusher thread: {e}"),
        )
    })?;

    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| io::Error::other(format!("logging already set up: {e}")))?;
    Ok(LogGuard { _flusher: flusher })
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
    let mut from = 0;
    while let Some(at) = find_escape(&bytes[from..]) {
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

/// The first byte that needs escaping, eight bytes at a time.
fn find_escape(bytes: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // Non-zero when some byte of `w` is zero.
    let zero = |w: u64| w.wrapping_sub(LO) & !w & HI;
    let mut words = bytes.chunks_exact(8);
    let mut base = 0;
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte below 0x20 (bytes of 0x80 and above never match), or 0x7f, or '\'.
        let below = w.wrapping_sub(0x20 * LO) & !w & HI;
        if below | zero(w ^ (0x7f * LO)) | zero(w ^ (u64::from(b'\\') * LO)) != 0 {
            return word.iter().position(|&b| needs_escape(b)).map(|i| base + i);
        }
        base += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_log(name: &str, content: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "herd-{name}-{}-{:?}.log",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::write(&path, content).unwrap();
        path
    }

    fn open_sink(path: &Path) -> Sink {
        let file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        Sink::new(file, Arc::new(Wake::default()))
    }

    #[test]
    fn a_sink_appends_every_line_in_order_across_flushes() {
        let path = temp_log("order", b"from before\n");
        let sink = open_sink(&path);
        let mut want = b"from before\n".to_vec();
        for round in 0..4 {
            // About 2.4 MB a round: past FORGET_EVERY, so pages are dropped as well.
            for i in 0..100_000 {
                let line = format!("round {round} line {i}\n");
                SinkWriter(&sink).write_all(line.as_bytes()).unwrap();
                want.extend_from_slice(line.as_bytes());
            }
            sink.flush();
            // Written, and dropped from the page cache, yet all there.
            assert_eq!(std::fs::read(&path).unwrap(), want);
        }
        // The two buffers took turns: the one waiting kept its memory.
        assert!(sink.file().spare.capacity() >= BUFFER);
        assert_eq!(sink.file().end, want.len() as u64);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn dates_are_written_as_rfc_3339() {
        for (unix, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_795_759_014, "2026-11-27T05:56:54"),
            (4_102_444_799, "2099-12-31T23:59:59"),
            (253_402_300_799, "9999-12-31T23:59:59"),
        ] {
            assert_eq!(std::str::from_utf8(&date_time(unix)).unwrap(), want);
        }
    }

    #[test]
    fn the_file_format_is_tracing_subscribers_full_format() {
        let path = temp_log("format", b"");
        let sink = open_sink(&path);
        let router = Router {
            only: Some(sink.clone()),
            sinks: HashMap::new(),
        };
        let levels = Targets::new().with_target("herd", LevelFilter::DEBUG);
        let subscriber =
            tracing_subscriber::registry().with(FileText { router }.with_filter(levels));
        tracing::subscriber::with_default(subscriber, || {
            let server = tracing::info_span!("server", name = "Goloman");
            let _s = server.enter();
            let client = tracing::info_span!("client", peer = "127.0.0.1:1");
            let _c = client.enter();
            tracing::debug!(line = %Escaped(b"A\tb\xff"), reason = "why", "answered");
            tracing::info!("plain");
            tracing::info!(message = "a str", n = 3);
            tracing::trace!("filtered out");
        });
        sink.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let (time, rest) = lines[0].split_at(27);
        assert!(
            time.len() == 27 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
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
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn fields_a_span_records_later_join_its_text() {
        let path = temp_log("record", b"");
        let sink = open_sink(&path);
        let router = Router {
            only: Some(sink.clone()),
            sinks: HashMap::new(),
        };
        let levels = Targets::new().with_target("herd", LevelFilter::DEBUG);
        let subscriber =
            tracing_subscriber::registry().with(FileText { router }.with_filter(levels));
        tracing::subscriber::with_default(subscriber, || {
            let late = tracing::info_span!("late", a = tracing::field::Empty);
            late.record("a", 1);
            let more = tracing::info_span!(parent: &late, "more", b = 2, c = tracing::field::Empty);
            more.record("c", "x");
            let _in = more.enter();
            tracing::info!("here");
        });
        sink.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("  INFO late{a=1}:more{b=2 c=\"x\"}: herd::logging::tests: here\n"),
            "{text}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_full_buffer_asks_the_flusher_once_and_waits_for_nothing() {
        let path = temp_log("spill", b"");
        let sink = open_sink(&path);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(SPILL_AT >> 20) - 1 {
            SinkWriter(&sink).write_all(&chunk).unwrap();
        }
        assert!(!sink.0.woken.load(Ordering::Relaxed));
        SinkWriter(&sink).write_all(&chunk).unwrap();
        assert!(sink.0.woken.load(Ordering::Relaxed));
        // The writer wrote nothing itself: that is the flusher's work.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        SinkWriter(&sink).write_all(b"last\n").unwrap();
        sink.flush();
        assert!(!sink.0.woken.load(Ordering::Relaxed));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SPILL_AT as u64 + 5);
        std::fs::remove_file(&path).unwrap();
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
