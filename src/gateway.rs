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

/// The longest line held in memory. A longer one is still answered byte for byte:
/// its `? ` reply is streamed out as the line arrives.
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
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = socket.read_buf(&mut buf) => n?,
        };
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos + 1;
            let line = wire::strip_line_end(&buf[start..end]);
            if overlong {
                overlong = false;
                out.extend_from_slice(line);
                out.push(b'\n');
                tracing::debug!(tail = %line.escape_ascii(), "overlong line ended");
            } else {
                answer(node, line, &mut out).await;
            }
            start = end;
        }
        buf.advance(start);

        if n == 0 {
            if !buf.is_empty() {
                let line = wire::strip_line_end(&buf);
                if overlong {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                } else {
                    answer(node, line, &mut out).await;
                }
            }
            if !out.is_empty() {
                socket.write_all(&out).await?;
            }
            socket.shutdown().await?;
            return Ok(());
        }

        if buf.len() > MAX_LINE {
            if !overlong {
                overlong = true;
                out.extend_from_slice(b"? ");
                tracing::debug!(head = %buf[..80].escape_ascii(), "overlong line");
            }
            // A trailing CR may belong to the line end: keep it until the next read.
            let keep = usize::from(buf.last() == Some(&b'\r'));
            out.extend_from_slice(&buf[..buf.len() - keep]);
            buf.advance(buf.len() - keep);
        }

        if !out.is_empty() {
            socket.write_all(&out).await?;
            out.clear();
        }
    }
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
