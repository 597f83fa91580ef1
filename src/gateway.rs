//! The client gateway: the accept loop and one task per connection, turning each
//! line into a [`Node`] call and writing the replies. It holds no logic of its own.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
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

/// The most client connections one server holds at once; more wait in the kernel's
/// accept queue. Keeps clients from taking every file descriptor (the peer port
/// needs some too).
pub const MAX_CLIENTS: usize = 50_000;

/// Accepts clients until `shutdown`, each on its own task in `tasks`.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    limits: GatewayConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = async {
                let permit = slots.clone().acquire_owned().await;
                (permit, accept(&listener).await)
            } => a,
        };
        let (Ok(permit), (socket, addr)) = accepted else {
            return;
        };
        let span = tracing::info_span!("client", peer = %addr);
        let node = node.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(
            async move {
                connection(socket, addr, node, limits, shutdown).await;
                drop(permit);
            }
            .instrument(span),
        );
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

async fn connection(
    socket: TcpStream,
    addr: SocketAddr,
    node: Arc<Node>,
    limits: GatewayConfig,
    shutdown: CancellationToken,
) {
    tracing::debug!("connected");
    node.metrics().connections_opened.inc();
    node.metrics().connections_open.inc();
    match serve(socket, &node, limits, &shutdown).await {
        Ok(()) => tracing::debug!(%addr, "closed"),
        Err(e) => tracing::debug!(%addr, error = %e, "connection failed"),
    }
    node.metrics().connections_open.dec();
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
async fn serve(
    mut socket: TcpStream,
    node: &Node,
    limits: GatewayConfig,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    // Both buffers are allocated when data comes and given back when drained, so an
    // idle connection holds no buffer at all.
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut codec = LineCodec::new(MAX_LINE);
    // Registered once per connection, not once per read: the token's waiter list
    // is shared by every connection.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        let n = tokio::select! {
            _ = &mut cancelled => return Ok(()),
            n = read(&mut socket, &mut buf) => n?,
        };
        let eof = n == 0;
        // Every line of this read was received now, whatever the lines before it cost.
        let received = Timestamp::now();
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
                socket.write_all(&out).await?;
                out.clear();
            }
            match frame {
                Frame::Line(line) => answer(node, &line, received, &mut out).await,
                Frame::LongStart(head) => {
                    count_too_long(node, &head);
                    out.extend_from_slice(b"? ");
                    out.extend_from_slice(&head);
                }
                Frame::LongMore(more) => out.extend_from_slice(&more),
                Frame::LongEnd(tail) => {
                    out.extend_from_slice(&tail);
                    out.push(b'\n');
                }
            }
        }
        if !out.is_empty() {
            socket.write_all(&out).await?;
            out = Vec::new();
        }
        if eof {
            socket.shutdown().await?;
            return Ok(());
        }
        if buf.is_empty() {
            buf = BytesMut::new();
        }
    }
}

/// Reads what the socket has, allocating room only once it is readable.
///
/// The read itself goes through `AsyncRead`, not `try_read_buf`: tokio forgets the
/// socket's readiness when a read fills less than the room it was given (the socket
/// is drained), so the next wait goes straight to the poller instead of costing a
/// `recv` that can only say "would block": one system call less per request.
async fn read(socket: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    socket.readable().await?;
    buf.reserve(READ_SIZE);
    socket.read_buf(buf).await
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

/// Answers one line (without its line end), appending the reply to `out`.
async fn answer(node: &Node, line: &[u8], received: Timestamp, out: &mut Vec<u8>) {
    // One event per line (target `logging::LINES`): the line received and the reply
    // sent, together; a WHATSAT's reply as its AT line and the JSON's size, the JSON
    // (about 3.4 KB at 20 results) only in a debug event of its own.
    let start = out.len();
    match wire::parse(line) {
        Ok(Command::Blank) => {}
        Ok(Command::IAmAt(cmd)) => node.iamat(&cmd, received, out),
        Ok(Command::WhatsAt(cmd)) => {
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
            return;
        }
        Err(e) => {
            node.metrics().command("invalid", "rejected");
            node.reject(line, out);
            let reply = Escaped(&out[start..]);
            tracing::info!(target: crate::logging::LINES, line = %Escaped(line), %reply, reason = %e, "answered");
            return;
        }
    }
    let reply = Escaped(&out[start..]);
    tracing::info!(target: crate::logging::LINES, line = %Escaped(line), %reply, "answered");
}
