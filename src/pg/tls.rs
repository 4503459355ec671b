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

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// Plain, or TLS if the server insists (tried as `prefer`: TLS first).
    Allow,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS always; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS, and the server's certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                    ),
                ));
            }
        })
    }

    /// The mode the Postgres client negotiates with (verification is ours).
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// As libpq spells it.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS part of a connection string.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    root: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

const OURS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits the TLS settings off a connection string: what is left is for tokio-postgres, which
/// knows neither the verify modes nor the certificate files. Settings missing from the string
/// come from `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY`, as with libpq.
pub fn split(conn: &str) -> Result<(String, TlsSettings)> {
    let trimmed = conn.trim_start();
    let (rest, found) =
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            split_url(trimmed)?
        } else {
            split_key_values(trimmed)?
        };
    let get = |k: &str, env: &str| {
        found
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    };
    let mode = match get("sslmode", "PGSSLMODE") {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::Prefer,
    };
    Ok((
        rest,
        TlsSettings {
            mode,
            root: get("sslrootcert", "PGSSLROOTCERT"),
            cert: get("sslcert", "PGSSLCERT"),
            key: get("sslkey", "PGSSLKEY"),
        },
    ))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_url(url: &str) -> Result<(String, Vec<(String, String)>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Vec::new()));
    };
    let (mut kept, mut found) = (Vec::new(), Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if OURS.contains(&k) {
            found.push((k.to_string(), percent_decode(v)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, found))
}

/// libpq's key=value form: `key = value` pairs, values bare or single-quoted, `\` escaping.
fn split_key_values(conn: &str) -> Result<(String, Vec<(String, String)>)> {
    let mut chars = conn.chars().peekable();
    let (mut kept, mut found) = (Vec::new(), Vec::new());
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(Error::new(
                ErrorKind::Config,
                format!("the connection string has `{key}` without `=value`"),
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(Error::new(
                            ErrorKind::Config,
                            format!(
                                "the value of `{key}` in the connection string has no closing quote"
                            ),
                        ));
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if OURS.contains(&key.as_str()) {
            found.push((key, value));
        } else {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok((kept.join(" "), found))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_tls_settings_off_urls_and_key_values() {
        let (rest, t) = split(
            "postgres://u:p%40ss@db.example.com:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example.com:5432/app?application_name=x"
        );
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.root.as_deref(), Some("/etc/ca.pem"));
        let (rest, t) = split(
            "host=db user=u password='it\\'s secret' sslmode = require sslcert=/c.pem sslkey='/k e y.pem'",
        )
        .unwrap();
        assert_eq!(rest, "host='db' user='u' password='it\\'s secret'");
        assert_eq!(t.mode, SslMode::Require);
        assert_eq!(t.cert.as_deref(), Some("/c.pem"));
        assert_eq!(t.key.as_deref(), Some("/k e y.pem"));
        assert!(split("host=db sslmode=sometimes").is_err());
        assert!(split("host=db password='open").is_err());
    }
}
