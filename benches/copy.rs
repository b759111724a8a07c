//! Initial copy benchmark: pgbench scale 20 on a local PostgreSQL 15 source, copied into a fresh
//! database on a local target three ways in the same run: `pg_dump -Fc | pg_restore`, `pgcopydb
//! clone` (Debian's package, when installed), and the replication step's initial load (schema with
//! keys, native `copy_data` of one subscription per table group, then indexes and foreign keys).
//! Reports seconds, rows and MB per second, and the ratio to the pipe.
//!
//! Run: `cargo bench --bench copy`. Environment: `BENCH_SCALE` (default 20). Needs PostgreSQL 15.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover::pg::cluster::{free_port, program, LocalCluster};
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
        let t = target(tp, "postgres").connect().await.unwrap();
        for db in ["t_pipe", "t_pgcopydb", "t_ours"] {
            t.batch_execute(&format!("CREATE DATABASE {db}"))
                .await
                .unwrap();
        }
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
    let (rows, mb) = rt.block_on(async {
        let c = target(sp, "app").connect().await.unwrap();
        c.batch_execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY; CHECKPOINT").await.unwrap();
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_branches) + (SELECT count(*) FROM pgbench_tellers),
                        pg_database_size('app')::float8 / 1048576",
                &[],
            )
            .await
            .unwrap();
        (r.get::<_, i64>(0), r.get::<_, f64>(1))
    });
    let url = |p: u16, db: &str| format!("postgresql://postgres@127.0.0.1:{p}/{db}");
    let mut results: Vec<(String, Option<Duration>)> = vec![];

    // pg_dump -Fc | pg_restore
    let t0 = Instant::now();
    let mut dump = Command::new(program("pg_dump").unwrap())
        .args(["-Fc", "--no-owner", "-d", &url(sp, "app")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let restore = Command::new(program("pg_restore").unwrap())
        .args(["--no-owner", "-d", &url(tp, "t_pipe")])
        .stdin(dump.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(dump.wait().unwrap().success());
    check(restore, "pg_restore");
    results.push(("pg_dump -Fc | pg_restore".into(), Some(t0.elapsed())));

    // pgcopydb clone
    let pgcopydb = ["/usr/bin/pgcopydb", "/usr/local/bin/pgcopydb"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    match pgcopydb {
        Some(bin) => {
            let work = dir.path().join("pgcopydb");
            let t0 = Instant::now();
            let out = Command::new(bin)
                .args([
                    "clone",
                    "--source",
                    &url(sp, "app"),
                    "--target",
                    &url(tp, "t_pgcopydb"),
                    "--no-owner",
                    "--table-jobs",
                    "2",
                    "--index-jobs",
                    "2",
                    "--dir",
                ])
                .arg(&work)
                .env("PGCOPYDB_PG_DUMP", program("pg_dump").unwrap())
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
            let took = t0.elapsed();
            if out.status.success() {
                results.push((
                    "pgcopydb clone (2 table jobs, 2 index jobs)".into(),
                    Some(took),
                ));
            } else {
                eprintln!(
                    "pgcopydb failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
                results.push(("pgcopydb clone".into(), None));
            }
        }
        None => results.push((
            "pgcopydb (not installed: apt-get install pgcopydb)".into(),
            None,
        )),
    }

    // The replication step's initial load.
    let t0 = Instant::now();
    rt.block_on(async {
        let (s, t) = (target(sp, "app"), target(tp, "t_ours"));
        let rest = replication::copy_schema_pre(&s, &t).await.unwrap();
        let groups = vec![Group {
            name: "accounts".into(),
            tables: vec!["public.pgbench_accounts".into()],
        }];
        let setup = replication::start(&s, &t, "bench", &groups).await.unwrap();
        let subs: Vec<String> = setup
            .groups
            .iter()
            .map(|g| g.subscription.clone())
            .collect();
        loop {
            let (done, total, _) = replication::copy_progress(&t, &subs).await.unwrap();
            if total > 0 && done == total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replication::copy_schema_post(&t, &rest).await.unwrap();
    });
    results.push((
        "cutover replicate (copy_data, keys first)".into(),
        Some(t0.elapsed()),
    ));

    let pipe = results[0].1.unwrap();
    println!("initial copy benchmark: pgbench scale {scale}: {rows} rows, {mb:.0} MB, PostgreSQL 15 on loopback");
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
