//! TLS through rustls, with the certificate reloadable at run time (SPEC §11): the server's
//! config asks [`Certificates`] for the certificate of each new handshake, and a reload (on
//! SIGHUP, after a certbot renewal) swaps what it answers. Connections already open keep the
//! certificate they were made with; a new certificate that cannot be read, or whose key does not
//! match it, is refused and the previous one stays.
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The certificate and key files, and the certificate now served.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads the files; `Err` says what is wrong with them.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let current = read(cert, key, &provider)?;
        Ok(Arc::new(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// The server config that serves these certificates.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_no_client_auth()
                    .with_cert_resolver(self.clone() as Arc<dyn ResolvesServerCert>)
            })
            .map_err(|e| format!("TLS setup failed: {e}"))
    }

    /// Reads the files again and serves what they hold from the next handshake on; on error
    /// the certificate served so far stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = read(&self.cert, &self.key, &self.provider)?;
        let mut current = self
            .current
            .write()
            .map_err(|_| "the certificate lock is poisoned".to_owned())?;
        *current = Arc::new(fresh);
        Ok(())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read TLS key {}: {e}", key.display()))?;
    CertifiedKey::from_der(certs, private, provider).map_err(|e| {
        format!(
            "the TLS key {} does not fit the certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })
}
