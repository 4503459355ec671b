//! TLS to Postgres with libpq's settings, so managed Postgres works: `sslmode` (disable, allow,
//! prefer, require, verify-ca, verify-full; prefer by default), `sslrootcert` (a CA file, or
//! `system` for the OS's roots), `sslcert`/`sslkey` client certificates, in the URL, the
//! key=value form or `PGSSLMODE`/`PGSSLROOTCERT`/`PGSSLCERT`/`PGSSLKEY`. On rustls (through
//! tokio-postgres-rustls): no OpenSSL to install beside the binary, and the same TLS in the
//! container image as on a laptop.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::{Error, ErrorKind, Result};

use crate::conninfo::{SslMode, TlsSettings};

fn config_error(what: String) -> impl FnOnce(rustls::Error) -> Error {
    move |e| Error::with_source(ErrorKind::Config, what, e)
}

fn read_pem_certs(path: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot read certificates from {path}: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{path} holds no PEM certificate"),
        ));
    }
    Ok(certs)
}

impl TlsSettings {
    fn roots(&self) -> Result<Option<RootCertStore>> {
        let default = std::env::var("HOME")
            .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
            .ok()
            .filter(|p| p.exists())
            .map(|p| p.to_string_lossy().into_owned());
        let verify = matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull);
        let source = match (&self.root, verify) {
            (Some(r), _) => Some(r.clone()),
            (None, true) => Some(default.ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "sslmode={} needs the CA that signed the server's certificate: sslrootcert=/path/to/ca.pem (your provider's CA bundle), or sslrootcert=system for the OS's roots",
                        self.mode.name()
                    ),
                )
            })?),
            (None, false) => None,
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let mut store = RootCertStore::empty();
        if source == "system" {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // One unusable system certificate is no reason to refuse all of them.
                let _ = store.add(c);
            }
            if store.is_empty() {
                return Err(Error::new(
                    ErrorKind::Config,
                    "sslrootcert=system, but no usable CA certificate was found in the OS's store",
                ));
            }
        } else {
            for c in read_pem_certs(&source)? {
                store.add(c).map_err(config_error(format!(
                    "{source} holds an unusable CA certificate"
                )))?;
            }
        }
        Ok(Some(store))
    }

    /// The rustls connector for these settings (`None`: plain connections).
    pub fn connector(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.roots()? {
            Some(roots) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| {
                            Error::new(
                                ErrorKind::Config,
                                format!("cannot use the CA certificates: {e}"),
                            )
                        })?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    // verify-ca, and require with a root certificate, as libpq.
                    Arc::new(AnyHostname(webpki))
                }
            }
            None => Arc::new(Unverified(provider.clone())),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_error("cannot set up TLS".into()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_pem_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("cannot read the private key {key}: {e}"),
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(config_error(format!(
                        "the client certificate {cert} and its key do not go together"
                    )))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "sslcert and sslkey go together: give both, or neither",
                ));
            }
        };
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// verify-ca: the chain must lead to a trusted root; the name in the certificate is not checked.
#[derive(Debug)]
struct AnyHostname(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer and require without a root certificate (libpq: encrypted, not authenticated): the
/// handshake's signatures are still checked, the certificate's issuer is not.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
