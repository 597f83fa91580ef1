//! `herd status` and `herd topology`: the whole herd seen from one command. Every
//! server of the herd file is asked on its peer port, all at once: its health, its
//! links (`Inspect/Links`) and two scrapes of `/metrics` an interval apart (records
//! held, updates applied per second). A server that does not answer is shown down,
//! and its links as its neighbours see them.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use http_body_util::BodyExt as _;
use tonic::transport::Channel;
use tower::ServiceExt as _;

use crate::{
    config::HerdConfig,
    probe::{self, ProbeError, ServingStatus},
    proto::{LinkInfo, LinksRequest, inspect_client::InspectClient},
};

/// What `herd status` and `herd topology` ask.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// Dial every server at this host instead of the herd file's (e.g. 127.0.0.1 for
    /// the compose herd, whose file names containers).
    pub host: Option<String>,
    /// Between the two metrics scrapes that make the rate.
    pub interval: Duration,
    /// For each call.
    pub timeout: Duration,
    /// The herd secret and TLS to use.
    pub access: probe::Access,
}

/// One server as seen from its peer port.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    pub name: String,
    pub peer_addr: String,
    pub client_port: u16,
    /// The health answer, or why there was none.
    pub health: Result<ServingStatus, ProbeError>,
    /// This server's view of its links (empty when it did not answer).
    pub links: Vec<LinkInfo>,
    pub records: Option<u64>,
    /// Records applied per second over the interval: its own IAMATs and neighbours'
    /// updates that were newer.
    pub updates_per_s: Option<f64>,
}

impl ServerStatus {
    pub fn is_serving(&self) -> bool {
        matches!(self.health, Ok(ServingStatus::Serving))
    }

    fn link(&self, to: &str) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.neighbour == to)
    }

    fn health_text(&self) -> String {
        match &self.health {
            Ok(s) => s.as_str_name().to_owned(),
            Err(e) => format!("DOWN ({})", reason(e)),
        }
    }
}

/// A probe error without its address (the table shows the address already).
fn reason(e: &ProbeError) -> String {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((_, r)) => r.to_owned(),
        None => text,
    }
}

/// The herd: every server, in the herd file's order, and every link once.
#[derive(Debug, Clone)]
pub struct HerdStatus {
    pub servers: Vec<ServerStatus>,
    /// (a, b) with a < b by the herd file's order.
    pub links: Vec<(String, String)>,
}

/// How one link looks from both of its ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkHealth {
    /// Both ends that answered say up (and at least one answered).
    Up,
    /// An end that answered says it is not up.
    Down,
    /// Neither end answered.
    Unknown,
}

impl HerdStatus {
    fn server(&self, name: &str) -> Option<&ServerStatus> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The state one end reports for its link to the other ("?" when it did not answer).
    pub fn side(&self, from: &str, to: &str) -> String {
        self.server(from)
            .and_then(|s| s.link(to))
            .map_or_else(|| "?".to_owned(), |l| l.state.clone())
    }

    pub fn link_health(&self, a: &str, b: &str) -> LinkHealth {
        let views: Vec<String> = [(a, b), (b, a)]
            .iter()
            .filter_map(|(x, y)| self.server(x).and_then(|s| s.link(y)))
            .map(|l| l.state.clone())
            .collect();
        if views.is_empty() {
            LinkHealth::Unknown
        } else if views.iter().all(|s| s == "up")
            && self.server(a).is_some_and(ServerStatus::is_serving)
            && self.server(b).is_some_and(ServerStatus::is_serving)
        {
            LinkHealth::Up
        } else {
            LinkHealth::Down
        }
    }

    /// Every server serving and every link up.
    pub fn all_well(&self) -> bool {
        self.servers.iter().all(ServerStatus::is_serving)
            && self
                .links
                .iter()
                .all(|(a, b)| self.link_health(a, b) == LinkHealth::Up)
    }
}

/// Asks every server of `herd`, concurrently.
pub async fn gather(herd: &HerdConfig, opts: &StatusOptions) -> HerdStatus {
    let asks = herd.servers.iter().map(|s| {
        let host = opts.host.clone().unwrap_or_else(|| s.host.clone());
        let peer_addr = if host.contains(':') {
            format!("[{host}]:{}", s.peer_port)
        } else {
            format!("{host}:{}", s.peer_port)
        };
        ask(s.name.to_string(), peer_addr, s.client_port, opts.clone())
    });
    let servers = futures_util::future::join_all(asks).await;
    let order: BTreeMap<&str, usize> = herd
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| (&*s.name, i))
        .collect();
    let mut links = Vec::new();
    for s in &herd.servers {
        for n in &s.neighbours {
            if order.get(&*s.name) < order.get(&**n) {
                links.push((s.name.to_string(), n.to_string()));
            }
        }
    }
    HerdStatus { servers, links }
}

async fn ask(
    name: String,
    peer_addr: String,
    client_port: u16,
    opts: StatusOptions,
) -> ServerStatus {
    let mut status = ServerStatus {
        name,
        peer_addr,
        client_port,
        health: Err(ProbeError::Other {
            addr: String::new(),
            detail: "not asked".into(),
        }),
        links: Vec::new(),
        records: None,
        updates_per_s: None,
    };
    let access = &opts.access;
    status.health = probe::health(&status.peer_addr, &status.name, access, "", opts.timeout).await;
    if status.health.is_err() {
        return status;
    }
    let Ok(channel) = probe::connect(&status.peer_addr, &status.name, access, opts.timeout).await
    else {
        return status;
    };
    let mut inspect = InspectClient::new(channel.clone());
    let links = inspect.links(access.authorize(tonic::Request::new(LinksRequest {})));
    if let Ok(Ok(reply)) = tokio::time::timeout(opts.timeout, links).await {
        status.links = reply.into_inner().links;
    }
    let first = scrape(&channel, access, opts.timeout).await;
    let started = std::time::Instant::now();
    tokio::time::sleep(opts.interval).await;
    let second = scrape(&channel, access, opts.timeout).await;
    let took = started.elapsed().as_secs_f64();
    if let Some(m) = &second {
        status.records = m.records;
    }
    if let (Some(a), Some(b)) = (first, second)
        && took > 0.0
    {
        status.updates_per_s = Some(b.applied.saturating_sub(a.applied) as f64 / took);
    }
    status
}

/// The figures `herd status` reads from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scrape {
    pub records: Option<u64>,
    /// Records applied so far: own IAMATs and neighbours' updates.
    pub applied: u64,
}

/// GET /metrics over the gRPC channel itself (the peer port serves both).
async fn scrape(channel: &Channel, access: &probe::Access, timeout: Duration) -> Option<Scrape> {
    let mut req = http::Request::get("/metrics");
    if let Some(secret) = &access.secret {
        req = req.header(
            crate::auth::AUTHORIZATION,
            secret.bearer().as_encoded_bytes(),
        );
    }
    let req = req.body(tonic::body::Body::empty()).ok()?;
    let call = async {
        let resp = channel.clone().oneshot(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(parse_scrape(&String::from_utf8_lossy(&body)))
    };
    tokio::time::timeout(timeout, call).await.ok().flatten()
}

/// Reads the records gauge and the applied counters from a metrics exposition.
pub fn parse_scrape(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value.parse::<f64>().unwrap_or(0.0) as u64;
        let name = series.split('{').next().unwrap_or(series);
        match name {
            "herd_records" => s.records = Some(value),
            "herd_updates_applied_total" => s.applied += value,
            "herd_commands_total"
                if series.contains(r#"kind="iamat""#)
                    && series.contains(r#"outcome="applied""#) =>
            {
                s.applied += value
            }
            _ => {}
        }
    }
    s
}

/// The status as tables: servers, then links from both ends.
pub fn render_text(st: &HerdStatus) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 6]> = st
        .servers
        .iter()
        .map(|s| {
            let up = s.links.iter().filter(|l| l.state == "up").count();
            [
                s.name.clone(),
                s.peer_addr.clone(),
                s.health_text(),
                s.records.map_or("-".into(), |r| r.to_string()),
                s.updates_per_s.map_or("-".into(), |r| format!("{r:.1}")),
                if s.health.is_ok() {
                    format!("{up}/{} up", s.links.len())
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    table(
        &mut out,
        ["SERVER", "PEER", "HEALTH", "RECORDS", "UPDATES/S", "LINKS"],
        &rows,
    );
    out.push('\n');
    let mut rows = Vec::new();
    for s in &st.servers {
        for l in &s.links {
            rows.push([
                s.name.clone(),
                l.neighbour.clone(),
                l.state.clone(),
                since(l.since_unix_ms),
                l.updates_sent.to_string(),
                l.updates_received.to_string(),
                l.queued_bytes.to_string(),
            ]);
        }
        if s.health.is_err() {
            for (a, b) in &st.links {
                let other = if a == &s.name {
                    b
                } else if b == &s.name {
                    a
                } else {
                    continue;
                };
                rows.push([
                    s.name.clone(),
                    other.clone(),
                    "? (server down)".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
            }
        }
    }
    table(
        &mut out,
        [
            "LINK FROM",
            "TO",
            "STATE",
            "FOR",
            "SENT",
            "RECEIVED",
            "QUEUED",
        ],
        &rows,
    );
    out.push_str(
        "\nUPDATES/S: records the server applied per second (its own IAMATs and newer updates \
         from neighbours) between two scrapes.\nQUEUED: bytes of updates waiting to be sent to \
         that neighbour now: the link's lag.\n",
    );
    out
}

fn since(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(unix_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

fn table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let mut width = head.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = width[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// The status as one JSON object, for scripts.
pub fn render_json(st: &HerdStatus) -> serde_json::Value {
    let servers: Vec<_> = st
        .servers
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "peer": s.peer_addr,
                "serving": s.is_serving(),
                "health": s.health_text(),
                "records": s.records,
                "updates_per_s": s.updates_per_s,
                "links": s.links.iter().map(|l| serde_json::json!({
                    "neighbour": l.neighbour,
                    "state": l.state,
                    "since_unix_ms": l.since_unix_ms,
                    "updates_sent": l.updates_sent,
                    "updates_received": l.updates_received,
                    "queued_bytes": l.queued_bytes,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let links: Vec<_> = st
        .links
        .iter()
        .map(|(a, b)| {
            serde_json::json!({
                "between": [a, b],
                "up": st.link_health(a, b) == LinkHealth::Up,
                "states": { a.as_str(): st.side(a, b), b.as_str(): st.side(b, a) },
            })
        })
        .collect();
    serde_json::json!({ "servers": servers, "links": links, "all_well": st.all_well() })
}

/// The herd as a Graphviz graph: a box per server (green when serving, red and
/// dashed when not), an edge per link (green up, red dashed down, grey unknown),
/// labelled with what each end says.
pub fn render_dot(st: &HerdStatus) -> String {
    // Labels use DOT's `\n` line breaks, so only quotes are escaped.
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\\\""));
    let mut out = String::from(
        "graph herd {\n  layout=neato;\n  overlap=false;\n  splines=true;\n  \
         node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n  \
         edge [fontname=\"Helvetica\", fontsize=10];\n",
    );
    for s in &st.servers {
        let (color, fill, style) = if s.is_serving() {
            ("darkgreen", "honeydew", "rounded,filled")
        } else {
            ("red", "mistyrose", "rounded,filled,dashed")
        };
        let label = format!(
            "{}\\nclient :{}  peer {}\\n{}{}",
            s.name,
            s.client_port,
            s.peer_addr,
            s.health_text(),
            s.records
                .map_or(String::new(), |r| format!("\\n{r} records")),
        );
        let _ = writeln!(
            out,
            "  {} [label={}, color={color}, fillcolor={fill}, style={}];",
            q(&s.name),
            q(&label),
            q(style)
        );
    }
    for (a, b) in &st.links {
        let (color, style) = match st.link_health(a, b) {
            LinkHealth::Up => ("darkgreen", "solid"),
            LinkHealth::Down => ("red", "dashed"),
            LinkHealth::Unknown => ("grey", "dotted"),
        };
        let label = format!("{a}: {}\\n{b}: {}", st.side(a, b), st.side(b, a));
        let _ = writeln!(
            out,
            "  {} -- {} [label={}, color={color}, style={style}, penwidth=2];",
            q(a),
            q(b),
            q(&label)
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_gives_records_and_applied_updates() {
        let text = "# TYPE herd_records gauge\n\
            herd_records{server=\"Hands\"} 12\n\
            herd_updates_applied_total{server=\"Hands\"} 5\n\
            herd_commands_total{server=\"Hands\",kind=\"iamat\",outcome=\"applied\"} 3\n\
            herd_commands_total{server=\"Hands\",kind=\"iamat\",outcome=\"stale\"} 9\n\
            # EOF\n";
        assert_eq!(
            parse_scrape(text),
            Scrape {
                records: Some(12),
                applied: 8
            }
        );
    }

    fn link(neighbour: &str, state: &str) -> LinkInfo {
        LinkInfo {
            neighbour: neighbour.into(),
            state: state.into(),
            ..LinkInfo::default()
        }
    }

    fn server(name: &str, up: bool, links: Vec<LinkInfo>) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            peer_addr: "h:1".into(),
            client_port: 2,
            health: if up {
                Ok(ServingStatus::Serving)
            } else {
                Err(ProbeError::Refused { addr: "h:1".into() })
            },
            links,
            records: up.then_some(1),
            updates_per_s: None,
        }
    }

    #[test]
    fn a_down_server_takes_its_links_down_in_the_picture() {
        let st = HerdStatus {
            servers: vec![
                server("A", true, vec![link("B", "up"), link("C", "backoff")]),
                server("B", true, vec![link("A", "up")]),
                server("C", false, vec![]),
            ],
            links: vec![("A".into(), "B".into()), ("A".into(), "C".into())],
        };
        assert_eq!(st.link_health("A", "B"), LinkHealth::Up);
        assert_eq!(st.link_health("A", "C"), LinkHealth::Down);
        assert!(!st.all_well());
        let dot = render_dot(&st);
        assert!(
            dot.contains(r#""A" -- "B" [label="A: up\nB: up", color=darkgreen"#),
            "{dot}"
        );
        assert!(
            dot.contains(r#""A" -- "C" [label="A: backoff\nC: ?", color=red, style=dashed"#),
            "{dot}"
        );
        assert!(dot.contains("DOWN (connection refused"), "{dot}");
        let text = render_text(&st);
        assert!(text.contains("? (server down)"), "{text}");
    }
}
