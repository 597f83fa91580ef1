//! Who may use a server's peer port: the herd secret (`authorization: Bearer`
//! metadata, checked in constant time on every `Link` stream and `Inspect` call) and
//! the mutual-TLS identities (a peer's client certificate must name the server it
//! says it is in `herd-from`).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use subtle::ConstantTimeEq as _;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataMap},
};

use rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{config::TlsConfig, metrics::Metrics};

/// The metadata key the secret travels in, as HTTP's `Authorization` header does, so
/// that `grpcurl -H 'authorization: Bearer ...'` passes it.
pub const AUTHORIZATION: &str = "authorization";

/// The herd secret. Never printed: its `Debug` shows only that there is one.
#[derive(Clone)]
pub struct Secret {
    /// `Bearer <secret>`, the whole metadata value a caller must send.
    bearer: Arc<[u8]>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        bool::from(self.bearer.ct_eq(&other.bearer))
    }
}

/// The shortest secret accepted: 16 bytes is 96 bits or more of the base64 or hex a
/// generator prints, which no guessing over a network gets near.
pub const MIN_SECRET: usize = 16;

impl Secret {
    /// The secret from its text: surrounding whitespace (a file's final newline) is
    /// not part of it; what is left must be 16 to 1024 visible ASCII characters, since
    /// it travels in a gRPC metadata value.
    pub fn new(text: &str) -> Result<Secret, String> {
        let secret = text.trim();
        if secret.len() < MIN_SECRET {
            return Err(format!(
                "the secret is {} bytes; it must be at least {MIN_SECRET} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        if secret.len() > 1024 {
            return Err("the secret is longer than 1024 bytes".into());
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the secret must be visible ASCII with no spaces (it travels in gRPC metadata)"
                    .into(),
            );
        }
        Ok(Secret {
            bearer: format!("Bearer {secret}").into_bytes().into(),
        })
    }

    /// Reads the secret from the file at `path` (the file's contents are never shown
    /// in an error).
    pub fn read(path: &Path) -> Result<Secret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
        Secret::new(&text).map_err(|e| format!("secret file {}: {e}", path.display()))
    }

    /// The metadata value a caller sends, marked sensitive (kept out of debug output).
    pub fn bearer(&self) -> AsciiMetadataValue {
        let mut value = AsciiMetadataValue::try_from(&self.bearer[..])
            .expect("a secret is checked to be visible ASCII");
        value.set_sensitive(true);
        value
    }

    /// Adds the secret to a request's metadata.
    pub fn insert(&self, metadata: &mut MetadataMap) {
        metadata.insert(AUTHORIZATION, self.bearer());
    }

    /// Whether `metadata` carries this secret. The comparison takes the same time
    /// wherever the first wrong byte is (only a wrong length returns sooner, and the
    /// length of `Bearer <secret>` is no secret worth keeping).
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Refusal> {
        let Some(given) = metadata.get(AUTHORIZATION) else {
            return Err(Refusal::NoSecret);
        };
        if bool::from(given.as_bytes().ct_eq(&self.bearer)) {
            Ok(())
        } else {
            Err(Refusal::WrongSecret)
        }
    }
}

/// Why a call on the peer port was refused `UNAUTHENTICATED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization` metadata.
    NoSecret,
    /// An `authorization` value that is not `Bearer <the secret>`.
    WrongSecret,
    /// A `Link` stream without a client certificate, or with one that does not name the
    /// server in `herd-from`.
    Certificate,
}

impl Refusal {
    /// The `reason` label of `herd_peer_auth_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSecret => "no_secret",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::Certificate => "certificate",
        }
    }

    pub fn status(self) -> Status {
        Status::unauthenticated(match self {
            Refusal::NoSecret => "this herd needs its secret: authorization: Bearer <secret>",
            Refusal::WrongSecret => "wrong herd secret",
            Refusal::Certificate => "the client certificate does not name the server in herd-from",
        })
    }
}

/// Every `reason` of `herd_peer_auth_refused_total`: each series exists from the start.
pub const REFUSALS: [Refusal; 3] = [
    Refusal::NoSecret,
    Refusal::WrongSecret,
    Refusal::Certificate,
];

/// The services whose calls are checked: the `service` label.
pub const GUARDED: [&str; 6] = [
    "link",
    "inspect",
    "admin",
    "health",
    "metrics",
    "reflection",
];

/// A tonic interceptor that lets a call through only with the herd secret (or lets
/// everything through when the herd has none), counting each refusal.
#[derive(Clone, Debug)]
pub struct Guard {
    secret: Option<Secret>,
    metrics: Arc<Metrics>,
    service: &'static str,
}

impl Guard {
    pub fn new(secret: Option<Secret>, metrics: Arc<Metrics>, service: &'static str) -> Guard {
        Guard {
            secret,
            metrics,
            service,
        }
    }

    /// Checks `metadata`: Err is the refusal, already counted.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Refusal> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        secret.check(metadata).inspect_err(|r| {
            self.metrics.auth_refused(self.service, r.as_str());
        })
    }
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match self.check(req.metadata()) {
            Ok(()) => Ok(req),
            Err(refusal) => {
                // A would-be peer's refusal is worth a line (a member with the wrong
                // secret shows up here); the others are counted only, as a scan's are.
                if self.service == "link" {
                    let from = req.metadata().get(crate::peer::FROM_HEADER);
                    let from = from.and_then(|v| v.to_str().ok()).unwrap_or("?");
                    tracing::info!(from = %crate::logging::Escaped(from.as_bytes()), reason = refusal.as_str(), "refused a link stream");
                } else {
                    tracing::debug!(
                        service = self.service,
                        reason = refusal.as_str(),
                        "call refused"
                    );
                }
                Err(refusal.status())
            }
        }
    }
}

/// A server's TLS material for the peer port: the herd's CA, and this server's
/// certificate and key (a command-line tool that only asks has no identity).
#[derive(Clone, Debug)]
pub struct PeerTls {
    ca: Certificate,
    identity: Option<Identity>,
}

impl PeerTls {
    /// Reads `tls.ca` and, for `server`, its certificate and key.
    pub fn load(tls: &TlsConfig, server: Option<&str>) -> Result<PeerTls, String> {
        // rustls needs a process-wide provider once two could be in the tree; Err
        // only says one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("tls.{what} {}: {e}", path.display()))
        };
        let ca = read("ca", &tls.ca)?;
        let identity = match server {
            Some(name) => {
                let (cert, key) = (tls.cert_path(name), tls.key_path(name));
                let pem = read("cert", &cert)?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!(
                        "tls.cert {}: no PEM certificate in it",
                        cert.display()
                    ));
                }
                Some(Identity::from_pem(pem, read("key", &key)?))
            }
            None => None,
        };
        if !String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "tls.ca {}: no PEM certificate in it",
                tls.ca.display()
            ));
        }
        Ok(PeerTls {
            ca: Certificate::from_pem(ca),
            identity,
        })
    }

    /// What the peer port serves: this server's certificate, and a request for the
    /// client's (optional at the handshake, so that health checks and scrapes need
    /// none; a `Link` stream without one is refused).
    pub fn server(&self) -> Result<ServerTlsConfig, String> {
        let identity = self
            .identity
            .clone()
            .ok_or("a server needs its own certificate and key")?;
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true))
    }

    /// How to dial server `peer`: its certificate must be signed by the CA and name
    /// it; this server's own certificate goes along as the client's.
    pub fn client(&self, peer: &str) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(peer);
        match &self.identity {
            Some(id) => config.identity(id.clone()),
            None => config,
        }
    }
}

/// Whether the client certificate chain `certs` (already verified against the CA by
/// the TLS handshake) names server `name`: its end-entity certificate must be valid
/// for `name` as a DNS name (webpki's own subject-name check, as for a server).
pub fn certificate_names(certs: Option<&[CertificateDer<'static>]>, name: &str) -> bool {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(&name))
        .is_ok()
}

/// What `herd certs` writes into its directory: `ca.pem` and `ca.key`, and for each
/// server of `herd` `NAME.pem` and `NAME.key` (a herd file's `[tls]` table then reads
/// `ca = "DIR/ca.pem"`, `cert = "DIR/{server}.pem"`, `key = "DIR/{server}.key"`).
///
/// Each server's certificate names the server (the identity `herd-from` is checked
/// against) and its `host` (so that other TLS tools can reach it by address), is for
/// both server and client authentication, and is signed by a new CA. Keys are ECDSA
/// P-256, written readable by their owner only. The CA's key is written too, but a
/// new run makes a new CA: certificates of two runs do not trust each other.
pub fn make_certs(herd: &crate::config::HerdConfig, out: &Path) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let err = |what: &str, e: rcgen::Error| format!("{what}: {e}");
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut written = Vec::new();
    let mut write = |name: String, text: &str, private: bool| -> Result<(), String> {
        let path = out.join(name);
        write_file(&path, text.as_bytes(), private)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("herd CA ({})", herd.origin));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    write("ca.key".into(), &ca_key.serialize_pem(), true)?;
    let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(|e| err("CA", e))?;
    write("ca.pem".into(), &ca.pem(), false)?;

    for server in &herd.servers {
        let mut names = vec![server.name.to_string()];
        if server.host != *server.name {
            names.push(server.host.clone());
        }
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err(&server.name, e))?;
        for name in names {
            params
                .subject_alt_names
                .push(match name.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        name.clone()
                            .try_into()
                            .map_err(|e| err(&format!("{}: name {name:?}", server.name), e))?,
                    ),
                });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, server.name.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(|e| err(&server.name, e))?;
        let cert = params
            .signed_by(&key, &ca)
            .map_err(|e| err(&server.name, e))?;
        write(format!("{}.key", server.name), &key.serialize_pem(), true)?;
        write(format!("{}.pem", server.name), &cert.pem(), false)?;
    }
    Ok(written)
}

/// Writes `bytes` to `path`, readable by its owner only when `private`.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert(AUTHORIZATION, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn only_the_exact_bearer_value_passes() {
        let s = Secret::new("0123456789abcdef0123\n").unwrap();
        assert_eq!(
            s.check(&metadata(Some("Bearer 0123456789abcdef0123"))),
            Ok(())
        );
        for wrong in [
            "Bearer 0123456789abcdef0124",
            "Bearer 0123456789abcdef012",
            "Bearer 0123456789abcdef01234",
            "bearer 0123456789abcdef0123",
            "0123456789abcdef0123",
            "",
        ] {
            assert_eq!(
                s.check(&metadata(Some(wrong))),
                Err(Refusal::WrongSecret),
                "{wrong:?}"
            );
        }
        assert_eq!(s.check(&metadata(None)), Err(Refusal::NoSecret));
    }

    #[test]
    fn a_weak_or_unsendable_secret_is_refused_and_never_shown() {
        assert!(Secret::new("short").unwrap_err().contains("at least 16"));
        assert!(
            Secret::new("has a space in it here")
                .unwrap_err()
                .contains("no spaces")
        );
        assert!(
            Secret::new("caf\u{e9}0123456789abcdef")
                .unwrap_err()
                .contains("ASCII")
        );
        let s = Secret::new("0123456789abcdef-secret").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert!(!format!("{:?}", s.bearer()).contains("secret"));
    }
}
