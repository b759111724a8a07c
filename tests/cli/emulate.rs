//! `plan emulate STACK`: case 1's, case 2's, case 3's and case 4's own plans against moto with PostgreSQL stand-ins,
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

/// Case 1: `tenants-staging`, its three tenants' records and the cluster's endpoint (`source_host`
/// and `record` are globex's, the tenant with the import instance).
const CASE1: Case = Case {
    stack: "tenants-staging",
    sets: &["bake_minutes=0", "record_ttl=2", "cutover_ttl=1"],
    region: "eu-central-1",
    zone: "staging.tenants.internal",
    record: "globex.db.staging.tenants.internal",
    source_host: "tenant-globex-staging.aaaaaaaaaa.eu-central-1.rds.amazonaws.com",
    target_host:
        "tenants-tenants-staging-cluster.cluster-aaaaaaaaaa.eu-central-1.rds.amazonaws.com",
    dbname: "globex",
};

/// Case 2: `ec2-rds-staging`, native change capture (the emulation's default: its stand-ins are
/// PostgreSQL 15).
const CASE2: Case = Case {
    stack: "ec2-rds-staging",
    sets: &["bake_minutes=0", "record_ttl=2", "cutover_ttl=1"],
    region: "eu-west-1",
    zone: "staging.ec2.internal",
    record: "db.staging.ec2.internal",
    source_host: "pg-primary.staging.ec2.internal",
    target_host: "ec2-rds-ec2-rds-staging-target.aaaaaaaaaa.eu-west-1.rds.amazonaws.com",
    dbname: "app",
};

/// Case 2 with DMS change capture as the stack declares it, decoding with test_decoding (the
/// stand-ins have no pglogical).
const CASE2_DMS: Case = Case {
    sets: &[
        "bake_minutes=0",
        "record_ttl=2",
        "cutover_ttl=1",
        "data_path=dms",
        "plugin=test_decoding",
    ],
    ..CASE2
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
        let c = admin(l, "target", case.dbname).connect().await.unwrap();
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
    let source = admin(&l, "source", case.dbname);
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

/// The first report line of `out` that starts (after the time stamp) with `prefix`.
fn line_of<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .map(|l| l.split_once("] ").map_or(l, |(_, rest)| rest).trim_start())
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("`{prefix}` in the output:\n{out}"))
}

/// The administrator's connection to database `db` of one of the emulation's stand-ins.
fn admin(l: &Layout, node: &str, db: &str) -> Target {
    Target {
        host: "127.0.0.1".into(),
        port: l.standins[node],
        user: "postgres".into(),
        dbname: db.into(),
        ..Default::default()
    }
}

/// A superuser session on one of the emulation's stand-ins.
fn standin(rt: &tokio::runtime::Runtime, l: &Layout, node: &str) -> tokio_postgres::Client {
    rt.block_on(admin(l, node, "app").connect()).unwrap()
}

#[test]
fn plan_emulate_ec2_rds_staging_loads_a_paused_standby_and_replicates_from_its_verified_lsn() {
    let moto = require();
    let p = Project::new();
    let case = &CASE2;
    let _down = Down(&p, case);
    let (out, cutover) = cutover_with_a_writer(&p, &moto, case);
    // The hand-off in its order: the slots first, then the standby paused past them, the
    // position verified on the primary, the load, the replay resumed, and change capture from
    // that same position.
    let at = |what: &str| position(&out, what);
    assert!(
        at("> capture-slots: done") < at("> pause-replay: running"),
        "{out}"
    );
    assert!(
        at("> pause-replay: done") < at("> verify-lsn: running"),
        "{out}"
    );
    assert!(at("> verify-lsn: done") < at("> load: running"), "{out}");
    assert!(at("> load: done") < at("> resume-replay: running"), "{out}");
    assert!(at("> load: done") < at("> replicate: running"), "{out}");
    let paused = line_of(&out, "pause-replay: ");
    let lsn = paused
        .rsplit(' ')
        .next()
        .filter(|_| paused.contains("replay paused at "))
        .unwrap_or_else(|| panic!("{paused}"));
    assert!(
        line_of(&out, "verify-lsn: ").starts_with(&format!("verify-lsn: {lsn} verified on ")),
        "{out}"
    );
    assert!(
        line_of(&out, "load: loaded ").contains(&format!(" from {lsn}; ")),
        "{out}"
    );
    assert_eq!(
        line_of(&out, "replicate: "),
        format!("replicate: 6 subscription(s) streaming from {lsn}"),
        "{out}"
    );
    assert!(out.contains("validate: 12 table(s), "), "{out}");
    // No reverse replication (a 9.6 source cannot subscribe): the forward subscriptions stop at
    // the fence, and the budget is reported.
    assert!(
        cutover.contains("Budget `writes-refused`: ") && cutover.contains(" of 60 s: "),
        "{cutover}"
    );
    let l = layout(&p, case);
    let rt = runtime();
    // Without reverse replication, `plan rollback` refuses whole: the record keeps naming the
    // new database (undoing the flip alone would send clients to the fenced source).
    let (code, out) = emulate(&p, &moto, case, &["rollback", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("`switch` cannot be rolled back") && out.contains("Nothing was rolled back."),
        "{out}"
    );
    assert_eq!(rt.block_on(record(&route53(&l), case)), case.target_host);
    // The maintenance replica is a standby of the primary, replaying again.
    let standby = standin(&rt, &l, "maintenance");
    let row = rt
        .block_on(standby.query_one("SELECT pg_is_in_recovery(), pg_is_wal_replay_paused()", &[]))
        .unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, bool>(1)),
        (true, false)
    );

    // Behind `finish`: the capture slots are dropped from the primary.
    let source = standin(&rt, &l, "source");
    let slots = |c: &tokio_postgres::Client| -> i64 {
        rt.block_on(c.query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cutover%'",
            &[],
        ))
        .unwrap()
        .get(0)
    };
    assert_eq!(slots(&source), 6);
    let (code, out) = emulate(&p, &moto, case, &["apply", "--yes", "--approve", "finish"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(slots(&source), 0, "{out}");
    drop((standby, source));
    destroy_leaves_nothing(&p, &moto, case);
}

#[test]
fn plan_emulate_ec2_rds_staging_with_dms_declares_a_cdc_task_per_group_at_the_verified_lsn() {
    let moto = require();
    let p = Project::new();
    let case = &CASE2_DMS;
    let _down = Down(&p, case);
    let (code, out) = emulate(&p, &moto, case, &["apply", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Held back by gate `cutover`"), "{out}");
    assert!(
        out.contains("emulated: data_path = \"dms\" as asked"),
        "the emulation says what it does not exercise: {out}"
    );
    let lsn = line_of(&out, "verify-lsn: ")
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(lsn.contains('/'), "{lsn}");
    let l = layout(&p, case);
    let rt = runtime();
    let dms = aws_sdk_databasemigration::Client::new(&sdk(&l, case.region));
    let groups = [
        "events",
        "payloads",
        "orders",
        "order-lines",
        "audit",
        "rest",
    ];
    let prefix = "ec2-rds-ec2-rds-staging-";

    // One CDC-only task per table group; the state records each one's start at the verified
    // position (moto drops CdcStartPosition: the request itself is checked by
    // provider::aws::dms::tests::a_cdc_task_is_created_with_its_start_position).
    let tasks = rt
        .block_on(dms.describe_replication_tasks().send())
        .unwrap();
    let task = |g: &str| {
        tasks
            .replication_tasks()
            .iter()
            .find(|t| t.replication_task_identifier() == Some(&format!("{prefix}task-{g}")))
            .unwrap_or_else(|| panic!("task of {g}: {tasks:?}"))
    };
    assert_eq!(tasks.replication_tasks().len(), groups.len());
    for g in groups {
        let t = task(g);
        assert_eq!(t.migration_type().map(|m| m.as_str()), Some("cdc"), "{g}");
        let (code, state, _) =
            p.run(&["emulate", case.stack, "state", "show", &format!("task-{g}")]);
        assert_eq!(code, 0);
        assert!(
            state.contains(&format!("\"cdc_start_position\": \"{lsn}\"")),
            "{g}: {state}"
        );
    }
    let json = |s: Option<&str>| -> serde_json::Value { serde_json::from_str(s.unwrap()).unwrap() };
    // Each group selects its tables and its catch-up table; `rest` takes everything else.
    let rules = |g: &str| json(task(g).table_mappings())["rules"].clone();
    let names = |g: &str, action: &str| -> Vec<String> {
        rules(g)
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["rule-action"] == action)
            .map(|r| {
                format!(
                    "{}.{}",
                    r["object-locator"]["schema-name"].as_str().unwrap(),
                    r["object-locator"]["table-name"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        names("events", "include"),
        ["public.events", "public.cutover_catchup_events"]
    );
    assert_eq!(names("rest", "include"), ["%.%"]);
    let excluded = names("rest", "exclude");
    for t in ["public.events", "public.payloads", "public.audit"] {
        assert!(excluded.contains(&t.to_string()), "{excluded:?}");
    }
    // LOBs: limited mode with the group's maximum; payloads' table inline, never truncated.
    let settings = |g: &str| json(task(g).replication_task_settings())["TargetMetadata"].clone();
    assert_eq!(settings("events")["LimitedSizeLobMode"], true);
    assert_eq!(settings("events")["LobMaxSize"], 64);
    assert_eq!(settings("audit")["LobMaxSize"], 16);
    let lob_rule = rules("payloads")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule-type"] == "table-settings")
        .cloned()
        .unwrap_or_else(|| panic!("{}", rules("payloads")));
    assert_eq!(lob_rule["object-locator"]["table-name"], "payloads");
    // Batch apply only where the stack asks.
    for (g, batch) in [("events", false), ("order-lines", true), ("audit", true)] {
        assert_eq!(settings(g)["BatchApplyEnabled"], batch, "{g}");
    }
    // Each group's source endpoint names the group's slot and the plugin.
    let endpoints = rt.block_on(dms.describe_endpoints().send()).unwrap();
    for g in groups {
        let e = endpoints
            .endpoints()
            .iter()
            .find(|e| e.endpoint_identifier() == Some(&format!("{prefix}source-endpoint-{g}")))
            .unwrap_or_else(|| panic!("endpoint of {g}"));
        let pg = e.postgre_sql_settings().expect("PostgreSQL settings");
        assert_eq!(
            pg.slot_name(),
            Some(format!("cutover_{}", g.replace('-', "_")).as_str())
        );
        assert_eq!(pg.plugin_name().map(|p| p.as_str()), Some("test-decoding"));
    }
    // The slots exist on the primary, one per group, with the plugin.
    let source = standin(&rt, &l, "source");
    let slots = rt
        .block_on(source.query(
            "SELECT slot_name::text, plugin::text FROM pg_replication_slots ORDER BY 1",
            &[],
        ))
        .unwrap();
    assert_eq!(slots.len(), groups.len());
    assert!(slots
        .iter()
        .all(|r| r.get::<_, String>(1) == "test_decoding"));
    // The alarms: CDC latency at the source and the target per task, and the instance's health.
    let cw = aws_sdk_cloudwatch::Client::new(&sdk(&l, case.region));
    let alarms = rt.block_on(cw.describe_alarms().send()).unwrap();
    let metrics: Vec<&str> = alarms
        .metric_alarms()
        .iter()
        .filter(|a| a.namespace() == Some("AWS/DMS"))
        .filter_map(|a| a.metric_name())
        .collect();
    for m in ["CDCLatencySource", "CDCLatencyTarget"] {
        assert_eq!(
            metrics.iter().filter(|n| **n == m).count(),
            6,
            "{metrics:?}"
        );
    }
    for m in [
        "CPUUtilization",
        "FreeableMemory",
        "SwapUsage",
        "FreeStorageSpace",
    ] {
        assert!(metrics.contains(&m), "{metrics:?}");
    }
    drop(source);
    destroy_leaves_nothing(&p, &moto, case);
}

#[test]
fn plan_emulate_tenants_staging_moves_each_tenant_into_its_database_of_one_cluster() {
    let moto = require();
    let p = Project::new();
    let case = &CASE1;
    let _down = Down(&p, case);
    let (code, out) = emulate(&p, &moto, case, &["apply", "--yes"]);
    assert_eq!(code, 0, "{out}");
    for t in ["acme", "globex", "initech"] {
        assert!(
            out.contains(&format!("Held back by gate `cutover-{t}`")),
            "{out}"
        );
        assert!(out.contains(&format!("> validate-{t}: done")), "{out}");
    }
    // The tenants' instances are databases of one stand-in; the import instance a standby of it.
    assert!(
        out.contains("is database `globex` of `source-acme`'s stand-in")
            && out.contains("stands in for `import-globex`")
            && out.contains("a streaming standby of `source-globex`'s stand-in"),
        "{out}"
    );
    // Only globex (240 GB, threshold 100) loads through an import instance, from its paused
    // replay position, and captures changes from that same position.
    assert!(
        !out.contains("import-acme") && !out.contains("import-initech"),
        "{out}"
    );
    let paused = line_of(&out, "pause-replay-globex: ");
    let lsn = paused.rsplit(' ').next().unwrap();
    assert!(paused.contains("replay paused at "), "{paused}");
    assert!(
        line_of(&out, "verify-lsn-globex: ")
            .starts_with(&format!("verify-lsn-globex: {lsn} verified")),
        "{out}"
    );
    assert_eq!(
        line_of(&out, "replicate-globex: "),
        format!("replicate-globex: 2 subscription(s) streaming from {lsn}")
    );
    let l = layout(&p, case);
    let rt = runtime();
    // Each tenant's rows are in its own database of the cluster's stand-in.
    let rows = |node: &str, db: &str| -> i64 {
        rt.block_on(async {
            let c = admin(&l, node, db).connect().await.unwrap();
            c.query_one("SELECT count(*) FROM public.events", &[])
                .await
                .unwrap()
                .get(0)
        })
    };
    for t in ["acme", "globex", "initech"] {
        assert_eq!(rows("cluster", t), rows("source-acme", t), "{t}");
    }
    let rds = aws_sdk_rds::Client::new(&sdk(&l, case.region));
    let import = "tenants-tenants-staging-import-globex";
    let exists = |id: &str| {
        rt.block_on(
            rds.describe_db_instances()
                .db_instance_identifier(id)
                .send(),
        )
        .is_ok()
    };
    // The import instance retired in the apply that made it, once globex validated, after
    // every step that reads it.
    assert!(!exists(import), "retired after globex validated");
    let at = |what: &str| position(&out, what);
    assert!(
        at("> validate-globex: done") < at("- import-globex: done"),
        "{out}"
    );
    assert!(
        at("> load-globex: done") < at("- import-globex: done"),
        "{out}"
    );

    // globex's cutover: the tenant's instance is fenced, its record flips to the cluster,
    // within its budget; a write made on the tenant's database before reaches the cluster; the
    // other tenants stay where they are.
    rt.block_on(async {
        let c = admin(&l, "source-acme", "globex").connect().await.unwrap();
        c.batch_execute(
            "INSERT INTO public.events (account, payload) VALUES (7, 'before the cutover')",
        )
        .await
        .unwrap();
    });
    let (code, out) = emulate(
        &p,
        &moto,
        case,
        &["apply", "--yes", "--approve", "cutover-globex"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Budget `writes-refused-globex`: "), "{out}");
    let r53 = route53(&l);
    assert_eq!(rt.block_on(record(&r53, case)), case.target_host);
    let other = Case {
        record: "acme.db.staging.tenants.internal",
        ..CASE1
    };
    assert_eq!(
        rt.block_on(record(&r53, &other)),
        "tenant-acme-staging.aaaaaaaaaa.eu-central-1.rds.amazonaws.com"
    );
    assert_eq!(rows("cluster", "globex"), 1001);
    assert!(
        rt.block_on(cutover::pg::cutover::is_read_only(&admin(
            &l,
            "source-acme",
            "globex"
        )))
        .unwrap(),
        "globex's old database refuses writes"
    );
    // One tenant goes back: its record first, then its cutover through the reverse
    // replication (the write made on the cluster meanwhile comes along); the others are not
    // touched.
    rt.block_on(async {
        let c = admin(&l, "cluster", "globex").connect().await.unwrap();
        c.batch_execute(
            "INSERT INTO public.events (account, payload) VALUES (8, 'after the cutover')",
        )
        .await
        .unwrap();
    });
    for node in ["flip-globex", "switch-globex"] {
        let (code, out) = emulate(&p, &moto, case, &["rollback", "--node", node, "--yes"]);
        assert_eq!(code, 0, "{out}");
    }
    assert_eq!(rt.block_on(record(&r53, case)), case.source_host);
    assert_eq!(
        rows("source-acme", "globex"),
        1002,
        "the cluster's write came back"
    );
    assert!(
        !rt.block_on(cutover::pg::cutover::is_read_only(&admin(
            &l,
            "source-acme",
            "globex"
        )))
        .unwrap(),
        "globex's database takes writes again"
    );
    assert_eq!(
        rt.block_on(record(&r53, &other)),
        "tenant-acme-staging.aaaaaaaaaa.eu-central-1.rds.amazonaws.com"
    );
    let (code, out) = emulate(
        &p,
        &moto,
        case,
        &["apply", "--yes", "--approve", "cutover-acme"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(rt.block_on(record(&r53, &other)), case.target_host);
    destroy_leaves_nothing(&p, &moto, case);
}

#[test]
fn plan_emulate_ec2_rds_staging_restarts_one_table_group_from_a_new_verified_lsn() {
    let moto = require();
    let p = Project::new();
    let case = &CASE2;
    let _down = Down(&p, case);
    let (code, out) = emulate(&p, &moto, case, &["apply", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let l = layout(&p, case);
    let rt = runtime();
    let (source, target) = (standin(&rt, &l, "source"), standin(&rt, &l, "target"));
    // The group `events` broke on the target (rows that differ), and the source goes on.
    rt.block_on(async {
        target
            .batch_execute("UPDATE public.events SET payload = 'diverged' WHERE id % 7 = 0")
            .await
            .unwrap();
        source
            .batch_execute("INSERT INTO public.events (account, payload) SELECT 1, 'before the restart' FROM generate_series(1, 50)")
            .await
            .unwrap();
    });
    let restart = |extra: &[&str]| {
        let mut args = vec!["--set", "restart_group=events"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["apply", "--yes", "--approve", "restart"]);
        emulate(&p, &moto, case, &args)
    };
    let (code, out) = restart(&[]);
    assert_eq!(code, 0, "{out}");
    let lsn = line_of(&out, "restart-pause: ")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(
        out.contains("restart-slot-events: 1 earlier slot(s) dropped")
            && line_of(&out, "restart-verify: ")
                .starts_with(&format!("restart-verify: {lsn} verified"))
            && out.contains("restart-load-events: reloading 2 table(s)")
            && line_of(&out, "restart-replicate-events: ")
                == format!("restart-replicate-events: 1 subscription(s) streaming from {lsn}"),
        "{out}"
    );
    assert!(out.contains("restart-validate: 12 table(s), "), "{out}");
    // Only that group's tables were reloaded; the others kept their rows and their streams.
    assert!(!out.contains("restart-slot-orders"), "{out}");
    let count = |c: &tokio_postgres::Client, q: &str| -> i64 {
        rt.block_on(c.query_one(q, &[])).unwrap().get(0)
    };
    let diverged = "SELECT count(*) FROM public.events WHERE payload = 'diverged'";
    assert_eq!(count(&target, diverged), 0);
    // Changes after the restart reach the target through the new subscription, once.
    rt.block_on(
        source.batch_execute("INSERT INTO public.events (account, payload) SELECT 2, 'after the restart' FROM generate_series(1, 20)"),
    )
    .unwrap();
    let after = "SELECT count(*) FROM public.events WHERE payload = 'after the restart'";
    let t0 = Instant::now();
    while count(&target, after) < 20 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&target, after), 20);
    let all = "SELECT count(*) FROM public.events";
    assert_eq!(count(&target, all), count(&source, all));
    // The same apply again runs nothing more; a later restart raises the serial.
    let (code, out) = restart(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("> restart-slot-events: running"), "{out}");
    // A group that is not one of the stack's is refused at its key.
    let (code, out) = emulate(
        &p,
        &moto,
        case,
        &["--set", "restart_group=evnets", "preview"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("key `restart_group`: `evnets` is not a table group of this stack: name one of events, payloads, orders, order-lines, audit, rest"),
        "{out}"
    );
    drop((source, target));
    destroy_leaves_nothing(&p, &moto, case);
}
