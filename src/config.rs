//! The herd file: servers, their ports and neighbours, and the places settings,
//! loaded and validated before any port is bound.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

/// The default herd of PROTOCOL.md, compiled in.
pub const DEFAULT_HERD: &str = include_str!("../deploy/herd.toml");

/// Why a herd file cannot be used. Each message names the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read herd file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("herd file {origin} is malformed: {message}")]
    Malformed { origin: String, message: String },
    #[error("herd file {origin}: {problem}")]
    Invalid { origin: String, problem: String },
    #[error("no server named {name:?} in herd file {origin} (servers: {known})")]
    UnknownServer {
        name: String,
        origin: String,
        known: String,
    },
}

/// Which places provider answers WHATSAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The embedded GeoNames dataset.
    Offline,
    /// Google Places over HTTPS.
    Google,
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "offline" => Ok(ProviderKind::Offline),
            "google" => Ok(ProviderKind::Google),
            other => Err(format!(
                "unknown places provider {other:?} (expected \"offline\" or \"google\")"
            )),
        }
    }
}

/// The places settings of a herd.
#[derive(Clone, Debug)]
pub struct PlacesConfig {
    pub provider: ProviderKind,
    /// The overall deadline of one lookup: past it, WHATSAT answers with a failure status.
    pub timeout: Duration,
}

/// One server of the herd, validated.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub name: Arc<str>,
    /// Where neighbours reach this server's peer port (an IP address or a host name).
    pub host: String,
    /// The address the listeners bind.
    pub listen: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
    pub neighbours: Vec<Arc<str>>,
}

impl ServerConfig {
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.client_port)
    }
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.peer_port)
    }
    /// The URI neighbours dial to reach this server's gRPC side.
    pub fn peer_uri(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.peer_port)
        } else {
            format!("http://{}:{}", self.host, self.peer_port)
        }
    }
}

/// A whole herd, validated: every link two-sided, every name known, no port used twice.
#[derive(Clone, Debug)]
pub struct HerdConfig {
    /// Where the file came from, for messages.
    pub origin: String,
    pub servers: Vec<ServerConfig>,
    pub places: PlacesConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHerd {
    #[serde(default)]
    places: RawPlaces,
    #[serde(default)]
    server: Vec<RawServer>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlaces {
    provider: Option<ProviderKind>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: String,
    host: Option<String>,
    listen: Option<String>,
    client_port: u16,
    peer_port: u16,
    #[serde(default)]
    neighbours: Vec<String>,
}

/// A server name appears in AT lines and in peer metadata: keep it to a safe set.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl HerdConfig {
    /// Loads the herd file: `path` if given, else the compiled-in default herd.
    pub fn load(path: Option<&Path>) -> Result<HerdConfig, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                HerdConfig::parse(&text, &path.display().to_string())
            }
            None => HerdConfig::parse(DEFAULT_HERD, "(built-in deploy/herd.toml)"),
        }
    }

    /// Parses and validates a herd file's text; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<HerdConfig, ConfigError> {
        let raw: RawHerd = toml::from_str(text).map_err(|e| ConfigError::Malformed {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |problem: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            problem,
        };
        if raw.server.is_empty() {
            return Err(invalid("no [[server]] entries".into()));
        }

        let mut names = BTreeSet::new();
        for s in &raw.server {
            if !valid_name(&s.name) {
                return Err(invalid(format!(
                    "server name {:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
                    s.name
                )));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(format!("server {:?} is defined twice", s.name)));
            }
        }

        let mut neighbours: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in &raw.server {
            let set = neighbours.entry(&s.name).or_default();
            for n in &s.neighbours {
                if n == &s.name {
                    return Err(invalid(format!(
                        "server {:?} lists itself as a neighbour",
                        s.name
                    )));
                }
                if !names.contains(n.as_str()) {
                    return Err(invalid(format!(
                        "server {:?} has neighbour {:?}, which is not a server of this herd",
                        s.name, n
                    )));
                }
                if !set.insert(n) {
                    return Err(invalid(format!(
                        "server {:?} lists neighbour {:?} twice",
                        s.name, n
                    )));
                }
            }
        }
        for (a, set) in &neighbours {
            for b in set {
                if !neighbours[b].contains(a) {
                    return Err(invalid(format!(
                        "link {a} -> {b} is one-sided: {b:?} does not list {a:?} as a neighbour"
                    )));
                }
            }
        }

        let mut servers = Vec::with_capacity(raw.server.len());
        for s in raw.server {
            let host = s.host.unwrap_or_else(|| "127.0.0.1".to_owned());
            if host.is_empty() {
                return Err(invalid(format!("server {:?} has an empty host", s.name)));
            }
            let listen = match &s.listen {
                Some(l) => l.parse::<IpAddr>().map_err(|_| {
                    invalid(format!(
                        "server {:?}: listen {l:?} is not an IP address",
                        s.name
                    ))
                })?,
                None => host
                    .parse::<IpAddr>()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            };
            for (what, port) in [("client_port", s.client_port), ("peer_port", s.peer_port)] {
                if port == 0 {
                    return Err(invalid(format!(
                        "server {:?}: {what} is 0; every port must be fixed so neighbours and clients can find it",
                        s.name
                    )));
                }
            }
            servers.push(ServerConfig {
                name: s.name.as_str().into(),
                host,
                listen,
                client_port: s.client_port,
                peer_port: s.peer_port,
                neighbours: s.neighbours.iter().map(|n| Arc::from(n.as_str())).collect(),
            });
        }

        // Two listeners clash when they share a port on the same or an overlapping address.
        let mut bound: Vec<(SocketAddr, String)> = Vec::new();
        for s in &servers {
            for (what, addr) in [("client", s.client_addr()), ("peer", s.peer_addr())] {
                let label = format!("{} {what} port", s.name);
                if let Some((_, other)) = bound.iter().find(|(b, _)| {
                    b.port() == addr.port()
                        && (b.ip() == addr.ip()
                            || b.ip().is_unspecified()
                            || addr.ip().is_unspecified())
                }) {
                    return Err(invalid(format!(
                        "{label} and {other} are both {}",
                        addr.port()
                    )));
                }
                bound.push((addr, label));
            }
        }

        let places = PlacesConfig {
            provider: raw.places.provider.unwrap_or(ProviderKind::Offline),
            timeout: Duration::from_millis(raw.places.timeout_ms.unwrap_or(5_000)),
        };
        if places.timeout.is_zero() {
            return Err(invalid("places.timeout_ms must be above 0".into()));
        }

        Ok(HerdConfig {
            origin: origin.to_owned(),
            servers,
            places,
        })
    }

    /// The server named `name`, or an error listing the herd's servers.
    pub fn server(&self, name: &str) -> Result<&ServerConfig, ConfigError> {
        self.servers
            .iter()
            .find(|s| &*s.name == name)
            .ok_or_else(|| ConfigError::UnknownServer {
                name: name.to_owned(),
                origin: self.origin.clone(),
                known: self
                    .servers
                    .iter()
                    .map(|s| &*s.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        HerdConfig::parse(text, "t.toml").unwrap_err().to_string()
    }

    const TWO: &str = r#"
[[server]]
name = "A"
client_port = 1
peer_port = 2
neighbours = ["B"]
[[server]]
name = "B"
client_port = 3
peer_port = 4
neighbours = ["A"]
"#;

    #[test]
    fn default_herd_is_the_protocol_herd() {
        let herd = HerdConfig::load(None).unwrap();
        let summary: Vec<_> = herd
            .servers
            .iter()
            .map(|s| {
                let mut n: Vec<&str> = s.neighbours.iter().map(|n| &**n).collect();
                n.sort();
                (&*s.name, s.client_port, s.peer_port, n.join(","))
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("Goloman", 12001, 13001, "Hands,Holiday,Wilkes".to_owned()),
                ("Hands", 12002, 13002, "Goloman,Wilkes".to_owned()),
                ("Holiday", 12003, 13003, "Goloman,Welsh,Wilkes".to_owned()),
                ("Welsh", 12004, 13004, "Holiday".to_owned()),
                ("Wilkes", 12005, 13005, "Goloman,Hands,Holiday".to_owned()),
            ]
        );
        assert_eq!(herd.places.provider, ProviderKind::Offline);
        assert_eq!(
            herd.server("Welsh").unwrap().peer_uri(),
            "http://127.0.0.1:13004"
        );
    }

    #[test]
    fn a_valid_two_server_herd_parses() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        assert_eq!(herd.servers.len(), 2);
        assert_eq!(herd.server("B").unwrap().client_port, 3);
    }

    #[test]
    fn unknown_server_names_the_known_ones() {
        let herd = HerdConfig::parse(TWO, "t.toml").unwrap();
        let e = herd.server("C").unwrap_err().to_string();
        assert!(e.contains("\"C\"") && e.contains("A, B"), "{e}");
    }

    #[test]
    fn bad_files_name_their_problem() {
        assert!(err("[[server]\nname=").contains("malformed"));
        assert!(err("").contains("no [[server]]"));
        assert!(err(&TWO.replace("[\"B\"]", "[\"C\"]")).contains("neighbour \"C\""));
        assert!(err(&TWO.replace("neighbours = [\"A\"]", "neighbours = []")).contains("one-sided"));
        assert!(err(&TWO.replace("peer_port = 4", "peer_port = 2")).contains("are both 2"));
        assert!(err(&TWO.replace("client_port = 3", "client_port = 2")).contains("are both 2"));
        assert!(err(&TWO.replace("name = \"B\"", "name = \"A\"")).contains("defined twice"));
        assert!(err(&TWO.replace("name = \"B\"", "name = \"B x\"")).contains("server name"));
        assert!(err(&TWO.replace("peer_port = 4", "peer_port = 0")).contains("is 0"));
        assert!(err(&TWO.replace("peer_port = 4", "peer_port = 70000")).contains("malformed"));
        assert!(err(&format!("{TWO}\nbogus = 1")).contains("bogus"));
        assert!(err(&TWO.replace("[\"B\"]", "[\"A\"]")).contains("itself"));
        assert!(
            err(&format!("[places]\nprovider = \"bing\"\n{TWO}")).contains("bing"),
            "unknown provider"
        );
    }

    #[test]
    fn same_port_on_different_addresses_is_fine() {
        let text = TWO
            .replace("client_port = 3", "host = \"127.0.0.2\"\nclient_port = 1")
            .replace("peer_port = 4", "peer_port = 2");
        assert!(HerdConfig::parse(&text, "t.toml").is_ok());
        let text = text.replace("host = \"127.0.0.2\"", "host = \"b\"");
        assert!(
            err(&text).contains("are both"),
            "a host name listens on 0.0.0.0"
        );
    }
}
