//! TLS as managed Postgres needs it, against a real TLS-only cluster (`hostssl` only in
//! pg_hba) whose certificate is signed by a CA made here with openssl: verify-full and
//! verify-ca work, a wrong CA fails at once and says what to check, `require` against a server
//! without TLS fails within seconds instead of being retried, and passwords never show.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A throwaway cluster that accepts TLS connections only; stopped when dropped.
struct TlsCluster {
    dir: tempfile::TempDir,
    port: u16,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let dir = tempfile::Builder::new()
            .prefix("sqlite2pg-tls-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        // A CA, a server certificate it signs for localhost and 127.0.0.1, and a CA that
        // signed nothing here.
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=sqlite2pg test CA",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "other.key",
                "-out",
                "other-ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=another CA",
            ],
        );
        std::fs::write(d.join("pw"), PASSWORD).unwrap();
        let bin = pg_bindir();
        if is_root() {
            let ok = Command::new("chmod").args(["755"]).arg(d).status().unwrap();
            assert!(ok.success());
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(d)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let ok = Command::new("chmod")
            .args(["600"])
            .arg(d.join("server.key"))
            .status()
            .unwrap();
        assert!(ok.success());
        let data = d.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", d.join("pw").display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", text(&out));
        let conf = format!(
            "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            d.join("server.pem").display(),
            d.join("server.key").display()
        );
        let mut pgconf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        pgconf.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), pgconf).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let port = free_port();
        let out = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args([
                "-o",
                &format!("-p {port} -k {} -c listen_addresses=127.0.0.1", d.display()),
                "-l",
            ])
            .arg(d.join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        let log = std::fs::read_to_string(d.join("log")).unwrap_or_default();
        assert!(
            !log.contains("not supported by this build"),
            "the server build in {} has no SSL (a wheel's build, say): run tests/tls.rs on one \
             with it, such as Debian's (unset SQLITE2PG_TEST_PGBIN)\n{log}",
            bin.display()
        );
        assert!(out.status.success(), "pg_ctl start: {}\n{log}", text(&out));
        TlsCluster { dir, port }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&pg_bindir().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn snapshot_to(src: &Path, target: &str) -> (std::process::Output, Duration) {
    let t0 = Instant::now();
    let out = sqlite2pg(&[
        "--source",
        src.to_str().unwrap(),
        "--target",
        target,
        "run",
        "--snapshot-only",
    ]);
    (out, t0.elapsed())
}

#[test]
fn verify_full_and_verify_ca_work_and_a_wrong_ca_fails_clearly() {
    let pg = TlsCluster::start();
    let src = SqliteFile::new(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'over TLS');",
    );
    let ca = pg.file("ca.pem");
    let url = format!(
        "postgres://postgres:{PASSWORD}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        ca.display()
    );
    let (out, _) = snapshot_to(&src.path, &url);
    assert!(out.status.success(), "verify-full: {}", text(&out));
    assert!(!text(&out).contains(PASSWORD));
    // The key=value form, verify-ca by IP: the chain is checked, the name is not.
    let kv = format!(
        "host=127.0.0.1 port={} user=postgres password='{PASSWORD}' dbname=postgres sslmode=verify-ca sslrootcert='{}'",
        pg.port,
        ca.display()
    );
    let out = sqlite2pg(&[
        "--source",
        src.path.to_str().unwrap(),
        "--target",
        &kv,
        "status",
    ]);
    assert!(out.status.success(), "verify-ca: {}", text(&out));
    assert!(text(&out).contains("phase:"), "{}", text(&out));
    // A CA that did not sign the server's certificate: refused at once, saying what to check.
    let wrong = url.replace(
        ca.to_str().unwrap(),
        pg.file("other-ca.pem").to_str().unwrap(),
    );
    let (out, took) = snapshot_to(&src.path, &wrong);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let t = text(&out);
    assert!(t.contains("TLS") && t.contains("sslrootcert"), "{t}");
    assert!(!t.contains(PASSWORD), "{t}");
    // verify-full without a CA to verify against: a configuration error, before connecting.
    let no_ca = url.split('&').next().unwrap();
    assert!(no_ca.ends_with("sslmode=verify-full"));
    let (out, _) = snapshot_to(&src.path, no_ca);
    assert!(!out.status.success());
    assert!(text(&out).contains("sslrootcert"), "{}", text(&out));
    // Plain connections are refused by this server; prefer (the default) gets TLS.
    let (out, _) = snapshot_to(
        &src.path,
        &format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            pg.port
        ),
    );
    assert!(out.status.success(), "prefer: {}", text(&out));
}

#[test]
fn require_against_a_server_without_tls_fails_within_seconds() {
    let db = TestDb::new();
    let src = SqliteFile::new("CREATE TABLE t (id INTEGER PRIMARY KEY);");
    let (out, took) = snapshot_to(&src.path, &format!("{}?sslmode=require", db.url));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let t = text(&out);
    assert!(t.contains("TLS") && t.contains("sslmode"), "{t}");
    assert!(!t.contains(PASSWORD), "{t}");
}
