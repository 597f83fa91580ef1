//! The client gateway: the accept loop and one task per connection, turning each
//! line into a [`Node`] call and writing the replies. It holds no logic of its own.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::Poll,
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_util::{codec::Decoder as _, sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    config::GatewayConfig,
    logging::Escaped,
    node::Node,
    wire::{self, Command, Frame, LineCodec, Timestamp},
};

/// The longest line (line end excluded) the server reads as a command, like Redis's
/// inline-command limit: it bounds what one connection can make the server hold.
/// A longer line, whatever it holds, is answered `? ` and its bytes, streamed out as
/// they arrive ([`LineCodec`] hands it out in pieces), so memory stays bounded and
/// the reply still echoes every byte.
pub const MAX_LINE: usize = 64 * 1024;

/// Accepts clients until `shutdown`, each on its own task in `tasks`.
///
/// Past a limit (`gateway.max_clients`, `gateway.max_clients_per_ip`, or the process's
/// descriptors less `gateway.fd_reserve`) a new connection is accepted and closed at
/// once, and counted, rather than left in the kernel's accept queue: the client learns
/// at once that it was refused (a queued one waits for a connect timeout and retries
/// into the same queue), the accept loop keeps draining the queue so connections that
/// fit when a slot frees are not stuck behind refused ones, and the refusal shows in a
/// metric. Taking that connection's descriptor for an instant is what `fd_reserve` is for.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    limits: GatewayConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let budget = descriptor_budget(limits.fd_reserve);
    tracing::debug!(
        max_clients = ?limits.max_clients,
        descriptors = budget.limit,
        max_clients_per_ip = limits.max_clients_per_ip,
        "client limits"
    );
    // With no `max_clients` the descriptor budget is the only cap, and a refusal is
    // counted as "descriptors": a per-server cap equal to the budget would bite first
    // and hide which limit it really was (and `herd up` shares the budget among its
    // servers, so one server's share is not the budget anyway).
    let slots = Arc::new(Semaphore::new(
        limits.max_clients.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let per_ip = PerIp::new(limits.max_clients_per_ip);
    // Shared: a copy in every connection's task would be a hundred bytes each.
    let limits = Arc::new(limits);
    loop {
        let (socket, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = accept(&listener) => a,
        };
        let admitted = (|| {
            let ip = per_ip.admit(addr.ip()).ok_or("max_clients_per_ip")?;
            let slot = slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| "max_clients")?;
            let fd = budget
                .descriptors
                .clone()
                .try_acquire_owned()
                .map_err(|_| "descriptors")?;
            Ok::<_, &'static str>((ip, slot, fd))
        })();
        let permits = match admitted {
            Ok(permits) => permits,
            Err(reason) => {
                tracing::debug!(peer = %addr, reason, "client refused");
                node.metrics().refused(reason);
                drop(socket);
                continue;
            }
        };
        let span = tracing::info_span!("client", peer = %addr);
        let (node, limits, shutdown) = (node.clone(), limits.clone(), shutdown.clone());
        tasks.spawn(connection(socket, addr, node, limits, shutdown, permits).instrument(span));
    }
}

/// The descriptors client connections may take in this process: its open file limit
/// less the reserve. Shared by every server of the process (`herd up` runs them all in
/// one), since the limit is the process's.
struct DescriptorBudget {
    limit: usize,
    descriptors: Arc<Semaphore>,
}

fn descriptor_budget(fd_reserve: usize) -> &'static DescriptorBudget {
    static BUDGET: OnceLock<DescriptorBudget> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let open_files = open_file_limit().unwrap_or(1024);
        // A small limit keeps half for the clients rather than none: a server that
        // refuses every client would be worse than one with a thin reserve.
        let reserve = fd_reserve.min(open_files / 2);
        if reserve < fd_reserve {
            tracing::warn!(
                open_files,
                fd_reserve,
                "the open file limit is small: only {reserve} descriptors are kept from clients"
            );
        }
        let limit = open_files - reserve;
        DescriptorBudget {
            limit,
            descriptors: Arc::new(Semaphore::new(limit)),
        }
    })
}

/// The process's soft limit on open files (main raises it to the hard one first).
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(
        usize::try_from(limit.rlim_cur)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS),
    )
}

/// Client connections per address: an IPv4 address, or an IPv6 /64 (one host's
/// share of addresses, which it can change at will inside it).
struct PerIp {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its address's count, given back on drop.
struct IpSlot {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max,
            open: Arc::default(),
        }
    }

    fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let key = match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
            v4 => v4,
        };
        let mut open = crate::lock(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            key,
            open: self.open.clone(),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = crate::lock(&self.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Accepts one connection, waiting out errors (out of file descriptors, most
/// likely) rather than spinning on them.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The client closed its side; every line was answered.
    ClientDone,
    /// The server is shutting down.
    Shutdown,
    /// No complete line for `gateway.idle_timeout_ms`.
    Idle,
    /// A started line did not end within `gateway.line_timeout_ms`.
    SlowLine,
    /// Replies could not be written for `gateway.write_timeout_ms`.
    WriteTimeout,
}

impl End {
    /// The `herd_client_connections_closed_total` reason, when a limit closed it.
    fn reason(self) -> Option<&'static str> {
        match self {
            End::ClientDone | End::Shutdown => None,
            End::Idle => Some("idle"),
            End::SlowLine => Some("slow_line"),
            End::WriteTimeout => Some("write_timeout"),
        }
    }
}

/// One connection's task, from accept to close; `permits` (its places in the
/// limits) are given back when it ends.
///
/// An async block, not an async fn: an async fn moves its arguments into its body
/// and its state machine keeps room for both (rust-lang/rust#62958), where a block
/// uses what it captured in place: about 150 bytes less in every connection's task.
#[allow(clippy::manual_async_fn)]
fn connection(
    mut socket: TcpStream,
    addr: SocketAddr,
    node: Arc<Node>,
    limits: Arc<GatewayConfig>,
    shutdown: CancellationToken,
    permits: impl Send,
) -> impl Future<Output = ()> + Send {
    async move {
        tracing::debug!("connected");
        node.metrics().connections_opened.inc();
        node.metrics().connections_open.inc();
        match serve(&mut socket, &node, &limits, &shutdown).await {
            Ok(end) => match end.reason() {
                Some(reason) => {
                    node.metrics().closed(reason);
                    tracing::debug!(%addr, reason, "closed by the server");
                }
                None => tracing::debug!(%addr, "closed"),
            },
            Err(e) => tracing::debug!(%addr, error = %e, "connection failed"),
        }
        node.metrics().connections_open.dec();
        drop(permits);
    }
}

/// Serves one connection: reads lines, answers them in order, writes the replies to
/// the lines of one read in one write (or in several past `limits.max_held_replies`),
/// and answers a last line ended by EOF before closing.
///
/// The framing is [`LineCodec`], called here on the connection's own buffer rather
/// than through `FramedRead`: the loop has to know where one read's lines end (one
/// receive time for all of them, one write for their replies), and `FramedRead` hides
/// that; it also allocates its buffer up front and keeps it, where an idle connection
/// here holds none.
///
/// Reading waits for a deadline: `idle_timeout` after the last complete line, or
/// `line_timeout` after a line started, whichever is first. While replies are being
/// written nothing is read (so a client that never reads makes the server hold at most
/// a read's bytes and `max_held_replies` plus a reply), and a write that is not
/// taken whole within `write_timeout` ends the connection (a trickling reader too).
async fn serve(
    socket: &mut TcpStream,
    node: &Node,
    limits: &GatewayConfig,
    shutdown: &CancellationToken,
) -> std::io::Result<End> {
    socket.set_nodelay(true)?;
    // Both buffers are allocated when data comes and given back when drained, so an
    // idle connection holds no buffer at all.
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut codec = LineCodec::new(MAX_LINE);
    let mut unsettled = Unsettled::default();
    // Registered once per connection, not once per read: the token's waiter list
    // is shared by every connection.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut last_line = Instant::now();
    // When the line in progress (bytes received, no line end yet) started.
    let mut line_started: Option<Instant> = None;
    // One timer for the connection's life, moved to each read's deadline: a
    // deadline moved later (the usual move: a line came) costs no lock on the
    // timer wheel, where a timer per read is registered and cancelled each time.
    let timer = tokio::time::sleep_until(last_line + limits.idle_timeout);
    tokio::pin!(timer);
    loop {
        let idle = last_line + limits.idle_timeout;
        let (deadline, end) = match line_started {
            Some(started) if started + limits.line_timeout < idle => {
                (started + limits.line_timeout, End::SlowLine)
            }
            _ => (idle, End::Idle),
        };
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // In this order, as `timeout_at` had it: data that came by the deadline is
        // read, not timed out.
        let n = tokio::select! {
            biased;
            _ = &mut cancelled => return Ok(End::Shutdown),
            n = read(socket, &mut buf) => n?,
            _ = &mut timer => return Ok(end),
        };
        let eof = n == 0;
        // Every line of this read was received now, whatever the lines before it cost.
        let received = Timestamp::now();
        let mut ended_a_line = false;
        let mut iamats = false;
        loop {
            let frame = if eof {
                codec.decode_eof(&mut buf)?
            } else {
                codec.decode(&mut buf)?
            };
            let Some(frame) = frame else { break };
            // Past the bound, what is held goes out before the next line is answered:
            // a read full of WHATSATs would otherwise hold megabytes. Checked before a
            // reply, not after, so no reply is split and the last write is not early.
            if out.len() >= limits.max_held_replies {
                node.metrics().replies_written_early.inc();
                unsettled.settle(node, &mut out).await;
                if !write_out(socket, &out, limits.write_timeout).await? {
                    return Ok(End::WriteTimeout);
                }
                out.clear();
            }
            match frame {
                Frame::Line(line) => {
                    ended_a_line = true;
                    if let Some(whatsat) = answer(
                        node,
                        &line,
                        received,
                        limits.max_client_id,
                        &mut out,
                        &mut unsettled,
                        &mut iamats,
                    ) {
                        whatsat.await;
                    }
                }
                Frame::LongStart(head) => {
                    count_too_long(node, &head);
                    out.extend_from_slice(b"? ");
                    out.extend_from_slice(&head);
                }
                Frame::LongMore(more) => out.extend_from_slice(&more),
                Frame::LongEnd(tail) => {
                    ended_a_line = true;
                    out.extend_from_slice(&tail);
                    out.push(b'\n');
                }
            }
        }
        if !out.is_empty() {
            unsettled.settle(node, &mut out).await;
            if !write_out(socket, &out, limits.write_timeout).await? {
                return Ok(End::WriteTimeout);
            }
            out = Vec::new();
        }
        // Nothing more is read while the neighbours' queues are full: the herd's
        // backpressure (bounded by `backbone.queue_wait_ms`; see `Links::relief`).
        if iamats && let Some(relief) = node.backbone().relief() {
            tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(End::Shutdown),
                () = relief => {}
            }
        }
        if eof {
            socket.shutdown().await?;
            return Ok(End::ClientDone);
        }
        // The clocks start once this read is answered: the time its answers took (a
        // places lookup) is the server's, not the client's.
        let now = Instant::now();
        if ended_a_line {
            last_line = now;
        }
        line_started = match (!buf.is_empty() || codec.in_long_line(), line_started) {
            (false, _) => None,
            (true, Some(started)) if !ended_a_line => Some(started),
            (true, _) => Some(now),
        };
        if buf.is_empty() {
            buf = BytesMut::new();
        }
    }
}

/// Writes `out` whole, unless a write makes no progress for `timeout` (the client
/// reads nothing): then false. A slow reader that keeps taking bytes is not cut off.
async fn write_out(socket: &mut TcpStream, out: &[u8], timeout: Duration) -> std::io::Result<bool> {
    // Replies nearly always fit the socket's buffer: the first write is tried
    // without a timer (a timer per write is a clock read and a handle to the
    // timer wheel taken and given back, for a deadline that is never near).
    let n = match socket.try_write(out) {
        Ok(0) if !out.is_empty() => return Err(std::io::ErrorKind::WriteZero.into()),
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if n == out.len() {
        return Ok(true);
    }
    // Boxed: only a client that reads slowly gets here, and the wait with its
    // timer would otherwise be part of every connection's task.
    Box::pin(write_rest(socket, &out[n..], timeout)).await
}

/// The rest of [`write_out`], once the socket's buffer is full.
async fn write_rest(
    socket: &mut TcpStream,
    mut out: &[u8],
    timeout: Duration,
) -> std::io::Result<bool> {
    // One deadline for the whole write, not one per system call: a client that
    // takes a little every few seconds (a slow read) must still take it all in time.
    let deadline = tokio::time::Instant::now() + timeout;
    while !out.is_empty() {
        match tokio::time::timeout_at(deadline, socket.write(out)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => out = &out[n..],
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

/// Reads what the socket has, allocating room only once it is readable.
///
/// The read itself goes through `AsyncRead`, not `try_read_buf`: tokio forgets the
/// socket's readiness when a read fills less than the room it was given (the socket
/// is drained), so the next wait goes straight to the poller instead of costing a
/// `recv` that can only say "would block": one system call less per request.
///
/// A read that would block gives the room back (when the buffer holds nothing) and
/// waits again: tokio takes a new socket for readable before the poller has said so,
/// and an idle connection would otherwise keep a read's room, 16 KiB, from its
/// first read on.
async fn read(socket: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    // Polled by hand rather than `readable().await`: that future's place in the
    // socket's waiter list is about a hundred bytes more in every connection's task.
    std::future::poll_fn(|cx| {
        loop {
            std::task::ready!(socket.poll_read_ready(cx))?;
            buf.reserve(READ_SIZE);
            let read = std::pin::pin!(socket.read_buf(&mut *buf));
            match read.poll(cx) {
                Poll::Ready(n) => return Poll::Ready(n),
                // The socket is drained and its readiness forgotten: the next
                // poll for readiness waits for the poller.
                Poll::Pending if buf.is_empty() => *buf = BytesMut::new(),
                Poll::Pending => {}
            }
        }
    })
    .await
}

/// How much room a read makes in the buffer.
const READ_SIZE: usize = 16 * 1024;

fn count_too_long(node: &Node, head: &[u8]) {
    tracing::debug!(
        head = %Escaped(&head[..head.len().min(80)]),
        "received a line longer than {MAX_LINE} bytes; answering ? and its bytes"
    );
    node.metrics().command("invalid", "too_long");
    node.metrics().questions.inc();
}

/// IAMAT replies in `out` that wait for the data dir (see [`Node::settle`]).
#[derive(Debug, Default)]
struct Unsettled {
    pos: u64,
    floods: Vec<(crate::store::Record, crate::proto::Version)>,
    /// Each reply's place in `out`, and its line (answered `?` if the disk fails).
    replies: Vec<(std::ops::Range<usize>, Vec<u8>)>,
}

impl Unsettled {
    /// Waits for the journal; if it failed, the waiting replies become `? line`.
    async fn settle(&mut self, node: &Node, out: &mut Vec<u8>) {
        if self.replies.is_empty() {
            return;
        }
        // Boxed, as a WHATSAT is: the wait for the disk would make every
        // connection's task a third bigger.
        Box::pin(self.settle_replies(node, out)).await
    }

    async fn settle_replies(&mut self, node: &Node, out: &mut Vec<u8>) {
        if node.settle(self.pos, self.floods.drain(..)).await.is_err() {
            let mut fixed = Vec::with_capacity(out.len());
            let mut at = 0;
            for (range, line) in &self.replies {
                fixed.extend_from_slice(&out[at..range.start]);
                node.reject(line, &mut fixed);
                at = range.end;
            }
            fixed.extend_from_slice(&out[at..]);
            *out = fixed;
            if let Some(j) = node.journal() {
                j.metrics.refused_iamats.inc_by(self.replies.len() as u64);
            }
            tracing::warn!(
                iamats = self.replies.len(),
                "the data dir could not take these IAMATs; answered '?'"
            );
        }
        self.floods.clear();
        self.replies.clear();
        self.pos = 0;
    }
}

/// Answers one line (without its line end), appending the reply to `out`; sets
/// `iamat` for an IAMAT (whose record may be on its way to the neighbours).
///
/// A WHATSAT, which waits for places, is answered by the future returned, boxed:
/// its wait goes through the whole places stack, and inline it would be part of
/// every connection's task (allocated whole at spawn, idle or not).
fn answer<'a>(
    node: &'a Node,
    line: &'a [u8],
    received: Timestamp,
    max_client_id: usize,
    out: &'a mut Vec<u8>,
    unsettled: &'a mut Unsettled,
    iamat: &mut bool,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
    // One event per line (target `logging::LINES`): the line received and the reply
    // sent, together; a WHATSAT's reply as its AT line and the JSON's size, the JSON
    // (about 3.4 KB at 20 results) only in a debug event of its own.
    let start = out.len();
    match wire::parse(line, max_client_id) {
        Ok(Command::Blank) => {}
        Ok(Command::IAmAt(cmd)) => {
            *iamat = true;
            if let Some(u) = node.iamat(&cmd, line, received, out) {
                unsettled.pos = unsettled.pos.max(u.pos);
                unsettled.floods.extend(u.flood);
                unsettled.replies.push((start..out.len(), line.to_vec()));
            }
        }
        Ok(Command::WhatsAt(cmd)) => {
            return Some(Box::pin(whatsat(node, cmd, line, out, unsettled)));
        }
        Err(e) => {
            node.metrics().command("invalid", e.outcome());
            node.reject(line, out);
            let reply = Escaped(&out[start..]);
            tracing::info!(target: crate::logging::LINES, line = %Escaped(line), %reply, reason = %e, "answered");
            return None;
        }
    }
    let reply = Escaped(&out[start..]);
    tracing::info!(target: crate::logging::LINES, line = %Escaped(line), %reply, "answered");
    None
}

/// Answers a WHATSAT (see [`answer`]).
async fn whatsat(
    node: &Node,
    cmd: wire::WhatsAt<'_>,
    line: &[u8],
    out: &mut Vec<u8>,
    unsettled: &mut Unsettled,
) {
    // A WHATSAT waits for places: what waits for the disk goes first, so
    // that the replies before it are final (their places in `out` too).
    unsettled.settle(node, out).await;
    let start = out.len();
    if !node.whatsat(&cmd, out).await {
        node.reject(line, out);
        let reply = Escaped(&out[start..]);
        tracing::info!(target: crate::logging::LINES, line = %Escaped(line), %reply, reason = "unknown client", "answered");
        return;
    }
    let reply = &out[start..];
    let at_end = memchr::memchr(b'\n', reply).unwrap_or(reply.len());
    let json = reply[at_end..].trim_ascii();
    tracing::info!(
        target: crate::logging::LINES,
        line = %Escaped(line),
        reply = %Escaped(&reply[..at_end]),
        json_bytes = json.len(),
        "answered"
    );
    tracing::debug!(target: crate::logging::LINES, json = %Escaped(json), "whatsat json");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair over loopback: (the server's side, the client's).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    #[tokio::test]
    async fn a_read_that_waits_holds_no_buffer() {
        let (mut server, mut client) = pair().await;
        let mut buf = BytesMut::new();
        // A new socket is tried at once (tokio takes it for readable): that try
        // finds nothing, and the wait that follows must not keep its room.
        tokio::select! {
            n = read(&mut server, &mut buf) => panic!("read {n:?} from a silent client"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert_eq!(buf.capacity(), 0);
        // Half a line: the bytes are kept, and the next read appends to them.
        client.write_all(b"IAM").await.unwrap();
        assert_eq!(read(&mut server, &mut buf).await.unwrap(), 3);
        client.write_all(b"AT x\n").await.unwrap();
        assert_eq!(read(&mut server, &mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..], b"IAMAT x\n");
        drop(client);
        assert_eq!(read(&mut server, &mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn write_out_writes_past_a_full_socket_buffer_and_times_out_on_a_reader_that_stops() {
        let (mut server, mut client) = pair().await;
        // More than the socket buffers hold: the rest waits for the client.
        let out = vec![b'x'; 8 << 20];
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 8 << 20];
            client.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == b'x'));
            client
        });
        assert!(
            write_out(&mut server, &out, Duration::from_secs(10))
                .await
                .unwrap()
        );
        let _client = reader.await.unwrap();
        // Now nobody reads: the write is cut off at the timeout.
        let started = Instant::now();
        assert!(
            !write_out(&mut server, &out, Duration::from_millis(200))
                .await
                .unwrap()
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
