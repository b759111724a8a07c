//! Cutover benchmark: the local rehearsal with pgbench scale 20 on the source, a writer at 200
//! inserts/s plus `pgbench -c4 -R50`, all through pgbouncer (transaction pooling), while the cutover
//! runs with its guards and reverse replication. Reports, per run and as median and max over the
//! runs: the write gap (the longest time between two acknowledged writes of the writer), failed
//! client transactions, lost rows (acknowledged but absent on the target) and sequence collisions
//! (duplicate-key errors). The baseline, measured in the same run on its own setup under the same
//! load, is the hand-written script: PAUSE, wait until the slots' confirmed flush position reaches
//! the source's WAL position, setval, re-point, RESUME (no guards, no reverse replication).
//!
//! Run: `cargo bench --bench cutover`. Environment: `BENCH_RUNS` (default 3), `BENCH_SCALE`
//! (pgbench scale, default 20). Needs PostgreSQL 15 and pgbouncer (`scripts/prereqs`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover::pg::cluster::{free_port, program, LocalCluster};
use cutover::pg::pooler::{self, LocalBouncer, Route};
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

fn plan(root: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plan"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "plan {args:?} failed:\n{text}");
    text
}

struct Setup {
    dir: tempfile::TempDir,
    source: u16,
    target: u16,
    pooler: u16,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let root = self.dir.path().join("pgdata");
        let _ = LocalBouncer::new(root.join("pgbouncer"), 0).stop();
        for d in ["source", "target"] {
            let _ = LocalCluster::new(root.join(d), 0).stop();
        }
    }
}

/// The rehearsal up to its gate, with pgbench's tables on the source.
fn setup(scale: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.path().join("stacks")).unwrap();
    let s = Setup {
        dir,
        source: free_port(),
        target: free_port(),
        pooler: free_port(),
    };
    std::fs::write(
        s.dir.path().join("stacks/local.toml"),
        format!(
            "plan = \"rehearsal\"\nprovider = \"local\"\n[values]\ndata_root = \"pgdata\"\nsource_port = {}\ntarget_port = {}\npooler_port = {}\naccounts = 100\nevents = 1000\n",
            s.source, s.target, s.pooler
        ),
    )
    .unwrap();
    plan(
        s.dir.path(),
        &["apply", "local", "--yes", "--quiet", "--until", "preflight"],
    );
    let st = std::process::Command::new(program("pgbench").unwrap())
        .args([
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "-h",
            "127.0.0.1",
            "-p",
            &s.source.to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // pgbench_history has no key: give it one so that it can replicate (preflight insists).
        target(s.source, "app")
            .connect()
            .await
            .unwrap()
            .batch_execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
            .await
            .unwrap();
    });
    plan(s.dir.path(), &["apply", "local", "--yes", "--quiet"]);
    s
}

struct Load {
    acked: Vec<i64>,
    errors: Vec<String>,
    max_gap: Duration,
}

async fn writer(pooler: Target, stop: Arc<AtomicBool>) -> Load {
    let mut l = Load {
        acked: vec![],
        errors: vec![],
        max_gap: Duration::ZERO,
    };
    let mut client = pooler.connect().await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        match client
            .simple_query("INSERT INTO events (account_id, kind) VALUES (1, 'bench') RETURNING id")
            .await
        {
            Ok(msgs) => {
                for m in msgs {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        l.acked.push(r.get(0).unwrap().parse().unwrap());
                    }
                }
                l.max_gap = l.max_gap.max(last.elapsed());
                last = Instant::now();
            }
            Err(e) => {
                l.errors.push(cutover::pg::describe(&e));
                if let Ok(c) = pooler.connect().await {
                    client = c;
                }
            }
        }
    }
    l
}

struct Run {
    gap: Duration,
    failed: usize,
    lost: usize,
    collisions: usize,
    fenced_ms: String,
    /// The cutover's phases as it reported them (where the fenced time goes).
    phases: String,
}

/// The hand-written script: PAUSE, wait for the slots' flush position, setval, re-point, RESUME.
async fn baseline_cutover(s: &Setup) {
    let b = LocalBouncer::new(s.dir.path().join("pgdata/pgbouncer"), s.pooler);
    let console = b.admin();
    pooler::admin(&console, "PAUSE app").await.unwrap();
    let src = target(s.source, "app").connect().await.unwrap();
    let lsn: String = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    loop {
        let behind: i64 = src
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cutover_%' AND confirmed_flush_lsn < $1::text::pg_lsn", &[&lsn])
            .await
            .unwrap()
            .get(0);
        if behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cutover::pg::cutover::sync_sequences(&target(s.source, "app"), &target(s.target, "app"), 1000)
        .await
        .unwrap();
    b.set_route(&Route {
        name: "app".into(),
        host: "127.0.0.1".into(),
        port: s.target,
        dbname: "app".into(),
    })
    .unwrap();
    pooler::admin(&console, "RELOAD").await.unwrap();
    pooler::admin(&console, "RESUME app").await.unwrap();
}

fn run_once(scale: u32, ours: bool) -> Run {
    let s = setup(scale);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = rt.spawn(writer(target(s.pooler, "app"), stop.clone()));
    let bench = std::process::Command::new(program("pgbench").unwrap())
        .args([
            "-n",
            "-c4",
            "-R50",
            "-T",
            "8",
            "-M",
            "simple",
            "-h",
            "127.0.0.1",
            "-p",
            &s.pooler.to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (fenced_ms, phases) = if ours {
        let out = plan(
            s.dir.path(),
            &["apply", "local", "--yes", "--approve", "cutover"],
        );
        let after = |marker: &str| {
            out.lines()
                .find_map(|l| l.split(marker).nth(1).map(|x| x.trim().to_string()))
                .unwrap_or_default()
        };
        (after("clients waited at most "), after("switch: phases: "))
    } else {
        let t0 = Instant::now();
        rt.block_on(baseline_cutover(&s));
        (
            format!("{:.1} ms", t0.elapsed().as_secs_f64() * 1000.0),
            String::new(),
        )
    };
    let out = bench.wait_with_output().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let load = rt.block_on(w).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pgbench_failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|x| x.split_whitespace().next())
        .and_then(|x| x.parse::<usize>().ok())
        .unwrap_or(0);
    let aborted = text.lines().filter(|l| l.contains("aborted")).count();
    let lost = rt.block_on(async {
        let dst = target(s.target, "app").connect().await.unwrap();
        let found: i64 = dst
            .query_one(
                "SELECT count(*) FROM events WHERE id = ANY($1)",
                &[&load.acked],
            )
            .await
            .unwrap()
            .get(0);
        load.acked.len() - found as usize
    });
    let collisions = load.errors.iter().filter(|e| e.contains("23505")).count()
        + text.matches("duplicate key").count();
    Run {
        gap: load.max_gap,
        failed: load.errors.len() + pgbench_failed + aborted,
        lost,
        collisions,
        fenced_ms,
        phases,
    }
}

fn main() {
    let runs: usize = env_or("BENCH_RUNS", 3);
    let scale: u32 = env_or("BENCH_SCALE", 20);
    if program("pgbench").is_err() || pooler::program().is_none() {
        eprintln!("PostgreSQL 15 and pgbouncer are needed: run scripts/prereqs");
        std::process::exit(1);
    }
    println!("cutover benchmark: pgbench scale {scale}, writer 200 inserts/s + pgbench -c4 -R50, through pgbouncer; {runs} run(s) each");
    println!(
        "{:<10} {:>4} {:>12} {:>14} {:>8} {:>6} {:>11}",
        "cutover", "run", "write gap", "fenced", "failed", "lost", "collisions"
    );
    let mut results: Vec<(&str, Vec<Run>)> = vec![];
    for (name, ours) in [("baseline", false), ("cutover", true)] {
        let mut v = vec![];
        for i in 0..runs {
            let r = run_once(scale, ours);
            println!(
                "{:<10} {:>4} {:>9.1} ms {:>14} {:>8} {:>6} {:>11}",
                name,
                i + 1,
                r.gap.as_secs_f64() * 1000.0,
                r.fenced_ms,
                r.failed,
                r.lost,
                r.collisions
            );
            v.push(r);
        }
        results.push((name, v));
    }
    println!();
    for (i, r) in results[1].1.iter().enumerate() {
        println!("cutover run {} phases: {}", i + 1, r.phases);
    }
    println!();
    let mut medians = vec![];
    for (name, v) in &results {
        let mut gaps: Vec<Duration> = v.iter().map(|r| r.gap).collect();
        gaps.sort();
        let (med, max) = (gaps[gaps.len() / 2], *gaps.last().unwrap());
        medians.push(med);
        println!(
            "{name:<10} write gap median {:.1} ms, max {:.1} ms; failed {}, lost {}, collisions {}",
            med.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
            v.iter().map(|r| r.failed).sum::<usize>(),
            v.iter().map(|r| r.lost).sum::<usize>(),
            v.iter().map(|r| r.collisions).sum::<usize>()
        );
    }
    println!(
        "median write gap, cutover / baseline: {:.2}x (the cutover also runs its guards, a catch-up marker, reverse replication and a post-check)",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
}
