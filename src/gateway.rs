//! The client gateway: the accept loop and one task per connection, turning each
//! line into a [`Node`] call and writing the replies. It holds no logic of its own.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    node::Node,
    wire::{self, Command, Timestamp},
};

/// The longest line (line end excluded) the server reads as a command, like Redis's
/// inline-command limit: it bounds what one connection can make the server hold.
/// A longer line, whatever it holds, is answered `? ` and its bytes, streamed out as
/// they arrive, so memory stays bounded and the reply still echoes every byte.
pub const MAX_LINE: usize = 64 * 1024;

/// Accepts clients until `shutdown`, each on its own task in `tasks`.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, addr)) => {
                let span = tracing::info_span!("client", peer = %addr);
                tasks.spawn(
                    connection(socket, addr, node.clone(), shutdown.clone()).instrument(span),
                );
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
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
    shutdown: CancellationToken,
) {
    tracing::debug!("connected");
    node.metrics().connections_opened.inc();
    node.metrics().connections_open.inc();
    match serve(socket, &node, &shutdown).await {
        Ok(()) => tracing::debug!(%addr, "closed"),
        Err(e) => tracing::debug!(%addr, error = %e, "connection failed"),
    }
    node.metrics().connections_open.dec();
}

/// Serves one connection: reads lines, answers them in order, writes each batch of
/// replies in one write, and answers a last line ended by EOF before closing.
async fn serve(
    mut socket: TcpStream,
    node: &Node,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    // Inside a line too long to hold: its "? " and start are already written.
    let mut overlong = false;
    // How much of `buf` is known to hold no LF (a long line is scanned once).
    let mut scanned = 0;
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = socket.read_buf(&mut buf) => n?,
        };
        let mut start = 0;
        while let Some(pos) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + pos + 1;
            let line = wire::strip_line_end(&buf[start..end]);
            if overlong {
                overlong = false;
                out.extend_from_slice(line);
                out.push(b'\n');
            } else if line.len() > MAX_LINE {
                // Held whole this time, but past the limit: answered as if streamed, so
                // the reply does not depend on how TCP split the line.
                too_long(node, line, &mut out);
            } else {
                answer(node, line, &mut out).await;
            }
            start = end;
            scanned = end;
        }
        buf.advance(start);
        scanned = buf.len();

        if n == 0 {
            let line = wire::strip_line_end(&buf);
            if overlong {
                out.extend_from_slice(line);
                out.push(b'\n');
            } else if line.len() > MAX_LINE {
                too_long(node, line, &mut out);
            } else if !buf.is_empty() {
                answer(node, line, &mut out).await;
            }
            if !out.is_empty() {
                socket.write_all(&out).await?;
            }
            socket.shutdown().await?;
            return Ok(());
        }

        // A trailing CR may belong to the line end: it stays until the next read.
        let pending_cr = usize::from(buf.last() == Some(&b'\r'));
        let held = buf.len() - pending_cr;
        if held > MAX_LINE || (overlong && held > 0) {
            if !overlong {
                overlong = true;
                out.extend_from_slice(b"? ");
                count_too_long(node, &buf[..held]);
            }
            out.extend_from_slice(&buf[..held]);
            buf.advance(held);
            scanned = buf.len();
        }

        if !out.is_empty() {
            socket.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Answers a line longer than [`MAX_LINE`] that happens to be held whole.
fn too_long(node: &Node, line: &[u8], out: &mut Vec<u8>) {
    count_too_long(node, line);
    out.extend_from_slice(b"? ");
    out.extend_from_slice(line);
    out.push(b'\n');
}

fn count_too_long(node: &Node, head: &[u8]) {
    tracing::debug!(
        head = %head[..head.len().min(80)].escape_ascii(),
        "received a line longer than {MAX_LINE} bytes; answering ?"
    );
    node.metrics().command("invalid", "too_long");
    node.metrics().questions.inc();
}

/// Answers one line (without its line end), appending the reply to `out`.
async fn answer(node: &Node, line: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    tracing::debug!(line = %line.escape_ascii(), "received");
    match wire::parse(line) {
        Ok(Command::Blank) => return,
        Ok(Command::IAmAt(cmd)) => node.iamat(&cmd, Timestamp::now(), out),
        Ok(Command::WhatsAt(cmd)) => {
            if !node.whatsat(&cmd, out).await {
                tracing::debug!("WHATSAT for an unknown client");
                node.reject(line, out);
            }
        }
        Err(e) => {
            tracing::debug!(reason = %e, "invalid line");
            node.metrics().command("invalid", "rejected");
            node.reject(line, out);
        }
    }
    tracing::debug!(reply = %out[start..].escape_ascii(), "sent");
}
