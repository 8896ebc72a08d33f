//! TLS for both listeners (rustls with the `ring` provider): certificates and keys from PEM
//! files, reloaded while the server runs; optional client certificates for devices; a
//! self-signed certificate for a first start.
//!
//! - [`TlsFiles`] names the files; [`Reloading`] holds the current rustls configurations of
//!   the HTTPS and MQTT listeners and rebuilds both when a file's modification time changes
//!   (checked every `reload_every`) or on SIGHUP. A file that does not parse (caught half
//!   written, a wrong key) keeps the previous configuration and is tried again; handshakes
//!   already made are not affected, new ones get the new certificate.
//! - With a client CA, the MQTT listener asks devices for a certificate (and still accepts
//!   devices without one: they authenticate with their secret). A certificate that chains to
//!   that CA names devices by its subject common name and its DNS subject alternative names
//!   ([`certificate_names`]); the gateway lets such a device in without a secret.
//! - [`self_signed`] makes a private CA and a server certificate it signs for `localhost`,
//!   the loopback addresses and the host's name, then forgets the CA's key: trusting
//!   `ca.pem` trusts this one server certificate and nothing else.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The PEM files TLS is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates device client certificates must chain to (none: no client
    /// certificates asked for).
    pub client_ca: Option<PathBuf>,
}

/// The rustls configurations of both listeners, replaced when the files change.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Current>,
}

struct Current {
    http: Arc<ServerConfig>,
    mqtt: Arc<ServerConfig>,
    stamps: Vec<Option<SystemTime>>,
}

impl Reloading {
    /// Loads the files once; an error here stops the server from starting.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Reloading>> {
        let current = build(&files)?;
        Ok(Arc::new(Reloading { files, current: RwLock::new(current) }))
    }

    /// An acceptor for one new HTTPS connection, with the current certificate.
    pub fn http(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().http.clone())
    }

    /// An acceptor for one new MQTT connection, with the current certificate.
    pub fn mqtt(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().mqtt.clone())
    }

    /// Whether the MQTT listener asks devices for client certificates.
    pub fn client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Rebuilds the configurations if a file changed since the last load. Returns whether
    /// it did; a file that does not load is an error and the old configurations stay.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        if stamps(&self.files) == self.read().stamps {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Rebuilds the configurations from the files.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = build(&self.files)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    /// Watches the files every `every`, and reloads on SIGHUP, for as long as the process
    /// runs.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hangup.as_mut() { Some(s) => s.recv().await, None => None } } => true,
                };
                #[cfg(not(unix))]
                let forced = {
                    tick.tick().await;
                    false
                };
                let result = if forced { this.reload().map(|()| true) } else { this.reload_if_changed() };
                match result {
                    Ok(true) => tracing::info!(cert = %this.files.cert.display(), "tls: certificate reloaded"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!("tls: keeping the previous certificate: {err:#}"),
                }
            }
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        // Replaced whole under the lock, so a poisoned lock still holds a usable value.
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn build(files: &TlsFiles) -> anyhow::Result<Current> {
    // Stamps first: a file replaced while it is read is then seen as changed next time.
    let stamps = stamps(files);
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow!("{}: no private key in PEM ({e})", files.key.display()))?;
    let provider = Arc::new(default_provider());
    let builder = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
    };
    let mut http =
        builder().with_no_client_auth().with_single_cert(chain.clone(), key.clone_key()).with_context(|| {
            format!("{} and {}: unusable certificate or key", files.cert.display(), files.key.display())
        })?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mqtt = match &files.client_ca {
        None => builder().with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("{}: not a usable client CA", ca.display()))?;
            builder().with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(chain, key)
    .with_context(|| format!("{} and {}: unusable certificate or key", files.cert.display(), files.key.display()))?;
    Ok(Current { http: Arc::new(http), mqtt: Arc::new(mqtt), stamps })
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("{}: cannot read certificates in PEM ({e})", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// The names a client certificate gives: its subject's common names and its DNS subject
/// alternative names. Empty for a certificate that does not parse (rustls has already
/// checked the chain, so that is not expected).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else { return Vec::new() };
    let mut names = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == x509_cert::der::oid::db::rfc4519::CN {
                if let Ok(text) = atv.value.decode_as::<x509_cert::der::asn1::Utf8StringRef<'_>>() {
                    names.push(text.as_str().to_owned());
                } else if let Ok(text) = atv.value.decode_as::<x509_cert::der::asn1::PrintableStringRef<'_>>() {
                    names.push(text.as_str().to_owned());
                }
            }
        }
    }
    if let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() {
        for name in san.0 {
            if let GeneralName::DnsName(dns) = name {
                names.push(dns.as_str().to_owned());
            }
        }
    }
    names
}

/// Where [`self_signed`] keeps its files, in the data directory.
pub const SELF_SIGNED_DIR: &str = "tls";

/// Files of a self-signed setup: what the server loads, and the CA clients trust.
#[derive(Clone, Debug)]
pub struct SelfSigned {
    /// The files to serve with.
    pub files: TlsFiles,
    /// The CA certificate clients trust (`curl --cacert`, `mosquitto_pub --cafile`,
    /// `tern --ca-file`).
    pub ca: PathBuf,
    /// Whether this call made them (first start).
    pub created: bool,
}

/// The self-signed certificate in `data/tls/`, made on first use: a private CA
/// (`ca.pem`, its key discarded) and a server certificate it signs (`server.pem`,
/// `server-key.pem`) for `localhost`, `127.0.0.1`, `::1`, the host's name and `extra`.
pub fn self_signed(data: &Path, extra: &[String]) -> anyhow::Result<SelfSigned> {
    let dir = data.join(SELF_SIGNED_DIR);
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server-key.pem"));
    let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: None };
    if ca.is_file() && cert.is_file() && key.is_file() {
        return Ok(SelfSigned { files, ca, created: false });
    }
    crate::private_dir(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Some(host) = host_name().filter(|h| !names.contains(h)) {
        names.push(host);
    }
    names.extend(extra.iter().filter(|e| !e.is_empty()).cloned());
    names.dedup();
    let made = make_self_signed(&names).context("cannot make a self-signed certificate")?;
    crate::write_private(&key, made.key.as_bytes()).with_context(|| format!("{}: cannot write", key.display()))?;
    crate::write_private(&cert, made.cert.as_bytes()).with_context(|| format!("{}: cannot write", cert.display()))?;
    crate::write_private(&ca, made.ca.as_bytes()).with_context(|| format!("{}: cannot write", ca.display()))?;
    Ok(SelfSigned { files, ca, created: true })
}

struct Made {
    ca: String,
    cert: String,
    key: String,
}

fn make_self_signed(names: &[String]) -> Result<Made, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "Tern self-signed CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, names.first().map_or("localhost", String::as_str));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))?;
    Ok(Made { ca: ca.pem(), cert: cert.pem(), key: key.serialize_pem() })
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        .then(|| name.to_owned())
}
