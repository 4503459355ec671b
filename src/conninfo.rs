//! A Postgres connection string: kept behind a type that redacts its password wherever it is
//! shown, and read as libpq reads it, the TLS settings (`sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`, or their `PG*` variables) split off from what the Postgres client parses itself.
//! A string is checked here without connecting (`config check`); `pg::tls` builds the TLS
//! connector from the settings.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// A Postgres connection string whose password never leaves this type unredacted by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct TargetUrl(String);

impl TargetUrl {
    /// Wraps a libpq-style URL or key=value connection string.
    pub fn new(raw: impl Into<String>) -> Self {
        TargetUrl(raw.into())
    }

    /// The raw string, for handing to the Postgres client only.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The connection string with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetUrl({})", self.redacted())
    }
}

/// Replaces every password in a connection string (URL userinfo, `password=` query parameter or
/// key=value pair) with `***`.
pub fn redact(conn: &str) -> String {
    let trimmed = conn.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        redact_url(conn)
    } else {
        redact_key_values(conn)
    }
}

fn redact_url(url: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (scheme, rest) = url.split_at(scheme_end);
    // The authority ends at the first '/', '?' or '#'; its userinfo ends at the last '@' inside it.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, hosts) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{}", &userinfo[..colon], hosts),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

fn redact_key_values(conn: &str) -> String {
    let mut out = String::with_capacity(conn.len());
    let chars: Vec<char> = conn.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // Copy whitespace, then read one `key = value` pair.
        if chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        out.push_str(&key);
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            continue;
        }
        out.push('=');
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        let value_start = i;
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
        }
        let i_end = i.min(chars.len());
        if key.eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.extend(&chars[value_start..i_end]);
        }
        i = i_end;
    }
    out
}

/// Redacts passwords of any connection string found inside free text (an error message).
pub fn redact_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if word.contains("://") {
            match word.find("postgres") {
                Some(start) => {
                    out.push_str(&word[..start]);
                    out.push_str(&redact_url(&word[start..]));
                }
                None => out.push_str(word),
            }
        } else if word.len() > 9 && word[..9].eq_ignore_ascii_case("password=") {
            out.push_str("password=***");
        } else {
            out.push_str(word);
        }
    }
    out
}

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
    /// `sslrootcert`: a CA file, or `system`.
    pub(crate) root: Option<String>,
    /// `sslcert`: the client certificate file.
    pub(crate) cert: Option<String>,
    /// `sslkey`: its key file.
    pub(crate) key: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_password() {
        assert_eq!(
            redact("postgres://app:s3cr%40t@db:5432/crm?sslmode=disable"),
            "postgres://app:***@db:5432/crm?sslmode=disable"
        );
        assert_eq!(redact("postgresql://app@db/crm"), "postgresql://app@db/crm");
        assert_eq!(
            redact("postgres://db/crm?user=a&password=hunter2"),
            "postgres://db/crm?user=a&password=***"
        );
    }

    #[test]
    fn redacts_key_value_password() {
        assert_eq!(
            redact("host=db user=app password=hunter2 dbname=crm"),
            "host=db user=app password=*** dbname=crm"
        );
        assert_eq!(
            redact("host=db password = 'with space' dbname=crm"),
            "host=db password = *** dbname=crm"
        );
        assert!(!redact("password='a\\'b' x=1").contains("a\\'b"));
    }

    #[test]
    fn redacts_inside_error_text() {
        let t = redact_in_text("cannot connect to postgres://a:pw@h/db password=pw2 x");
        assert!(!t.contains("pw@") && !t.contains("pw2"), "{t}");
    }

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
