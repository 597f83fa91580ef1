//! `herd client`: a line client for the client port, for people and scripts. It sends
//! one line at a time and reads exactly that line's reply (one `AT` or `?` line, or
//! for a WHATSAT the AT line, the JSON and the empty line that ends it), so no `nc`
//! timeout guesses when a reply is complete.
//!
//! A `?` reply carries no reason on the wire (PROTOCOL.md); the client explains it by
//! running herd's own parser ([`wire::parse`]) on the line it sent, the same code the
//! server ran, and says so. The server's log has the reason it gave too.

use std::{
    io::{self, BufRead, BufReader, IsTerminal as _, Write},
    net::{TcpStream, ToSocketAddrs as _},
    path::PathBuf,
    time::Duration,
};

use crate::{
    gateway::MAX_LINE,
    wire::{self, Command},
};

/// How `herd client` ran, as its exit code says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every line got an `AT` reply (or, blank, none).
    Answered,
    /// At least one line got a `?` reply.
    SomeRejected,
}

/// Why `herd client` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("cannot connect to {addr}: {}", describe_io(.source))]
    Connect { addr: String, source: io::Error },
    #[error("connection to {addr} lost: {}", describe_io(.source))]
    Lost { addr: String, source: io::Error },
    #[error("{addr} closed the connection before it replied")]
    Closed { addr: String },
    #[error("no reply from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("reading the terminal: {0}")]
    Terminal(#[from] rustyline::error::ReadlineError),
    #[error("writing the output: {0}")]
    Output(io::Error),
}

/// The words an operator needs for the common socket errors, instead of an OS code.
pub fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (nothing listens there)".into(),
        io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            "no route to the host".into()
        }
        _ => e.to_string(),
    }
}

/// How replies are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The server's bytes, exactly; `?` reasons go to stderr.
    Raw,
    /// For reading: the AT line, the JSON indented, `?` replies followed by their reason.
    Pretty,
}

/// What `herd client` is asked to do.
#[derive(Debug)]
pub struct ClientOptions {
    /// HOST:PORT of a client port.
    pub addr: String,
    /// One command given on the command line; None: read lines (terminal or stdin).
    pub command: Option<String>,
    /// None: pretty on a terminal, raw otherwise.
    pub output: Option<Output>,
    /// How long one reply may take (a WHATSAT's places lookup included).
    pub timeout: Duration,
    /// Where the interactive history is kept; None: in memory only.
    pub history: Option<PathBuf>,
}

/// One connection to a client port.
pub struct Connection {
    addr: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    timeout: Duration,
}

/// One reply, byte for byte, and what kind it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub rejected: bool,
}

impl Connection {
    pub fn open(addr: &str, timeout: Duration) -> Result<Connection, ClientError> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve {
                addr: addr.to_owned(),
                source,
            })?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    stream.set_read_timeout(Some(timeout)).map_err(|source| {
                        ClientError::Connect {
                            addr: addr.to_owned(),
                            source,
                        }
                    })?;
                    let writer = stream.try_clone().map_err(|source| ClientError::Connect {
                        addr: addr.to_owned(),
                        source,
                    })?;
                    return Ok(Connection {
                        addr: addr.to_owned(),
                        reader: BufReader::new(stream),
                        writer,
                        timeout,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(ClientError::Connect {
            addr: addr.to_owned(),
            source: last,
        })
    }

    /// Sends `line` (without its line end) and reads its whole reply; None for a
    /// blank line, which the protocol leaves unanswered.
    pub fn ask(&mut self, line: &[u8]) -> Result<Option<Reply>, ClientError> {
        if wire::fields(line).next().is_none() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line);
        out.push(b'\n');
        self.writer.write_all(&out).map_err(|e| self.lost(e))?;
        let mut bytes = Vec::new();
        self.read_line(&mut bytes)?;
        let rejected = bytes.starts_with(b"? ");
        // A WHATSAT's AT line is followed by the JSON and an empty line; nothing else
        // has more than one line.
        let whatsat = wire::fields(line).next() == Some(b"WHATSAT".as_slice());
        if whatsat && bytes.starts_with(b"AT ") {
            loop {
                let start = bytes.len();
                self.read_line(&mut bytes)?;
                if &bytes[start..] == b"\n" {
                    break;
                }
            }
        }
        Ok(Some(Reply { bytes, rejected }))
    }

    fn read_line(&mut self, into: &mut Vec<u8>) -> Result<(), ClientError> {
        match self.reader.read_until(b'\n', into) {
            Ok(0) => Err(ClientError::Closed {
                addr: self.addr.clone(),
            }),
            Ok(_) if into.last() != Some(&b'\n') => Err(ClientError::Closed {
                addr: self.addr.clone(),
            }),
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::Timeout {
                    addr: self.addr.clone(),
                    timeout: self.timeout,
                })
            }
            Err(e) => Err(self.lost(e)),
        }
    }

    fn lost(&self, source: io::Error) -> ClientError {
        ClientError::Lost {
            addr: self.addr.clone(),
            source,
        }
    }
}

/// Why the server answered `line` with `?`, by herd's own parser (the server's code).
pub fn explain(line: &[u8]) -> String {
    if line.len() > MAX_LINE {
        return format!(
            "the line is {} bytes, longer than the {MAX_LINE}-byte limit",
            line.len()
        );
    }
    match wire::parse(line, crate::config::DEFAULT_MAX_CLIENT_ID) {
        Err(e) => e.to_string(),
        Ok(Command::WhatsAt(cmd)) => format!(
            "the server holds no record of client {}: WHATSAT needs a client it knows \
             (from an IAMAT it received, or flooded to it)",
            String::from_utf8_lossy(cmd.client_id)
        ),
        Ok(_) => "herd's parser accepts this line; see the server's log for the reason".into(),
    }
}

/// Writes `reply` for a reader: the AT line as sent, the JSON indented, a `?` line
/// followed by its reason.
pub fn pretty(line: &[u8], reply: &Reply, out: &mut impl Write) -> io::Result<()> {
    if reply.rejected {
        out.write_all(&reply.bytes)?;
        return writeln!(out, "  reason: {}", explain(line));
    }
    let text = String::from_utf8_lossy(&reply.bytes);
    let (at, rest) = text.split_once('\n').unwrap_or((&text, ""));
    writeln!(out, "{at}")?;
    let json = rest.trim_end_matches('\n');
    if json.is_empty() {
        return Ok(());
    }
    // The keys of herd's JSON are already in alphabetical order, so re-serialising
    // through a sorted map shows them as sent.
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(v) => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| json.to_owned())
        ),
        Err(_) => writeln!(out, "{json}"),
    }
}

/// Runs `herd client`.
pub fn run(opts: &ClientOptions) -> Result<Outcome, ClientError> {
    let mut conn = Connection::open(&opts.addr, opts.timeout)?;
    let stdout = io::stdout();
    let output = opts.output.unwrap_or(if stdout.is_terminal() {
        Output::Pretty
    } else {
        Output::Raw
    });
    let mut rejected = false;
    let mut one = |conn: &mut Connection, line: &[u8]| -> Result<(), ClientError> {
        let Some(reply) = conn.ask(line)? else {
            return Ok(());
        };
        rejected |= reply.rejected;
        let mut out = stdout.lock();
        match output {
            Output::Pretty => pretty(line, &reply, &mut out),
            Output::Raw => out
                .write_all(&reply.bytes)
                .and_then(|()| out.flush())
                .map(|()| {
                    if reply.rejected {
                        eprintln!("herd client: ? reason: {}", explain(line));
                    }
                }),
        }
        .map_err(ClientError::Output)
    };

    if let Some(command) = &opts.command {
        one(&mut conn, command.as_bytes())?;
    } else if io::stdin().is_terminal() {
        interactive(&mut conn, opts, &mut one)?;
    } else {
        // Lines are bytes: read them as such (a client ID may be any bytes).
        let mut stdin = io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => one(&mut conn, wire::strip_line_end(&line))?,
                Err(e) => return Err(ClientError::Output(e)),
            }
        }
    }
    Ok(if rejected {
        Outcome::SomeRejected
    } else {
        Outcome::Answered
    })
}

fn interactive(
    conn: &mut Connection,
    opts: &ClientOptions,
    one: &mut impl FnMut(&mut Connection, &[u8]) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new()?;
    if let Some(path) = &opts.history {
        // A missing history file is the first session, not an error.
        let _ = editor.load_history(path);
    }
    eprintln!(
        "connected to {} (IAMAT, WHATSAT; Up/Down for history, Ctrl-D to quit)",
        opts.addr
    );
    let prompt = format!("{}> ", opts.addr);
    let result = loop {
        match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if let Err(e) = one(conn, line.as_bytes()) {
                    break Err(e);
                }
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => break Ok(()),
            Err(e) => break Err(e.into()),
        }
    };
    if let Some(path) = &opts.history
        && let Err(e) = editor.save_history(path)
    {
        eprintln!(
            "herd client: cannot save the history to {}: {e}",
            path.display()
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_each_kind_of_question() {
        assert_eq!(explain(b"FOO bar"), "unknown command");
        assert_eq!(explain(b"IAMAT a b"), "IAMAT takes 4 fields, got 3");
        assert_eq!(
            explain(b"IAMAT kiwi +91.0-118.4 1520023934.9"),
            "latitude is not within [-90, 90]"
        );
        assert!(explain(b"WHATSAT nobody 10 5").contains("no record of client nobody"));
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(explain(&long).contains("longer than"));
    }

    #[test]
    fn pretty_indents_the_json_and_shows_the_reason() {
        let reply = Reply {
            bytes: b"AT Hands +0.1 kiwi +1+2 3\n{\"html_attributions\":[],\"results\":[],\"status\":\"ZERO_RESULTS\"}\n\n".to_vec(),
            rejected: false,
        };
        let mut out = Vec::new();
        pretty(b"WHATSAT kiwi 1 1", &reply, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "AT Hands +0.1 kiwi +1+2 3\n{\n  \"html_attributions\": [],\n  \"results\": [],\n  \"status\": \"ZERO_RESULTS\"\n}\n"
        );
        let reply = Reply {
            bytes: b"? FOO\n".to_vec(),
            rejected: true,
        };
        let mut out = Vec::new();
        pretty(b"FOO", &reply, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "? FOO\n  reason: unknown command\n"
        );
    }
}
