//! Tests against real PostgreSQL 15 clusters on free loopback ports. Without PostgreSQL's programs
//! (or pgbouncer, for the tests that need it) these tests fail, naming what installs them.

use std::path::PathBuf;

use cutover::pg::cluster::{bin_dir, free_port, LocalCluster};
use cutover::pg::preflight::{self, Level};
use cutover::pg::Target;

use super::Project;

/// PostgreSQL 15's programs are needed: their absence fails the test.
pub fn require_pg() {
    assert!(
        bin_dir().is_some(),
        "PostgreSQL 15's programs are needed and were not found: run scripts/prereqs (apt-get install postgresql-15), or set CUTOVER_PG_BIN"
    );
}

/// A temporary directory for clusters (PostgreSQL runs as `postgres` when tests run as root: it
/// must reach its data).
pub fn cluster_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Stops clusters when a test ends, even by panic.
pub struct Stopper(pub Vec<PathBuf>);

impl Drop for Stopper {
    fn drop(&mut self) {
        for d in &self.0 {
            if d.join("pgbouncer.ini").exists() {
                let _ = cutover::pg::pooler::LocalBouncer::new(d, 0).stop();
            } else {
                let _ = LocalCluster::new(d, 0).stop();
            }
        }
    }
}

/// pgbouncer is needed too (for the cutover); same rule as PostgreSQL.
pub fn require_pgbouncer() {
    assert!(
        cutover::pg::pooler::program().is_some(),
        "pgbouncer is needed and was not found: run scripts/prereqs (apt-get install pgbouncer), or set CUTOVER_PGBOUNCER"
    );
}

fn local_stack(p: &Project) -> (u16, u16, Stopper) {
    let (s, t, _) = local_stack_with(p, "");
    (s, t, stopper(p))
}

fn stopper(p: &Project) -> Stopper {
    Stopper(vec![
        p.root().join("pgdata/pgbouncer"),
        p.root().join("pgdata/source"),
        p.root().join("pgdata/target"),
    ])
}

/// The local stack on free ports, with extra `[values]` lines; returns source, target, pooler ports.
fn local_stack_with(p: &Project, extra: &str) -> (u16, u16, u16) {
    let (s, t, b) = (free_port(), free_port(), free_port());
    p.stack(
        "local",
        &format!("plan = \"rehearsal\"\nprovider = \"local\"\n[values]\ndata_root = \"pgdata\"\nsource_port = {s}\ntarget_port = {t}\npooler_port = {b}\naccounts = 100\nevents = 1000\n{extra}"),
    );
    (s, t, b)
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

/// Row counts of the rehearsal's tables when both sides agree, else (-1, -1, -1).
async fn same_data(src: &tokio_postgres::Client, dst: &tokio_postgres::Client) -> (i64, i64, i64) {
    let q = "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM events), (SELECT count(*) FROM settings)";
    let a = src.query_one(q, &[]).await.unwrap();
    let b = dst.query_one(q, &[]).await.unwrap();
    let a = (a.get::<_, i64>(0), a.get::<_, i64>(1), a.get::<_, i64>(2));
    let b = (b.get::<_, i64>(0), b.get::<_, i64>(1), b.get::<_, i64>(2));
    if a == b {
        a
    } else {
        (-1, -1, -1)
    }
}

/// How many of the writer's acknowledged ids the `app` database on `port` holds.
async fn acked_on(port: u16, ids: &[i64]) -> usize {
    let c = target(port, "app").connect().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM events WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    n as usize
}

/// The port of the server a connection through the pooler on `pooler` reaches.
async fn port_via(pooler: u16) -> Option<String> {
    let via = target(pooler, "app").connect().await.unwrap();
    let msgs = via
        .simple_query("SELECT inet_server_port()::text")
        .await
        .unwrap();
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
        _ => None,
    })
}

/// `plan apply local --approve cutover`, quiet, in the background (to be killed).
fn spawn_cutover(p: &Project) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(p.root())
        .args(["apply", "local", "--yes", "--approve", "cutover", "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_local_rehearsal_provisions_seeds_checks_and_tears_down() {
    require_pg();
    let p = Project::new();
    let (s, t, _stop) = local_stack(&p);
    let (code, out, err) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Apply complete: 3 added, 0 changed, 0 destroyed, 8 steps run."),
        "{out}"
    );
    assert!(out.contains("replicate: initial load: 1102 rows"), "{out}");
    let rt = rt();
    rt.block_on(async {
        let src = target(s, "app").connect().await.unwrap();
        let dst = target(t, "app").connect().await.unwrap();
        assert_eq!(same_data(&src, &dst).await, (100, 1000, 2));
        // One publication, subscription and slot per group: `events` alone, the rest together.
        let slots: Vec<String> = src
            .query("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(slots, vec!["cutover_events".to_string(), "cutover_rest".to_string()]);
        // The schema's post-data (indexes, foreign keys) was built on the target.
        let q = "SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'), (SELECT count(*) FROM pg_constraint WHERE contype = 'f')";
        let a = src.query_one(q, &[]).await.unwrap();
        let b = dst.query_one(q, &[]).await.unwrap();
        assert_eq!((a.get::<_, i64>(0), a.get::<_, i64>(1)), (b.get::<_, i64>(0), b.get::<_, i64>(1)));
        // Changes keep flowing.
        src.batch_execute("INSERT INTO accounts (name) VALUES ('late'); UPDATE settings SET value = 'USD' WHERE key = 'currency'; DELETE FROM events WHERE id <= 10")
            .await
            .unwrap();
        let mut ok = false;
        for _ in 0..100 {
            let currency: String = dst.query_one("SELECT value FROM settings WHERE key = 'currency'", &[]).await.unwrap().get(0);
            if same_data(&src, &dst).await == (101, 990, 2) && currency == "USD" {
                ok = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(ok, "the insert, update and delete did not reach the target within 5 s");
    });
    let (_, show, _) = p.run(&["state", "local", "show", "preflight"]);
    assert!(
        show.contains("3 table(s) are not on the target yet"),
        "{show}"
    );
    // Done steps do not run again; the seed is not applied twice.
    let (code, out, _) = p.run(&["preview", "local", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    // A stopped cluster is drift that refresh finds and apply repairs.
    LocalCluster::new(p.root().join("pgdata/source"), s)
        .stop()
        .unwrap();
    let (_, out, _) = p.run(&["refresh", "local"]);
    assert!(
        out.contains("~ source: changed outside this tool: running"),
        "{out}"
    );
    let (code, out, _) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("~ running = false -> true"), "{out}");
    rt.block_on(async { target(s, "app").connect().await.expect("restarted") });
    let (code, out, _) = p.run(&["destroy", "local", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(!p.root().join("pgdata/source").exists() && !p.root().join("pgdata/target").exists());
    rt.block_on(async {
        assert!(
            target(t, "postgres").connect().await.is_err(),
            "target still running"
        )
    });
}

#[test]
fn preflight_reports_missing_replica_identity_and_wal_level_with_fixes() {
    require_pg();
    let dir = cluster_dir();
    let (sp, tp) = (free_port(), free_port());
    let src = LocalCluster::new(dir.path().join("s"), sp);
    let dst = LocalCluster::new(dir.path().join("t"), tp);
    let _stop = Stopper(vec![src.data_dir.clone(), dst.data_dir.clone()]);
    src.init(&[("wal_level".into(), "replica".into())]).unwrap();
    src.start().unwrap();
    dst.init(&[]).unwrap();
    dst.start().unwrap();
    rt().block_on(async {
        let c = target(sp, "postgres").connect().await.unwrap();
        c.batch_execute(
            "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE bare (x int);
             CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY); SELECT lo_create(0);
             CREATE EXTENSION pgcrypto;",
        )
        .await
        .unwrap();
        let f = preflight::check(&target(sp, "postgres"), &target(tp, "postgres"), 1)
            .await
            .unwrap();
        let by = |check: &str| {
            f.iter()
                .find(|x| x.check == check)
                .unwrap_or_else(|| panic!("no {check} finding: {f:#?}"))
        };
        assert_eq!(by("wal_level").level, Level::Error);
        assert!(by("wal_level")
            .fix
            .as_deref()
            .unwrap()
            .contains("wal_level = logical"));
        let ri = by("replica_identity");
        assert_eq!(ri.level, Level::Error);
        assert!(
            ri.message.contains("public.bare") && !ri.message.contains("public.keyed"),
            "{}",
            ri.message
        );
        assert!(ri.fix.as_deref().unwrap().contains("REPLICA IDENTITY FULL"));
        assert!(by("unlogged").message.contains("public.scratch"));
        assert_eq!(by("large_objects").level, Level::Warning);
        assert!(by("extensions").message.contains("pgcrypto"));
        assert_eq!(f[0].level, Level::Error, "errors first");
        // Fixed, the errors go (wal_level needs the restart the fix names).
        c.batch_execute("ALTER TABLE bare REPLICA IDENTITY FULL")
            .await
            .unwrap();
    });
    src.configure(&[]).unwrap();
    src.restart().unwrap();
    rt().block_on(async {
        let f = preflight::check(&target(sp, "postgres"), &target(tp, "postgres"), 1)
            .await
            .unwrap();
        assert!(f.iter().all(|x| x.level != Level::Error), "{f:#?}");
    });
}

/// The settings that bound logical decoding on the source and apply on the target are weighed
/// against the plan's table groups: a write-heavy source's lesson (its replication queue grew
/// until they were tuned), each finding with its fix.
#[test]
fn preflight_weighs_decoding_and_apply_settings_against_the_table_groups() {
    require_pg();
    let dir = cluster_dir();
    let (sp, tp, gp) = (free_port(), free_port(), free_port());
    let src = LocalCluster::new(dir.path().join("s"), sp);
    let dst = LocalCluster::new(dir.path().join("t"), tp);
    let good = LocalCluster::new(dir.path().join("g"), gp);
    let _stop = Stopper(vec![
        src.data_dir.clone(),
        dst.data_dir.clone(),
        good.data_dir.clone(),
    ]);
    let set = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    src.init(&set(&[
        ("logical_decoding_work_mem", "'32MB'"),
        ("wal_sender_timeout", "'10s'"),
        ("max_replication_slots", "4"),
        ("max_wal_senders", "4"),
    ]))
    .unwrap();
    dst.init(&set(&[
        ("max_logical_replication_workers", "2"),
        ("max_sync_workers_per_subscription", "2"),
        ("max_worker_processes", "2"),
        ("max_replication_slots", "1"),
        ("wal_level", "replica"),
    ]))
    .unwrap();
    good.init(&[]).unwrap();
    for c in [&src, &dst, &good] {
        c.start().unwrap();
    }
    rt().block_on(async {
        let f = preflight::check(&target(sp, "postgres"), &target(tp, "postgres"), 3)
            .await
            .unwrap();
        let by = |check: &str| {
            f.iter()
                .find(|x| x.check == check)
                .unwrap_or_else(|| panic!("no {check} finding: {f:#?}"))
        };
        let dm = by("decoding_memory");
        assert_eq!(dm.level, Level::Warning);
        assert!(
            dm.message
                .contains("32 MB, per slot (3 slot(s): up to 96 MB)")
                && dm.message.contains("replication queue"),
            "{}",
            dm.message
        );
        assert!(dm
            .fix
            .as_deref()
            .unwrap()
            .contains("raise logical_decoding_work_mem"));
        assert_eq!(by("wal_sender_timeout").level, Level::Warning);
        assert!(by("wal_sender_timeout").message.contains("10 s"));
        let aw = by("apply_workers");
        assert_eq!(aw.level, Level::Error);
        assert!(
            aw.message.contains(
                "max_logical_replication_workers is 2: each of the plan's 3 subscription(s)"
            ),
            "{}",
            aw.message
        );
        assert_eq!(by("origins").level, Level::Error);
        assert!(by("origins").message.contains("max_replication_slots is 1"));
        assert_eq!(by("worker_processes").level, Level::Warning);
        assert_eq!(by("reverse_replication").level, Level::Warning);
        assert_eq!(by("copy_slots").level, Level::Warning);
        assert!(
            by("copy_slots").message.contains("4 free slot(s)"),
            "{}",
            by("copy_slots").message
        );
        assert_eq!(by("sync_workers").level, Level::Note);
        // One group: the workers suffice to apply, not to copy at full width.
        let f = preflight::check(&target(sp, "postgres"), &target(tp, "postgres"), 1)
            .await
            .unwrap();
        let aw = f.iter().find(|x| x.check == "apply_workers").unwrap();
        assert_eq!(aw.level, Level::Warning, "{aw}");
        assert!(!f.iter().any(|x| x.check == "origins"), "{f:#?}");
        // The defaults of a cluster set up for replication: nothing to fix for two groups.
        let f = preflight::check(&target(sp, "postgres"), &target(gp, "postgres"), 2)
            .await
            .unwrap();
        for check in [
            "apply_workers",
            "origins",
            "worker_processes",
            "reverse_replication",
        ] {
            assert!(!f.iter().any(|x| x.check == check), "{check}: {f:#?}");
        }
    });
}

#[test]
fn killed_during_replication_the_next_apply_reconciles_and_finishes_without_duplicates() {
    require_pg();
    let p = Project::new();
    let (s, t, _stop) = local_stack(&p);
    // Bigger tables so that the initial copy takes a moment.
    let stack = p
        .read("stacks/local.toml")
        .replace("events = 1000", "events = 300000");
    p.stack("local", &stack);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(p.root())
        .args(["apply", "local", "--yes", "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = p.state_dir("local").join("journal.log");
    let t0 = std::time::Instant::now();
    loop {
        let j = std::fs::read_to_string(&journal).unwrap_or_default();
        if j.contains("\"node\":\"replicate\",\"intent\"") {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "replicate never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended before replicate started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, out, err) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reconciled replicate:"), "{out}");
    rt().block_on(async {
        let src = target(s, "app").connect().await.unwrap();
        let dst = target(t, "app").connect().await.unwrap();
        assert_eq!(same_data(&src, &dst).await, (100, 300000, 2));
        let subs: i64 = dst
            .query_one("SELECT count(*) FROM pg_subscription", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(subs, 2, "no subscription was created twice");
    });
    let (code, out, _) = p.run(&["preview", "local", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn validation_names_changed_missing_and_extra_keys_and_passes_when_equal() {
    require_pg();
    let dir = cluster_dir();
    let (sp, tp) = (free_port(), free_port());
    let src = LocalCluster::new(dir.path().join("s"), sp);
    let dst = LocalCluster::new(dir.path().join("t"), tp);
    let _stop = Stopper(vec![src.data_dir.clone(), dst.data_dir.clone()]);
    for c in [&src, &dst] {
        c.init(&[]).unwrap();
        c.start().unwrap();
    }
    let schema = "CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(10,2), at timestamptz);
        INSERT INTO items SELECT g, 'item ' || g, g * 0.5, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' FROM generate_series(1, 100000) g;
        CREATE TABLE tags (tag text, n int);
        INSERT INTO tags SELECT 'tag' || g, g FROM generate_series(1, 50) g;";
    let (s, t) = (target(sp, "postgres"), target(tp, "postgres"));
    rt().block_on(async {
        let (a, b) = (s.connect().await.unwrap(), t.connect().await.unwrap());
        a.batch_execute(schema).await.unwrap();
        // The target's default time zone differs: the same instants must still compare equal.
        b.batch_execute(&format!("ALTER DATABASE postgres SET TimeZone = 'Asia/Tokyo'; {schema}"))
            .await
            .unwrap();
        let opts = cutover::pg::validate::Options::default();
        let r = cutover::pg::validate::validate(&s, &t, &[], &opts, &|_| {}).await.unwrap();
        assert!(r.passed, "{r:#?}");
        assert_eq!(r.tables.iter().map(|t| t.source_rows).sum::<i64>(), 100050);
        b.batch_execute(
            "UPDATE items SET price = price + 0.01 WHERE id = 4242;
             DELETE FROM items WHERE id = 77777;
             INSERT INTO items VALUES (100001, 'extra', 1, now());
             UPDATE tags SET n = 0 WHERE tag = 'tag7';",
        )
        .await
        .unwrap();
        let r = cutover::pg::validate::validate(&s, &t, &[], &opts, &|_| {}).await.unwrap();
        assert!(!r.passed);
        let items = r.tables.iter().find(|x| x.table == "public.items").unwrap();
        let got: Vec<(String, String)> = items.differences.iter().map(|d| (d.kind.clone(), d.key.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("changed".to_string(), "4242".to_string()),
                ("missing".to_string(), "77777".to_string()),
                ("extra".to_string(), "100001".to_string()),
            ]
        );
        let tags = r.tables.iter().find(|x| x.table == "public.tags").unwrap();
        assert!(tags.note.as_deref().unwrap().contains("no primary key"));
        assert_eq!(tags.differences.len(), 2, "{:?}", tags.differences);
        assert!(tags.differences.iter().any(|d| d.key.contains("tag7")));
        assert!(r.summary().contains("public.items: 100000 rows on the source, 100000 on the target; changed 4242, missing 77777, extra 100001"), "{}", r.summary());
    });
}

#[test]
fn the_rehearsal_validation_step_fails_naming_a_key_changed_on_the_target() {
    require_pg();
    let p = Project::new();
    let (_s, t, _stop) = local_stack(&p);
    let (code, out, _) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("validate: 6 table(s), 1102 rows identical"),
        "{out}"
    );
    rt().block_on(async {
        let dst = target(t, "app").connect().await.unwrap();
        dst.batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 42")
            .await
            .unwrap();
    });
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--replace", "validate"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("validate (pg.validate): will run: done at"),
        "{out}"
    );
    assert!(out.contains("validation found differences: public.accounts: 100 rows on the source, 100 on the target; changed 42"), "{out}");
}

/// A writer through the pooler: inserts at a steady rate, recording every acknowledged id, every
/// error, and the longest time between two acknowledgements.
struct Writer {
    acked: Vec<i64>,
    errors: Vec<String>,
    max_gap: std::time::Duration,
}

async fn write_until(
    pooler: Target,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Writer {
    let mut w = Writer {
        acked: vec![],
        errors: vec![],
        max_gap: std::time::Duration::ZERO,
    };
    let mut client = pooler.connect().await.unwrap();
    let mut last = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match client
            .simple_query("INSERT INTO events (account_id, kind) VALUES (1, 'writer') RETURNING id")
            .await
        {
            Ok(msgs) => {
                for m in msgs {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        w.acked.push(r.get(0).unwrap().parse().unwrap());
                    }
                }
                w.max_gap = w.max_gap.max(last.elapsed());
                last = std::time::Instant::now();
            }
            Err(e) => {
                w.errors.push(cutover::pg::describe(&e));
                if let Ok(c) = pooler.connect().await {
                    client = c;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    w
}

#[test]
fn the_cutover_under_writes_loses_nothing_and_no_client_sees_an_error() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    // pgbench's tables on the source too (replicated with the rest), for extra load.
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--until", "preflight"]);
    assert_eq!(code, 0, "{out}");
    let pgbench = cutover::pg::cluster::program("pgbench").unwrap();
    let init = std::process::Command::new(&pgbench)
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &s.to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    rt().block_on(async {
        target(s, "app")
            .connect()
            .await
            .unwrap()
            .batch_execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
            .await
            .unwrap()
    });
    let (code, out, _) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Held back by gate `cutover`"), "{out}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = rt.spawn(write_until(target(b, "app"), stop.clone()));
    let load = std::process::Command::new(&pgbench)
        .args([
            "-n",
            "-c4",
            "-R50",
            "-T",
            "3",
            "-M",
            "simple",
            "-h",
            "127.0.0.1",
            "-p",
            &b.to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    let load = load.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&load.stdout),
        String::from_utf8_lossy(&load.stderr)
    );
    assert!(
        load.status.success(),
        "pgbench failed through the cutover:\n{report}"
    );
    assert!(
        report.contains("number of failed transactions: 0 "),
        "{report}"
    );
    assert!(!report.contains("aborted"), "{report}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = rt.block_on(writer).unwrap();
    // The plan's time budget, measured from the step's own timestamps.
    let budget = out
        .lines()
        .find(|l| l.starts_with("Budget `fence-to-flip`: "))
        .unwrap_or_else(|| panic!("no budget line:\n{out}"));
    assert!(
        budget.contains(" s of 15.0 s: ")
            && budget.ends_with("s from `switch` fenced_at to `switch` done_at."),
        "{budget}"
    );
    let fenced = out
        .lines()
        .find(|l| l.contains("clients waited at most"))
        .unwrap_or("")
        .to_string();
    let phases = out
        .lines()
        .find(|l| l.contains("switch: phases:"))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "cutover: {} writes acknowledged, {} errors, longest gap between acknowledgements {:?}; {}; {}",
        w.acked.len(),
        w.errors.len(),
        w.max_gap,
        fenced.trim(),
        phases.trim()
    );
    assert!(w.errors.is_empty(), "clients saw errors: {:?}", w.errors);
    assert!(
        w.acked.len() > 50,
        "the writer barely wrote: {}",
        w.acked.len()
    );
    let unique: std::collections::BTreeSet<i64> = w.acked.iter().copied().collect();
    assert_eq!(
        unique.len(),
        w.acked.len(),
        "an id was handed out twice (sequence collision)"
    );
    rt.block_on(async {
        assert_eq!(
            acked_on(t, &w.acked).await,
            w.acked.len(),
            "acknowledged rows are missing on the target"
        );
        // The pooler now reaches the target; reverse replication carries new writes to the source.
        let port = port_via(b).await;
        assert_eq!(port, Some(t.to_string()));
        let last = *w.acked.iter().max().unwrap();
        let src = target(s, "app").connect().await.unwrap();
        let mut back = false;
        for _ in 0..100 {
            let n: i64 = src
                .query_one("SELECT count(*) FROM events WHERE id = $1", &[&last])
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                back = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            back,
            "reverse replication did not bring the last write back to the source"
        );
    });
    assert!(
        w.max_gap < std::time::Duration::from_secs(2),
        "writes stopped for {:?}",
        w.max_gap
    );
}

#[test]
fn a_failed_guard_aborts_before_the_fence_and_the_source_keeps_taking_writes() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, _t, b) = local_stack_with(&p, "max_xact_seconds = 1.0\n");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    let (code, out) = rt.block_on(async {
        // A transaction held open on the source, directly.
        let holder = target(s, "app").connect().await.unwrap();
        holder
            .batch_execute("BEGIN; SELECT txid_current();")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
        holder.batch_execute("COMMIT").await.unwrap();
        (code, out)
    });
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "cutover stopped in phase `guard`: a transaction on the source has been open for"
        ),
        "{out}"
    );
    assert!(
        out.contains("Nothing was changed; the source takes writes as before."),
        "{out}"
    );
    rt.block_on(async {
        let via = target(b, "app").connect().await.unwrap();
        let r = via.simple_query("INSERT INTO accounts (name) VALUES ('still here') RETURNING inet_server_port()::text").await.unwrap();
        let port = r.iter().find_map(|m| match m { tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from), _ => None });
        assert_eq!(port, Some(s.to_string()), "writes still go to the source");
        let state = cutover::pg::pooler::pool_state(&cutover::pg::pooler::LocalBouncer::new(p.root().join("pgdata/pgbouncer"), b).admin(), "app").await.unwrap().unwrap();
        assert!(!state.paused);
    });
    // With the transaction gone, the same apply goes through.
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn killed_after_the_fence_the_next_apply_unfences_and_finishes() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (_s, t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    let console =
        cutover::pg::pooler::LocalBouncer::new(p.root().join("pgdata/pgbouncer"), b).admin();
    rt.block_on(async {
        // A transaction in flight through the pooler: PAUSE waits for it.
        let app = target(b, "app").connect().await.unwrap();
        app.simple_query("BEGIN; INSERT INTO accounts (name) VALUES ('in flight')")
            .await
            .unwrap();
        let mut child = spawn_cutover(&p);
        // Wait until the fence is up (the pooler reports the database paused), then kill.
        let mut fenced = false;
        for _ in 0..200 {
            if let Ok(Some(st)) = cutover::pg::pooler::pool_state(&console, "app").await {
                if st.paused {
                    fenced = true;
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(fenced, "the fence never went up");
        app.simple_query("COMMIT").await.unwrap();
    });
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reconciled switch:"), "{out}");
    rt.block_on(async {
        let st = cutover::pg::pooler::pool_state(&console, "app")
            .await
            .unwrap()
            .unwrap();
        assert!(!st.paused, "the pooler was left paused");
        assert_eq!(st.port, t, "the pooler points at the target");
        let dst = target(t, "app").connect().await.unwrap();
        let n: i64 = dst
            .query_one(
                "SELECT count(*) FROM accounts WHERE name = 'in flight'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "the in-flight transaction reached the target");
    });
}

#[test]
fn rollback_after_the_flip_brings_the_targets_writes_back_to_the_source() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, _t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    // A writer through the pooler across the rollback: writes land on the target, then the source.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = rt.spawn(write_until(target(b, "app"), stop.clone()));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, out, err) = p.run(&["rollback", "local", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("switch: rolled back") && out.contains("cutover: gate closed again"),
        "{out}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = rt.block_on(writer).unwrap();
    assert!(w.errors.is_empty(), "clients saw errors: {:?}", w.errors);
    let unique: std::collections::BTreeSet<i64> = w.acked.iter().copied().collect();
    assert_eq!(unique.len(), w.acked.len(), "an id was handed out twice");
    rt.block_on(async {
        assert_eq!(
            acked_on(s, &w.acked).await,
            w.acked.len(),
            "writes made on the target are missing on the source"
        );
        assert_eq!(
            port_via(b).await,
            Some(s.to_string()),
            "the pooler points at the source again"
        );
    });
    // The gate holds the cutover again.
    let (_, out, _) = p.run(&["preview", "local"]);
    assert!(
        out.contains("| cutover (gate): held: needs `--approve cutover`"),
        "{out}"
    );
}

/// Behind the gate `finish`, replication ends both ways: the target's forward subscriptions, the
/// source's slots and publications (the old source keeps no WAL for them) and the reverse
/// replication. A rollback afterwards refuses and changes nothing; a second apply does nothing.
#[test]
fn finishing_replication_drops_it_both_ways_and_rollback_then_refuses() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    let counts = || {
        rt().block_on(async {
            let src = target(s, "app").connect().await.unwrap();
            let dst = target(t, "app").connect().await.unwrap();
            async fn n(c: &tokio_postgres::Client, q: &str) -> i64 {
                c.query_one(q, &[]).await.unwrap().get(0)
            }
            (
                n(&src, "SELECT count(*) FROM pg_replication_slots").await,
                n(&dst, "SELECT count(*) FROM pg_subscription").await,
                n(&src, "SELECT count(*) FROM pg_subscription").await,
                n(&dst, "SELECT count(*) FROM pg_replication_slots").await,
                n(&src, "SELECT count(*) FROM pg_publication").await,
            )
        })
    };
    // Two forward groups (slots on the source, disabled subscriptions on the target), and the
    // reverse replication (a subscription on the source, its slot on the target).
    assert_eq!(counts(), (2, 2, 1, 1, 2));
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "finish"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("finish-replication: dropped slot"), "{out}");
    assert!(
        out.contains("dropped the reverse replication: rollback is no longer possible"),
        "{out}"
    );
    assert_eq!(counts(), (0, 0, 0, 0, 0));
    let (code, out, err) = p.run(&["rollback", "local", "--yes"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("the reverse subscription on the source is gone"),
        "{out}{err}"
    );
    rt().block_on(async {
        assert_eq!(
            port_via(b).await,
            Some(t.to_string()),
            "the pooler still points at the target"
        );
    });
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "finish"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("finish-replication: running"), "{out}");
    // With replication gone, the step that takes new tables in has nothing to do.
    assert!(
        out.contains("= extend-replication (pg.extend_replication): done at"),
        "{out}"
    );
}

#[test]
fn rollback_without_reverse_replication_refuses_and_changes_nothing() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (_s, t, b) = local_stack_with(&p, "reverse_replication = false\n");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    assert_eq!(
        p.run(&["apply", "local", "--yes", "--approve", "cutover"])
            .0,
        0
    );
    let (code, _, err) = p.run(&["rollback", "local", "--yes"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "`switch` cannot be rolled back: the cutover runs without reverse replication"
        ),
        "{err}"
    );
    assert!(
        err.contains("would lose them") && err.contains("Nothing was rolled back."),
        "{err}"
    );
    rt().block_on(async {
        let st = cutover::pg::pooler::pool_state(
            &cutover::pg::pooler::LocalBouncer::new(p.root().join("pgdata/pgbouncer"), b).admin(),
            "app",
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(st.port, t, "still on the target");
        assert!(!st.paused);
    });
    let (_, list, _) = p.run(&["state", "local", "list"]);
    assert!(list.contains("switch step pg.cutover"), "{list}");
    assert!(
        !list.contains("interrupted"),
        "a refused rollback left an intent: {list}"
    );
    let (code, out, _) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "apply still works after a refused rollback: {out}");
}

/// A bound on the lag in time: an apply that falls seconds behind (each row takes 0.5 s on the
/// target) stops the cutover at its guard, saying how far behind it is.
#[test]
fn a_lag_in_seconds_above_its_bound_stops_the_cutover_at_its_guard() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, b) = local_stack_with(&p, "max_lag_seconds = 1.0\n");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    rt.block_on(async {
        slow_apply_of_events(t, 0.5).await;
        let src = target(s, "app").connect().await.unwrap();
        // Twelve transactions at once: the last is applied about 6 s after it was written.
        for i in 0..12 {
            src.batch_execute(&format!(
                "INSERT INTO events (account_id, kind) VALUES (1, 'late-{i}')"
            ))
            .await
            .unwrap();
        }
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cutover stopped in phase `guard`: replication is more than 1.0 s behind: a probe written to every stream had not reached the target after 1.0 s"),
        "{out}"
    );
    rt.block_on(async {
        assert_eq!(
            port_via(b).await,
            Some(s.to_string()),
            "still on the source"
        );
        target(t, "app")
            .connect()
            .await
            .unwrap()
            .batch_execute("DROP TRIGGER slow ON events")
            .await
            .unwrap();
    });
    // Caught up, the probe arrives within the bound and the cutover goes through.
    let mut last = String::new();
    for _ in 0..20 {
        let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
        last = out;
        if code == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(last.contains("Apply complete"), "{last}");
}

#[test]
fn a_lag_above_the_bound_stops_the_cutover_at_its_guard() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, b) = local_stack_with(&p, "max_lag_bytes = 65536\n");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    rt.block_on(async {
        // The target stops applying; the source writes a few megabytes.
        let dst = target(t, "app").connect().await.unwrap();
        dst.batch_execute("ALTER SUBSCRIPTION cutover_events DISABLE").await.unwrap();
        let src = target(s, "app").connect().await.unwrap();
        src.batch_execute("INSERT INTO events (account_id, kind, payload) SELECT 1, 'bulk', jsonb_build_object('pad', repeat('x', 500)) FROM generate_series(1, 20000)")
            .await
            .unwrap();
    });
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cutover stopped in phase `guard`: replication lag on `cutover_events` is"),
        "{out}"
    );
    assert!(
        out.contains("above the bound of 65536; wait until it is lower"),
        "{out}"
    );
    rt.block_on(async {
        let st = cutover::pg::pooler::pool_state(
            &cutover::pg::pooler::LocalBouncer::new(p.root().join("pgdata/pgbouncer"), b).admin(),
            "app",
        )
        .await
        .unwrap_or_else(|e| panic!("reading the pooler's state failed: {e}"))
        .expect("the pooler lists the database");
        assert!(!st.paused);
        assert_eq!(st.port, s, "still on the source");
        target(t, "app")
            .connect()
            .await
            .unwrap()
            .batch_execute("ALTER SUBSCRIPTION cutover_events ENABLE")
            .await
            .unwrap();
    });
    // Caught up again, the cutover goes through (it waits for the lag step's bound first).
    let mut ok = false;
    for _ in 0..20 {
        let (code, _, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
        if code == 0 {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(
        ok,
        "the cutover did not go through once replication caught up"
    );
}

#[test]
fn preview_with_refresh_shows_the_preflight_of_reachable_databases() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, _t, _b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    // Before anything exists the databases are unknown: no checks, and no error either.
    let (code, out, _) = p.run(&["preview", "local", "--refresh"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Checks"), "{out}");
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    rt().block_on(async {
        target(s, "app")
            .connect()
            .await
            .unwrap()
            .batch_execute("CREATE TABLE bare (x int)")
            .await
            .unwrap();
    });
    let (_, out, _) = p.run(&["preview", "local"]);
    assert!(
        !out.contains("Checks"),
        "a plain preview reads no database:\n{out}"
    );
    let (code, out, _) = p.run(&["preview", "local", "--refresh"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Checks (read with --refresh):"), "{out}");
    assert!(out.contains("! preflight error: [replica_identity] 1 table(s) have no primary key or replica identity"), "{out}");
    assert!(out.contains("public.bare"), "{out}");
    assert!(out.contains("REPLICA IDENTITY FULL"), "{out}");
    let (_, json, _) = p.run(&["preview", "local", "--refresh", "--format", "json"]);
    assert!(json.contains("\"checks\": ["), "{json}");
}

#[test]
fn tls_connections_verify_the_server_or_fail_clearly() {
    require_pg();
    let dir = cluster_dir();
    let port = free_port();
    let c = LocalCluster::new(dir.path().join("d"), port);
    let _stop = Stopper(vec![c.data_dir.clone()]);
    c.init(&[
        ("ssl".into(), "on".into()),
        ("ssl_cert_file".into(), "'server.crt'".into()),
        ("ssl_key_file".into(), "'server.key'".into()),
    ])
    .unwrap();
    // A CA of the test's own, and a server certificate for 127.0.0.1 signed by it.
    let ca = dir.path().join("ca.crt");
    let crt = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    let ext = dir.path().join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:db.tunnelled.example\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let p = |x: &std::path::Path| x.display().to_string();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=cutover test CA",
            "-keyout",
            &p(&dir.path().join("ca.key")),
            "-out",
            &p(&ca),
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p(&key),
            "-out",
            &p(&dir.path().join("server.csr")),
        ],
        vec![
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &p(&dir.path().join("server.csr")),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&dir.path().join("ca.key")),
            "-CAcreateserial",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&crt),
        ],
    ] {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl is needed for this test (scripts/prereqs installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (f, mode) in [(&crt, 0o644), (&key, 0o600)] {
        let dest = c.data_dir.join(f.file_name().unwrap());
        std::fs::copy(f, &dest).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some((uid, gid)) = cutover::pg::cluster::run_as().unwrap() {
            std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).unwrap();
        }
    }
    c.start().unwrap();
    let with = |mode: &str, root: Option<&std::path::Path>, host: &str| Target {
        host: host.into(),
        port,
        user: "postgres".into(),
        dbname: "postgres".into(),
        password: None,
        sslmode: Some(mode.into()),
        sslrootcert: root.map(|r| r.display().to_string()),
        ..Default::default()
    };
    rt().block_on(async {
        let ssl = |t: Target| async move {
            let client = t.connect().await.map_err(|e| e.to_string())?;
            let on: bool = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            Ok::<bool, String>(on)
        };
        assert_eq!(
            ssl(with("verify-full", Some(&ca), "127.0.0.1")).await,
            Ok(true)
        );
        assert_eq!(ssl(with("require", None, "127.0.0.1")).await, Ok(true));
        assert_eq!(ssl(with("disable", None, "127.0.0.1")).await, Ok(false));
        // Not signed by a trusted CA: refused, and the error says so.
        let e = ssl(with("verify-full", None, "127.0.0.1"))
            .await
            .unwrap_err();
        assert!(
            e.contains("cannot connect to postgres@127.0.0.1")
                && e.to_lowercase().contains("certificate"),
            "{e}"
        );
        // The certificate names 127.0.0.1, not localhost.
        let e = ssl(with("verify-full", Some(&ca), "localhost"))
            .await
            .unwrap_err();
        assert!(e.to_lowercase().contains("certificate"), "{e}");
        let e = ssl(with("prefer", None, "127.0.0.1")).await.unwrap_err();
        assert!(e.contains("sslmode `prefer` is not supported"), "{e}");
        // `[connect]`: a name that resolves nowhere, dialled at this cluster's address (a tunnel's
        // end); verify-full checks the certificate against the database's own name.
        let connect = std::collections::BTreeMap::from([(
            "db.tunnelled.example".to_string(),
            format!("127.0.0.1:{port}"),
        )]);
        let tunnelled = with("verify-full", Some(&ca), "db.tunnelled.example")
            .dial_through(&connect, false)
            .unwrap();
        assert_eq!(ssl(tunnelled).await, Ok(true));
        let wrong = std::collections::BTreeMap::from([(
            "db.tunnelled.example".to_string(),
            format!("127.0.0.1:{port}"),
        )]);
        let e = ssl(with("verify-full", Some(&ca), "db.other.example")
            .dial_through(
                &std::collections::BTreeMap::from([(
                    "db.other.example".to_string(),
                    wrong["db.tunnelled.example"].clone(),
                )]),
                false,
            )
            .unwrap())
        .await
        .unwrap_err();
        assert!(
            e.to_lowercase().contains("certificate"),
            "a name the certificate does not hold is refused: {e}"
        );
    });
}

/// Two fresh clusters (source and target) in `dir`, started; their ports and a stopper.
fn two_clusters(dir: &std::path::Path) -> (u16, u16, Stopper) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (sp, tp) = (free_port(), free_port());
    let src = LocalCluster::new(dir.join("s"), sp);
    let dst = LocalCluster::new(dir.join("t"), tp);
    let stop = Stopper(vec![src.data_dir.clone(), dst.data_dir.clone()]);
    for c in [&src, &dst] {
        c.init(&[]).unwrap();
        c.start().unwrap();
    }
    (sp, tp, stop)
}

/// Waits until every slot has confirmed the source's current WAL position.
async fn caught_up(s: &Target, slots: &[String]) {
    let t0 = std::time::Instant::now();
    for slot in slots {
        loop {
            let lag = cutover::pg::replication::lag(s, slot).await.unwrap();
            if lag.bytes == 0 {
                break;
            }
            assert!(
                t0.elapsed().as_secs() < 60,
                "slot {slot} never caught up: {lag:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The copy counts what passes through its own pipe, as it passes: bytes and rows rise while a
/// table streams (what the load's progress line reads each second, also on servers without
/// `pg_stat_progress_copy`), and the rows counted in the stream are the rows copied.
#[test]
fn the_copy_counts_bytes_and_rows_in_its_own_pipe_while_a_table_streams() {
    require_pg();
    use cutover::pg::load;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (sp, tp, _stop) = two_clusters(dir.path());
    let (s, t) = (target(sp, "postgres"), target(tp, "postgres"));
    rt().block_on(async {
        let a = s.connect().await.unwrap();
        a.batch_execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 400000) g;
             ANALYZE big;",
        )
        .await
        .unwrap();
        let b = t.connect().await.unwrap();
        b.batch_execute("CREATE TABLE big (id bigint, pad text)")
            .await
            .unwrap();
        let chunks = load::chunks(&s, &a, &["public.big".into()], "", 1 << 30)
            .await
            .unwrap();
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        assert!(
            chunks[0].est_rows > 300_000,
            "the statistics expect the rows: {chunks:?}"
        );
        let streamed = Arc::new(load::Streamed::default());
        let stop = Arc::new(AtomicBool::new(false));
        let watch = {
            let (streamed, stop) = (streamed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = vec![];
                while !stop.load(Ordering::Relaxed) {
                    seen.push(streamed.bytes.load(Ordering::Relaxed));
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                seen
            })
        };
        let rows = load::copy_chunk(&s, &t, &chunks[0], std::slice::from_ref(&streamed))
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        let seen = watch.await.unwrap();
        let bytes = streamed.bytes.load(Ordering::Relaxed);
        assert_eq!(rows, 400_000);
        assert_eq!(
            streamed.rows.load(Ordering::Relaxed),
            400_000,
            "rows counted in the stream"
        );
        assert!(bytes > 400_000 * 200, "{bytes} bytes streamed");
        let midway: Vec<&u64> = seen.iter().filter(|b| **b > 0 && **b < bytes).collect();
        assert!(
            !midway.is_empty(),
            "the counter rose while the copy ran ({} samples, none between 0 and {bytes})",
            seen.len()
        );
        let n: i64 = b
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 400_000);
    });
}

#[test]
fn the_parallel_load_splits_big_tables_and_misses_no_write_made_during_it() {
    require_pg();
    use cutover::pg::{load, replication, validate};
    let dir = tempfile::tempdir().unwrap();
    let (sp, tp, _stop) = two_clusters(dir.path());
    let (s, t) = (target(sp, "postgres"), target(tp, "postgres"));
    rt().block_on(async {
        let a = s.connect().await.unwrap();
        // About 9 MB of items (split into 1 MB block ranges), a generated column (not copied,
        // computed on the target), a secondary index and a foreign key (built after the data).
        a.batch_execute(
            "CREATE TABLE kinds (id int PRIMARY KEY, name text);
             INSERT INTO kinds SELECT g, 'kind ' || g FROM generate_series(1, 10) g;
             CREATE TABLE items (id bigserial PRIMARY KEY, kind int REFERENCES kinds, price numeric(10,2),
                                 pad text, doubled numeric GENERATED ALWAYS AS (price * 2) STORED);
             INSERT INTO items (kind, price, pad) SELECT 1 + g % 10, g * 0.25, repeat('x', 100) FROM generate_series(1, 60000) g;
             CREATE INDEX items_kind ON items (kind);",
        )
        .await
        .unwrap();
        let post = replication::copy_schema_pre(&s, &t, false).await.unwrap();
        assert!(post.iter().any(|p| p.contains("PRIMARY KEY")), "{post:?}");
        let groups = vec![replication::Group { name: "items".into(), tables: vec!["public.items".into()] }];
        let setup = replication::publish(&s, "t", &groups).await.unwrap();
        // A writer inserts, updates and deletes on the source for the whole load.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let c = s.connect().await.unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    c.batch_execute(&format!(
                        "INSERT INTO items (kind, price, pad) VALUES ({}, {n}, 'new');
                         UPDATE items SET price = price + 1 WHERE id = {};
                         DELETE FROM items WHERE id = {};",
                        1 + n % 10,
                        (n * 7919) % 60000 + 1,
                        (n * 104729) % 60000 + 1,
                    ))
                    .await
                    .unwrap();
                }
                n
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let opts = load::Options { workers: 3, chunk_pages: 128 };
        let messages = std::sync::Mutex::new(Vec::new());
        let report = load::load(&s, &t, &setup, opts, &|m| messages.lock().unwrap().push(m)).await.unwrap();
        assert!(report.chunks >= 8, "the items table was split into ranges: {report:?}");
        load::build_post(&t, &post, 3).await.unwrap();
        replication::subscribe(&s, &t, &setup, false).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.await.unwrap();
        assert!(writes > 10, "the writer ran during the load ({writes} rounds)");
        let slots: Vec<String> = setup.groups.iter().map(|g| g.slot.clone()).collect();
        caught_up(&s, &slots).await;
        let r = validate::validate(&s, &t, &[], &validate::Options::default(), &|_| {}).await.unwrap();
        assert!(r.passed, "{}", r.summary());
        let b = t.connect().await.unwrap();
        let (idx, fk, doubled): (i64, i64, bool) = {
            let r = b
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_indexes WHERE tablename = 'items'),
                            (SELECT count(*) FROM pg_constraint WHERE contype = 'f'),
                            (SELECT bool_and(doubled = price * 2) FROM items)",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        assert_eq!((idx, fk, doubled), (2, 1, true));

        // A load interrupted after its slot was made starts over: the target's rows of that
        // group are emptied, the dead slot replaced, and the data ends up identical.
        a.batch_execute("CREATE TABLE later (id int PRIMARY KEY, v text); INSERT INTO later SELECT g, 'v' FROM generate_series(1, 500) g;").await.unwrap();
        b.batch_execute("CREATE TABLE later (id int PRIMARY KEY, v text); INSERT INTO later VALUES (1, 'half-loaded');").await.unwrap();
        let groups2 = vec![replication::Group { name: "later".into(), tables: vec!["public.later".into()] }];
        let setup2 = replication::publish(&s, "u", &groups2).await.unwrap();
        let setup2 = replication::Setup { groups: setup2.groups.into_iter().filter(|g| g.name == "later").collect(), ..setup2 };
        let dead = load::Exported::create(&s, &setup2.groups[0].slot).await.unwrap();
        drop(dead); // the session ends; the slot stays, its snapshot is gone
        let messages = std::sync::Mutex::new(Vec::new());
        let r2 = load::load(&s, &t, &setup2, load::Options::default(), &|m| messages.lock().unwrap().push(m)).await.unwrap();
        assert_eq!(r2.rows, 500);
        assert!(messages.lock().unwrap().iter().any(|m| m.contains("interrupted")), "{:?}", messages.lock().unwrap());
        let n: i64 = b.query_one("SELECT count(*) FROM later WHERE v = 'v'", &[]).await.unwrap().get(0);
        assert_eq!(n, 500);

        // A target table that has rows of its own (no slot of ours behind them) is refused.
        a.batch_execute("CREATE TABLE theirs (id int PRIMARY KEY); INSERT INTO theirs VALUES (1);").await.unwrap();
        b.batch_execute("CREATE TABLE theirs (id int PRIMARY KEY); INSERT INTO theirs VALUES (42);").await.unwrap();
        let groups3 = vec![replication::Group { name: "theirs".into(), tables: vec!["public.theirs".into()] }];
        let setup3 = replication::publish(&s, "v", &groups3).await.unwrap();
        let setup3 = replication::Setup { groups: setup3.groups.into_iter().filter(|g| g.name == "theirs").collect(), ..setup3 };
        let err = load::load(&s, &t, &setup3, load::Options::default(), &|_| {}).await.unwrap_err().to_string();
        assert!(err.contains("table public.theirs already has rows"), "{err}");
        let kept: i64 = b.query_one("SELECT id FROM theirs", &[]).await.unwrap().get::<_, i32>(0) as i64;
        assert_eq!(kept, 42, "nothing on the target was touched");
        let slot: i64 = a.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'v_theirs'", &[]).await.unwrap().get(0);
        assert_eq!(slot, 0, "no slot was made for a refused load");
    });
}

/// A writer without a pooler, as an application would be: it connects where the flip file says
/// (the source until the file exists), reconnects on any error, and records each acknowledged id,
/// the port it went to, and every error.
async fn write_direct_until(
    flip_file: PathBuf,
    source_port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Writer, Vec<(i64, u16)>) {
    let mut w = Writer {
        acked: vec![],
        errors: vec![],
        max_gap: std::time::Duration::ZERO,
    };
    let mut placed = vec![];
    let port_now = || -> u16 {
        std::fs::read_to_string(&flip_file)
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .find_map(|kv| kv.strip_prefix("port=").and_then(|p| p.parse().ok()))
            })
            .unwrap_or(source_port)
    };
    let mut port = port_now();
    let mut client = target(port, "app").connect().await.ok();
    let mut last = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let r = match &client {
            Some(c) => c
                .simple_query(
                    "INSERT INTO events (account_id, kind) VALUES (1, 'direct') RETURNING id",
                )
                .await
                .map_err(|e| cutover::pg::describe(&e)),
            None => Err("not connected".to_string()),
        };
        match r {
            Ok(msgs) => {
                for m in msgs {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        let id: i64 = r.get(0).unwrap().parse().unwrap();
                        w.acked.push(id);
                        placed.push((id, port));
                    }
                }
                w.max_gap = w.max_gap.max(last.elapsed());
                last = std::time::Instant::now();
            }
            Err(e) => {
                w.errors.push(e);
                port = port_now();
                client = target(port, "app").connect().await.ok();
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (w, placed)
}

#[test]
fn the_read_only_fence_moves_a_direct_writer_and_rollback_brings_its_writes_back() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, _b) = local_stack_with(&p, "fence = \"read_only\"\n");
    let _stop = stopper(&p);
    let flip_file = p.root().join("pgdata/app.conn");
    let (code, out, _) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(!flip_file.exists(), "nothing flipped before the gate");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = rt.spawn(write_direct_until(flip_file.clone(), s, stop.clone()));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("names the target; the source refuses writes"),
        "{out}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (w, placed) = rt.block_on(writer).unwrap();
    eprintln!(
        "read-only fence: {} writes acknowledged, {} errors while fenced, longest gap {:?}",
        w.acked.len(),
        w.errors.len(),
        w.max_gap
    );
    // Without a pooler clients see the fence: their sessions end and the source refuses writes.
    // Nothing else may go wrong.
    for e in &w.errors {
        assert!(
            e.contains("read-only transaction")
                || e.contains("terminating connection due to administrator command")
                || e.contains("connection closed")
                || e.contains("not connected"),
            "an unexpected error: {e}"
        );
    }
    assert!(
        placed.iter().any(|(_, p)| *p == s) && placed.iter().any(|(_, p)| *p == t),
        "the writer wrote to both sides: {placed:?}"
    );
    let unique: std::collections::BTreeSet<i64> = w.acked.iter().copied().collect();
    assert_eq!(
        unique.len(),
        w.acked.len(),
        "an id was handed out twice (sequence collision)"
    );
    let on_target: Vec<i64> = placed
        .iter()
        .filter(|(_, p)| *p == t)
        .map(|(id, _)| *id)
        .collect();
    rt.block_on(async {
        assert_eq!(
            acked_on(t, &w.acked).await,
            w.acked.len(),
            "acknowledged rows are missing on the target"
        );
        // The source stays fenced: a new session cannot write.
        let src = target(s, "app").connect().await.unwrap();
        let e = src
            .batch_execute("INSERT INTO settings VALUES ('late', 'write')")
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e}");
        // Reverse replication carries the target's writes back.
        for _ in 0..100 {
            if acked_on(s, &on_target).await == on_target.len() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(acked_on(s, &on_target).await, on_target.len());
    });
    assert!(std::fs::read_to_string(&flip_file)
        .unwrap()
        .contains(&format!("port={t}")));

    // Roll back: the target is fenced, its writes reach the source, the file names the source.
    let dst = rt.block_on(target(t, "app").connect()).unwrap();
    rt.block_on(dst.batch_execute("INSERT INTO settings VALUES ('after', 'flip')"))
        .unwrap();
    let (code, out, err) = p.run(&["rollback", "local", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("names the source, which takes writes again"),
        "{out}{err}"
    );
    assert!(std::fs::read_to_string(&flip_file)
        .unwrap()
        .contains(&format!("port={s}")));
    rt.block_on(async {
        let src = target(s, "app").connect().await.unwrap();
        let v: String = src
            .query_one("SELECT value FROM settings WHERE key = 'after'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, "flip");
        src.batch_execute("INSERT INTO settings VALUES ('source', 'writable again')")
            .await
            .unwrap();
        let dst = target(t, "app").connect().await.unwrap();
        let e = dst
            .batch_execute("INSERT INTO settings VALUES ('x', 'y')")
            .await
            .unwrap_err();
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("25006"),
            "the target is fenced after the rollback: {e}"
        );
    });
}

#[test]
fn killed_inside_the_read_only_fence_the_next_apply_lifts_it_and_finishes() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, _b) = local_stack_with(&p, "fence = \"read_only\"\n");
    let _stop = stopper(&p);
    let flip_file = p.root().join("pgdata/app.conn");
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    let src = target(s, "app");
    rt.block_on(async {
        // A transaction in flight on the source: the fence gives it a grace period.
        let app = src.connect().await.unwrap();
        app.batch_execute("BEGIN; INSERT INTO accounts (name) VALUES ('in flight')")
            .await
            .unwrap();
        let mut child = spawn_cutover(&p);
        let mut fenced = false;
        for _ in 0..200 {
            if cutover::pg::cutover::is_read_only(&src).await.unwrap() {
                fenced = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(fenced, "the fence never went up");
        app.batch_execute("COMMIT").await.unwrap();
    });
    assert!(!flip_file.exists(), "killed before the flip");
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reconciled switch:"), "{out}");
    assert!(std::fs::read_to_string(&flip_file)
        .unwrap()
        .contains(&format!("port={t}")));
    rt.block_on(async {
        let dst = target(t, "app").connect().await.unwrap();
        let n: i64 = dst
            .query_one(
                "SELECT count(*) FROM accounts WHERE name = 'in flight'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "the in-flight transaction reached the target");
        assert!(
            cutover::pg::cutover::is_read_only(&src).await.unwrap(),
            "the source stays fenced after the flip"
        );
    });
}

/// A flip that is a step of its own (the shape of a DNS flip) fails after the read-only fence:
/// its compensation puts the source back (writable, forward replication running, no reverse
/// replication) and reopens the cutover, which the next apply runs again before flipping.
#[test]
fn a_flip_that_fails_after_the_read_only_fence_unfences_and_the_next_apply_cuts_over_again() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let extra = "fence = \"read_only\"\nflip = \"step\"\n";
    // The flip writes into a folder that does not exist: it fails.
    let (s, t, _b) = local_stack_with(
        &p,
        &format!("{extra}flip_file = \"pgdata/missing/app.conn\"\n"),
    );
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("app.conn"),
        "the flip's failure is named: {out}{err}"
    );
    let rt = rt();
    let src = target(s, "app");
    let dst = target(t, "app");
    rt.block_on(async {
        assert!(
            !cutover::pg::cutover::is_read_only(&src).await.unwrap(),
            "the compensation lifted the fence"
        );
        let d = dst.connect().await.unwrap();
        let enabled: bool = d
            .query_one(
                "SELECT coalesce(bool_and(subenabled), false) FROM pg_subscription",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(enabled, "forward replication runs again");
        let c = src.connect().await.unwrap();
        let reverse: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_subscription WHERE subname = 'cutover_reverse'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(reverse, 0, "no reverse replication is left");
        // The source takes writes, and they replicate.
        c.batch_execute("INSERT INTO settings VALUES ('after-unfence', 'yes')")
            .await
            .unwrap();
        let mut seen = false;
        for _ in 0..200 {
            let n: i64 = d
                .query_one(
                    "SELECT count(*) FROM settings WHERE key = 'after-unfence'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                seen = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !seen {
            let subs = d
                .simple_query("SELECT subname, subenabled::text, coalesce(pid::text, '-'), coalesce(received_lsn::text, '-') FROM pg_subscription LEFT JOIN pg_stat_subscription USING (subname)")
                .await
                .unwrap();
            let slots = c
                .simple_query("SELECT slot_name, active::text, confirmed_flush_lsn::text, pg_current_wal_lsn()::text FROM pg_replication_slots")
                .await
                .unwrap();
            let rows = |m: &[tokio_postgres::SimpleQueryMessage]| -> Vec<String> {
                m.iter()
                    .filter_map(|x| match x {
                        tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                            (0..r.len()).map(|i| r.get(i).unwrap_or("").to_string()).collect::<Vec<_>>().join(" "),
                        ),
                        _ => None,
                    })
                    .collect()
            };
            panic!(
                "a write made after the compensation did not reach the target; subscriptions {:?}; slots {:?}",
                rows(&subs),
                rows(&slots)
            );
        }
    });
    let (_, state, _) = p.run(&["state", "local", "list"]);
    assert!(
        !state
            .lines()
            .any(|l| l.contains("switch") && l.contains("done")),
        "the cutover is reopened: {state}"
    );
    // With a flip that can succeed, the next apply cuts over again and flips.
    let text = p.read("stacks/local.toml").replace(
        "flip_file = \"pgdata/missing/app.conn\"",
        "flip_file = \"pgdata/app.conn\"",
    );
    p.stack("local", &text);
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(p
        .read("pgdata/app.conn")
        .contains(&format!("host=127.0.0.1 port={t} dbname=app")));
    rt.block_on(async {
        assert!(
            cutover::pg::cutover::is_read_only(&src).await.unwrap(),
            "the source is fenced after the flip"
        );
        let d = dst.connect().await.unwrap();
        let n: i64 = d
            .query_one(
                "SELECT count(*) FROM settings WHERE key = 'after-unfence'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    });
}

/// A forward replication another tool runs (DMS) needs the reverse replication created disabled
/// and enabled by a step of its own: writes the target takes before that step are kept by its
/// slot and come back on rollback, which enables the reverse replication itself when needed.
#[test]
fn reverse_replication_enabled_later_loses_no_write_made_before_it_is_enabled() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, _t, b) = local_stack_with(&p, "reverse_later = true\n");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let (code, out, err) = p.run(&[
        "apply",
        "local",
        "--yes",
        "--approve",
        "cutover",
        "--until",
        "enable-reverse",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let src = target(s, "app");
    assert!(
        !rt.block_on(cutover::pg::cutover::reverse_enabled(&src))
            .unwrap(),
        "the reverse subscription waits for its step"
    );
    // Writes on the new database (through the flipped pooler) while it is disabled.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = rt.spawn(write_until(target(b, "app"), stop.clone()));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (code, out, err) = p.run(&["rollback", "local", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = rt.block_on(writer).unwrap();
    assert!(w.acked.len() > 5, "{}", w.acked.len());
    rt.block_on(async {
        assert_eq!(
            acked_on(s, &w.acked).await,
            w.acked.len(),
            "writes made on the target while the reverse replication was disabled are on the source"
        );
    });
    // The whole way, on a fresh rehearsal: the step enables it, and the next apply does nothing.
    let p = Project::new();
    let (s, _t, _b) = local_stack_with(&p, "reverse_later = true\n");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("enable-reverse"), "{out}");
    assert!(rt
        .block_on(cutover::pg::cutover::reverse_enabled(&target(s, "app")))
        .unwrap());
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("enable-reverse: running"), "{out}");
}

/// The schema copy of a data path that moves rows only (DMS): tables, keys, identity and the
/// marker table first, then the index and the foreign key; no row is copied; again changes nothing.
#[test]
fn the_schema_copy_for_dms_creates_tables_then_indexes_and_keys_and_no_rows() {
    require_pg();
    let p = Project::new();
    let (s, t) = (free_port(), free_port());
    p.stack(
        "schema",
        &format!("plan = \"copy-schema\"\nprovider = \"local\"\n[values]\ndata_root = \"pgdata\"\nsource_port = {s}\ntarget_port = {t}\n"),
    );
    let _stop = Stopper(vec![
        p.root().join("pgdata/source"),
        p.root().join("pgdata/target"),
    ]);
    let (code, out, err) = p.run(&["apply", "schema", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    rt().block_on(async {
        let d = target(t, "postgres").connect().await.unwrap();
        let q = |sql: &'static str| {
            let d = &d;
            async move { d.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        assert_eq!(q("SELECT count(*) FROM accounts").await, 0, "no rows are copied");
        assert_eq!(
            q("SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_account'").await,
            1
        );
        assert_eq!(
            q("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'orders'::regclass").await,
            1
        );
        assert_eq!(
            q("SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid = 'accounts'::regclass").await,
            1
        );
        assert_eq!(
            q("SELECT count(*) FROM pg_class WHERE relname = 'cutover_marker'").await,
            1,
            "the marker table travels with the schema"
        );
    });
    let (code, out, err) = p.run(&[
        "apply",
        "schema",
        "--yes",
        "--replace",
        "schema",
        "--replace",
        "schema-post",
    ]);
    assert_eq!(
        code, 0,
        "running the copy again changes nothing: {out}{err}"
    );
}

#[test]
fn the_catch_up_waits_for_every_group_not_only_the_one_with_the_marker_table() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (_s, t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    let ids: Vec<i64> = rt.block_on(async {
        // The `events` group applies slowly on the target (a trigger replication fires), so its
        // writes trail the other group's by seconds.
        slow_apply_of_events(t, 0.4).await;
        let app = target(b, "app").connect().await.unwrap();
        let mut ids = vec![];
        for i in 0..5 {
            let r = app
                .query_one(
                    "INSERT INTO events (account_id, kind) VALUES (1, $1) RETURNING id",
                    &[&format!("late {i}")],
                )
                .await
                .unwrap();
            ids.push(r.get(0));
        }
        ids
    });
    // At once: the rows are acknowledged on the source and still on their way to the target.
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 catch-up table(s)"), "{out}");
    rt.block_on(async {
        // The forward subscriptions are disabled by now (reverse replication): what the target
        // has is all it will ever get from the source.
        assert_eq!(
            acked_on(t, &ids).await,
            ids.len(),
            "writes of the slow group were acknowledged before the fence and are missing on the target"
        );
    });
}

#[test]
fn schema_drift_and_unreplicated_tables_stop_the_cutover_before_the_fence() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    // Without the step that takes new tables in, the guard is what stands in the way.
    let (s, t, b) = local_stack_with(&p, "extend_replication = false\n");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    let src = rt.block_on(async { target(s, "app").connect().await.unwrap() });
    let dst = rt.block_on(async { target(t, "app").connect().await.unwrap() });
    let refused = |expect: &[&str]| {
        let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("cutover stopped in phase `guard`"), "{out}");
        for e in expect {
            assert!(out.contains(e), "missing {e:?} in:\n{out}");
        }
        assert!(
            out.contains("Nothing was changed; the source takes writes as before."),
            "{out}"
        );
        rt.block_on(async {
            assert_eq!(
                port_via(b).await,
                Some(s.to_string()),
                "still on the source"
            );
        });
    };
    let sql = |c: &tokio_postgres::Client, q: &str| {
        rt.block_on(c.batch_execute(q))
            .unwrap_or_else(|e| panic!("{q}: {e}"))
    };
    // A table created on the source (with a sequence) after replication started.
    sql(
        &src,
        "CREATE TABLE late (id serial PRIMARY KEY, v text); INSERT INTO late (v) VALUES ('x')",
    );
    refused(&[
        "table `public.late` is on the source only",
        "sequence `public.late_id_seq` is on the source only",
    ]);
    // Created on the target too, it is still in no publication.
    sql(&dst, "CREATE TABLE late (id serial PRIMARY KEY, v text)");
    refused(&["table(s) `public.late` of the source are not replicated"]);
    sql(&src, "DROP TABLE late");
    sql(&dst, "DROP TABLE late");
    // A column added on the source only.
    sql(&src, "ALTER TABLE settings ADD COLUMN note text");
    refused(&["column `public.settings.note` is on the source only (changed on the source since replication started)"]);
    sql(&src, "ALTER TABLE settings DROP COLUMN note");
    // A unique index on the target only.
    sql(&dst, "CREATE UNIQUE INDEX accounts_name ON accounts (name)");
    refused(&[
        "unique index or constraint `public.accounts USING btree (name)` is on the target only",
    ]);
    sql(&dst, "DROP INDEX accounts_name");
    // A foreign key missing on the target: it would accept writes the source refuses.
    let fk: String = rt
        .block_on(dst.query_one(
            "SELECT conname::text FROM pg_constraint WHERE contype = 'f' AND conrelid = 'events'::regclass",
            &[],
        ))
        .unwrap()
        .get(0);
    sql(&dst, &format!("ALTER TABLE events DROP CONSTRAINT {fk}"));
    refused(&["constraint `public.events FOREIGN KEY (account_id) REFERENCES accounts(id)` is on the source only (the target would accept writes the source refuses) (changed on the target since replication started)"]);
    sql(
        &dst,
        &format!("ALTER TABLE events ADD CONSTRAINT {fk} FOREIGN KEY (account_id) REFERENCES accounts(id) NOT VALID"),
    );
    // An apply worker that keeps failing (a row the target has already).
    sql(&dst, "INSERT INTO settings VALUES ('clash', 'target')");
    sql(&src, "INSERT INTO settings VALUES ('clash', 'source')");
    // Until the worker has met the row (a loaded machine takes more than a moment).
    let t0 = std::time::Instant::now();
    while rt
        .block_on(dst.query_one(
            "SELECT coalesce(sum(apply_error_count), 0)::bigint FROM pg_stat_subscription_stats",
            &[],
        ))
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the apply worker never met the clashing row"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    refused(&[
        "forward subscription(s) `cutover_rest` (",
        "have no running apply worker",
    ]);
    sql(&dst, "DELETE FROM settings WHERE key = 'clash'");
    // A plain index on one side is a warning, and the cutover goes through.
    sql(&dst, "CREATE INDEX accounts_balance ON accounts (balance)");
    // The apply worker restarts within wal_retrieve_retry_interval (5 s) of the conflict's end.
    let mut last = String::new();
    for _ in 0..20 {
        let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
        last = out;
        if code == 0 {
            break;
        }
        assert!(last.contains("have no running apply worker"), "{last}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let out = last;
    assert!(out.contains("Apply complete"), "{out}");
    assert!(
        out.contains(
            "warning: index `public.accounts USING btree (balance)` is on the target only"
        ),
        "{out}"
    );
}

#[test]
fn a_table_created_on_the_source_during_replication_is_taken_in_by_the_next_apply() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    let (code, out, _) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("extend-replication: every source table is replicated"),
        "{out}"
    );
    let rt = rt();
    rt.block_on(async {
        // The application creates a table and writes to it, through the pooler.
        let app = target(b, "app").connect().await.unwrap();
        app.batch_execute(
            "CREATE TABLE invoices (id bigserial PRIMARY KEY, account_id bigint NOT NULL, total numeric(12,2) NOT NULL);
             CREATE INDEX invoices_account ON invoices (account_id);
             INSERT INTO invoices (account_id, total) SELECT g % 100 + 1, g * 1.5 FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    });
    let (code, out, _) = p.run(&["preview", "local", "--refresh"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("extend-replication (pg.extend_replication): will run: done at"),
        "{out}"
    );
    assert!(out.contains("its probe found work again"), "{out}");
    assert!(
        out.contains("public.invoices in no publication of group `rest`"),
        "{out}"
    );
    // Writes keep coming while it is taken in; the cutover then carries them all.
    let ids = rt.block_on(async {
        let app = target(b, "app").connect().await.unwrap();
        let mut ids = vec![];
        for i in 0..20 {
            let r = app
                .query_one(
                    "INSERT INTO invoices (account_id, total) VALUES (1, $1::text::numeric) RETURNING id",
                    &[&(i as f64).to_string()],
                )
                .await
                .unwrap();
            ids.push(r.get::<_, i64>(0));
        }
        ids
    });
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("extend-replication: took public.invoices into replication; copying"),
        "{out}"
    );
    assert!(
        out.contains("validate (pg.validate): will run: trigger `tables` changed"),
        "{out}"
    );
    assert!(out.contains("flipped: clients waited at most"), "{out}");
    rt.block_on(async {
        let q = "SELECT count(*), coalesce(sum(total), 0)::text, max(id) FROM invoices";
        let a = target(s, "app")
            .connect()
            .await
            .unwrap()
            .query_one(q, &[])
            .await
            .unwrap();
        let b2 = target(t, "app")
            .connect()
            .await
            .unwrap()
            .query_one(q, &[])
            .await
            .unwrap();
        assert_eq!(a.get::<_, i64>(0), 520);
        assert_eq!(
            (
                a.get::<_, i64>(0),
                a.get::<_, String>(1),
                a.get::<_, i64>(2)
            ),
            (
                b2.get::<_, i64>(0),
                b2.get::<_, String>(1),
                b2.get::<_, i64>(2)
            ),
            "the new table differs between source and target after the cutover"
        );
        // Its sequence came along: a new row through the flipped pooler gets a fresh id.
        let app = target(b, "app").connect().await.unwrap();
        let id: i64 = app
            .query_one(
                "INSERT INTO invoices (account_id, total) VALUES (1, 1) RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(id > *ids.iter().max().unwrap(), "id {id} reused");
    });
    // Nothing left to take in: the next apply changes nothing.
    let (code, out, _) = p.run(&["preview", "local", "--refresh"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("its probe found work again"), "{out}");
}

/// A writer straight to the source (not through the pooler), as a cron job would be: it
/// reconnects on any error; returns the acknowledged ids and the SQLSTATEs of its errors.
async fn write_around_the_pooler(
    source_port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<i64>, Vec<String>) {
    let conn = format!(
        "host=127.0.0.1 port={source_port} user=postgres dbname=app application_name=nightly-job"
    );
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        Some(c)
    };
    let (mut acked, mut errors) = (vec![], vec![]);
    let mut client = connect().await;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let r = match &client {
            Some(c) => c
                .query_one(
                    "INSERT INTO events (account_id, kind) VALUES (1, 'nightly') RETURNING id",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| {
                    e.code()
                        .map(|c| c.code().to_string())
                        .unwrap_or("closed".into())
                }),
            None => Err("no connection".to_string()),
        };
        match r {
            Ok(id) => acked.push(id),
            Err(e) => {
                errors.push(e);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                client = connect().await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    (acked, errors)
}

#[test]
fn a_direct_writer_stops_the_pooler_cutover_and_accepted_it_is_fenced_and_loses_nothing() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = rt.spawn(write_around_the_pooler(s, stop.clone()));
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The preflight's check, in a refreshed preview, names it before anyone approves.
    let (code, out, _) = p.run(&["preview", "local", "--refresh"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("wrote to the source without the pooler: the cutover's guard will refuse it"),
        "{out}"
    );
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("session(s) wrote to the source without the pooler in 1000 ms"),
        "{out}"
    );
    assert!(out.contains("application `nightly-job`"), "{out}");
    assert!(out.contains("`Cutover::end_direct_writers()`"), "{out}");
    assert!(
        out.contains("Nothing was changed; the source takes writes as before."),
        "{out}"
    );
    let src = target(s, "app");
    rt.block_on(async {
        assert!(!cutover::pg::cutover::is_read_only(&src).await.unwrap());
        assert_eq!(port_via(b).await, Some(s.to_string()));
    });
    // Accepted: the fence ends it, and its writes after the fence are refused.
    let stack = p.root().join("stacks/local.toml");
    let text = std::fs::read_to_string(&stack).unwrap();
    std::fs::write(&stack, format!("{text}direct_writers = \"end\"\n")).unwrap();
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("application `nightly-job`"), "{out}");
    assert!(out.contains("which wrote: the fence ends it"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, errors) = rt.block_on(writer).unwrap();
    eprintln!(
        "direct writer: {} acknowledged, errors {:?}",
        acked.len(),
        errors
    );
    assert!(
        acked.len() > 10,
        "the direct writer barely wrote: {}",
        acked.len()
    );
    assert!(
        errors.iter().any(|e| e == "25006"),
        "no write of the direct writer was refused as read-only: {errors:?}"
    );
    rt.block_on(async {
        assert!(
            cutover::pg::cutover::is_read_only(&src).await.unwrap(),
            "the source stays read-only after the flip"
        );
        assert_eq!(
            acked_on(t, &acked).await,
            acked.len(),
            "writes the direct writer had acknowledged are missing on the target"
        );
        // None stranded: every row it left on the source is on the target.
        let on_source: Vec<i64> = src
            .connect()
            .await
            .unwrap()
            .query("SELECT id FROM events WHERE kind = 'nightly'", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(acked_on(t, &on_source).await, on_source.len());
        assert_eq!(on_source.len(), acked.len());
    });
    // Rolled back, the source takes writes again.
    let (code, out, err) = p.run(&["rollback", "local", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    rt.block_on(async {
        assert!(!cutover::pg::cutover::is_read_only(&src).await.unwrap());
        assert_eq!(port_via(b).await, Some(s.to_string()));
        let via = target(b, "app").connect().await.unwrap();
        via.batch_execute("INSERT INTO accounts (name) VALUES ('after rollback')")
            .await
            .unwrap();
    });
}

#[test]
fn killed_after_the_source_was_fenced_and_before_the_flip_the_next_apply_lifts_and_finishes() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    let src = target(s, "app");
    let ids: Vec<i64> = rt.block_on(async {
        // A slow apply on the target holds the catch-up for seconds, with the source fenced.
        slow_apply_of_events(t, 0.5).await;
        let app = target(b, "app").connect().await.unwrap();
        let mut ids = vec![];
        for _ in 0..8 {
            ids.push(
                app.query_one(
                    "INSERT INTO events (account_id, kind) VALUES (1, 'x') RETURNING id",
                    &[],
                )
                .await
                .unwrap()
                .get(0),
            );
        }
        let mut child = spawn_cutover(&p);
        let mut fenced = false;
        for _ in 0..400 {
            if cutover::pg::cutover::is_read_only(&src)
                .await
                .unwrap_or(false)
            {
                fenced = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(fenced, "the source was never fenced");
        assert_eq!(
            port_via_paused_check(&p, b).await,
            (true, s),
            "killed inside the fence"
        );
        ids
    });
    // Reconciled without running the cutover again: the source is as it was.
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--until", "switch"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reconciled switch:"), "{out}");
    rt.block_on(async {
        assert_eq!(port_via_paused_check(&p, b).await, (false, s));
        assert!(
            !cutover::pg::cutover::is_read_only(&src).await.unwrap(),
            "the source was left read-only without a flip"
        );
    });
    let (code, out, err) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    rt.block_on(async {
        assert_eq!(port_via_paused_check(&p, b).await, (false, t));
        assert!(cutover::pg::cutover::is_read_only(&src).await.unwrap());
        assert_eq!(acked_on(t, &ids).await, ids.len());
    });
}

/// Whether the pooler's database is paused, and the port it points at.
async fn port_via_paused_check(p: &Project, b: u16) -> (bool, u16) {
    let st = cutover::pg::pooler::pool_state(
        &cutover::pg::pooler::LocalBouncer::new(p.root().join("pgdata/pgbouncer"), b).admin(),
        "app",
    )
    .await
    .unwrap()
    .unwrap();
    (st.paused, st.port)
}

#[test]
fn the_pooler_fence_refuses_a_role_setting_that_overrides_it_and_names_missing_privileges() {
    require_pg();
    require_pgbouncer();
    let p = Project::new();
    let (s, _t, b) = local_stack_with(&p, "");
    let _stop = stopper(&p);
    assert_eq!(p.run(&["apply", "local", "--yes"]).0, 0);
    let rt = rt();
    let src = rt.block_on(async { target(s, "app").connect().await.unwrap() });
    rt.block_on(src.batch_execute(
        "CREATE ROLE reporting LOGIN; ALTER ROLE reporting IN DATABASE app SET default_transaction_read_only = off",
    ))
    .unwrap();
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "role setting(s) of reporting in this database set the transaction read-only default"
        ),
        "{out}"
    );
    assert!(out.contains("RESET default_transaction_read_only"), "{out}");
    rt.block_on(async {
        assert_eq!(port_via(b).await, Some(s.to_string()));
        // What a user without the fence's privileges lacks, each named.
        let weak = Target {
            user: "reporting".into(),
            ..target(s, "app")
        };
        let missing = cutover::pg::cutover::fence_privileges(&weak).await.unwrap();
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert!(missing[0].contains("pg_read_all_stats"), "{missing:?}");
        assert!(missing[1].contains("pg_signal_backend"), "{missing:?}");
        assert!(missing[2].contains("its owner `postgres`"), "{missing:?}");
        src.batch_execute("GRANT pg_read_all_stats, pg_signal_backend TO reporting; ALTER DATABASE app OWNER TO reporting")
            .await
            .unwrap();
        assert!(cutover::pg::cutover::fence_privileges(&weak).await.unwrap().is_empty());
        src.batch_execute("ALTER DATABASE app OWNER TO postgres; ALTER ROLE reporting IN DATABASE app RESET default_transaction_read_only")
            .await
            .unwrap();
    });
    let (code, out, _) = p.run(&["apply", "local", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
}

/// Makes the target apply each replicated row of `events` `seconds` late (a trigger that
/// replication fires), so that group's writes trail the others'.
async fn slow_apply_of_events(t: u16, seconds: f64) {
    target(t, "app")
        .connect()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow();
             ALTER TABLE events ENABLE ALWAYS TRIGGER slow;"
        ))
        .await
        .unwrap();
}

/// Case 2's hand-off on real servers: capture slots on a primary that keeps taking writes, its
/// streaming standby paused where every slot can serve and the position verified on the primary,
/// the load read from the paused standby, replay resumed, and native replication started exactly
/// at the position. Every row written before, during and after arrives once; a position a slot
/// cannot serve and a server that is not the primary's standby are refused.
#[test]
fn the_hand_off_at_a_paused_standby_loses_and_repeats_no_write() {
    use cutover::pg::{handoff, load, replication};
    require_pg();
    let dir = cluster_dir();
    let (pp, sp, tp, op) = (free_port(), free_port(), free_port(), free_port());
    let primary = LocalCluster::new(dir.path().join("p"), pp);
    let standby = LocalCluster::new(dir.path().join("s"), sp);
    let dst = LocalCluster::new(dir.path().join("t"), tp);
    let other = LocalCluster::new(dir.path().join("o"), op);
    let _stop = Stopper(vec![
        standby.data_dir.clone(),
        primary.data_dir.clone(),
        dst.data_dir.clone(),
        other.data_dir.clone(),
    ]);
    for c in [&primary, &dst, &other] {
        c.init(&[]).unwrap();
        c.start().unwrap();
    }
    rt().block_on(async {
        target(pp, "postgres")
            .connect()
            .await
            .unwrap()
            .batch_execute(
                "CREATE TABLE big (id bigserial PRIMARY KEY, note text NOT NULL, at timestamptz DEFAULT now());
                 CREATE UNIQUE INDEX big_note ON big (note);
                 CREATE TABLE small (k int PRIMARY KEY, v int NOT NULL);
                 INSERT INTO big (note) SELECT 'seed-' || g FROM generate_series(1, 20000) g;
                 INSERT INTO small SELECT g, 0 FROM generate_series(1, 100) g;",
            )
            .await
            .unwrap();
    });
    standby.standby_of(pp, &[]).unwrap();
    standby.start().unwrap();
    let (p, s, t) = (
        target(pp, "postgres"),
        target(sp, "postgres"),
        target(tp, "postgres"),
    );
    // A writer on the primary from before the slots until after the capture started.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt2 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        rt2.spawn(async move {
            let c = p.connect().await.unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                c.batch_execute(&format!(
                    "INSERT INTO big (note) VALUES ('live-{n}'); UPDATE small SET v = v + 1 WHERE k = {}",
                    n % 100 + 1
                ))
                .await
                .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let groups = vec![replication::Group {
        name: "big".into(),
        tables: vec!["public.big".into()],
    }];
    let say = |m: String| eprintln!("{m}");
    rt().block_on(async {
        let setup = replication::publish(&p, "cutover", &groups).await.unwrap();
        let names: Vec<String> = setup.groups.iter().map(|g| g.slot.clone()).collect();
        assert_eq!(names, ["cutover_big", "cutover_rest"]);
        let made = handoff::create_slots(&p, &names, "pgoutput").await.unwrap();
        // Again: the slots are there, with that plugin; another plugin is refused.
        assert_eq!(
            handoff::create_slots(&p, &names, "pgoutput")
                .await
                .unwrap()
                .len(),
            2
        );
        let e = handoff::create_slots(&p, &names, "test_decoding")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("exists with plugin pgoutput"), "{e}");
        let highest = made
            .iter()
            .filter_map(|(_, l)| cutover::pg::version::lsn(l))
            .max()
            .map(cutover::pg::version::lsn_text)
            .unwrap();
        // The primary is not a standby: refused before anything is paused.
        let e = handoff::pause(&p, &highest, std::time::Duration::from_secs(5), &say)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a standby"), "{e}");
        let paused = handoff::pause(&s, &highest, std::time::Duration::from_secs(60), &say)
            .await
            .unwrap();
        assert!(!paused.already);
        assert!(cutover::pg::version::lsn(&paused.lsn) >= cutover::pg::version::lsn(&highest));
        // Paused again (an interrupted run): the same position.
        let again = handoff::pause(&s, &highest, std::time::Duration::from_secs(5), &say)
            .await
            .unwrap();
        assert!(again.already && again.lsn == paused.lsn);
        // Another server's position means nothing here.
        let e = handoff::verify(&p, &target(op, "postgres"), &names, &paused.lsn)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a replica of"), "{e}");
        // A position before a slot's: the slot cannot serve it.
        let e = handoff::verify(&p, &s, &names, "0/100")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is after the recorded 0/100"), "{e}");
        let start = handoff::verify(&p, &s, &names, &paused.lsn).await.unwrap();
        // The load, from the standby; the writer goes on meanwhile.
        handoff::still_paused(&s, &paused.lsn).await.unwrap();
        let post = replication::copy_schema_pre(&s, &t, false).await.unwrap();
        let sc = s.connect().await.unwrap();
        let tables = replication::tables(&s, &sc).await.unwrap();
        assert_eq!(tables, ["public.big", "public.small"]);
        let opts = load::Options {
            workers: 2,
            chunk_pages: 16,
        };
        let done = load::load_quiet(&s, &t, &tables, opts, true, &say)
            .await
            .unwrap();
        assert!(done.chunks > 2, "the big table is split: {done:?}");
        handoff::still_paused(&s, &paused.lsn).await.unwrap();
        load::build_post(&t, &post, 2).await.unwrap();
        // The target's rows are exactly the standby's at the position.
        let count = |c: Target| async move {
            c.connect()
                .await
                .unwrap()
                .query_one("SELECT count(*) FROM big", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        };
        assert_eq!(count(s.clone()).await, count(t.clone()).await);
        assert!(handoff::resume(&s).await.unwrap());
        assert!(!handoff::resume(&s).await.unwrap(), "already running");
        let e = handoff::still_paused(&s, &paused.lsn)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("running"), "{e}");
        handoff::subscribe_at(&p, &t, &setup, &start).await.unwrap();
        // Run again: nothing changes (the subscriptions stream already).
        handoff::subscribe_at(&p, &t, &setup, &start).await.unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = rt2.block_on(writer).unwrap();
    assert!(written > 50, "the writer wrote {written}");
    rt().block_on(async {
        let q = "SELECT count(*), count(DISTINCT note), coalesce(sum(hashtext(note)), 0), (SELECT sum(v) FROM small) FROM big";
        let want = p.connect().await.unwrap().query_one(q, &[]).await.unwrap();
        let want: (i64, i64, i64, i64) = (want.get(0), want.get(1), want.get(2), want.get(3));
        assert_eq!(want.0, 20000 + written as i64);
        assert_eq!(want.3, written as i64);
        let dst = t.connect().await.unwrap();
        let mut got = (0, 0, 0, 0);
        for _ in 0..300 {
            let r = dst.query_one(q, &[]).await.unwrap();
            got = (r.get(0), r.get(1), r.get(2), r.get(3));
            if got == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // A change applied twice would fail the unique note or double a counter; one missed
        // would leave a count short.
        assert_eq!(got, want, "target (rows, distinct, hash, counter) vs the primary's");
        for sub in ["cutover_big", "cutover_rest"] {
            dst.batch_execute(&format!("DROP SUBSCRIPTION {sub}"))
                .await
                .unwrap();
        }
    });
}
