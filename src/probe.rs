//! Asking a server's peer port how it is, for `herd health` and `herd status`: one
//! gRPC channel, the health check, and, when that fails, a diagnosis in an operator's
//! words ("connection refused", "this looks like a client port") instead of the
//! transport's internals.

use std::{io, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    auth::{PeerTls, Secret},
    config::HerdConfig,
};

pub use tonic_health::pb::health_check_response::ServingStatus;

/// Why a peer port could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{addr}: connection refused (nothing listens there)")]
    Refused { addr: String },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: cannot resolve the host name: {detail}")]
    Resolve { addr: String, detail: String },
    #[error(
        "{addr}: not a herd peer port: this looks like a client port (it answered the HTTP/2 preface with `? `)"
    )]
    ClientPort { addr: String },
    #[error("{addr}: not a herd peer port: it does not speak gRPC ({detail})")]
    NotGrpc { addr: String, detail: String },
    #[error("{addr}: {detail}")]
    Other { addr: String, detail: String },
}

/// How a tool reaches a peer port: the herd secret it sends and the TLS it speaks
/// (the herd file's `[auth]` and `[tls]`; a tool has no certificate of its own, which
/// health, `/metrics` and `Inspect` do not need).
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub secret: Option<Secret>,
    pub tls: Option<PeerTls>,
}

impl Access {
    /// What `herd`'s own herd file (and `HERD_SECRET_FILE`, already applied) says.
    pub fn of(herd: &HerdConfig) -> Result<Access, String> {
        Ok(Access {
            secret: herd.auth.secret.clone(),
            tls: match &herd.tls {
                Some(tls) => Some(PeerTls::load(tls, None)?),
                None => None,
            },
        })
    }

    /// Adds the secret, if any, to a request.
    pub fn authorize<T>(&self, mut req: tonic::Request<T>) -> tonic::Request<T> {
        if let Some(secret) = &self.secret {
            secret.insert(req.metadata_mut());
        }
        req
    }
}

/// A channel to a peer port (`HOST:PORT`) of the server named `name`, connected.
pub async fn connect(
    addr: &str,
    name: &str,
    access: &Access,
    timeout: Duration,
) -> Result<Channel, ProbeError> {
    let scheme = if access.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let bad = |e: String| ProbeError::Other {
        addr: addr.to_owned(),
        detail: e,
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| bad(format!("not a HOST:PORT address: {e}")))?;
    if let Some(tls) = &access.tls {
        endpoint = endpoint
            .tls_config(tls.client(name))
            .map_err(|e| bad(format!("TLS settings: {e}")))?;
    }
    match tokio::time::timeout(
        timeout,
        endpoint.connect_timeout(timeout).timeout(timeout).connect(),
    )
    .await
    {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(diagnose(addr, &e, timeout).await),
        Err(_) => Err(ProbeError::Timeout {
            addr: addr.to_owned(),
            timeout,
        }),
    }
}

/// One health check of `service` ("" for the whole server) at `addr`.
pub async fn health(
    addr: &str,
    name: &str,
    access: &Access,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, ProbeError> {
    let channel = connect(addr, name, access, timeout).await?;
    let mut client = HealthClient::new(channel);
    let call = client.check(access.authorize(tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    })));
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner().status()),
        Ok(Err(status)) => Err(diagnose(addr, &status, timeout).await),
        Err(_) => Err(ProbeError::Timeout {
            addr: addr.to_owned(),
            timeout,
        }),
    }
}

/// Why `herd reload` did not apply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// The server refused the file (invalid, or needing a restart): its message.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// One `Admin/Reload` call at `addr`: the server re-reads its herd file.
pub async fn reload(
    addr: &str,
    name: &str,
    access: &Access,
    timeout: Duration,
) -> Result<crate::proto::ReloadReply, ReloadError> {
    let channel = connect(addr, name, access, timeout).await?;
    let mut client = crate::proto::admin_client::AdminClient::new(channel);
    let call = client.reload(access.authorize(tonic::Request::new(crate::proto::ReloadRequest {})));
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status))
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            ) =>
        {
            Err(ReloadError::Refused(status.message().to_owned()))
        }
        Ok(Err(status)) => Err(diagnose(addr, &status, timeout).await.into()),
        Err(_) => Err(ProbeError::Timeout {
            addr: addr.to_owned(),
            timeout,
        }
        .into()),
    }
}

/// Names what went wrong talking gRPC to `addr`: the socket error when there is one,
/// else what the port says to an HTTP/2 preface.
pub async fn diagnose(
    addr: &str,
    err: &(dyn std::error::Error + 'static),
    timeout: Duration,
) -> ProbeError {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    return ProbeError::Refused {
                        addr: addr.to_owned(),
                    };
                }
                io::ErrorKind::TimedOut => {
                    return ProbeError::Timeout {
                        addr: addr.to_owned(),
                        timeout,
                    };
                }
                _ => {}
            }
        }
        // Name resolution failures come from the resolver as text, not as an io kind.
        let text = e.to_string();
        if text.contains("failed to lookup address") || text.contains("Name or service not known") {
            return ProbeError::Resolve {
                addr: addr.to_owned(),
                detail: text,
            };
        }
        source = e.source();
    }
    if let Some(status) = err.downcast_ref::<tonic::Status>()
        && status.code() == tonic::Code::Unauthenticated
    {
        return ProbeError::Other {
            addr: addr.to_owned(),
            detail: format!("refused: {}", status.message()),
        };
    }
    if let Some(status) = err.downcast_ref::<tonic::Status>()
        && status.code() == tonic::Code::Unimplemented
    {
        return ProbeError::NotGrpc {
            addr: addr.to_owned(),
            detail: "it speaks gRPC but has no health service".into(),
        };
    }
    match preface(addr, timeout).await {
        Ok(answer) if answer.starts_with(b"? ") => ProbeError::ClientPort {
            addr: addr.to_owned(),
        },
        // An HTTP/2 server answers the preface with a SETTINGS frame (type 4).
        Ok(answer) if answer.len() >= 4 && answer[3] == 4 => ProbeError::Other {
            addr: addr.to_owned(),
            detail: format!("gRPC call failed: {}", chain(err)),
        },
        Ok(answer) if answer.is_empty() => ProbeError::NotGrpc {
            addr: addr.to_owned(),
            detail: "it closed the connection without a word".into(),
        },
        Ok(answer) => ProbeError::NotGrpc {
            addr: addr.to_owned(),
            detail: format!(
                "it answered {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(40)])
            ),
        },
        Err(_) => ProbeError::Other {
            addr: addr.to_owned(),
            detail: chain(err),
        },
    }
}

/// What `addr` sends back within `timeout` to the HTTP/2 client preface.
async fn preface(addr: &str, timeout: Duration) -> io::Result<Vec<u8>> {
    let talk = async {
        let mut socket = TcpStream::connect(addr).await?;
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await?;
        let mut answer = vec![0; 64];
        let n = socket.read(&mut answer).await?;
        answer.truncate(n);
        Ok(answer)
    };
    tokio::time::timeout(timeout, talk)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// An error and its sources, as one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_named_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = health(
            &addr,
            "Goloman",
            &Access::default(),
            "",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e, ProbeError::Refused { addr });
    }

    #[tokio::test]
    async fn a_port_that_answers_question_marks_is_a_client_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Answers every line as a herd client port would answer an unknown command.
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(b"? PRI * HTTP/2.0\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let e = health(
            &addr,
            "Goloman",
            &Access::default(),
            "",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e, ProbeError::ClientPort { addr });
    }
}

/// How long each step of [`wait_ready`] took.
#[derive(Debug, Clone, Default)]
pub struct Ready {
    pub serving: Duration,
    pub links_up: Duration,
    pub caught_up: Duration,
}

/// Waits until server `name` of `herd` is ready to take the place of any other in
/// a rolling restart: it serves (health SERVING), every link of its herd-file
/// neighbours is up as it reports them (`Inspect/Links`), and it has caught up:
/// for every source, its floor has reached the floor each neighbour had once the
/// links were up (`Inspect/Floors`; an older incarnation it no longer lists counts
/// as reached when it lists a newer one of that origin). Err names what was still
/// missing at `timeout`.
pub async fn wait_ready(
    herd: &HerdConfig,
    access: &Access,
    name: &str,
    timeout: Duration,
) -> Result<Ready, String> {
    use crate::proto::{FloorsRequest, LinksRequest, inspect_client::InspectClient};
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let me = herd.server(name).map_err(|e| e.to_string())?;
    let addr_of = |s: &crate::config::ServerConfig| format!("{}:{}", s.host, s.peer_port);
    let call = Duration::from_secs(2);
    let pause = || tokio::time::sleep(Duration::from_millis(100));
    let late = |what: String| format!("{name} not ready within {timeout:?}: {what}");
    let mut ready = Ready::default();

    let addr = addr_of(me);
    loop {
        let last = match health(&addr, name, access, "", call).await {
            Ok(ServingStatus::Serving) => break,
            Ok(s) => format!("health is {}", s.as_str_name()),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(late(last));
        }
        pause().await;
    }
    ready.serving = started.elapsed();

    let inspect = |addr: String, peer: String| async move {
        let channel = connect(&addr, &peer, access, call)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(InspectClient::new(channel))
    };
    loop {
        let down = match inspect(addr.clone(), name.to_owned()).await {
            Ok(mut client) => match client
                .links(access.authorize(tonic::Request::new(LinksRequest {})))
                .await
            {
                Ok(reply) => {
                    let links = reply.into_inner().links;
                    me.neighbours
                        .iter()
                        .filter(|n| !links.iter().any(|l| l.neighbour == ***n && l.state == "up"))
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                }
                Err(status) => vec![format!("Inspect/Links: {}", status.message())],
            },
            Err(e) => vec![e],
        };
        if down.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(late(format!("links not up: {}", down.join(", "))));
        }
        pause().await;
    }
    ready.links_up = started.elapsed();

    let floors = |addr: String, peer: String| async move {
        let mut client = inspect(addr, peer).await?;
        client
            .floors(access.authorize(tonic::Request::new(FloorsRequest {})))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("Inspect/Floors: {}", s.message()))
    };
    // What the neighbours had once the links were up.
    let mut wanted: Vec<crate::proto::Floor> = Vec::new();
    for n in &me.neighbours {
        let Ok(neighbour) = herd.server(n) else {
            continue;
        };
        let reply = loop {
            match floors(addr_of(neighbour), n.to_string()).await {
                Ok(r) => break r,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(late(format!("neighbour {n}: {e}")));
                }
                Err(_) => pause().await,
            }
        };
        wanted.extend(reply.floors);
    }
    loop {
        let missing = match floors(addr.clone(), name.to_owned()).await {
            Ok(mine) => wanted
                .iter()
                .filter(|w| {
                    let reached = mine.floors.iter().any(|f| {
                        f.origin == w.origin
                            && (f.incarnation > w.incarnation
                                || (f.incarnation == w.incarnation && f.seq >= w.seq))
                    });
                    // Its own source: it holds all it made.
                    let own = w.origin == *name && w.incarnation <= mine.incarnation;
                    !(reached || own)
                })
                .map(|w| format!("{}/{} up to {}", w.origin, w.incarnation, w.seq))
                .collect::<Vec<_>>(),
            Err(e) => vec![e],
        };
        if missing.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(late(format!("not caught up: {}", missing.join(", "))));
        }
        pause().await;
    }
    ready.caught_up = started.elapsed();
    Ok(ready)
}
