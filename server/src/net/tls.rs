//! The server's TLS identity and its quinn configuration.
//!
//! TLS is always on. Without `--tls-cert`/`--tls-key` the server makes a self-signed
//! certificate at first start (rcgen) and keeps it in its data dir, so clients can pin it
//! across restarts: `<data-dir>/server-cert.pem` is the file they trust.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strata_proto::wire::{tuning, ALPN};
use strata_proto::{Error, ErrorCode, Result};

use strata_engine::private_files;

/// File name of the generated certificate inside the data dir.
pub const CERT_FILE: &str = "server-cert.pem";
/// File name of the generated private key inside the data dir (mode 0600).
pub const KEY_FILE: &str = "server-key.pem";

/// Where the server's certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// Generate a self-signed certificate in this directory at first start, reuse it after.
    SelfSigned {
        /// The data dir.
        dir: PathBuf,
        /// Names and addresses the certificate is valid for.
        names: Vec<String>,
    },
    /// PEM files given by the operator.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// A loaded certificate chain and key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The certificate file clients should trust.
    pub cert_path: PathBuf,
}

fn setup_error(what: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, what)
}

/// Loads the identity `source` names, generating the self-signed one when it is missing.
pub fn load_identity(source: &TlsSource) -> Result<Identity> {
    match source {
        TlsSource::Files { cert, key } => read_identity(cert, key),
        TlsSource::SelfSigned { dir, names } => {
            let cert = dir.join(CERT_FILE);
            let key = dir.join(KEY_FILE);
            if !cert.exists() || !key.exists() {
                generate(dir, &cert, &key, names)?;
            }
            read_identity(&cert, &key)
        }
    }
}

fn read_identity(cert_path: &Path, key_path: &Path) -> Result<Identity> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| setup_error(format!("reading certificate {}: {e}", cert_path.display())))?;
    if chain.is_empty() {
        let msg = format!("{} holds no certificate", cert_path.display());
        return Err(setup_error(msg));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| setup_error(format!("reading private key {}: {e}", key_path.display())))?;
    Ok(Identity {
        chain,
        key,
        cert_path: cert_path.to_path_buf(),
    })
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path, names: &[String]) -> Result<()> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        setup_error(format!("{what} {}: {e}", p.display()))
    };
    for change in private_files::private_dir(dir).map_err(|e| io("preparing data dir", dir, e))? {
        tracing::warn!("{change}");
    }
    let certified = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("generating a certificate: {e}"),
        )
    })?;
    private_files::write_private(key_path, certified.key_pair.serialize_pem().as_bytes())
        .map_err(|e| io("writing", key_path, e))?;
    // Write the certificate last: its presence says the pair is complete. It is public,
    // but it lives in the private data dir like everything else there; remote clients
    // are given a copy (docs/security.md).
    private_files::write_private(cert_path, certified.cert.pem().as_bytes())
        .map_err(|e| io("writing", cert_path, e))?;
    Ok(())
}

/// The quinn server configuration over `tls` ([`rustls_config`]): strata's ALPN,
/// tuned transport.
pub fn server_config(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig> {
    let mut tls = tls;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| setup_error(format!("TLS setup for QUIC: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(tuning::transport_config()));
    Ok(config)
}

/// TLS 1.3 with `identity`, the base of both the QUIC and the data-plane configuration.
pub fn rustls_config(identity: Identity) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bad = |e: rustls::Error| setup_error(format!("TLS setup: {e}"));
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn self_signed_identity_is_generated_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("strata-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let source = TlsSource::SelfSigned {
            dir: dir.clone(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
        };
        let first = load_identity(&source).unwrap();
        let second = load_identity(&source).unwrap();
        assert_eq!(
            first.chain, second.chain,
            "restart must keep the certificate"
        );
        assert_eq!(first.cert_path, dir.join(CERT_FILE));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
        }
        server_config(rustls_config(first).unwrap()).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let source = TlsSource::Files {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let e = load_identity(&source).err().unwrap();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.message().contains("/nonexistent/cert.pem"), "{e}");
    }
}
