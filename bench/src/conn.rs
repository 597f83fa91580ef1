//! One client connection with its read buffer: connect with a deadline, send, and take framed
//! replies off the stream one at a time (for the scenarios that are not the pipelined engine).

use std::{io, net::SocketAddr, time::Duration};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, timeout_at},
};

use super::workload::{Codec, Frame};

/// Opens a connection, giving up after `within`.
pub(crate) async fn connect(addr: SocketAddr, within: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Like [`connect`], but a refused connection is tried again every 50 ms until `until`: for a
/// server that is still starting.
pub(crate) async fn connect_patiently(
    addr: SocketAddr,
    within: Duration,
    until: Instant,
) -> io::Result<TcpStream> {
    loop {
        match connect(addr, within).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Says what to do when the open-file limit stops a connection.
pub(crate) fn explain(e: &io::Error) -> String {
    if e.raw_os_error() == Some(24) {
        format!("{e}; raise the open-file limit first, e.g. `ulimit -n 65536`")
    } else {
        e.to_string()
    }
}

/// A connection that reads whole replies.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    buf: BytesMut,
    codec: Codec,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, codec: Codec) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            codec,
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        timeout_at(deadline, self.stream.write_all(bytes))
            .await
            .map_err(|_| timed_out())?
    }

    /// The next whole reply, or an error when the stream ends, breaks or stays silent past
    /// `deadline`.
    pub(crate) async fn reply(&mut self, deadline: Instant) -> io::Result<Bytes> {
        loop {
            match self.codec.frame(&self.buf) {
                Frame::Reply(len) => return Ok(self.buf.split_to(len).freeze()),
                Frame::Broken => {
                    self.buf.advance(self.buf.len());
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server's bytes are not replies",
                    ));
                }
                Frame::More => {}
            }
            let n = timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| timed_out())??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no reply in time")
}
