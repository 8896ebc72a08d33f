//! The CLI's HTTP agents, with the server certificate trusted the way the operator said:
//! `--ca-file` of `tern login` (remembered), or `TERN_CA_FILE`, names PEM CA certificates
//! to trust instead of the public roots (a server with a self-signed certificate gives
//! `DATA/tls/ca.pem`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

/// The CA file from `TERN_CA_FILE`, if set.
pub(crate) fn ca_file_from_env() -> Option<PathBuf> {
    std::env::var_os("TERN_CA_FILE").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// A JSON agent: HTTP statuses are answers, not errors; `ca_file`'s certificates are the
/// only roots trusted when given.
pub(crate) fn agent(timeout: Option<Duration>, ca_file: Option<&Path>) -> anyhow::Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(timeout);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("{}: cannot read the CA file", path.display()))?;
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            if let ureq::tls::PemItem::Certificate(cert) =
                item.map_err(|e| anyhow!("{}: not PEM: {e}", path.display()))?
            {
                roots.push(cert);
            }
        }
        if roots.is_empty() {
            anyhow::bail!("{}: no certificate in it", path.display());
        }
        let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots))).build();
        config = config.tls_config(tls);
    }
    Ok(config.build().into())
}
