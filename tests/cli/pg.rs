//! Tests against real PostgreSQL 15 clusters on free loopback ports. Without PostgreSQL's programs
//! these tests fail under CI=true and say so elsewhere.

use std::path::PathBuf;

use cutover::pg::cluster::{bin_dir, free_port, LocalCluster};
use cutover::pg::preflight::{self, Level};
use cutover::pg::Target;

use super::Project;

/// Whether PostgreSQL is here; under CI its absence is a failure, elsewhere a loud skip.
pub fn require_pg() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("PostgreSQL 15's programs are required under CI=true: apt-get install postgresql-15 (scripts/test does)");
    }
    eprintln!(
        "SKIPPED: PostgreSQL 15's programs not found (install postgresql-15 or set CUTOVER_PG_BIN)"
    );
    false
}

/// Stops clusters when a test ends, even by panic.
pub struct Stopper(pub Vec<PathBuf>);

impl Drop for Stopper {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = LocalCluster::new(d, 0).stop();
        }
    }
}

fn local_stack(p: &Project) -> (u16, u16, Stopper) {
    let (s, t) = (free_port(), free_port());
    p.stack(
        "local",
        &format!("plan = \"rehearsal\"\nprovider = \"local\"\n[values]\ndata_root = \"pgdata\"\nsource_port = {s}\ntarget_port = {t}\naccounts = 100\nevents = 1000\n"),
    );
    let stopper = Stopper(vec![
        p.root().join("pgdata/source"),
        p.root().join("pgdata/target"),
    ]);
    (s, t, stopper)
}

fn target(port: u16, db: &str) -> Target {
    Target {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        dbname: db.into(),
        password: None,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_local_rehearsal_provisions_seeds_checks_and_tears_down() {
    if !require_pg() {
        return;
    }
    let p = Project::new();
    let (s, t, _stop) = local_stack(&p);
    let (code, out, err) = p.run(&["apply", "local", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Apply complete: 2 added, 0 changed, 0 destroyed, 4 steps run."),
        "{out}"
    );
    let rt = rt();
    rt.block_on(async {
        let src = target(s, "app").connect().await.unwrap();
        let n: i64 = src
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1000);
        let dst = target(t, "app").connect().await.unwrap();
        let n: i64 = dst
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = 'app'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
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
    if !require_pg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
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
