//! `plan emulate STACK`: case 3's and case 4's own plans against moto with PostgreSQL stand-ins,
//! end to end, with a writer that follows the application's DNS record (read through the Route53
//! API, dialled through the emulation's `[connect]`) across the cutover, then a rollback and a
//! destroy that leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover::pg::Target;

use super::Project;

/// moto and PostgreSQL are required: this test fails without them, naming what installs them.
fn require() -> PathBuf {
    let moto = std::env::var("CUTOVER_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/moto_server")
        });
    assert!(
        moto.exists(),
        "moto_server is needed: run scripts/prereqs all (it installs moto[server] into target/test-venv)"
    );
    assert!(
        cutover::pg::cluster::bin_dir().is_some(),
        "PostgreSQL 15 is needed: run scripts/prereqs (apt-get install postgresql-15)"
    );
    moto
}

/// What a test needs to know of a case's staging stack.
struct Case {
    stack: &'static str,
    /// `--set` values for a short run (no bake; short TTLs).
    sets: &'static [&'static str],
    region: &'static str,
    zone: &'static str,
    /// The record the application connects through.
    record: &'static str,
    /// The source's host, as the record names it before the flip.
    source_host: &'static str,
    /// The new instance's endpoint as moto names it.
    target_host: &'static str,
    dbname: &'static str,
}

/// Case 3: `staging`.
const CASE3: Case = Case {
    stack: "staging",
    sets: &["bake_minutes=0", "record_ttl=2", "cutover_ttl=1"],
    region: "eu-west-1",
    zone: "staging.example.internal",
    record: "db.staging.example.internal",
    source_host: "pg-staging.corp.example",
    target_host: "onprem-rds-staging-target.aaaaaaaaaa.eu-west-1.rds.amazonaws.com",
    dbname: "app",
};

/// Case 4: `saas-staging`, its record's TTL 2 s today and lowered to 1 s for the cutover.
const CASE4: Case = Case {
    stack: "saas-staging",
    sets: &["bake_minutes=0", "record_ttl=2", "cutover_ttl=1"],
    region: "us-east-1",
    zone: "staging.saas.internal",
    record: "db.staging.saas.internal",
    source_host: "pg-staging.old.saas.internal",
    target_host: "saas-saas-staging-target.aaaaaaaaaa.us-east-1.rds.amazonaws.com",
    dbname: "saas",
};

/// Stops what an emulation left running when a test ends early (a failed assertion).
struct Down<'a>(&'a Project, &'a Case);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self
            .0
            .root()
            .join(".cutover/emulate")
            .join(self.1.stack)
            .exists()
        {
            let _ = self
                .0
                .plan()
                .args(["emulate", self.1.stack, "down"])
                .output();
        }
    }
}

fn emulate(p: &Project, moto: &Path, case: &Case, args: &[&str]) -> (i32, String) {
    let mut c = p.plan();
    c.env("CUTOVER_MOTO_SERVER", moto)
        .env_remove("AWS_PROFILE")
        .args(["emulate", case.stack]);
    for s in case.sets {
        c.args(["--set", s]);
    }
    let out = c.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[derive(serde::Deserialize)]
struct Layout {
    proxy: u16,
    standins: std::collections::BTreeMap<String, u16>,
    secrets: std::collections::BTreeMap<String, String>,
}

fn layout(p: &Project, case: &Case) -> Layout {
    serde_json::from_str(&p.read(&format!(".cutover/emulate/{}/layout.json", case.stack))).unwrap()
}

/// The emulation's CA certificate, which the stand-ins' certificates chain to.
fn ca(p: &Project, case: &Case) -> PathBuf {
    p.root().join(format!(
        ".cutover/emulate/{}/root/certs/emulated-ca.pem",
        case.stack
    ))
}

/// The application's record (what it names, its TTL), read through the emulator's Route53.
async fn record_set(r53: &aws_sdk_route53::Client, case: &Case) -> (String, i64) {
    let name = case.record;
    let zones = r53
        .list_hosted_zones_by_name()
        .dns_name(case.zone)
        .send()
        .await
        .unwrap();
    let zone = zones.hosted_zones()[0].id().to_string();
    let sets = r53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .start_record_name(name)
        .send()
        .await
        .unwrap();
    let set = sets
        .resource_record_sets()
        .iter()
        .find(|r| r.name().trim_end_matches('.') == name)
        .expect("the record exists");
    (
        set.resource_records()[0].value().to_string(),
        set.ttl().unwrap_or(0),
    )
}

/// What the application's record names now.
async fn record(r53: &aws_sdk_route53::Client, case: &Case) -> String {
    record_set(r53, case).await.0
}

/// The emulator's SDK configuration (through the emulation's proxy) for `region`.
fn sdk(l: &Layout, region: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .endpoint_url(format!("http://127.0.0.1:{}", l.proxy))
        .credentials_provider(aws_sdk_rds::config::SharedCredentialsProvider::new(
            aws_sdk_rds::config::Credentials::new("testing", "testing", None, None, "test"),
        ))
        .build()
}

/// A client of the emulator's Route53.
fn route53(l: &Layout) -> aws_sdk_route53::Client {
    aws_sdk_route53::Client::new(&sdk(l, "us-east-1"))
}

/// The application: writes through whatever the record names, reconnecting when it changes or a
/// write fails (the read-only fence ends its session).
fn start_writer(
    rt: &tokio::runtime::Runtime,
    case: &'static Case,
    l: &Layout,
    ca: &Path,
    r53: &aws_sdk_route53::Client,
) -> (
    Arc<AtomicBool>,
    Arc<Mutex<Writes>>,
    tokio::task::JoinHandle<()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let (stop2, writes2) = (stop.clone(), writes.clone());
    let (standins, secrets, ca2, r53b) = (
        l.standins.clone(),
        l.secrets.clone(),
        ca.to_path_buf(),
        r53.clone(),
    );
    let target_host = case.target_host;
    let writer = rt.spawn(async move {
        let conn_for = |host: &str| -> Target {
            let (node, user, pw) = if host == target_host {
                ("target", "cutover_admin", "master_password")
            } else {
                ("source", "migrator", "source_password")
            };
            Target {
                host: host.into(),
                port: 5432,
                user: user.into(),
                dbname: case.dbname.into(),
                password: Some(secrets[pw].clone()),
                sslmode: Some("verify-full".into()),
                sslrootcert: Some(ca2.display().to_string()),
                dial: Some(("127.0.0.1".into(), standins[node])),
                ..Default::default()
            }
        };
        let mut current: Option<(String, tokio_postgres::Client)> = None;
        let mut last_ack = Instant::now();
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            n += 1;
            let host = record(&r53b, case).await;
            if current.as_ref().map(|(h, _)| h != &host).unwrap_or(true) {
                current = match conn_for(&host).connect().await {
                    Ok(c) => Some((host.clone(), c)),
                    Err(_) => {
                        writes2.lock().unwrap().errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                writes2.lock().unwrap().hosts.push(host.clone());
            }
            let (_, c) = current.as_ref().unwrap();
            match c
                .query_one(
                    "INSERT INTO public.events (account, payload) VALUES ($1, 'emulated writer') RETURNING id",
                    &[&(n as i64)],
                )
                .await
            {
                Ok(row) => {
                    let mut w = writes2.lock().unwrap();
                    w.acked.push(row.get(0));
                    let gap = last_ack.elapsed();
                    if gap > w.longest_gap && w.acked.len() > 1 {
                        w.longest_gap = gap;
                    }
                    last_ack = Instant::now();
                }
                Err(_) => {
                    writes2.lock().unwrap().errors += 1;
                    current = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (stop, writes, writer)
}

#[derive(Default)]
struct Writes {
    acked: Vec<i64>,
    errors: usize,
    /// The longest time between two acknowledged writes.
    longest_gap: Duration,
    hosts: Vec<String>,
}

/// Brings the case's emulation up and applies up to the gate, then runs the cutover with a writer
/// following the record, and checks that every acknowledged write reached the new database.
/// Returns the outputs of the first apply and of the cutover's.
fn cutover_with_a_writer(p: &Project, moto: &Path, case: &'static Case) -> (String, String) {
    let (code, out) = emulate(p, moto, case, &["apply", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("EMULATED: stack `{}`", case.stack)),
        "{out}"
    );
    assert!(out.contains("Held back by gate `cutover`"), "{out}");
    assert!(
        !p.state_dir(case.stack).exists(),
        "the real stack's state is never touched"
    );
    let l = layout(p, case);
    let r53 = route53(&l);
    let rt = runtime();
    assert_eq!(rt.block_on(record(&r53, case)), case.source_host);

    let (stop, writes, writer) = start_writer(&rt, case, &l, &ca(p, case), &r53);
    std::thread::sleep(Duration::from_millis(500));
    let (code, cutover) = emulate(p, moto, case, &["apply", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{cutover}");
    // Writes go on after the flip, to the new database.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writer).unwrap();
    assert_eq!(rt.block_on(record(&r53, case)), case.target_host);
    let w = writes.lock().unwrap();
    assert_eq!(
        w.hosts.last().map(String::as_str),
        Some(case.target_host),
        "the writer ended on the new database: {:?}",
        w.hosts
    );
    let ids = w.acked.clone();
    assert!(ids.len() > 20, "the writer wrote: {}", ids.len());
    assert_eq!(
        on_target(&rt, case, &l, &ids),
        ids.len(),
        "every acknowledged write is on the new database"
    );
    eprintln!(
        "emulated cutover of {}: {} writes acknowledged, {} client errors, longest wait between writes {:?}",
        case.stack,
        ids.len(),
        w.errors,
        w.longest_gap
    );
    (out, cutover)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Destroys the emulation and checks that nothing of it is left: no process, no directory.
fn destroy_leaves_nothing(p: &Project, moto: &Path, case: &Case) {
    let run = p
        .root()
        .join(".cutover/emulate")
        .join(case.stack)
        .join("run");
    let pids: Vec<i32> = ["moto", "proxy"]
        .iter()
        .map(|d| {
            std::fs::read_to_string(run.join(format!("{d}.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    let (code, out) = emulate(p, moto, case, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Destroy complete"), "{out}");
    assert!(!p.root().join(".cutover/emulate").join(case.stack).exists());
    std::thread::sleep(Duration::from_millis(300));
    for pid in pids {
        assert!(
            unsafe { libc::kill(pid, 0) } != 0,
            "the emulation's daemon {pid} is gone"
        );
    }
}

#[test]
fn plan_emulate_staging_runs_case_three_with_a_writer_rolls_back_and_leaves_nothing() {
    let moto = require();
    let p = Project::new();
    let case = &CASE3;
    let _down = Down(&p, case);
    let (_, out) = cutover_with_a_writer(&p, &moto, case);
    assert!(
        out.contains("emulated: alarm") || out.contains("bake"),
        "{out}"
    );
    // The record's TTL is lowered and waited out before the fence; the budget is reported.
    let at = |what: &str| position(&out, what);
    assert!(at("> lower-ttl: done") < at("> switch: running"), "{out}");
    assert!(
        out.contains("Budget `writes-refused`: ") && out.contains(" of 60 s: "),
        "{out}"
    );
    let l = layout(&p, case);
    let r53 = route53(&l);
    let rt = runtime();

    // The native path has no temporaries: `destroy --temporary` removes nothing, and the
    // emulation stays up.
    let before = objects(&rt, case, &l);
    let (code, out) = emulate(&p, &moto, case, &["destroy", "--temporary", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(objects(&rt, case, &l), before, "{out}");
    assert!(p.root().join(".cutover/emulate/staging/run").exists());

    // Rollback through the reverse replication: the record names the old database again.
    let (code, out) = emulate(&p, &moto, case, &["rollback", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(rt.block_on(record(&r53, case)), case.source_host);
    destroy_leaves_nothing(&p, &moto, case);
}

#[test]
fn plan_emulate_saas_staging_runs_case_four_inside_its_dns_window_with_a_writer() {
    let moto = require();
    let p = Project::new();
    let case = &CASE4;
    let _down = Down(&p, case);
    let (preflight, out) = cutover_with_a_writer(&p, &moto, case);
    // The case's lesson: the preflight weighs decoding and apply against the table groups.
    for setting in [
        "logical_decoding_work_mem",
        "max_logical_replication_workers",
        "max_sync_workers_per_subscription",
    ] {
        assert!(preflight.contains(setting), "{setting}:\n{preflight}");
    }
    // The TTL was lowered and the old one waited out before the fence; the flip kept it.
    assert!(
        out.contains("lower-ttl: TTL 1 s; waiting out the old TTL of 2 s"),
        "{out}"
    );
    let at = |what: &str| position(&out, what);
    assert!(at("> lower-ttl: done") < at("> switch: running"), "{out}");
    let l = layout(&p, case);
    let rt = runtime();
    let (value, ttl) = rt.block_on(record_set(&route53(&l), case));
    assert_eq!((value.as_str(), ttl), (case.target_host, 1));
    // The run's summary reports the 15-second window: fence to accepted change, plus the TTL.
    let line = out
        .lines()
        .find(|l| l.starts_with("Budget `dns-window`: "))
        .unwrap_or_else(|| panic!("the budget is reported:\n{out}"));
    let used: f64 = line
        .trim_start_matches("Budget `dns-window`: ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        line.contains("of 15.0 s") && line.contains("plus 1.0 s (the lowered TTL"),
        "{line}"
    );
    assert!((1.0..15.0).contains(&used), "{line}");
    // The 2-second lag bound was checked at the guard (the probe through every stream).
    assert!(out.contains("switch: guard passed"), "{out}");

    // The new instance is encrypted under the stack's key, as the emulator reads it back.
    let rds = aws_sdk_rds::Client::new(&sdk(&l, case.region));
    let i = rt
        .block_on(
            rds.describe_db_instances()
                .db_instance_identifier("saas-saas-staging-target")
                .send(),
        )
        .unwrap();
    let i = &i.db_instances()[0];
    assert_eq!(i.storage_encrypted(), Some(true));
    assert_eq!(
        i.kms_key_id(),
        Some("arn:aws:kms:us-east-1:333333333333:key/1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d")
    );
    // The run's report: the timeline parses and has a bar for every node, the window is marked;
    // the rehearsal is written for the pull-request comment, which quotes it.
    let (code, json) = emulate(&p, &moto, case, &["report", "--format", "json"]);
    assert_eq!(code, 0, "{json}");
    let start = json.find('{').unwrap();
    let end = json.rfind('}').unwrap();
    let report: serde_json::Value = serde_json::from_str(&json[start..=end]).unwrap();
    let svg = p.read(".cutover/emulate/saas-staging/root/.cutover/saas-staging/report.svg");
    let bars = super::svg_bars(&svg);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let nodes: Vec<&str> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert!(
        nodes.contains(&"switch") && nodes.contains(&"flip"),
        "{nodes:?}"
    );
    assert_eq!(bars, nodes, "a bar for every node");
    assert_eq!(
        doc.descendants()
            .filter(|n| n.attribute("class") == Some("window"))
            .count(),
        1,
        "the DNS window is marked"
    );
    let measured = report["measured"].to_string();
    assert!(
        measured.contains("writers were held or refused for")
            && measured.contains("at the guard, just before the fence: replication lag ")
            && measured.contains("a probe reached the target through every stream in "),
        "{measured}"
    );
    let rehearsal: serde_json::Value =
        serde_json::from_str(&p.read("reports/saas-staging.json")).unwrap();
    assert_eq!(rehearsal["windows"][0][0], "dns-window");
    let (code, md, err) = p.run(&["preview", "saas-staging", "--format", "markdown"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        md.contains("Measured in an emulated run on ")
            && md.contains(
                "(complete, with bake_minutes=0, record_ttl=2, cutover_ttl=1): `dns-window` "
            ),
        "{md}"
    );

    let (code, out) = emulate(&p, &moto, case, &["rollback", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(rt.block_on(record(&route53(&l), case)), case.source_host);
    destroy_leaves_nothing(&p, &moto, case);
}

/// Where `what` is in a command's output (which must hold it).
fn position(out: &str, what: &str) -> usize {
    out.find(what)
        .unwrap_or_else(|| panic!("`{what}` in the output:\n{out}"))
}

/// How many of `ids` the new database's stand-in holds.
fn on_target(rt: &tokio::runtime::Runtime, case: &Case, l: &Layout, ids: &[i64]) -> usize {
    rt.block_on(async {
        let c = Target {
            host: "127.0.0.1".into(),
            port: l.standins["target"],
            user: "postgres".into(),
            dbname: case.dbname.into(),
            ..Default::default()
        }
        .connect()
        .await
        .unwrap();
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM public.events WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap()
            .get(0);
        n as usize
    })
}

/// What the emulator holds: DB instances, DB snapshots, alarms, record sets of the zone.
fn objects(rt: &tokio::runtime::Runtime, case: &Case, l: &Layout) -> (usize, usize, usize, usize) {
    let conf = sdk(l, case.region);
    rt.block_on(async {
        let rds = aws_sdk_rds::Client::new(&conf);
        let cw = aws_sdk_cloudwatch::Client::new(&conf);
        let r53 = route53(l);
        let i = rds.describe_db_instances().send().await.unwrap();
        let s = rds.describe_db_snapshots().send().await.unwrap();
        let a = cw.describe_alarms().send().await.unwrap();
        let z = r53
            .list_hosted_zones_by_name()
            .dns_name(case.zone)
            .send()
            .await
            .unwrap();
        let r = r53
            .list_resource_record_sets()
            .hosted_zone_id(z.hosted_zones()[0].id())
            .send()
            .await
            .unwrap();
        (
            i.db_instances().len(),
            s.db_snapshots().len(),
            a.metric_alarms().len(),
            r.resource_record_sets().len(),
        )
    })
}

#[test]
fn killed_inside_the_emulated_cutover_the_same_command_finishes_duplicating_nothing() {
    let moto = require();
    let p = Project::new();
    let case = &CASE3;
    let _down = Down(&p, case);
    let (code, out) = emulate(&p, &moto, case, &["apply", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let l = layout(&p, case);
    let r53 = route53(&l);
    let rt = runtime();
    let before = objects(&rt, case, &l);
    let (stop, writes, writer) = start_writer(&rt, case, &l, &ca(&p, case), &r53);
    std::thread::sleep(Duration::from_millis(300));
    // The cutover, killed once the source is fenced (its child dies with it).
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(p.root())
        .env("CUTOVER_MOTO_SERVER", &moto)
        .args(["emulate", "staging"])
        .args(CASE3.sets.iter().flat_map(|s| ["--set", s]))
        .args(["apply", "--yes", "--approve", "cutover", "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let source = Target {
        host: "127.0.0.1".into(),
        port: l.standins["source"],
        user: "postgres".into(),
        dbname: case.dbname.into(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let fenced = rt.block_on(async {
        while t0.elapsed() < Duration::from_secs(60) {
            if cutover::pg::cutover::is_read_only(&source)
                .await
                .unwrap_or(false)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(fenced, "the fence never went up");
    let (code, out) = emulate(&p, &moto, case, &["apply", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reconciled"),
        "the interrupted cutover was reconciled: {out}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writer).unwrap();
    assert_eq!(rt.block_on(record(&r53, case)), case.target_host);
    let ids = writes.lock().unwrap().acked.clone();
    assert!(ids.len() > 20, "{}", ids.len());
    assert_eq!(
        on_target(&rt, case, &l, &ids),
        ids.len(),
        "no acknowledged write is lost"
    );
    // Nothing duplicated: the same instances, alarms and records, and one rollback point.
    let after = objects(&rt, case, &l);
    assert_eq!(
        (after.0, after.2, after.3),
        (before.0, before.2, before.3),
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.1,
        before.1 + 1,
        "one rollback-point snapshot: {before:?} -> {after:?}"
    );
    let (code, out) = emulate(&p, &moto, case, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{out}");
}
