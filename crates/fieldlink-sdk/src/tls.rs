//! `wss://` signalling: how the server's certificate is verified (the system's roots, or the
//! PEM of the config's `certificate` key), and failures said in words that name the host.
//! There is no fallback to plain text and no way to skip verification.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::{ErrorCode, Result, SdkError};

fn failed(message: String) -> SdkError {
    SdkError::new(ErrorCode::TlsFailed, message)
}

/// The system's trusted roots, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>> {
    static ROOTS: OnceLock<std::result::Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!(
                    "no trusted root certificates found on this system{why} (install \
                     ca-certificates, or name the server's CA in the config's \"certificate\")"
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
        .map_err(failed)
}

/// Roots from a PEM file: a private CA, or the server's own (self-signed) certificate.
fn pem_roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let what = |why: String| failed(format!("certificate {}: {why}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| what(e.to_string()))?;
    if certs.is_empty() {
        return Err(what("no CERTIFICATE block in the file".into()));
    }
    let mut store = RootCertStore::empty();
    for c in certs {
        store
            .add(c)
            .map_err(|e| what(format!("not a usable certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// The TLS client configuration for a `wss://` server, verifying against `ca` or the
/// system's roots.
pub(crate) fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let roots = match ca {
        Some(p) => pem_roots(p)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Says why a TLS connection to `host` failed, when `e` (or what caused it) is a rustls
/// error; `None` when the failure was not TLS's.
pub(crate) fn explain(host: &str, e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(host, r));
        }
        // tokio-rustls hands rustls' error over inside an io::Error.
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(describe(host, r));
            }
        }
        cur = err.source();
    }
    None
}

fn describe(host: &str, e: &rustls::Error) -> String {
    let why = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "its certificate is not signed by a trusted CA (the system's roots, or the PEM of \
                 the config's \"certificate\" / --ca)"
                    .to_string()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("its certificate is not valid for the name {host}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "its certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "its certificate is not valid yet (check the clocks)".to_string()
            }
            CertificateError::Revoked => "its certificate is revoked".to_string(),
            other => format!("its certificate was refused: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "it did not answer in TLS (is it a plain ws:// server?)".to_string()
        }
        other => other.to_string(),
    };
    format!("TLS with {host} failed: {why}")
}
