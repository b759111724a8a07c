//! Validation benchmark: a table of 2 million rows on two local PostgreSQL 15 clusters, identical
//! and then with one row changed, one missing and one extra. Reports the time of `pg.validate`'s
//! comparison and whether exactly those keys are found, beside, in the same run: `count(*)` per
//! side, one `SELECT sum(hashtext(t::text)::bigint)` scan of both sides at once (the baseline:
//! reading and hashing every row once), and reladiff with `-c %` (all columns), installed from PyPI
//! into `target/bench-venv` when missing.
//!
//! Run: `cargo bench --bench validate`. Environment: `BENCH_ROWS` (default 2000000), `BENCH_RUNS`
//! (median of, default 3), `BENCH_RELADIFF=0` to skip reladiff.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cutover::pg::cluster::{free_port, LocalCluster};
use cutover::pg::validate::{validate, Options};
use cutover::pg::Target;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn target(port: u16) -> Target {
    Target {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        dbname: "postgres".into(),
        password: None,
        ..Default::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// reladiff from `target/bench-venv`, installed on first use.
fn reladiff() -> Option<PathBuf> {
    if env_or("BENCH_RELADIFF", 1) == 0 {
        return None;
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    let bin = venv.join("bin/reladiff");
    if !bin.exists() {
        eprintln!("installing reladiff into {} ...", venv.display());
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "reladiff[postgresql]==0.6.0"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if !ok {
            eprintln!("reladiff could not be installed; its row is skipped");
            return None;
        }
    }
    Some(bin)
}

struct Stop(Vec<LocalCluster>);
impl Drop for Stop {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = c.stop();
        }
    }
}

fn main() {
    let rows: i64 = env_or("BENCH_ROWS", 2_000_000);
    let runs: usize = env_or("BENCH_RUNS", 3);
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let settings = vec![
        ("shared_buffers".to_string(), "'512MB'".to_string()),
        ("fsync".to_string(), "off".to_string()),
    ];
    let (sp, tp) = (free_port(), free_port());
    let src = LocalCluster::new(dir.path().join("s"), sp);
    let dst = LocalCluster::new(dir.path().join("t"), tp);
    let _stop = Stop(vec![src.clone(), dst.clone()]);
    for c in [&src, &dst] {
        c.init(&settings)
            .expect("initdb (PostgreSQL 15 is required)");
        c.start().unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (s, t) = (target(sp), target(tp));
    let load = format!(
        "CREATE TABLE bench_rows (id bigint PRIMARY KEY, account int NOT NULL, label text, amount numeric(12,2), at timestamptz);
         INSERT INTO bench_rows SELECT g, g % 9973, 'row ' || g, (g % 100000) / 100.0, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 second'
           FROM generate_series(1, {rows}) g;"
    );
    eprintln!("loading {rows} rows on each side ...");
    rt.block_on(async {
        let (a, b) = (s.connect().await.unwrap(), t.connect().await.unwrap());
        let (x, y) = tokio::join!(a.batch_execute(&load), b.batch_execute(&load));
        x.unwrap();
        y.unwrap();
        // VACUUM cannot share a transaction with the load.
        let (x, y) = tokio::join!(
            a.batch_execute("VACUUM ANALYZE bench_rows"),
            b.batch_execute("VACUUM ANALYZE bench_rows")
        );
        x.unwrap();
        y.unwrap();
    });
    let count = || {
        let mut v = vec![];
        for _ in 0..runs {
            let t0 = Instant::now();
            rt.block_on(async {
                s.connect()
                    .await
                    .unwrap()
                    .query_one("SELECT count(*) FROM bench_rows", &[])
                    .await
                    .unwrap()
            });
            v.push(t0.elapsed());
        }
        median(v)
    };
    let hash_scan = || {
        let mut v = vec![];
        for _ in 0..runs {
            let t0 = Instant::now();
            rt.block_on(async {
                let (a, b) = (s.connect().await.unwrap(), t.connect().await.unwrap());
                let q = "SELECT sum(hashtext(t::text)::bigint) FROM bench_rows t";
                let (x, y) = tokio::join!(a.query_one(q, &[]), b.query_one(q, &[]));
                x.unwrap();
                y.unwrap();
            });
            v.push(t0.elapsed());
        }
        median(v)
    };
    let ours = || {
        let mut v = vec![];
        let mut last = None;
        for _ in 0..runs {
            let d = Options::default();
            let opts = Options {
                ranges: env_or("BENCH_RANGES", d.ranges),
                leaf: env_or("BENCH_LEAF", d.leaf),
                parallel: env_or("BENCH_PARALLEL", d.parallel),
                ..d
            };
            let t0 = Instant::now();
            let r = rt.block_on(validate(&s, &t, &[], &opts, &|_| {})).unwrap();
            v.push(t0.elapsed());
            last = Some(r);
        }
        (median(v), last.unwrap())
    };
    let c = count();
    let h = hash_scan();
    let (same, r) = ours();
    assert!(r.passed, "identical tables must pass: {r:?}");
    rt.block_on(async {
        t.connect()
            .await
            .unwrap()
            .batch_execute(&format!(
                "UPDATE bench_rows SET amount = amount + 0.01 WHERE id = {changed};
                 DELETE FROM bench_rows WHERE id = {missing};
                 INSERT INTO bench_rows VALUES ({extra}, 1, 'extra', 1, now());",
                changed = rows / 2 + 17,
                missing = rows / 3,
                extra = rows + 1
            ))
            .await
            .unwrap()
    });
    let (diff, r) = ours();
    let found: Vec<String> = r.tables[0]
        .differences
        .iter()
        .map(|d| format!("{} {}", d.kind, d.key))
        .collect();
    let expected = vec![
        format!("missing {}", rows / 3),
        format!("changed {}", rows / 2 + 17),
        format!("extra {}", rows + 1),
    ];
    let exact = found == expected;
    let rd = reladiff().map(|bin| {
        let url = |p: u16| format!("postgresql://postgres@127.0.0.1:{p}/postgres");
        let t0 = Instant::now();
        let out = std::process::Command::new(&bin)
            .args([
                url(sp).as_str(),
                "bench_rows",
                url(tp).as_str(),
                "bench_rows",
                "-k",
                "id",
                "-c",
                "%",
            ])
            .output()
            .expect("run reladiff");
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<String> = text.lines().map(|l| l.chars().take(90).collect()).collect();
        (took, lines)
    });
    println!(
        "validation benchmark: {rows} rows per side, PostgreSQL 15 on loopback, median of {runs}"
    );
    println!("{:<46} {:>10} {:>22}", "", "time", "vs hash scan of both");
    println!("{:<46} {:>10} {:>22}", "count(*), one side", secs(c), "");
    println!(
        "{:<46} {:>10} {:>22}",
        "hash scan, both sides at once (baseline)",
        secs(h),
        "1.00x"
    );
    println!(
        "{:<46} {:>10} {:>21.2}x",
        "pg.validate, identical",
        secs(same),
        same.as_secs_f64() / h.as_secs_f64()
    );
    println!(
        "{:<46} {:>10} {:>21.2}x",
        "pg.validate, 1 changed + 1 missing + 1 extra",
        secs(diff),
        diff.as_secs_f64() / h.as_secs_f64()
    );
    println!(
        "  keys reported: {} ({})",
        found.join(", "),
        if exact {
            "exactly the three"
        } else {
            "NOT exactly the three"
        }
    );
    match rd {
        Some((took, lines)) => {
            println!(
                "{:<46} {:>10} {:>21.2}x",
                "reladiff -c % (all columns), same differences",
                secs(took),
                took.as_secs_f64() / h.as_secs_f64()
            );
            println!("  reladiff printed {} line(s):", lines.len());
            for l in &lines {
                println!("    {l}");
            }
            println!(
                "  pg.validate is {:.1}x faster",
                took.as_secs_f64() / diff.as_secs_f64()
            );
        }
        None => println!("reladiff: not run"),
    }
}
