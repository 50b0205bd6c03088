//! TLS for the API server: a cluster CA and a serving certificate generated at first start
//! (rcgen, ECDSA P-256) under a directory of the caller's choosing, reused on restart; client
//! certificates signed by that CA for kubeconfigs (CN = user, O = groups, as Kubernetes reads
//! them); a rustls `ServerConfig` that asks for (but does not require) a client certificate;
//! and the accept loop that serves an axum `Router` over it, handing each request the peer's
//! verified certificate as a [`PeerCertificate`] extension.
//!
//! Key files are written with mode 0600 and refused when group or others may read them.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::auth::PeerCertificate;

/// Why the PKI or the TLS configuration could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file may be read by group or others.
    #[error(
        "{path} has mode {mode:o}: a private key must not be readable by group or others (chmod 600)"
    )]
    Insecure {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate or key file could not be parsed, or a certificate not generated.
    #[error("{what}: {message}")]
    Certificate {
        /// The file or certificate concerned.
        what: String,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
}

/// `Result` with [`tls::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |e| Error::Certificate {
        what,
        message: e.to_string(),
    }
}

/// The CA's common name.
pub const CA_NAME: &str = "berth-ca";
/// The user of the administrator's client certificate ([`Pki::admin_kubeconfig`]).
pub const ADMIN_USER: &str = "berth-admin";
/// The group that may do everything (Kubernetes' cluster-admin binding).
pub const MASTERS_GROUP: &str = "system:masters";

/// The cluster's certificates: CA, serving certificate, and the CA's key to issue client
/// certificates. Files in the directory: `ca.crt`, `ca.key`, `apiserver.crt`, `apiserver.key`.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    serving_pem: String,
    serving_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

/// Validity from yesterday (clock skew) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    use chrono::Datelike;
    let ymd = |d: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let now = chrono::Utc::now();
    params.not_before = ymd(now - chrono::Duration::days(1));
    params.not_after = ymd(now + chrono::Duration::days(days));
}

/// Reads a private key file, refusing one that group or others may read.
fn read_key(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(io(path))
}

/// Writes `contents` to `path` atomically with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn parse_pem_cert(what: &str, pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Certificate {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

/// SANs of `hosts`: IP addresses as such, the rest as DNS names.
fn sans(hosts: &[String]) -> Result<Vec<SanType>> {
    hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => h
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(cert_err(format!("host name {h:?}"))),
        })
        .collect()
}

/// Whether the serving certificate `pem` is valid now and covers every host.
fn covers(pem: &str, hosts: &[String]) -> bool {
    let Ok(der) = parse_pem_cert("", pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    if !cert.validity().is_valid() {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    hosts.iter().all(|h| {
        let h = h
            .parse::<std::net::IpAddr>()
            .map_or(h.clone(), |ip| ip.to_string());
        names.contains(&h)
    })
}

/// The names a serving certificate for `addr` needs: the address itself (unless unspecified),
/// `localhost`, `127.0.0.1`, `::1` and this host's name.
pub fn default_hosts(addr: std::net::SocketAddr) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !addr.ip().is_unspecified() {
        hosts.push(addr.ip().to_string());
    }
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            hosts.push(name.to_owned());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    hosts.retain(|h| seen.insert(h.clone()));
    hosts
}

impl Pki {
    /// Loads the PKI from `dir`, creating what is missing: the CA at first start, a serving
    /// certificate for `hosts` when there is none, it has expired, or it lacks one of them.
    /// Key files are written 0600 and refused when readable by others; `dir` is made 0700.
    pub fn load_or_create(dir: impl AsRef<Path>, hosts: &[String]) -> Result<Pki> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (ca_pem, ca_key_pair) = if ca_key.exists() {
            let key_pem = read_key(&ca_key)?;
            let key =
                KeyPair::from_pem(&key_pem).map_err(cert_err(ca_key.display().to_string()))?;
            let pem = std::fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
            (pem, key)
        } else {
            let key = KeyPair::generate().map_err(cert_err("CA key"))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, CA_NAME);
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, 3650);
            let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
            write_file(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&ca_crt, cert.pem().as_bytes(), 0o644)?;
            (cert.pem(), key)
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key_pair)
            .map_err(cert_err(ca_crt.display().to_string()))?;
        let mut pki = Pki {
            dir,
            ca_pem,
            issuer,
            serving_pem: String::new(),
            serving_key_pem: String::new(),
        };
        let (crt, key) = (pki.dir.join("apiserver.crt"), pki.dir.join("apiserver.key"));
        if key.exists() && crt.exists() {
            let key_pem = read_key(&key)?;
            let pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
            if covers(&pem, hosts) {
                pki.serving_pem = pem;
                pki.serving_key_pem = key_pem;
                return Ok(pki);
            }
        }
        let (pem, key_pem) = pki.issue("berth-apiserver", &[], Some(hosts))?;
        write_file(&key, key_pem.as_bytes(), 0o600)?;
        write_file(&crt, pem.as_bytes(), 0o644)?;
        pki.serving_pem = pem;
        pki.serving_key_pem = key_pem;
        Ok(pki)
    }

    /// Issues a certificate signed by the CA: a server certificate for `hosts`, or (None) a
    /// client certificate for `user` in `groups`. Returns (certificate PEM, key PEM).
    fn issue(
        &self,
        user: &str,
        groups: &[&str],
        hosts: Option<&[String]>,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate().map_err(cert_err("key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        match hosts {
            Some(hosts) => {
                params.subject_alt_names = sans(hosts)?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                validity(&mut params, 365);
            }
            None => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                validity(&mut params, 365);
            }
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err(format!("certificate for {user}")))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for `user` in `groups` (CN and O, as Kubernetes reads them),
    /// valid for a year: (certificate PEM, key PEM).
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<(String, String)> {
        self.issue(user, groups, None)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A rustls server configuration: the serving certificate, HTTP/2 and HTTP/1.1 by ALPN,
    /// and client certificates verified against the CA when offered (not required: tokens
    /// are the other way in).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = parse_pem_cert("ca.crt", &self.ca_pem)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(Error::Tls)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Certificate {
            what: "client certificate verifier".into(),
            message: e.to_string(),
        })?;
        let chain = vec![parse_pem_cert("apiserver.crt", &self.serving_pem)?];
        let key = PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes()).map_err(|e| {
            Error::Certificate {
                what: "apiserver.key".into(),
                message: e.to_string(),
            }
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(Error::Tls)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A kubeconfig for `server` (an `https://` URL) trusting the CA and authenticating with a
    /// fresh client certificate for `user` in `groups`.
    pub fn kubeconfig(&self, server: &str, user: &str, groups: &[&str]) -> Result<Value> {
        let (cert, key) = self.issue_client(user, groups)?;
        Ok(kubeconfig(
            server,
            Some(&self.ca_pem),
            Credential::ClientCertificate {
                cert_pem: cert,
                key_pem: key,
            },
        ))
    }

    /// [`Pki::kubeconfig`] for the administrator ([`ADMIN_USER`] in [`MASTERS_GROUP`]).
    pub fn admin_kubeconfig(&self, server: &str) -> Result<Value> {
        self.kubeconfig(server, ADMIN_USER, &[MASTERS_GROUP])
    }
}

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Credential {
    /// No credentials.
    None,
    /// A bearer token.
    Token(String),
    /// A client certificate and its key, PEM.
    ClientCertificate {
        /// The certificate.
        cert_pem: String,
        /// Its private key.
        key_pem: String,
    },
}

/// A kubeconfig (JSON, which kubectl reads as YAML) with one cluster, user and context named
/// `berth`, namespace `default`.
pub fn kubeconfig(server: &str, ca_pem: Option<&str>, credential: Credential) -> Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut cluster = json!({"server": server});
    if let Some(ca) = ca_pem {
        cluster["certificate-authority-data"] = json!(b64(ca));
    }
    let user = match credential {
        Credential::None => json!({}),
        Credential::Token(t) => json!({"token": t}),
        Credential::ClientCertificate { cert_pem, key_pem } => json!({
            "client-certificate-data": b64(&cert_pem),
            "client-key-data": b64(&key_pem),
        }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "berth", "cluster": cluster}],
        "users": [{"name": "berth", "user": user}],
        "contexts": [{"name": "berth", "context": {"cluster": "berth", "user": "berth", "namespace": "default"}}],
        "current-context": "berth",
    })
}

/// Serves `app` over TLS on `listener` until `shutdown` completes: HTTP/2 or HTTP/1.1 by
/// ALPN, a 10 s handshake and 30 s header deadline; a verified client certificate reaches
/// the handlers as a [`PeerCertificate`] request extension.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => { backoff = Duration::from_millis(10); tcp }
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to come back.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCertificate(Arc::new(c.to_vec())));
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    if let Some(p) = &peer {
                        req.extensions_mut().insert(p.clone());
                    }
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}
