//! A test CA made by the test (rcgen), server certificates it signs, and a small HTTPS
//! client that trusts only that CA.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// PEM files in a directory: the CA's certificate, and a server certificate with its key.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A new CA named `name`, and a server certificate it signs for `names` (DNS names or IP
/// addresses), written to `dir` as `<name>-ca.pem`, `<name>-cert.pem` and `<name>-key.pem`.
pub fn make_ca(dir: &Path, name: &str, names: &[&str]) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("fieldlink test CA {name}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let server = CertificateParams::new(names)
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let t = TestCa {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&t.ca, ca_cert.pem()).unwrap();
    std::fs::write(&t.cert, server.pem()).unwrap();
    std::fs::write(&t.key, server_key.serialize_pem()).unwrap();
    t
}

/// A TLS client configuration trusting only the certificates in `ca`.
pub fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One HTTPS request to `addr` (an IP:port the certificate names), verified against `ca`.
pub fn https_text(
    addr: &str,
    ca: &Path,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string();
    let name = rustls::pki_types::ServerName::try_from(host).unwrap();
    let conn = rustls::ClientConnection::new(client_config(ca), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(super::WAIT)).unwrap();
    super::http_exchange(
        rustls::StreamOwned::new(conn, tcp),
        addr,
        method,
        path,
        body,
        token,
    )
}
