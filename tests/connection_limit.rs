//! The fleet daemon's connection limit (`--max-connections`, `pg::Limit`) as the server sees
//! it: while connections come and go as fast as they can, `pg_stat_activity` never lists more
//! of them than the limit. A binary of its own: the limit is once per process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use sqlite2pg::conninfo::TargetUrl;

/// Eight temp tables of one session.
const STAGING: &str = "CREATE TEMP TABLE s1 (id bigint PRIMARY KEY, v text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE s2 (id bigint PRIMARY KEY, v text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE s3 (id bigint PRIMARY KEY, v text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE s4 (id bigint PRIMARY KEY, v text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE s5 (id bigint PRIMARY KEY, v text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE s6 (id bigint PRIMARY KEY, v text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE s7 (id bigint PRIMARY KEY, v text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE s8 (id bigint PRIMARY KEY, v text) ON COMMIT DELETE ROWS;";

#[test]
fn the_server_never_lists_more_connections_than_the_limit_while_they_come_and_go() {
    let db = TestDb::new();
    let name = "sqlite2pg-churn";
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = TargetUrl::new(format!("{}{sep}application_name={name}", db.url));
    let limit = 3;
    sqlite2pg::pg::Limit::install(limit);

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let mut c = db.client();
        std::thread::spawn(move || {
            let (mut most, mut samples) = (0i64, 0u32);
            while !done.load(Ordering::Relaxed) {
                let n: i64 = scalar(
                    &mut c,
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'"
                    ),
                );
                most = most.max(n);
                samples += 1;
            }
            (most, samples)
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opened: usize = rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    for _ in 0..40 {
                        let c = sqlite2pg::pg::connect(&url).await.expect("connect");
                        // Staging tables, as the daemon's apply keeps per session: the
                        // server drops them as the backend exits, which takes it a while.
                        c.batch_execute(STAGING).await.expect("staging tables");
                    }
                    40
                })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        n
    });
    done.store(true, Ordering::Relaxed);
    let (most, samples) = sampler.join().unwrap();
    assert_eq!(opened, 320);
    assert!(
        most >= 1 && samples > 20,
        "the sampler saw no connection ({samples} samples): it measured nothing"
    );
    assert!(
        most <= limit as i64,
        "the server listed {most} connections at once under a limit of {limit}"
    );
}
