//! Initial copy benchmark: pgbench scale 20 on a local PostgreSQL 15 source, copied into a fresh
//! database on a local target four ways in the same run: `pg_dump -Fc | pg_restore`, `pgcopydb
//! clone` (Debian's package, when installed), and the replication step's two initial loads: native
//! (keys first, then the subscriptions' `copy_data`) and the default parallel load (slots with
//! exported snapshots, block ranges copied by several workers into tables without indexes, keys
//! and indexes built in parallel afterwards, subscriptions streaming from the slots).
//! Reports seconds, rows and MB per second, and the ratio to the pipe.
//!
//! Run: `cargo bench --bench copy`. Environment: `BENCH_SCALE` (default 20), `BENCH_WORKERS`
//! (default 4),
//! `BENCH_ROUNDS` (default 3). Needs PostgreSQL 15.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover::pg::cluster::{free_port, program, LocalCluster};
use cutover::pg::load;
use cutover::pg::replication::{self, Group};
use cutover::pg::Target;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn target(port: u16, db: &str) -> Target {
    Target {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        dbname: db.into(),
        password: None,
        ..Default::default()
    }
}

struct Stop(Vec<LocalCluster>);
impl Drop for Stop {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = c.stop();
        }
    }
}

fn check(out: std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let scale: u32 = env_or("BENCH_SCALE", 20);
    let workers: usize = env_or("BENCH_WORKERS", load::Options::default().workers);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let groups = vec![Group {
        name: "accounts".into(),
        tables: vec!["public.pgbench_accounts".into()],
    }];
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (sp, tp) = (free_port(), free_port());
    let src = LocalCluster::new(dir.path().join("s"), sp);
    let dst = LocalCluster::new(dir.path().join("t"), tp);
    let _stop = Stop(vec![src.clone(), dst.clone()]);
    let settings = vec![
        ("shared_buffers".to_string(), "'256MB'".to_string()),
        ("max_wal_size".to_string(), "'4GB'".to_string()),
    ];
    for c in [&src, &dst] {
        c.init(&settings)
            .expect("initdb (PostgreSQL 15 is required)");
        c.start().unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        target(sp, "postgres")
            .connect()
            .await
            .unwrap()
            .batch_execute("CREATE DATABASE app")
            .await
            .unwrap();
    });
    eprintln!("pgbench -i -s {scale} on the source ...");
    check(
        Command::new(program("pgbench").unwrap())
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                &sp.to_string(),
                "-U",
                "postgres",
                "app",
            ])
            .output()
            .unwrap(),
        "pgbench -i",
    );
    let (rows, history, mb) = rt.block_on(async {
        let c = target(sp, "app").connect().await.unwrap();
        c.batch_execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY; CHECKPOINT").await.unwrap();
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_branches) + (SELECT count(*) FROM pgbench_tellers),
                        pg_database_size('app')::float8 / 1048576,
                        (SELECT count(*) FROM pgbench_history)",
                &[],
            )
            .await
            .unwrap();
        (
            r.get::<_, i64>(0),
            r.get::<_, i64>(2),
            r.get::<_, f64>(1),
        )
    });
    let url = |p: u16, db: &str| format!("postgresql://postgres@127.0.0.1:{p}/{db}");
    let pgcopydb = ["/usr/bin/pgcopydb", "/usr/local/bin/pgcopydb"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let names = [
        "pg_dump -Fc | pg_restore".to_string(),
        match pgcopydb {
            Some(_) => "pgcopydb clone (2 table jobs, 2 index jobs)".to_string(),
            None => "pgcopydb (not installed: apt-get install pgcopydb)".to_string(),
        },
        "replicate, load = native (copy_data)".to_string(),
        format!("replicate, load = snapshot ({workers} workers)"),
    ];
    let mut times: Vec<Vec<Duration>> = vec![vec![]; names.len()];
    for round in 0..rounds {
        // Each method in turn, in a rotating order, each into a fresh database, each started
        // on quiet servers (checkpointed, no autovacuum at work), so no method pays for another.
        for k in 0..names.len() {
            let m = (k + round) % names.len();
            let db = format!("t{m}_{round}");
            rt.block_on(quiesce(sp, tp, &db));
            let t0 = Instant::now();
            let ok = match m {
                0 => {
                    let mut dump = Command::new(program("pg_dump").unwrap())
                        .args(["-Fc", "--no-owner", "-d", &url(sp, "app")])
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap();
                    let restore = Command::new(program("pg_restore").unwrap())
                        .args(["--no-owner", "-d", &url(tp, &db)])
                        .stdin(dump.stdout.take().unwrap())
                        .output()
                        .unwrap();
                    assert!(dump.wait().unwrap().success());
                    check(restore, "pg_restore");
                    true
                }
                1 => match pgcopydb {
                    None => false,
                    Some(bin) => {
                        let out = Command::new(bin)
                            .args([
                                "clone",
                                "--source",
                                &url(sp, "app"),
                                "--target",
                                &url(tp, &db),
                                "--no-owner",
                                "--table-jobs",
                                "2",
                                "--index-jobs",
                                "2",
                                "--dir",
                            ])
                            .arg(dir.path().join(format!("pgcopydb{round}")))
                            .env(
                                "PATH",
                                format!(
                                    "{}:{}",
                                    program("pg_dump").unwrap().parent().unwrap().display(),
                                    std::env::var("PATH").unwrap_or_default()
                                ),
                            )
                            .output()
                            .unwrap();
                        if !out.status.success() {
                            eprintln!(
                                "pgcopydb failed: {}",
                                String::from_utf8_lossy(&out.stderr)
                                    .lines()
                                    .rev()
                                    .take(3)
                                    .collect::<Vec<_>>()
                                    .join(" | ")
                            );
                        }
                        out.status.success()
                    }
                },
                2 => {
                    rt.block_on(async {
                        let (s, t) = (target(sp, "app"), target(tp, &db));
                        let rest = replication::copy_schema_pre(&s, &t, true).await.unwrap();
                        let setup = replication::start(&s, &t, &format!("n{round}"), &groups)
                            .await
                            .unwrap();
                        let subs: Vec<String> = setup
                            .groups
                            .iter()
                            .map(|g| g.subscription.clone())
                            .collect();
                        loop {
                            let (done, total, _) =
                                replication::copy_progress(&t, &subs).await.unwrap();
                            if total > 0 && done == total {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        replication::copy_schema_post(&t, &rest).await.unwrap();
                    });
                    true
                }
                _ => {
                    let loaded = rt.block_on(async {
                        let (s, t) = (target(sp, "app"), target(tp, &db));
                        let post = replication::copy_schema_pre(&s, &t, false).await.unwrap();
                        let setup = replication::publish(&s, &format!("s{round}"), &groups)
                            .await
                            .unwrap();
                        let opts = load::Options {
                            workers,
                            chunk_pages: env_or(
                                "BENCH_CHUNK_PAGES",
                                load::Options::default().chunk_pages,
                            ),
                        };
                        let report = load::load(&s, &t, &setup, opts, &|_| {}).await.unwrap();
                        load::build_post(&t, &post, workers).await.unwrap();
                        replication::subscribe(&s, &t, &setup, false).await.unwrap();
                        report
                    });
                    assert_eq!(loaded.rows as i64, rows + history, "rows loaded");
                    true
                }
            };
            let took = t0.elapsed();
            // Streaming subscriptions would load the servers during the next method.
            rt.block_on(drop_subscriptions(tp, &db));
            if ok {
                eprintln!(
                    "round {}: {} {:.2} s",
                    round + 1,
                    names[m],
                    took.as_secs_f64()
                );
                times[m].push(took);
            }
        }
    }
    let results: Vec<(String, Option<Duration>)> = names
        .iter()
        .zip(&times)
        .map(|(n, t)| {
            let mut t = t.clone();
            t.sort();
            (n.clone(), t.get(t.len() / 2).copied())
        })
        .collect();
    let pipe = results[0].1.unwrap();
    println!("initial copy benchmark: pgbench scale {scale}: {rows} rows, {mb:.0} MB, PostgreSQL 15 on loopback; median of {rounds} rounds");
    println!(
        "{:<46} {:>9} {:>12} {:>9} {:>9}",
        "", "time", "rows/s", "MB/s", "vs pipe"
    );
    for (name, t) in &results {
        match t {
            Some(t) => println!(
                "{:<46} {:>7.2} s {:>12.0} {:>9.1} {:>8.2}x",
                name,
                t.as_secs_f64(),
                rows as f64 / t.as_secs_f64(),
                mb / t.as_secs_f64(),
                t.as_secs_f64() / pipe.as_secs_f64()
            ),
            None => println!("{name:<46} {:>9}", "-"),
        }
    }
}

/// Creates `db` on the target, checkpoints both servers and waits (up to a minute) until no
/// autovacuum worker is busy on either.
async fn quiesce(sp: u16, tp: u16, db: &str) {
    target(tp, "postgres")
        .connect()
        .await
        .unwrap()
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    for p in [sp, tp] {
        let c = target(p, "postgres").connect().await.unwrap();
        c.batch_execute("CHECKPOINT").await.unwrap();
        for _ in 0..600 {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Drops the subscriptions of `db` on the target (and with them their slots on the source).
async fn drop_subscriptions(tp: u16, db: &str) {
    let c = target(tp, db).connect().await.unwrap();
    let subs: Vec<String> = c
        .query("SELECT subname FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in subs {
        c.batch_execute(&format!("DROP SUBSCRIPTION \"{s}\""))
            .await
            .unwrap();
    }
}
