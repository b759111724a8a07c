//! The `aws` provider against `moto_server` (moto 5.2.5 from PyPI in `target/test-venv`, installed by
//! scripts/prereqs), started on a free loopback port by each test. Without it these tests fail,
//! naming what installs it.
//!
//! Emulator gaps, written down where they matter: moto answers ResetDBParameterGroup and
//! ResetDBClusterParameterGroup with a 500, so removing a parameter from a plan (which resets it)
//! is checked in `src/provider/aws/rds.rs` by capturing the exact request instead; describing a missing parameter group returns an empty list instead of
//! DBParameterGroupNotFound (the provider treats both as absent); unknown families are accepted
//! (the provider checks them offline). Route53: a CREATE of an existing record succeeds and
//! overwrites it (AWS refuses it), so the provider's look-up before CREATE is what the emulator
//! tests; changes are INSYNC at once, so the flip's wait polls only once here.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_rds::config::{Credentials, Region};

use super::proxy::TestProxy;
use super::Project;

mod lifecycle;

fn moto_server() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CUTOVER_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/moto_server");
    p.exists().then_some(p)
}

/// moto_server is needed: its absence fails the test, naming what installs it.
pub(super) fn require_moto() -> PathBuf {
    moto_server().filter(|p| p.exists()).unwrap_or_else(|| {
        panic!("moto_server is needed and was not found: run scripts/prereqs all (it installs moto[server] into target/test-venv), or set CUTOVER_MOTO_SERVER")
    })
}

/// A moto_server on a free port, stopped when dropped.
pub(super) struct Moto {
    child: Child,
    pub(super) port: u16,
}

impl Moto {
    pub(super) fn start(bin: &PathBuf) -> Moto {
        let port = cutover::pg::cluster::free_port();
        let child = Command::new(bin)
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { child, port }
    }
    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// The emulator's settings for any service's client: its endpoint (or `url`), a region and
    /// its test credentials.
    pub(super) fn sdk_config(&self, url: &str) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_rds::config::SharedCredentialsProvider::new(
                Credentials::new("testing", "testing", None, None, "test"),
            ))
            .build()
    }
    fn rds(&self) -> aws_sdk_rds::Client {
        let conf = aws_sdk_rds::Config::builder()
            .behavior_version_latest()
            .region(Region::new("us-east-1"))
            .endpoint_url(self.url())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .build();
        aws_sdk_rds::Client::from_conf(conf)
    }
}

impl Moto {
    fn route53(&self) -> aws_sdk_route53::Client {
        aws_sdk_route53::Client::new(&self.sdk_config(&self.url()))
    }
}

impl Moto {
    fn cloudwatch(&self) -> aws_sdk_cloudwatch::Client {
        aws_sdk_cloudwatch::Client::new(&self.sdk_config(&self.url()))
    }
    fn sns(&self) -> aws_sdk_sns::Client {
        aws_sdk_sns::Client::new(&self.sdk_config(&self.url()))
    }
}

impl Moto {
    fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk_config(&self.url()))
    }
}

impl Moto {
    fn autoscaling(&self) -> aws_sdk_applicationautoscaling::Client {
        let conf = aws_sdk_applicationautoscaling::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_applicationautoscaling::config::Region::new(
                "us-east-1",
            ))
            .endpoint_url(self.url())
            .credentials_provider(aws_sdk_applicationautoscaling::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        aws_sdk_applicationautoscaling::Client::from_conf(conf)
    }
}

/// A cluster's reader autoscaling as the emulator holds it: (min, max, target value, scale-out
/// cooldown).
fn reader_scaling(
    rt: &tokio::runtime::Runtime,
    aas: &aws_sdk_applicationautoscaling::Client,
    cluster_id: &str,
) -> (i32, i32, f64, Option<i32>) {
    rt.block_on(async {
        use aws_sdk_applicationautoscaling::types::ServiceNamespace;
        let t = aas
            .describe_scalable_targets()
            .service_namespace(ServiceNamespace::Rds)
            .resource_ids(format!("cluster:{cluster_id}"))
            .send()
            .await
            .unwrap();
        let t = t.scalable_targets()[0].clone();
        let p = aas
            .describe_scaling_policies()
            .service_namespace(ServiceNamespace::Rds)
            .resource_id(format!("cluster:{cluster_id}"))
            .send()
            .await
            .unwrap();
        let cfg = p.scaling_policies()[0]
            .target_tracking_scaling_policy_configuration()
            .unwrap()
            .clone();
        (
            t.min_capacity(),
            t.max_capacity(),
            cfg.target_value(),
            cfg.scale_out_cooldown(),
        )
    })
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(p: &Project, args: &[&str]) -> (i32, String) {
    run_env(p, args, &[])
}

/// Runs `plan ARGS` with the emulator's credentials (and `env`); (exit code, stdout + stderr).
pub(super) fn run_env(p: &Project, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = p.plan();
    cmd.args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn stack(p: &Project, m: &Moto, family: &str, work_mem: &str) {
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-params\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\nfamily = \"{family}\"\nwork_mem = \"{work_mem}\"\n",
            m.url()
        ),
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// (family, parameters as name -> (value, apply method), tags) of a DB parameter group.
async fn read_group(
    c: &aws_sdk_rds::Client,
    name: &str,
) -> Option<(String, Vec<(String, String, String)>, Vec<(String, String)>)> {
    let g = c
        .describe_db_parameter_groups()
        .db_parameter_group_name(name)
        .send()
        .await
        .ok()?;
    let g = g.db_parameter_groups().first()?.clone();
    let params = c
        .describe_db_parameters()
        .db_parameter_group_name(name)
        .send()
        .await
        .unwrap();
    let mut ps: Vec<(String, String, String)> = params
        .parameters()
        .iter()
        .map(|p| {
            (
                p.parameter_name().unwrap_or_default().to_string(),
                p.parameter_value().unwrap_or_default().to_string(),
                p.apply_method()
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    ps.sort();
    let tags = c
        .list_tags_for_resource()
        .resource_name(g.db_parameter_group_arn().unwrap())
        .send()
        .await
        .unwrap()
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    Some((g.db_parameter_group_family().unwrap().to_string(), ps, tags))
}

#[test]
fn parameter_groups_are_created_read_back_updated_replaced_refreshed_and_deleted() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let p = Project::new();
    stack(&p, &m, "postgres15", "262144");
    let c = m.rds();
    let rt = rt();
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Apply complete: 2 added"), "{out}");
    let name = "aws-params-aws-params";
    let (family, params, tags) = rt.block_on(read_group(&c, name)).expect("created");
    assert_eq!(family, "postgres15");
    assert_eq!(
        params,
        vec![
            (
                "shared_buffers".to_string(),
                "8192".to_string(),
                "pending-reboot".to_string()
            ),
            (
                "work_mem".to_string(),
                "262144".to_string(),
                "immediate".to_string()
            ),
        ]
    );
    for t in [
        ("cutover:plan", "aws-params"),
        ("cutover:stack", "aws"),
        ("cutover:node", "params"),
    ] {
        assert!(
            tags.contains(&(t.0.to_string(), t.1.to_string())),
            "{tags:?}"
        );
    }
    let cluster = rt.block_on(async {
        c.describe_db_cluster_parameters()
            .db_cluster_parameter_group_name("aws-params-aws-cluster-params")
            .send()
            .await
            .unwrap()
    });
    assert_eq!(
        cluster.parameters()[0].parameter_name(),
        Some("rds.logical_replication")
    );
    assert_eq!(
        run(&p, &["preview", "aws", "--detailed-exitcode"]).0,
        0,
        "no changes after apply"
    );

    // One parameter changes: the preview names it, the apply changes only it.
    stack(&p, &m, "postgres15", "524288");
    let (code, out) = run(&p, &["preview", "aws", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "~ params (aws.rds.parameter_group) `aws-params-aws-params`  # inputs changed"
        ),
        "{out}"
    );
    assert!(out.contains("~ parameter.work_mem = {\"value\":\"262144\",\"apply\":\"immediate\"} -> {\"value\":\"524288\",\"apply\":\"immediate\"}"), "{out}");
    assert!(!out.contains("parameter.shared_buffers"), "{out}");
    assert_eq!(run(&p, &["apply", "aws", "--yes"]).0, 0);
    let (_, params, _) = rt.block_on(read_group(&c, name)).unwrap();
    assert!(
        params.contains(&(
            "work_mem".to_string(),
            "524288".to_string(),
            "immediate".to_string()
        )),
        "{params:?}"
    );

    // The family cannot change in place: replaced.
    stack(&p, &m, "postgres16", "524288");
    let (_, out) = run(&p, &["preview", "aws"]);
    assert!(
        out.contains("-/+ params (aws.rds.parameter_group) `aws-params-aws-params`  # `family` cannot change in place"),
        "{out}"
    );
    assert!(
        out.contains("~ family = \"postgres15\" -> \"postgres16\"  # forces replacement"),
        "{out}"
    );
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 added, 0 changed, 1 destroyed"), "{out}");
    let (family, _, _) = rt.block_on(read_group(&c, name)).unwrap();
    assert_eq!(family, "postgres16");

    // Drift: a parameter changed behind the tool's back is found by refresh and put back by apply.
    rt.block_on(async {
        c.modify_db_parameter_group()
            .db_parameter_group_name(name)
            .parameters(
                aws_sdk_rds::types::Parameter::builder()
                    .parameter_name("work_mem")
                    .parameter_value("1024")
                    .apply_method(aws_sdk_rds::types::ApplyMethod::Immediate)
                    .build(),
            )
            .send()
            .await
            .unwrap()
    });
    let (code, out) = run(&p, &["refresh", "aws"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("~ params: changed outside this tool: parameter.work_mem"),
        "{out}"
    );
    let (code, out) = run(&p, &["preview", "aws", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("drift found by refresh in parameter.work_mem"),
        "{out}"
    );
    assert_eq!(run(&p, &["apply", "aws", "--yes"]).0, 0);
    let (_, params, _) = rt.block_on(read_group(&c, name)).unwrap();
    assert!(
        params.contains(&(
            "work_mem".to_string(),
            "524288".to_string(),
            "immediate".to_string()
        )),
        "{params:?}"
    );

    let (code, out) = run(&p, &["destroy", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(rt.block_on(read_group(&c, name)).is_none(), "deleted");
}

/// Writes into stack `aws`'s state an intent to create `node`, as a run killed after recording
/// it would leave.
fn interrupted_create(p: &Project, plan: &str, node: &str, type_name: &str, id: &str) {
    let dir = cutover::state::StateAt::Local(p.state_dir("aws"));
    let _lock = cutover::state::Lock::acquire(&dir, "aws", "test").unwrap();
    let mut store = cutover::state::StateStore::open(&dir, plan, "aws").unwrap();
    store.append(cutover::state::Entry::Intent {
        node: node.into(),
        intent: cutover::state::Intent {
            op: cutover::state::Op::Create,
            type_name: type_name.into(),
            id: id.into(),
            inputs: Default::default(),
            triggers: Default::default(),
            at: "t".into(),
            failed: None,
            location: None,
        },
    });
    store.compact().unwrap();
}

#[test]
fn an_existing_group_without_our_tags_is_not_taken_over_until_imported() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let p = Project::new();
    stack(&p, &m, "postgres15", "262144");
    let c = m.rds();
    let name = "aws-params-aws-params";
    rt().block_on(async {
        c.create_db_parameter_group()
            .db_parameter_group_name(name)
            .db_parameter_group_family("postgres15")
            .description("target instances")
            .send()
            .await
            .unwrap()
    });
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "DB parameter group `{name}` exists and is not this plan's (no cutover tags)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("adopt it with `plan import aws params {name}`")),
        "{out}"
    );
    let (_, list) = run(&p, &["state", "aws", "list"]);
    assert!(
        !list.lines().any(|l| l.starts_with("params ")),
        "not recorded as ours, and nothing left pending: {list}"
    );
    // A second apply refuses the same way (no reconciliation adopts it behind our back).
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("reconciled params"), "{out}");
    // As if a run had crashed after recording its intent to create `params`: reconciliation finds
    // the foreign group by its name and still does not adopt it.
    interrupted_create(&p, "aws-params", "params", "aws.rds.parameter_group", name);
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("reconciled params: an object `{name}` exists but was not created by this plan: not adopted")),
        "{out}"
    );
    // Adopted explicitly, it is managed: the next apply sets its parameters.
    let (code, out) = run(&p, &["import", "aws", "params", name]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let (_, params, _) = rt().block_on(read_group(&c, name)).unwrap();
    assert!(
        params.contains(&(
            "work_mem".to_string(),
            "262144".to_string(),
            "immediate".to_string()
        )),
        "{params:?}"
    );
}

fn cluster_stack(p: &Project, m: &Moto, retention: u32, reader_class: &str, protect: bool) {
    cluster_stack_max(p, m, retention, reader_class, protect, 4)
}

fn cluster_stack_max(
    p: &Project,
    m: &Moto,
    retention: u32,
    reader_class: &str,
    protect: bool,
    max: u32,
) {
    cluster_stack_at(p, &m.url(), "", retention, reader_class, protect, max);
    // A writer and two readers.
    let text = p
        .read("stacks/aurora.toml")
        .replace("[secrets]", "readers = 2\n[secrets]");
    p.stack("aurora", &text);
}

/// The aws-cluster stack at `url`, with `extra` top-level lines.
fn cluster_stack_at(
    p: &Project,
    url: &str,
    extra: &str,
    retention: u32,
    reader_class: &str,
    protect: bool,
    max: u32,
) {
    p.stack(
        "aurora",
        &format!(
            "plan = \"aws-cluster\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n{extra}[values]\nbackup_retention = {retention}\nreader_class = \"{reader_class}\"\ndeletion_protection = {protect}\nmax_readers = {max}\n[secrets]\nmaster_password = \"env:CUTOVER_TEST_MASTER_PASSWORD\"\n",
            url
        ),
    );
}

/// `run` with the master password of the cluster tests in the environment.
fn run_with_password(p: &Project, args: &[&str]) -> (i32, String) {
    run_env(
        p,
        args,
        &[("CUTOVER_TEST_MASTER_PASSWORD", "s3cr3t-Master-9f2")],
    )
}

#[test]
fn an_aurora_cluster_with_a_writer_and_two_readers_is_created_changed_and_destroyed() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let p = Project::new();
    cluster_stack(&p, &m, 7, "db.r6g.large", false);
    let c = m.rds();
    let rt = rt();
    let (code, out) = run_with_password(&p, &["apply", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Apply complete: 6 added"), "{out}");
    let cluster_id = "aws-cluster-aurora-target";
    let (status, pg, retention, members, tags) = rt.block_on(async {
        let d = c
            .describe_db_clusters()
            .db_cluster_identifier(cluster_id)
            .send()
            .await
            .unwrap();
        let d = d.db_clusters()[0].clone();
        let members: Vec<String> = d
            .db_cluster_members()
            .iter()
            .map(|m| m.db_instance_identifier().unwrap_or_default().to_string())
            .collect();
        (
            d.status().unwrap().to_string(),
            d.db_cluster_parameter_group().unwrap().to_string(),
            d.backup_retention_period().unwrap(),
            members,
            tag_list(d.tag_list()),
        )
    });
    assert_eq!(status, "available");
    assert_eq!(pg, "aws-cluster-aurora-cluster-params");
    assert_eq!(retention, 7);
    // The cluster snapshot step: a tagged snapshot of the cluster.
    let snap = rt.block_on(async {
        let s = c
            .describe_db_cluster_snapshots()
            .db_cluster_snapshot_identifier("aws-cluster-aurora-cluster-snapshot")
            .send()
            .await
            .unwrap();
        let s = &s.db_cluster_snapshots()[0];
        (
            s.db_cluster_identifier().map(String::from),
            s.status().map(String::from),
        )
    });
    assert_eq!(
        snap,
        (Some(cluster_id.to_string()), Some("available".to_string()))
    );
    let mut members = members;
    members.sort();
    assert_eq!(
        members,
        vec![
            "aws-cluster-aurora-reader".to_string(),
            "aws-cluster-aurora-reader-2".to_string(),
            "aws-cluster-aurora-writer".to_string()
        ]
    );
    assert!(
        tags.contains(&("cutover:node".to_string(), "target".to_string())),
        "{tags:?}"
    );
    // The password reached AWS but not the state.
    for (path, bytes) in super::tree(&p.state_dir("aurora")) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cr3t-Master-9f2"),
            "password in {}",
            path.display()
        );
    }
    assert_eq!(
        run_with_password(&p, &["preview", "aurora", "--detailed-exitcode"]).0,
        0,
        "no changes after apply"
    );
    // Reader autoscaling: the scalable target and its target-tracking policy.
    let aas = m.autoscaling();
    let scaling = |rt: &tokio::runtime::Runtime| reader_scaling(rt, &aas, cluster_id);
    assert_eq!(scaling(&rt), (1, 4, 60.0, Some(120)));

    // In-place changes: the cluster's backups, the reader's class, the most readers.
    cluster_stack_max(&p, &m, 14, "db.r6g.xlarge", false, 6);
    let (code, out) = run_with_password(&p, &["preview", "aurora", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("~ backup_retention_period = 7 -> 14"), "{out}");
    assert!(
        out.contains("~ class = \"db.r6g.large\" -> \"db.r6g.xlarge\""),
        "{out}"
    );
    let (code, out) = run_with_password(&p, &["apply", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("~ max = 4 -> 6"), "{out}");
    assert!(out.contains("0 added, 4 changed, 0 destroyed"), "{out}");
    assert_eq!(scaling(&rt).1, 6);
    rt.block_on(async {
        let d = c
            .describe_db_clusters()
            .db_cluster_identifier(cluster_id)
            .send()
            .await
            .unwrap();
        assert_eq!(d.db_clusters()[0].backup_retention_period(), Some(14));
        let i = c
            .describe_db_instances()
            .db_instance_identifier("aws-cluster-aurora-reader")
            .send()
            .await
            .unwrap();
        assert_eq!(
            i.db_instances()[0].db_instance_class(),
            Some("db.r6g.xlarge")
        );
    });

    let (code, out) = run_with_password(&p, &["destroy", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    rt.block_on(async {
        let gone = c
            .describe_db_clusters()
            .db_cluster_identifier(cluster_id)
            .send()
            .await;
        assert!(
            gone.is_err() || gone.unwrap().db_clusters().is_empty(),
            "cluster deleted"
        );
    });
}

#[test]
fn deletion_protection_stops_a_destroy_with_the_fix() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let p = Project::new();
    cluster_stack(&p, &m, 7, "db.r6g.large", true);
    assert_eq!(run_with_password(&p, &["apply", "aurora", "--yes"]).0, 0);
    let (code, out) = run_with_password(&p, &["destroy", "aurora", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cluster aws-cluster-aurora-target has deletion protection on; set .deletion_protection(false) in the plan and apply, then destroy"), "{out}");
    let (_, list) = run_with_password(&p, &["state", "aurora", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("target resource aws.rds.cluster")),
        "still recorded: {list}"
    );
    assert!(!list.contains("interrupted"), "{list}");
}

fn tag_list(t: &[aws_sdk_rds::types::Tag]) -> Vec<(String, String)> {
    t.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// (values, ttl) of a record, if it exists.
async fn record(
    c: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
    kind: aws_sdk_route53::types::RrType,
) -> Option<(Vec<String>, i64)> {
    let out = c
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .start_record_name(name)
        .start_record_type(kind.clone())
        .send()
        .await
        .unwrap();
    out.resource_record_sets()
        .iter()
        .find(|r| r.name().trim_end_matches('.') == name && *r.r#type() == kind)
        .map(|r| {
            (
                r.resource_records()
                    .iter()
                    .map(|v| v.value().to_string())
                    .collect(),
                r.ttl().unwrap_or(0),
            )
        })
}

/// Creates the hosted zone `name` in the emulator; its id without the `/hostedzone/` prefix.
async fn hosted_zone(c: &aws_sdk_route53::Client, name: &str, reference: &str) -> String {
    let z = c
        .create_hosted_zone()
        .name(name)
        .caller_reference(reference)
        .send()
        .await
        .unwrap();
    z.hosted_zone()
        .unwrap()
        .id()
        .trim_start_matches("/hostedzone/")
        .to_string()
}

async fn upsert(
    c: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
    kind: aws_sdk_route53::types::RrType,
    value: &str,
) {
    change_record(
        c,
        zone,
        aws_sdk_route53::types::ChangeAction::Upsert,
        name,
        kind,
        value,
        300,
    )
    .await
}

/// One change of a one-value record set, made behind the tool's back.
async fn change_record(
    c: &aws_sdk_route53::Client,
    zone: &str,
    action: aws_sdk_route53::types::ChangeAction,
    name: &str,
    kind: aws_sdk_route53::types::RrType,
    value: &str,
    ttl: i64,
) {
    use aws_sdk_route53::types::{Change, ChangeBatch, ResourceRecord, ResourceRecordSet};
    c.change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(action)
                        .resource_record_set(
                            ResourceRecordSet::builder()
                                .name(name)
                                .r#type(kind)
                                .ttl(ttl)
                                .resource_records(
                                    ResourceRecord::builder().value(value).build().unwrap(),
                                )
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

fn dns_stack(p: &Project, m: &Moto, db_target: &str, extra: &str) {
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-dns\"\nprovider = \"aws\"\nregion = \"eu-west-1\"\nendpoint_url = \"{}\"\n[values]\nzone = \"example.test\"\ndb_target = \"{db_target}\"\napp_from = \"old-db.internal\"\napp_to = \"new-db.internal\"\n{extra}",
            m.url()
        ),
    );
}

/// A DNS cutover's TTL step: the record's TTL lowered ahead of the flip and the old TTL waited
/// out; run again after the TTL is low, it waits out what the plan says the TTL was (a run
/// interrupted in its wait owes it), and without that it waits nothing; the flip then keeps the
/// low TTL.
#[test]
fn a_record_ttl_is_lowered_ahead_of_the_flip_and_the_old_ttl_waited_out() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let c = m.route53();
    let rt = rt();
    use aws_sdk_route53::types::RrType;
    let zone = rt.block_on(async {
        let id = hosted_zone(&c, "example.test", "ttl").await;
        change_record(
            &c,
            &id,
            aws_sdk_route53::types::ChangeAction::Upsert,
            "app.example.test",
            RrType::Cname,
            "old-db.internal",
            3,
        )
        .await;
        id
    });
    let p = Project::new();
    dns_stack(
        &p,
        &m,
        "cluster-1.internal",
        "lower_ttl = 1\nlower_was = 3\n",
    );
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("lower-ttl: TTL 1 s; waiting out the old TTL of 3 s"),
        "{out}"
    );
    let got = rt.block_on(record(&c, &zone, "app.example.test", RrType::Cname));
    assert_eq!(
        got,
        Some((vec!["old-db.internal".to_string()], 1)),
        "lowered, still the old value"
    );
    let outputs = |p: &Project| {
        let (_, show) = run(p, &["state", "aws", "show", "lower-ttl"]);
        let v: serde_json::Value = serde_json::from_str(&show).unwrap();
        v["step"]["outputs"].clone()
    };
    let o = outputs(&p);
    assert_eq!(
        (o["previous_ttl"].as_u64(), o["waited_s"].as_u64()),
        (Some(3), Some(3)),
        "{o}"
    );
    // Again, with the TTL low already: what the plan says it was is waited out again.
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--replace", "lower-ttl"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(outputs(&p)["waited_s"].as_u64(), Some(3));
    // Without it, a low TTL is taken as it is.
    dns_stack(&p, &m, "cluster-1.internal", "lower_ttl = 1\n");
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--replace", "lower-ttl"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("waiting out"), "{out}");
    assert_eq!(outputs(&p)["waited_s"].as_u64(), Some(0));
    // The flip keeps the low TTL.
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    let got = rt.block_on(record(&c, &zone, "app.example.test", RrType::Cname));
    assert_eq!(got, Some((vec!["new-db.internal".to_string()], 1)));
    // A record that is not there is refused, naming it.
    rt.block_on(change_record(
        &c,
        &zone,
        aws_sdk_route53::types::ChangeAction::Delete,
        "app.example.test",
        RrType::Cname,
        "new-db.internal",
        1,
    ));
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--replace", "lower-ttl"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("record app.example.test (CNAME) does not exist in zone"),
        "{out}"
    );
}

#[test]
fn route53_records_and_the_dns_flip_with_its_rollback() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let c = m.route53();
    let rt = rt();
    use aws_sdk_route53::types::RrType;
    // The zone and the record the application uses exist before the plan.
    let zone = rt.block_on(async {
        let id = hosted_zone(&c, "example.test", "test").await;
        upsert(
            &c,
            &id,
            "app.example.test",
            RrType::Cname,
            "old-db.internal",
        )
        .await;
        upsert(&c, &id, "taken.example.test", RrType::A, "10.0.0.1").await;
        id
    });
    let p = Project::new();
    dns_stack(&p, &m, "cluster-1.internal", "");
    let (code, out) = run(&p, &["preview", "aws"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("+ db-record (aws.route53.record)"), "{out}");
    assert!(out.contains("flip (aws.route53.flip)"), "{out}");

    // Create: the record the plan owns; the flip waits behind its gate.
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let got = rt.block_on(record(&c, &zone, "db.example.test", RrType::Cname));
    assert_eq!(got, Some((vec!["cluster-1.internal".to_string()], 30)));

    // Update in place (UPSERT).
    dns_stack(&p, &m, "cluster-2.internal", "");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 changed"), "{out}");
    let got = rt.block_on(record(&c, &zone, "db.example.test", RrType::Cname));
    assert_eq!(got.unwrap().0, vec!["cluster-2.internal".to_string()]);

    // Drift behind the tool's back shows in refresh and preview.
    rt.block_on(upsert(
        &c,
        &zone,
        "db.example.test",
        RrType::Cname,
        "someone-else.internal",
    ));
    let (code, out) = run(&p, &["refresh", "aws"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("~ db-record: changed outside this tool: ttl, values"),
        "{out}"
    );
    let (code, out) = run(&p, &["preview", "aws", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(run(&p, &["apply", "aws", "--yes"]).0, 0);

    // A new name cannot change in place: the record is replaced (the old one deleted).
    dns_stack(&p, &m, "cluster-2.internal", "db_name = \"database\"\n");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("-/+ db-record (aws.route53.record)"), "{out}");
    assert_eq!(
        rt.block_on(record(&c, &zone, "db.example.test", RrType::Cname)),
        None
    );
    let got = rt.block_on(record(&c, &zone, "database.example.test", RrType::Cname));
    assert_eq!(got.unwrap().0, vec!["cluster-2.internal".to_string()]);
    dns_stack(&p, &m, "cluster-2.internal", "");
    assert_eq!(run(&p, &["apply", "aws", "--yes"]).0, 0);

    // An alias A record (to a load balancer): created, read back, then removed from the plan.
    dns_stack(
        &p,
        &m,
        "cluster-2.internal",
        "alias_to = \"lb-1.us-east-1.elb.amazonaws.com\"\n",
    );
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let alias = rt.block_on(async {
        let out = c
            .list_resource_record_sets()
            .hosted_zone_id(&zone)
            .start_record_name("www.example.test")
            .start_record_type(RrType::A)
            .send()
            .await
            .unwrap();
        out.resource_record_sets()
            .iter()
            .find(|r| r.name().trim_end_matches('.') == "www.example.test")
            .and_then(|r| {
                r.alias_target().map(|a| {
                    (
                        a.dns_name().trim_end_matches('.').to_string(),
                        a.evaluate_target_health(),
                    )
                })
            })
    });
    assert_eq!(
        alias,
        Some(("lb-1.us-east-1.elb.amazonaws.com".to_string(), true))
    );
    let (code, out) = run(&p, &["preview", "aws", "--detailed-exitcode", "--refresh"]);
    assert_eq!(code, 0, "an alias record reads back as declared: {out}");
    dns_stack(&p, &m, "cluster-2.internal", "");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("- www (aws.route53.record)"), "{out}");

    // An existing record is never taken over: refused, nothing recorded; adopted by import.
    dns_stack(&p, &m, "cluster-2.internal", "also_declare = \"taken\"\n");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("DNS record `")
            && out.contains("/taken.example.test/A` exists: records carry no tags"),
        "{out}"
    );
    assert!(out.contains("plan import"), "{out}");
    let got = rt.block_on(record(&c, &zone, "taken.example.test", RrType::A));
    assert_eq!(got.unwrap().0, vec!["10.0.0.1".to_string()], "untouched");
    let (code, out) = run(
        &p,
        &[
            "import",
            "aws",
            "also",
            &format!("{zone}/taken.example.test/A"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let got = rt.block_on(record(&c, &zone, "taken.example.test", RrType::A));
    assert_eq!(
        got.unwrap().0,
        vec!["10.0.0.9".to_string()],
        "adopted, then managed"
    );

    // The flip: the record moves to the new target; the old value is kept for rollback.
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("INSYNC"), "{out}");
    let got = rt.block_on(record(&c, &zone, "app.example.test", RrType::Cname));
    assert_eq!(got, Some((vec!["new-db.internal".to_string()], 30)));
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("flip: running"),
        "the flip never runs twice: {out}"
    );
    let (code, out) = run(&p, &["rollback", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let got = rt.block_on(record(&c, &zone, "app.example.test", RrType::Cname));
    assert_eq!(
        got,
        Some((vec!["old-db.internal".to_string()], 300)),
        "back to the old value and TTL"
    );

    // A record changed by someone else in the meantime is never overwritten by the flip.
    rt.block_on(upsert(
        &c,
        &zone,
        "app.example.test",
        RrType::Cname,
        "third.internal",
    ));
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--approve", "cutover"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("someone else changed it"), "{out}");
    let got = rt.block_on(record(&c, &zone, "app.example.test", RrType::Cname));
    assert_eq!(got.unwrap().0, vec!["third.internal".to_string()]);

    // Destroy removes the records the plan owns; the application's record is not the plan's.
    let (code, out) = run(&p, &["destroy", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        rt.block_on(record(&c, &zone, "db.example.test", RrType::Cname)),
        None
    );
    assert!(rt
        .block_on(record(&c, &zone, "app.example.test", RrType::Cname))
        .is_some());
}

/// The instance the `aws-watch` plan's alarms watch, which the plan does not own (made once).
fn watched_instance(m: &Moto) {
    rt().block_on(async {
        let rds = m.rds();
        let exists = rds
            .describe_db_instances()
            .db_instance_identifier("target-1")
            .send()
            .await
            .is_ok();
        if !exists {
            rds.create_db_instance()
                .db_instance_identifier("target-1")
                .engine("postgres")
                .db_instance_class("db.r6g.large")
                .allocated_storage(100)
                .master_username("admin")
                .master_user_password("watched-secret-1")
                .send()
                .await
                .unwrap();
        }
    });
}

fn watch_stack(p: &Project, m: &Moto, cpu: f64, extra: &str) {
    watched_instance(m);
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-watch\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\ninstance = \"target-1\"\ncpu_threshold = {cpu:.1}\nbake_seconds = 1\n{extra}",
            m.url()
        ),
    );
}

/// name -> (threshold, state, alarm actions) of every alarm.
async fn alarms(
    c: &aws_sdk_cloudwatch::Client,
) -> std::collections::BTreeMap<String, (f64, String, Vec<String>)> {
    c.describe_alarms()
        .send()
        .await
        .unwrap()
        .metric_alarms()
        .iter()
        .map(|a| {
            (
                a.alarm_name().unwrap().to_string(),
                (
                    a.threshold().unwrap_or(0.0),
                    a.state_value()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    a.alarm_actions().to_vec(),
                ),
            )
        })
        .collect()
}

async fn set_state(
    c: &aws_sdk_cloudwatch::Client,
    name: &str,
    state: aws_sdk_cloudwatch::types::StateValue,
) {
    c.set_alarm_state()
        .alarm_name(name)
        .state_value(state)
        .state_reason("set by the test")
        .send()
        .await
        .unwrap();
}

#[test]
fn alarms_on_a_topic_bake_and_retire_a_temporary() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let (cw, sns) = (m.cloudwatch(), m.sns());
    let rt = rt();
    use aws_sdk_cloudwatch::types::StateValue;
    let p = Project::new();
    watch_stack(&p, &m, 80.0, "");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    // Read back: a tagged topic with its subscription; four alarms notifying it.
    let (topic, names) = rt.block_on(async {
        let topics = sns.list_topics().send().await.unwrap();
        let arns: Vec<String> = topics
            .topics()
            .iter()
            .filter_map(|t| t.topic_arn().map(String::from))
            .collect();
        assert_eq!(arns.len(), 1, "{arns:?}");
        let tags = sns
            .list_tags_for_resource()
            .resource_arn(&arns[0])
            .send()
            .await
            .unwrap();
        assert!(tags
            .tags()
            .iter()
            .any(|t| t.key() == "cutover:node" && t.value() == "alerts"));
        let subs = sns
            .list_subscriptions_by_topic()
            .topic_arn(&arns[0])
            .send()
            .await
            .unwrap();
        assert_eq!(subs.subscriptions().len(), 1);
        assert_eq!(
            subs.subscriptions()[0].endpoint(),
            Some("oncall@example.test")
        );
        let all = alarms(&cw).await;
        assert_eq!(all.len(), 4, "{all:?}");
        for (_, _, actions) in all.values() {
            assert_eq!(actions, &vec![arns[0].clone()]);
        }
        (arns[0].clone(), all.keys().cloned().collect::<Vec<_>>())
    });
    let cpu_name = names.iter().find(|n| n.contains("cpu")).unwrap().clone();
    assert_eq!(rt.block_on(alarms(&cw))[&cpu_name].0, 80.0);

    // Update in place: a new threshold.
    watch_stack(&p, &m, 85.0, "");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 changed"), "{out}");
    assert_eq!(rt.block_on(alarms(&cw))[&cpu_name].0, 85.0);

    // Drift: the threshold changed behind the tool's back.
    rt.block_on(async {
        cw.put_metric_alarm()
            .alarm_name(&cpu_name)
            .namespace("AWS/RDS")
            .metric_name("CPUUtilization")
            .statistic(aws_sdk_cloudwatch::types::Statistic::Average)
            .period(60)
            .evaluation_periods(3)
            .threshold(50.0)
            .comparison_operator(
                aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold,
            )
            .dimensions(
                aws_sdk_cloudwatch::types::Dimension::builder()
                    .name("DBInstanceIdentifier")
                    .value("target-1")
                    .build(),
            )
            .alarm_actions(&topic)
            .ok_actions(&topic)
            .send()
            .await
            .unwrap()
    });
    let (code, out) = run(&p, &["refresh", "aws"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("~ cpu: changed outside this tool: threshold"),
        "{out}"
    );
    assert_eq!(run(&p, &["apply", "aws", "--yes"]).0, 0);
    assert_eq!(rt.block_on(alarms(&cw))[&cpu_name].0, 85.0);

    // An existing alarm without our tags is never taken over.
    rt.block_on(async {
        cw.put_metric_alarm()
            .alarm_name("someone-elses")
            .namespace("AWS/RDS")
            .metric_name("CPUUtilization")
            .statistic(aws_sdk_cloudwatch::types::Statistic::Average)
            .period(60)
            .evaluation_periods(1)
            .threshold(1.0)
            .comparison_operator(
                aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold,
            )
            .send()
            .await
            .unwrap()
    });
    watch_stack(&p, &m, 85.0, "taken_alarm = \"someone-elses\"\n");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("alarm `someone-elses` exists and is not this plan's"),
        "{out}"
    );
    assert_eq!(
        rt.block_on(alarms(&cw))["someone-elses"].0,
        1.0,
        "untouched"
    );
    watch_stack(&p, &m, 85.0, "");

    // A new topic name cannot change in place: the topic is replaced, its subscription with it
    // (it names the topic), and the alarms' actions are updated in place to the new topic.
    watch_stack(&p, &m, 85.0, "topic_name = \"migration-alerts\"\n");
    let (code, out) = run(&p, &["apply", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("-/+ alerts (aws.sns.topic)"), "{out}");
    assert!(out.contains("-/+ oncall (aws.sns.subscription)"), "{out}");
    let new_topic = rt.block_on(async {
        let topics = sns.list_topics().send().await.unwrap();
        let arns: Vec<String> = topics
            .topics()
            .iter()
            .filter_map(|t| t.topic_arn().map(String::from))
            .collect();
        assert_eq!(arns.len(), 1, "{arns:?}");
        assert!(arns[0].ends_with(":migration-alerts"), "{arns:?}");
        let subs = sns
            .list_subscriptions_by_topic()
            .topic_arn(&arns[0])
            .send()
            .await
            .unwrap();
        assert_eq!(subs.subscriptions().len(), 1);
        arns[0].clone()
    });
    for (_, _, actions) in rt
        .block_on(alarms(&cw))
        .values()
        .filter(|(_, _, a)| !a.is_empty())
    {
        assert_eq!(actions, &vec![new_topic.clone()]);
    }

    // The bake: moto starts alarms with insufficient data; one in ALARM fails the bake by name.
    let watched: Vec<String> = names
        .iter()
        .filter(|n| !n.contains("dms"))
        .cloned()
        .collect();
    rt.block_on(async {
        for n in &watched {
            set_state(&cw, n, StateValue::Ok).await;
        }
        set_state(&cw, &cpu_name, StateValue::Alarm).await;
    });
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--approve", "watch"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("alarm `{cpu_name}` is in ALARM: set by the test")),
        "{out}"
    );
    let dms = names.iter().find(|n| n.contains("dms")).unwrap().clone();
    assert!(
        rt.block_on(alarms(&cw)).contains_key(&dms),
        "no retirement without the bake"
    );
    // All quiet: the bake passes after its period, and the temporary retires in the same apply.
    rt.block_on(set_state(&cw, &cpu_name, StateValue::Ok));
    let (code, out) = run(&p, &["apply", "aws", "--yes", "--approve", "watch"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("alarm(s) OK for"), "{out}");
    assert!(
        out.contains("retires once `bake` passes in this run"),
        "{out}"
    );
    assert!(!rt.block_on(alarms(&cw)).contains_key(&dms), "retired");
    let (code, out) = run(&p, &["preview", "aws", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("dms-latency (aws.cloudwatch.alarm) `aws-watch-aws-dms-latency` [temporary]  # retired at"),
        "{out}"
    );

    // Destroy removes what the plan made and leaves the rest.
    let (code, out) = run(&p, &["destroy", "aws", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let left = rt.block_on(alarms(&cw));
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        vec!["someone-elses".to_string()]
    );
    let topics = rt.block_on(sns.list_topics().send()).unwrap();
    assert!(topics.topics().is_empty());
}

fn network_stack(p: &Project, m: &Moto, office: &str, extra: &str) {
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-network\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\nvpc = \"migration\"\noffice_cidr = \"{office}\"\n{extra}[secrets]\nmaster_password = \"env:CUTOVER_TEST_MASTER_PASSWORD\"\n",
            m.url()
        ),
    );
}

/// The ingress rules of a group as `tcp PORT from SOURCE`, sorted.
async fn rules(c: &aws_sdk_ec2::Client, id: &str) -> Vec<String> {
    let g = c
        .describe_security_groups()
        .group_ids(id)
        .send()
        .await
        .unwrap();
    let mut out = vec![];
    for p in g.security_groups()[0].ip_permissions() {
        let port = p.from_port().unwrap_or(0);
        for r in p.ip_ranges() {
            out.push(format!("tcp {port} from {}", r.cidr_ip().unwrap()));
        }
        for r in p.user_id_group_pairs() {
            out.push(format!("tcp {port} from {}", r.group_id().unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn security_groups_subnet_groups_and_a_cluster_placed_in_them() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let (ec2, rds) = (m.ec2(), m.rds());
    let rt = rt();
    // The network exists before the plan, as it does in an account.
    let (vpc, subnets) = rt.block_on(make_network(&ec2));
    let p = Project::new();
    network_stack(&p, &m, "192.0.2.0/24", "");
    let env = [("CUTOVER_TEST_MASTER_PASSWORD", "s3cr3t-Master-9f2")];
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    let state = p.read(".cutover/aws/state.json");
    let id_of = |node: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(&state).unwrap();
        v["nodes"][node]["resource"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (app, db) = (id_of("app-sg"), id_of("db-sg"));
    assert!(app.starts_with("sg-") && db.starts_with("sg-"), "{state}");
    // Read back through the SDK: rules, tags, the subnet group's subnets, the cluster's placement.
    rt.block_on(async {
        assert_eq!(rules(&ec2, &db).await, {
            let mut r = vec![
                format!("tcp 5432 from {app}"),
                "tcp 5432 from 192.0.2.0/24".to_string(),
            ];
            r.sort();
            r
        });
        let g = ec2
            .describe_security_groups()
            .group_ids(&db)
            .send()
            .await
            .unwrap();
        let g = &g.security_groups()[0];
        assert_eq!(g.vpc_id(), Some(vpc.as_str()));
        assert!(g
            .tags()
            .iter()
            .any(|t| t.key() == Some("cutover:node") && t.value() == Some("db-sg")));
        let sg = rds.describe_db_subnet_groups().send().await.unwrap();
        let sg = &sg.db_subnet_groups()[0];
        let mut got: Vec<String> = sg
            .subnets()
            .iter()
            .map(|s| s.subnet_identifier().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, subnets, "only the private subnets");
        let c = rds.describe_db_clusters().send().await.unwrap();
        let c = &c.db_clusters()[0];
        assert_eq!(c.db_subnet_group(), sg.db_subnet_group_name());
        let groups: Vec<&str> = c
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id())
            .collect();
        assert_eq!(groups, vec![db.as_str()]);
    });
    let (code, out) = run_env(&p, &["preview", "aws", "--detailed-exitcode"], &env);
    assert_eq!(code, 0, "no drift after create: {out}");

    // Update in place: one rule replaced, the other untouched.
    network_stack(&p, &m, "198.51.100.0/24", "");
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 changed"), "{out}");
    assert!(rt
        .block_on(rules(&ec2, &db))
        .contains(&"tcp 5432 from 198.51.100.0/24".to_string()));
    assert_eq!(id_of("db-sg"), db, "same group");

    // Drift: a rule revoked behind the tool's back is found and put back.
    rt.block_on(async {
        ec2.revoke_security_group_ingress()
            .group_id(&db)
            .ip_permissions(
                aws_sdk_ec2::types::IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(5432)
                    .to_port(5432)
                    .ip_ranges(
                        aws_sdk_ec2::types::IpRange::builder()
                            .cidr_ip("198.51.100.0/24")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
    });
    let (code, out) = run_env(&p, &["refresh", "aws"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("~ db-sg: changed outside this tool: ingress"),
        "{out}"
    );
    assert_eq!(run_env(&p, &["apply", "aws", "--yes"], &env).0, 0);
    assert!(rt
        .block_on(rules(&ec2, &db))
        .contains(&"tcp 5432 from 198.51.100.0/24".to_string()));

    // A new description cannot be changed in place: the preview says replace, and why.
    network_stack(
        &p,
        &m,
        "198.51.100.0/24",
        "db_sg_description = \"database (new)\"\n",
    );
    let (code, out) = run_env(&p, &["preview", "aws"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("-/+ db-sg (aws.ec2.security_group)"), "{out}");
    assert!(out.contains("description"), "{out}");

    // Destroy: the cluster, the subnet group and both groups go; the VPC stays.
    network_stack(&p, &m, "198.51.100.0/24", "");
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    rt.block_on(async {
        let left = ec2
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("vpc-id")
                    .values(&vpc)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let names: Vec<&str> = left
            .security_groups()
            .iter()
            .filter_map(|g| g.group_name())
            .collect();
        assert_eq!(
            names,
            vec!["default"],
            "only the VPC's default group is left"
        );
        assert!(rds
            .describe_db_subnet_groups()
            .send()
            .await
            .unwrap()
            .db_subnet_groups()
            .is_empty());
        assert!(rds
            .describe_db_clusters()
            .send()
            .await
            .unwrap()
            .db_clusters()
            .is_empty());
    });
}

/// A VPC named `migration` with two private subnets (returned, sorted) and a public one.
async fn make_network(ec2: &aws_sdk_ec2::Client) -> (String, Vec<String>) {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let name = |n: &str, kind: ResourceType| {
        TagSpecification::builder()
            .resource_type(kind)
            .tags(Tag::builder().key("Name").value(n).build())
            .build()
    };
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .tag_specifications(name("migration", ResourceType::Vpc))
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let mut ids = vec![];
    for (i, az) in ["us-east-1a", "us-east-1b", "us-east-1c"]
        .iter()
        .enumerate()
    {
        let n = if i < 2 {
            format!("private-{az}")
        } else {
            "public".to_string()
        };
        let s = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{i}.0/24"))
            .availability_zone(*az)
            .tag_specifications(name(&n, ResourceType::Subnet))
            .send()
            .await
            .unwrap();
        if i < 2 {
            ids.push(s.subnet().unwrap().subnet_id().unwrap().to_string());
        }
    }
    ids.sort();
    (vpc, ids)
}

impl Moto {
    fn dms_via(&self, url: &str) -> aws_sdk_databasemigration::Client {
        aws_sdk_databasemigration::Client::new(&self.sdk_config(url))
    }
}

fn dms_stack(p: &Project, url: &str, class: &str) {
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-dms\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\ndms_class = \"{class}\"\n[secrets]\nmaster_password = \"env:CUTOVER_TEST_MASTER_PASSWORD\"\nsource_password = \"env:CUTOVER_TEST_SOURCE_PASSWORD\"\n",
            url
        ),
    );
}

/// A replication subnet group of our name that is not ours (no cutover tags, made by someone
/// else) is never adopted, neither by reconciling an interrupted create nor by the create, and
/// is left as it was; the group the plan makes itself is found ours by its tags.
#[test]
fn a_foreign_dms_subnet_group_of_our_name_is_never_adopted() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let rt = rt();
    let (_, subnets) = rt.block_on(make_network(&m.ec2()));
    let dms = m.dms_via(&m.url());
    let name = "aws-dms-aws-dms-subnets";
    rt.block_on(
        dms.create_replication_subnet_group()
            .replication_subnet_group_identifier(name)
            .replication_subnet_group_description("someone else's")
            .set_subnet_ids(Some(subnets[..2].to_vec()))
            .send(),
    )
    .unwrap();
    let p = Project::new();
    dms_stack(&p, &m.url(), "dms.r5.large");
    // As if a run had crashed after recording its intent to create the group.
    interrupted_create(&p, "aws-dms", "dms-subnets", "aws.dms.subnet_group", name);
    let env = [
        ("CUTOVER_TEST_MASTER_PASSWORD", "s3cr3t-Master-9f2"),
        ("CUTOVER_TEST_SOURCE_PASSWORD", "s3cr3t-Source-1a7"),
    ];
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("reconciled dms-subnets: an object `{name}` exists but was not created by this plan: not adopted")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "replication subnet group `{name}` exists and is not this plan's"
        )),
        "the create refuses it too: {out}"
    );
    assert!(
        out.contains(&format!(
            "adopt it with `plan import aws dms-subnets {name}`"
        )),
        "the import command names the stack: {out}"
    );
    let (_, list) = run_env(&p, &["state", "aws", "list"], &env);
    assert!(
        !list.lines().any(|l| l.starts_with("dms-subnets ")),
        "{list}"
    );
    let description = rt
        .block_on(dms.describe_replication_subnet_groups().send())
        .unwrap()
        .replication_subnet_groups()
        .iter()
        .find(|g| g.replication_subnet_group_identifier() == Some(name))
        .and_then(|g| g.replication_subnet_group_description().map(String::from));
    assert_eq!(
        description.as_deref(),
        Some("someone else's"),
        "left as it was"
    );
}

/// (identifier, status, table mappings) of every task.
async fn dms_tasks(c: &aws_sdk_databasemigration::Client) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = match c.describe_replication_tasks().send().await {
        Ok(o) => o
            .replication_tasks()
            .iter()
            .map(|t| {
                (
                    t.replication_task_identifier()
                        .unwrap_or_default()
                        .to_string(),
                    t.status().unwrap_or_default().to_string(),
                    t.table_mappings().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

#[test]
fn case_two_on_the_emulator_dms_alarms_and_dns_applied_changed_retired_and_destroyed() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let (ec2, rds, r53) = (m.ec2(), m.rds(), m.route53());
    let dms = m.dms_via(&proxy.url());
    let rt = rt();
    rt.block_on(make_network(&ec2));
    let zone = rt.block_on(async {
        r53.create_hosted_zone()
            .name("example.test")
            .caller_reference("dms")
            .send()
            .await
            .unwrap()
            .hosted_zone()
            .unwrap()
            .id()
            .trim_start_matches("/hostedzone/")
            .to_string()
    });
    let env = [
        ("CUTOVER_TEST_MASTER_PASSWORD", "s3cr3t-Master-9f2"),
        ("CUTOVER_TEST_SOURCE_PASSWORD", "s3cr3t-Source-1a7"),
    ];
    let p = Project::new();
    // Everything goes through the proxy, which changes DMS answers' timestamps and gives
    // Aurora endpoints the account's label (src/emulate/proxy.rs).
    dms_stack(&p, &proxy.url(), "dms.r5.large");
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    let state = p.read(".cutover/aws/state.json");
    assert!(!state.contains("s3cr3t"), "no password in state");
    // Read back: the target endpoint takes the cluster's endpoint (as the proxy answers it, the
    // way the apply read it); the tables are split.
    let rds_via_proxy = aws_sdk_rds::Client::new(&m.sdk_config(&proxy.url()));
    let cluster_endpoint = rt.block_on(async {
        let c = rds_via_proxy.describe_db_clusters().send().await.unwrap();
        c.db_clusters()[0].endpoint().unwrap().to_string()
    });
    rt.block_on(async {
        let eps = dms.describe_endpoints().send().await.unwrap();
        let target = eps
            .endpoints()
            .iter()
            .find(|e| {
                e.endpoint_type()
                    .is_some_and(|t| t.as_str().eq_ignore_ascii_case("target"))
            })
            .unwrap();
        assert_eq!(target.server_name(), Some(cluster_endpoint.as_str()));
        assert_eq!(target.engine_name(), Some("aurora-postgresql"));
        let source = eps
            .endpoints()
            .iter()
            .find(|e| {
                e.endpoint_type()
                    .is_some_and(|t| t.as_str().eq_ignore_ascii_case("source"))
            })
            .unwrap();
        assert_eq!(source.server_name(), Some("old-db.internal"));
        let tasks = dms_tasks(&dms).await;
        assert_eq!(tasks.len(), 2, "{tasks:?}");
        let events = tasks.iter().find(|t| t.0.ends_with("task-events")).unwrap();
        assert!(
            events.2.contains("\"events\"") && !events.2.contains("exclude"),
            "{}",
            events.2
        );
        let rest = tasks.iter().find(|t| t.0.ends_with("task-rest")).unwrap();
        assert!(rest.2.contains("exclude"), "{}", rest.2);
        let alarms = m.cloudwatch().describe_alarms().send().await.unwrap();
        assert_eq!(alarms.metric_alarms().len(), 3);
        let topics = m.sns().list_topics().send().await.unwrap();
        let topic = topics.topics()[0].topic_arn().unwrap().to_string();
        assert!(alarms
            .metric_alarms()
            .iter()
            .all(|a| a.alarm_actions() == [topic.clone()]));
    });
    let got = rt.block_on(record(
        &r53,
        &zone,
        "db.example.test",
        aws_sdk_route53::types::RrType::Cname,
    ));
    assert_eq!(got.unwrap().0, vec![cluster_endpoint.clone()]);

    // A change DMS cannot make in place: the target endpoint's engine. The endpoint is replaced,
    // and so are both tasks (they name it): tasks deleted first, then the endpoint, then all made
    // again.
    let stack = p
        .read("stacks/aws.toml")
        .replace("[secrets]", "target_engine = \"postgres\"\n[secrets]");
    p.stack("aws", &stack);
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("-/+ target-endpoint (aws.dms.endpoint)"),
        "{out}"
    );
    assert!(out.contains("-/+ task-events (aws.dms.task)"), "{out}");
    assert!(out.contains("-/+ task-rest (aws.dms.task)"), "{out}");
    rt.block_on(async {
        let eps = dms.describe_endpoints().send().await.unwrap();
        let engines: Vec<&str> = eps
            .endpoints()
            .iter()
            .filter_map(|e| e.engine_name())
            .collect();
        assert!(
            engines.contains(&"postgres") && !engines.contains(&"aurora-postgresql"),
            "{engines:?}"
        );
        let tasks = dms.describe_replication_tasks().send().await.unwrap();
        assert_eq!(tasks.replication_tasks().len(), 2);
        let target = eps
            .endpoints()
            .iter()
            .find(|e| {
                e.engine_name() == Some("postgres")
                    && e.endpoint_type()
                        .is_some_and(|t| t.as_str().eq_ignore_ascii_case("target"))
            })
            .unwrap();
        assert!(tasks
            .replication_tasks()
            .iter()
            .all(|t| t.target_endpoint_arn() == target.endpoint_arn()));
    });

    // Behind their gate: the connections are tested, the tasks start, their full loads finish,
    // and the big task's CDC latency (as CloudWatch reports it; the emulator has no DMS behind
    // it, so the test reports the data points DMS would) comes under the bound.
    let cw = m.cloudwatch();
    let put = |metric: &'static str, value: f64| {
        let cw = cw.clone();
        async move {
            use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
            cw.put_metric_data()
                .namespace("AWS/DMS")
                .metric_data(
                    MetricDatum::builder()
                        .metric_name(metric)
                        .dimensions(
                            Dimension::builder()
                                .name("ReplicationInstanceIdentifier")
                                .value("aws-dms-aws-dms")
                                .build(),
                        )
                        .dimensions(
                            Dimension::builder()
                                .name("ReplicationTaskIdentifier")
                                .value("aws-dms-aws-task-events")
                                .build(),
                        )
                        .value(value)
                        .build(),
                )
                .send()
                .await
                .unwrap();
        }
    };
    rt.block_on(async {
        put("CDCLatencySource", 4.0).await;
        put("CDCLatencyTarget", 7.0).await;
    });
    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "start"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("full load complete"), "{out}");
    assert!(
        out.contains("CDC latency 4 s at the source, 7 s at the target (bound 30 s)"),
        "{out}"
    );
    let tasks = rt.block_on(dms_tasks(&dms));
    assert!(tasks.iter().all(|t| t.1 == "running"), "{tasks:?}");
    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "start"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("start-events: running"),
        "a started task is not started again: {out}"
    );
    // A change to a running task: the preview says it is stopped, modified and resumed. (The
    // apply of it needs ModifyReplicationTask, which moto lacks: that sequence is checked by the
    // replay test in src/provider/aws/dms.rs. No refresh here: moto 5.2.5 describes every
    // replication subnet group with placeholder subnets (`subnet-12345`), which a refresh would
    // report as drift.)
    let stack = p
        .read("stacks/aws.toml")
        .replace("[secrets]", "also_exclude = \"audit\"\n[secrets]");
    p.stack("aws", &stack);
    let (code, out) = run_env(&p, &["preview", "aws"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("~ task-rest (aws.dms.task) `aws-dms-aws-task-rest` [temporary]  # inputs changed; a running task is stopped, modified and resumed"),
        "{out}"
    );
    let stack = p
        .read("stacks/aws.toml")
        .replace("also_exclude = \"audit\"\n", "");
    p.stack("aws", &stack);

    // Changed: a bigger replication instance, modified in place.
    dms_stack(&p, &proxy.url(), "dms.r5.xlarge");
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("~ dms (aws.dms.instance)"), "{out}");
    let class = rt.block_on(async {
        dms.describe_replication_instances()
            .send()
            .await
            .unwrap()
            .replication_instances()[0]
            .replication_instance_class()
            .unwrap()
            .to_string()
    });
    assert_eq!(class, "dms.r5.xlarge");

    // After the bake the migration's temporaries retire: running tasks are stopped and deleted,
    // then the endpoints and the instance.
    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "done"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(rt.block_on(dms_tasks(&dms)).is_empty(), "tasks retired");
    rt.block_on(async {
        assert!(dms
            .describe_endpoints()
            .send()
            .await
            .map(|o| o.endpoints().is_empty())
            .unwrap_or(true));
        assert!(dms
            .describe_replication_instances()
            .send()
            .await
            .map(|o| o.replication_instances().is_empty())
            .unwrap_or(true));
    });
    let (code, out) = run_env(&p, &["preview", "aws", "--detailed-exitcode"], &env);
    assert_eq!(code, 0, "nothing to do, nothing recreated: {out}");

    // Destroy the rest.
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    rt.block_on(async {
        assert!(rds
            .describe_db_clusters()
            .send()
            .await
            .unwrap()
            .db_clusters()
            .is_empty());
        assert!(m
            .cloudwatch()
            .describe_alarms()
            .send()
            .await
            .unwrap()
            .metric_alarms()
            .is_empty());
    });
    assert_eq!(
        rt.block_on(record(
            &r53,
            &zone,
            "db.example.test",
            aws_sdk_route53::types::RrType::Cname
        )),
        None
    );
}

fn instance_stack(p: &Project, url: &str, retention: u32, replica_class: &str) {
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-instance\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\nbackup_retention = {retention}\nreplica_class = \"{replica_class}\"\n[secrets]\nmaster_password = \"env:CUTOVER_TEST_MASTER_PASSWORD\"\n",
            url
        ),
    );
}

/// (class, backup retention, replication source) of an instance.
async fn instance(c: &aws_sdk_rds::Client, id: &str) -> Option<(String, i32, Option<String>)> {
    let out = c
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
        .ok()?;
    let d = out.db_instances().first()?;
    Some((
        d.db_instance_class().unwrap_or_default().to_string(),
        d.backup_retention_period().unwrap_or(0),
        d.read_replica_source_db_instance_identifier()
            .map(String::from),
    ))
}

#[test]
fn an_instance_and_its_replica_are_created_changed_promoted_once_and_destroyed() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    // Through the test suite's proxy, which counts the calls (and changes nothing in RDS answers).
    let proxy = TestProxy::start(m.port);
    let c = m.rds();
    let rt = rt();
    let env = [("CUTOVER_TEST_MASTER_PASSWORD", "s3cr3t-Master-9f2")];
    let p = Project::new();
    instance_stack(&p, &proxy.url(), 7, "db.m6g.large");
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    let (source, replica) = ("aws-instance-aws-source", "aws-instance-aws-replica");
    assert_eq!(
        rt.block_on(instance(&c, source)),
        Some(("db.m6g.large".into(), 7, None))
    );
    let r = rt.block_on(instance(&c, replica)).unwrap();
    assert_eq!(
        (r.0.as_str(), r.2.as_deref()),
        ("db.m6g.large", Some(source))
    );
    assert!(!p.read(".cutover/aws/state.json").contains("s3cr3t"));
    // The snapshot resource: of the source, tagged, recorded.
    let baseline = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            c.describe_db_snapshots()
                .db_snapshot_identifier("aws-instance-aws-baseline")
                .send()
                .await
                .ok()
                .and_then(|o| o.db_snapshots().first().cloned())
        })
    };
    let b = baseline(&rt).expect("the baseline snapshot exists");
    assert_eq!(b.db_instance_identifier(), Some(source));
    assert!(tag_list(b.tag_list()).contains(&("cutover:node".into(), "baseline".into())));
    let (code, out) = run_env(
        &p,
        &["preview", "aws", "--refresh", "--detailed-exitcode"],
        &env,
    );
    assert_eq!(code, 0, "no drift after create: {out}");

    // In place: the source's backups, the replica's class.
    instance_stack(&p, &proxy.url(), 14, "db.m6g.xlarge");
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 changed"), "{out}");
    assert_eq!(rt.block_on(instance(&c, source)).unwrap().1, 14);
    assert_eq!(
        rt.block_on(instance(&c, replica)).unwrap().0,
        "db.m6g.xlarge"
    );

    // The promotion behind its gate, issued once; a second apply does not promote again, and the
    // replica's recorded source is not drift. (moto 5.2.5 keeps reporting the replica's source
    // after PromoteReadReplica; the test proxy removes it, as AWS does, and counts the calls.)
    assert_eq!(proxy.count("PromoteReadReplica"), 0);
    // The precondition: promote only while the replica's lag is at most 30 s. With no datapoint,
    // then with a lag of 120 s, nothing is promoted; at 2 s the promotion goes ahead.
    let text = p
        .read("stacks/aws.toml")
        .replace("[secrets]", "max_lag = 30\n[secrets]");
    p.stack("aws", &text);
    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "promote"], &env);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "no ReplicaLag datapoint for {replica} in the last ten minutes"
        )),
        "{out}"
    );
    let lag = |seconds: f64, ago: u64| {
        rt.block_on(async {
            m.cloudwatch()
                .put_metric_data()
                .namespace("AWS/RDS")
                .metric_data(
                    aws_sdk_cloudwatch::types::MetricDatum::builder()
                        .metric_name("ReplicaLag")
                        .dimensions(
                            aws_sdk_cloudwatch::types::Dimension::builder()
                                .name("DBInstanceIdentifier")
                                .value(replica)
                                .build(),
                        )
                        .timestamp((std::time::SystemTime::now() - Duration::from_secs(ago)).into())
                        .value(seconds)
                        .build(),
                )
                .send()
                .await
                .unwrap();
        })
    };
    lag(120.0, 240);
    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "promote"], &env);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("lags 120 s behind its source, above the bound of 30 s; nothing was promoted; wait for the replica to catch up and apply again"), "{out}");
    assert_eq!(proxy.count("PromoteReadReplica"), 0);
    lag(2.0, 30);
    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "promote"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("replica lag 2 s, within the bound of 30 s"),
        "{out}"
    );
    assert_eq!(proxy.count("PromoteReadReplica"), 1);
    // The rollback point came first, tagged, and is not taken again.
    let snap = rt.block_on(async {
        let s = c
            .describe_db_snapshots()
            .db_snapshot_identifier("aws-instance-aws-rollback-point")
            .send()
            .await
            .unwrap();
        let s = &s.db_snapshots()[0];
        (
            s.db_instance_identifier().map(String::from),
            s.tag_list()
                .iter()
                .any(|t| t.key() == Some("cutover:node") && t.value() == Some("rollback-point")),
        )
    });
    assert_eq!(snap, (Some(source.to_string()), true));
    // Two snapshots: the baseline resource and the rollback point.
    assert_eq!(proxy.count("CreateDBSnapshot"), 2);
    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "promote"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("promote-replica: running"), "{out}");
    assert_eq!(proxy.count("PromoteReadReplica"), 1, "promoted once");
    assert_eq!(proxy.count("CreateDBSnapshot"), 2, "one rollback point");
    let (code, out) = run_env(
        &p,
        &["preview", "aws", "--detailed-exitcode", "--refresh"],
        &env,
    );
    assert_eq!(code, 0, "{out}");

    // Destroy: the source leaves a final snapshot, the (promoted) replica too.
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    assert_eq!(rt.block_on(instance(&c, source)), None);
    assert_eq!(rt.block_on(instance(&c, replica)), None);
    assert!(
        baseline(&rt).is_none(),
        "the snapshot resource is deleted with the stack"
    );
    let snaps = rt.block_on(c.describe_db_snapshots().send()).unwrap();
    let ids: Vec<&str> = snaps
        .db_snapshots()
        .iter()
        .filter_map(|s| s.db_snapshot_identifier())
        .collect();
    assert!(
        ids.iter()
            .any(|s| s.starts_with(&format!("{source}-final-"))),
        "{ids:?}"
    );
    // Every snapshot that stays (the final ones, the rollback point the step took) is listed
    // at the end of the destroy with the command that deletes it.
    assert!(ids.contains(&"aws-instance-aws-rollback-point"), "{ids:?}");
    for id in &ids {
        assert!(
            out.lines().any(|l| l.contains("kept: ")
                && l.contains(&format!("`{id}`"))
                && l.contains(&format!(
                    "aws rds delete-db-snapshot --db-snapshot-identifier {id}"
                ))),
            "{id} is not listed as kept: {out}"
        );
    }
}

/// The SDK between the tool and the emulator meets throttling and 503 answers on every third
/// request (the test proxy injects them before the request reaches moto): apply, a preview and
/// destroy still converge, and the run reports exactly the retries the SDK made.
#[test]
fn throttling_and_503s_are_retried_and_reported_and_apply_converges() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let p = Project::new();
    p.stack(
        "aurora",
        &format!(
            "plan = \"aws-cluster\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\nbackup_retention = 7\nreader_class = \"db.r6g.large\"\nreaders = 2\n[secrets]\nmaster_password = \"env:CUTOVER_TEST_MASTER_PASSWORD\"\n",
            proxy.url()
        ),
    );
    proxy.fault_every(3);
    let (code, out) = run_with_password(&p, &["apply", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Apply complete: 6 added"), "{out}");
    let injected = proxy.injected();
    let (n503, n400) = (
        injected.get("503").copied().unwrap_or(0),
        injected.get("Throttling").copied().unwrap_or(0)
            + injected.get("ThrottlingException").copied().unwrap_or(0),
    );
    assert!(n503 >= 5 && n400 >= 5, "{injected:?}");
    if let Some(line) = out.lines().find(|l| l.starts_with("AWS: ")) {
        eprintln!("{line}");
    }
    // Every injected fault was retried once, and the run says so.
    assert!(
        out.contains(&format!(
            "AWS: {} requests were retried by the SDK after throttling or transient errors (HTTP 400: {n400}, HTTP 503: {n503})",
            n400 + n503
        )),
        "{injected:?}\n{out}"
    );
    let members = rt().block_on(async {
        let d = m
            .rds()
            .describe_db_clusters()
            .db_cluster_identifier("aws-cluster-aurora-target")
            .send()
            .await
            .unwrap();
        d.db_clusters()[0].db_cluster_members().len()
    });
    assert_eq!(members, 3, "a writer and two readers");
    // Converged: a refreshed preview under the same faults has nothing to do.
    let (code, out) = run_with_password(
        &p,
        &["preview", "aurora", "--refresh", "--detailed-exitcode"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_with_password(&p, &["destroy", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("requests were retried"), "{out}");
    let left = rt().block_on(async { m.rds().describe_db_clusters().send().await.unwrap() });
    assert!(left.db_clusters().is_empty());
}

/// SIGKILL after SNS made the topic and before its answer came back (the test proxy holds the
/// answer): the intent knows the topic by name only. The next apply finds it by name, adopts it
/// (it carries our tags) and makes no second one, and a destroy removes it.
#[test]
fn a_crash_inside_a_topic_create_is_reconciled_by_name_and_the_next_apply_and_destroy_go_on() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let p = Project::new();
    watched_instance(&m);
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-watch\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\ninstance = \"target-1\"\ncpu_threshold = 80.0\nbake_seconds = 1\n",
            proxy.url()
        ),
    );
    proxy.delay_answer("CreateTopic", Duration::from_secs(5));
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(p.root())
        .args(["apply", "aws", "--yes"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while proxy.count("CreateTopic") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "CreateTopic never sent"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before CreateTopic"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    let topics = || {
        rt().block_on(async {
            aws_sdk_sns::Client::new(&m.sdk_config(&m.url()))
                .list_topics()
                .send()
                .await
                .unwrap()
                .topics()
                .len()
        })
    };
    assert_eq!(topics(), 1, "SNS made the topic before the kill");
    // The interrupted create went to us-east-1: reconciling it in another region would find
    // nothing and create a second topic there; refused, nothing sent.
    let stack_file = p.root().join("stacks/aws.toml");
    let text = std::fs::read_to_string(&stack_file).unwrap();
    std::fs::write(&stack_file, text.replace("us-east-1", "eu-west-1")).unwrap();
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("`alerts` (an interrupted call): region us-east-1 -> eu-west-1"),
        "{out}"
    );
    assert_eq!(proxy.count("CreateTopic"), 1, "{out}");
    std::fs::write(&stack_file, text).unwrap();
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("alerts") && out.contains("reconciled"),
        "{out}"
    );
    assert_eq!(topics(), 1, "no second topic: {out}");
    assert_eq!(proxy.count("CreateTopic"), 1, "{out}");
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(topics(), 0, "{out}");
}

/// A stack whose `region` changed after its objects were made: preview, apply and destroy are
/// refused, naming each node and what moved, and nothing is touched (a destroy there would find
/// nothing and count the objects deleted while they run on). Put back, the destroy removes them.
#[test]
fn a_stack_moved_to_another_region_is_refused_and_its_objects_are_left_alone() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let p = Project::new();
    watch_stack(&p, &m, 80.0, "");
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &[]);
    assert_eq!(code, 0, "{out}");
    let state: serde_json::Value =
        serde_json::from_str(&p.read(".cutover/aws/state.json")).unwrap();
    assert_eq!(
        state["nodes"]["alerts"]["resource"]["location"],
        serde_json::json!(format!(
            "account=123456789012, region=us-east-1, endpoint={}",
            m.url()
        )),
        "the record says where the topic lives"
    );
    let objects = || {
        rt().block_on(async {
            let topics = aws_sdk_sns::Client::new(&m.sdk_config(&m.url()))
                .list_topics()
                .send()
                .await
                .unwrap()
                .topics()
                .len();
            let alarms = alarms(&m.cloudwatch()).await.len();
            (topics, alarms)
        })
    };
    let before = objects();
    assert!(before.0 == 1 && before.1 >= 1, "{before:?}");
    let stack_file = p.root().join("stacks/aws.toml");
    let text = std::fs::read_to_string(&stack_file).unwrap();
    std::fs::write(&stack_file, text.replace("us-east-1", "eu-west-1")).unwrap();
    for args in [
        &["preview", "aws"][..],
        &["apply", "aws", "--yes"],
        &["destroy", "aws", "--yes"],
    ] {
        let (code, out) = run_env(&p, args, &[]);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(
            out.contains("now points somewhere other than where")
                && out.contains("`alerts`: region us-east-1 -> eu-west-1")
                && out.contains("Nothing was changed")
                && out.contains("plan state aws rm NODE"),
            "{args:?}: {out}"
        );
        assert_eq!(objects(), before, "{args:?} touched nothing");
    }
    std::fs::write(&stack_file, text).unwrap();
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(objects(), (0, 0), "{out}");
}

/// SIGKILL while the tool waits for a new read replica, then while it waits for a promotion (the
/// test proxy holds the instance at `creating`, then at `modifying`, as AWS would for minutes;
/// moto reports `available` at once). Each re-apply resumes the wait: the create and the
/// promotion each reach the emulator once.
#[test]
fn a_crash_during_a_wait_resumes_it_without_a_second_create_or_promotion() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let env = [("CUTOVER_TEST_MASTER_PASSWORD", "s3cr3t-Master-9f2")];
    let p = Project::new();
    instance_stack(&p, &proxy.url(), 7, "db.m6g.large");
    let spawn = |args: &[&str]| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
            .arg("--root")
            .arg(p.root())
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("CUTOVER_TEST_MASTER_PASSWORD", env[0].1)
            .env_remove("AWS_PROFILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let kill_after = |mut child: Child, action: &str| {
        let t0 = Instant::now();
        while proxy.count(action) == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{action} never sent"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "exited before {action}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Inside the wait: the held status is being polled.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(child.try_wait().unwrap().is_none(), "the wait ended early");
        child.kill().unwrap();
        child.wait().unwrap();
    };

    proxy.hold_after(
        "CreateDBInstanceReadReplica",
        "creating",
        Duration::from_secs(6),
    );
    kill_after(
        spawn(&["apply", "aws", "--yes"]),
        "CreateDBInstanceReadReplica",
    );
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("creating"), "the re-run waited: {out}");
    assert_eq!(proxy.count("CreateDBInstanceReadReplica"), 1, "{out}");
    assert_eq!(proxy.count("CreateDBInstance"), 1, "{out}");

    proxy.hold_after("PromoteReadReplica", "modifying", Duration::from_secs(6));
    kill_after(
        spawn(&["apply", "aws", "--yes", "--approve", "promote"]),
        "PromoteReadReplica",
    );
    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "promote"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("modifying"), "the re-run waited: {out}");
    assert_eq!(proxy.count("PromoteReadReplica"), 1, "promoted once: {out}");
    let r = rt().block_on(instance(&m.rds(), "aws-instance-aws-replica"));
    assert_eq!(
        r.map(|r| r.2),
        Some(Some("aws-instance-aws-source".into())),
        "moto keeps the source (see the proxy)"
    );
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
}

/// Every value under `key` anywhere in a JSON document.
fn json_values<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                json_values(x, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_values(x, key, out)),
        _ => {}
    }
}

/// An Aurora replica of another Aurora cluster (moto models a cluster source; a replica of an
/// RDS instance is checked by its exact request in the cluster module's unit tests), promoted
/// once behind its gate, failed over to the named reader and rebooted member by member, readers
/// first; a second apply repeats none of it, and promotion is not drift.
#[test]
fn an_aurora_replica_cluster_is_promoted_failed_over_and_rebooted_once() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let env = [("CUTOVER_TEST_MASTER_PASSWORD", "s3cr3t-Master-9f2")];
    let p = Project::new();
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-replica\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[secrets]\nmaster_password = \"env:CUTOVER_TEST_MASTER_PASSWORD\"\n",
            proxy.url()
        ),
    );
    let c = m.rds();
    let rt = rt();
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 added"), "{out}");
    let cluster = |id: &str| {
        rt.block_on(async {
            c.describe_db_clusters()
                .db_cluster_identifier(id)
                .send()
                .await
                .unwrap()
                .db_clusters()[0]
                .clone()
        })
    };
    let (source, target) = ("aws-replica-aws-source", "aws-replica-aws-target");
    let src = cluster(source);
    let tgt = cluster(target);
    assert_eq!(
        tgt.replication_source_identifier(),
        src.db_cluster_arn(),
        "the target replicates from the source"
    );
    let (code, out) = run_env(
        &p,
        &["preview", "aws", "--refresh", "--detailed-exitcode"],
        &env,
    );
    assert_eq!(code, 0, "{out}");

    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "cutover"], &env);
    assert_eq!(code, 0, "{out}");
    assert_eq!(proxy.count("PromoteReadReplicaDBCluster"), 1, "{out}");
    assert_eq!(proxy.count("FailoverDBCluster"), 1, "{out}");
    assert_eq!(proxy.count("RebootDBInstance"), 2, "{out}");
    // The reboot of pending members only: moto keeps every group in sync, so none is rebooted.
    assert!(
        out.contains(
            "reboot-pending: instance aws-replica-aws-writer: parameters in sync, not rebooted"
        ),
        "{out}"
    );
    let tgt = cluster(target);
    assert_eq!(tgt.replication_source_identifier(), None, "standalone now");
    let writer: Vec<&str> = tgt
        .db_cluster_members()
        .iter()
        .filter(|m| m.is_cluster_writer() == Some(true))
        .filter_map(|m| m.db_instance_identifier())
        .collect();
    assert_eq!(writer, vec!["aws-replica-aws-reader"], "failed over");
    // Readers first: after the failover the old writer is the reader.
    let state: serde_json::Value =
        serde_json::from_str(&p.read(".cutover/aws/state.json")).unwrap();
    let mut rebooted = vec![];
    json_values(&state, "rebooted", &mut rebooted);
    assert_eq!(
        rebooted,
        vec![
            &serde_json::json!(["aws-replica-aws-writer", "aws-replica-aws-reader"]),
            &serde_json::json!([])
        ],
        "`reboot` rebooted both, readers first; `reboot-pending` none"
    );

    let (code, out) = run_env(&p, &["apply", "aws", "--yes", "--approve", "cutover"], &env);
    assert_eq!(code, 0, "{out}");
    assert_eq!(proxy.count("PromoteReadReplicaDBCluster"), 1, "{out}");
    assert_eq!(proxy.count("FailoverDBCluster"), 1, "{out}");
    assert_eq!(proxy.count("RebootDBInstance"), 2, "{out}");
    let (code, out) = run_env(
        &p,
        &["preview", "aws", "--refresh", "--detailed-exitcode"],
        &env,
    );
    assert_eq!(code, 0, "promotion is not drift: {out}");
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    let left = rt.block_on(async { c.describe_db_clusters().send().await.unwrap() });
    assert!(left.db_clusters().is_empty());
}

/// A master password from AWS Secrets Manager (one key of a JSON secret, in moto's Secrets
/// Manager): it reaches the CreateDBInstance request (seen by the test proxy) and nothing the
/// tool writes; a reference to a missing key or secret stops the apply before any call, naming
/// the stack file's line and the fix.
#[test]
fn a_master_password_from_secrets_manager_reaches_aws_and_nothing_else() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let sm = aws_sdk_secretsmanager::Client::new(&m.sdk_config(&m.url()));
    let arn = rt().block_on(async {
        sm.create_secret()
            .name("db/master")
            .secret_string(r#"{"username":"cutover_admin","password":"Sm-s3cret-77_x"}"#)
            .send()
            .await
            .unwrap()
            .arn()
            .unwrap()
            .to_string()
    });
    let p = Project::new();
    let stack = |reference: &str| {
        p.stack(
            "aws",
            &format!(
                "plan = \"aws-instance\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\nbackup_retention = 7\nreplica_class = \"db.m6g.large\"\n[secrets]\nmaster_password = \"{reference}\"\n",
                proxy.url()
            ),
        )
    };
    // A key the secret does not have: refused before anything is created or recorded.
    stack(&format!("{arn}#pass"));
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("aws.toml:9: secrets.master_password"), "{out}");
    assert!(
        out.contains("has no key `pass`; its keys are username, password"),
        "{out}"
    );
    assert!(!out.contains("Sm-s3cret"), "{out}");
    // A secret that does not exist.
    stack(&arn.replace("db/master", "db/other"));
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("ResourceNotFoundException"), "{out}");
    assert!(out.contains("secretsmanager:GetSecretValue"), "{out}");
    assert_eq!(proxy.count("CreateDBInstance"), 0);
    assert!(
        !p.read(".cutover/aws/state.json").contains("\"source\""),
        "nothing recorded"
    );

    stack(&format!("{arn}#password"));
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &[]);
    assert_eq!(code, 0, "{out}");
    let create = proxy.bodies("CreateDBInstance");
    assert_eq!(create.len(), 1);
    assert!(
        create[0].contains("MasterUserPassword=Sm-s3cret-77_x"),
        "{}",
        create[0]
    );
    assert!(!out.contains("Sm-s3cret"), "{out}");
    for (path, bytes) in super::tree(p.root()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("Sm-s3cret"),
            "the password is in {}",
            path.display()
        );
    }
    let (code, out) = run_env(&p, &["preview", "aws", "--detailed-exitcode"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Sm-s3cret"), "{out}");
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &[]);
    assert_eq!(code, 0, "{out}");
}

/// `managed_master`: RDS keeps the master password in Secrets Manager. The create asks for it and
/// sends no password; the secret's ARN is an output of the cluster; a refresh finds no drift.
#[test]
fn a_cluster_with_a_managed_master_password_sends_none_and_outputs_its_secret() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let p = Project::new();
    p.stack(
        "aurora",
        &format!(
            "plan = \"aws-cluster\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\nbackup_retention = 7\nreader_class = \"db.r6g.large\"\nmanaged_master = true\n",
            proxy.url()
        ),
    );
    let (code, out) = run_env(&p, &["apply", "aurora", "--yes"], &[]);
    assert_eq!(code, 0, "{out}");
    let create = proxy.bodies("CreateDBCluster");
    assert_eq!(create.len(), 1);
    assert!(
        create[0].contains("ManageMasterUserPassword=true"),
        "{}",
        create[0]
    );
    assert!(!create[0].contains("&MasterUserPassword="), "{}", create[0]);
    let secret = rt().block_on(async {
        m.rds()
            .describe_db_clusters()
            .db_cluster_identifier("aws-cluster-aurora-target")
            .send()
            .await
            .unwrap()
            .db_clusters()[0]
            .master_user_secret()
            .and_then(|s| s.secret_arn())
            .map(String::from)
    });
    let secret = secret.expect("RDS keeps a master secret");
    let state: serde_json::Value =
        serde_json::from_str(&p.read(".cutover/aurora/state.json")).unwrap();
    let mut arns = vec![];
    json_values(&state, "master_secret_arn", &mut arns);
    assert_eq!(arns, vec![&serde_json::json!(secret)]);
    let (code, out) = run_env(
        &p,
        &["preview", "aurora", "--refresh", "--detailed-exitcode"],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_env(&p, &["destroy", "aurora", "--yes"], &[]);
    assert_eq!(code, 0, "{out}");
}

/// An instance class the region does not offer for the engine is named by `preview --refresh`
/// with what is offered instead, and stops `apply` before any call that changes anything.
#[test]
fn an_instance_class_that_is_not_orderable_stops_apply_before_any_change() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let p = Project::new();
    let stack = |class: &str| {
        p.stack(
            "aurora",
            &format!(
                "plan = \"aws-cluster\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[values]\nbackup_retention = 7\nreader_class = \"{class}\"\n[secrets]\nmaster_password = \"env:CUTOVER_TEST_MASTER_PASSWORD\"\n",
                proxy.url()
            ),
        )
    };
    stack("db.r6g.huge");
    let (code, out) = run_with_password(&p, &["preview", "aurora", "--refresh"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("instance class db.r6g.huge is not orderable for aurora-postgresql in us-east-1; orderable classes: db.r4.16xlarge"),
        "{out}"
    );
    assert!(
        out.contains("db.r6g.large"),
        "the alternatives are listed: {out}"
    );
    let (code, out) = run_with_password(&p, &["apply", "aurora", "--yes"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("apply stopped before any change"), "{out}");
    assert!(
        out.contains("`reader`: instance class db.r6g.huge"),
        "{out}"
    );
    assert!(
        !out.contains("`writer`"),
        "the writer's class is offered: {out}"
    );
    for a in [
        "CreateDBClusterParameterGroup",
        "CreateDBCluster",
        "CreateDBInstance",
    ] {
        assert_eq!(proxy.count(a), 0, "{a} was sent");
    }
    stack("db.r6g.large");
    let (code, out) = run_with_password(&p, &["apply", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_with_password(&p, &["destroy", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
}

/// Changes made behind the tool's back (a cluster's backups, an instance's class, through the
/// SDK) are found by `plan refresh` and shown by `plan preview`; apply puts them back. A new
/// cluster name cannot change in place: the cluster and everything that names it are replaced.
#[test]
fn cluster_drift_is_found_and_reverted_and_a_rename_replaces_the_cluster() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let p = Project::new();
    // The stack applies modifications now; the writer makes no choice of its own.
    cluster_stack_at(
        &p,
        &proxy.url(),
        "apply_immediately = true\n",
        7,
        "db.r6g.large",
        false,
        4,
    );
    let c = m.rds();
    let rt = rt();
    let (code, out) = run_with_password(&p, &["apply", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let cluster_id = "aws-cluster-aurora-target";
    rt.block_on(async {
        c.modify_db_cluster()
            .db_cluster_identifier(cluster_id)
            .backup_retention_period(3)
            .apply_immediately(true)
            .send()
            .await
            .unwrap();
        c.modify_db_instance()
            .db_instance_identifier("aws-cluster-aurora-writer")
            .db_instance_class("db.r6g.2xlarge")
            .apply_immediately(true)
            .send()
            .await
            .unwrap();
    });
    let (code, out) = run_with_password(&p, &["refresh", "aurora"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("~ target: changed outside this tool: backup_retention_period"),
        "{out}"
    );
    assert!(
        out.contains("~ writer: changed outside this tool: class"),
        "{out}"
    );
    let (code, out) = run_with_password(&p, &["preview", "aurora", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("~ backup_retention_period = 3 -> 7"), "{out}");
    assert!(
        out.contains("~ class = \"db.r6g.2xlarge\" -> \"db.r6g.large\""),
        "{out}"
    );
    let (code, out) = run_with_password(&p, &["apply", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let modify = proxy.bodies("ModifyDBInstance");
    assert_eq!(modify.len(), 1, "{modify:?}");
    assert!(
        modify[0].contains("DBInstanceIdentifier=aws-cluster-aurora-writer")
            && modify[0].contains("ApplyImmediately=true"),
        "the stack's choice: {}",
        modify[0]
    );
    let (retention, class) = rt.block_on(async {
        let d = c
            .describe_db_clusters()
            .db_cluster_identifier(cluster_id)
            .send()
            .await
            .unwrap();
        let i = c
            .describe_db_instances()
            .db_instance_identifier("aws-cluster-aurora-writer")
            .send()
            .await
            .unwrap();
        (
            d.db_clusters()[0].backup_retention_period(),
            i.db_instances()[0].db_instance_class().map(String::from),
        )
    });
    assert_eq!(
        (retention, class.as_deref()),
        (Some(7), Some("db.r6g.large"))
    );

    // The rename: preview says replace and why, apply deletes the old cluster after its members.
    let text = p
        .read("stacks/aurora.toml")
        .replace("[secrets]", "cluster_name = \"orders-aurora\"\n[secrets]");
    p.stack("aurora", &text);
    let (code, out) = run_with_password(&p, &["preview", "aurora", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("+ name = \"orders-aurora\"  # forces replacement"),
        "{out}"
    );
    let (code, out) = run_with_password(&p, &["apply", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let ids: Vec<String> = rt.block_on(async {
        c.describe_db_clusters()
            .send()
            .await
            .unwrap()
            .db_clusters()
            .iter()
            .map(|d| d.db_cluster_identifier().unwrap_or_default().to_string())
            .collect()
    });
    assert_eq!(ids, vec!["orders-aurora".to_string()], "{out}");
    let members = rt.block_on(async {
        c.describe_db_clusters()
            .db_cluster_identifier("orders-aurora")
            .send()
            .await
            .unwrap()
            .db_clusters()[0]
            .db_cluster_members()
            .len()
    });
    assert_eq!(members, 2, "{out}");
    let (code, out) = run_with_password(
        &p,
        &["preview", "aurora", "--refresh", "--detailed-exitcode"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_with_password(&p, &["destroy", "aurora", "--yes"]);
    assert_eq!(code, 0, "{out}");
}

/// Creates that AWS performed but answered with a 503 (the test proxy lets the request reach
/// moto, then fails it): the SDK retries, the retry meets "already exists", and the provider
/// adopts the instance, the replica and the snapshot its first attempts made (they carry our
/// tags) instead of failing.
#[test]
fn a_create_answered_503_after_aws_acted_is_adopted_not_failed() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let env = [("CUTOVER_TEST_MASTER_PASSWORD", "s3cr3t-Master-9f2")];
    let p = Project::new();
    instance_stack(&p, &proxy.url(), 7, "db.m6g.large");
    proxy.fail_after("CreateDBInstance");
    proxy.fail_after("CreateDBInstanceReadReplica");
    proxy.fail_after("CreateDBSnapshot");
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        proxy.count("CreateDBInstance"),
        2,
        "the first attempt and the SDK's retry"
    );
    assert_eq!(proxy.count("CreateDBInstanceReadReplica"), 2);
    assert_eq!(proxy.count("CreateDBSnapshot"), 2);
    assert!(
        out.contains("AWS: 3 requests were retried by the SDK after throttling or transient errors (HTTP 503: 3)"),
        "{out}"
    );
    let n = rt().block_on(async {
        m.rds()
            .describe_db_instances()
            .send()
            .await
            .unwrap()
            .db_instances()
            .len()
    });
    assert_eq!(n, 2, "one source, one replica");
    let (code, out) = run_env(
        &p,
        &["preview", "aws", "--refresh", "--detailed-exitcode"],
        &env,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_env(&p, &["destroy", "aws", "--yes"], &env);
    assert_eq!(code, 0, "{out}");
}

/// Case 5's staging stack, pointed at the emulator: its region, short polls and a short lag wait.
fn mysql_stack(p: &Project, m: &Moto) {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stacks/mysql-aurora-staging.toml"),
    )
    .unwrap()
    .replace(
        "region = \"eu-central-1\"",
        &format!("region = \"us-east-1\"\nendpoint_url = \"{}\"", m.url()),
    )
    .replace(
        "record_ttl = 60",
        "record_ttl = 60\npoll_ms = 100\nlag_wait_seconds = 4",
    );
    p.stack("mysql5", &text);
}

/// `read_only` in the source's parameter group, as the emulator holds it.
async fn read_only(rds: &aws_sdk_rds::Client) -> Option<String> {
    rds.describe_db_parameters()
        .db_parameter_group_name("shop-staging-mysql80")
        .source("user")
        .send()
        .await
        .unwrap()
        .parameters()
        .iter()
        .find(|p| p.parameter_name() == Some("read_only"))
        .and_then(|p| p.parameter_value().map(String::from))
}

/// Publishes the replica's binlog lag, as Aurora does every minute.
async fn binlog_lag(cw: &aws_sdk_cloudwatch::Client, cluster: &str, seconds: f64) {
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
    cw.put_metric_data()
        .namespace("AWS/RDS")
        .metric_data(
            MetricDatum::builder()
                .metric_name("AuroraBinlogReplicaLag")
                .dimensions(
                    Dimension::builder()
                        .name("DBClusterIdentifier")
                        .value(cluster)
                        .build(),
                )
                .value(seconds)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// Case 5 against the emulator, as far as moto models it. moto 5.2.5 cannot create an Aurora
/// replica of an RDS instance (its CreateDBCluster looks the source up among clusters), so the
/// plan's create of `cluster` is checked by its exact request in `src/provider/aws/cluster.rs`,
/// and here the cluster is made in moto, with the plan's tags, as a replica of a stand-in Aurora
/// cluster, and the apply adopts it; everything else is the plan's own calls: the source's look-up, the network, the
/// instances, the lag waits on CloudWatch, the fence in the source's parameter group (refused
/// wait, then lifted by its compensation; then held), the promotion, the flip and reader
/// autoscaling, read back; the finish's hand-off; a destroy that leaves the source alone.
#[test]
fn case_five_fences_the_source_promotes_the_replica_flips_and_scales_readers() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let p = Project::new();
    mysql_stack(&p, &m);
    let rt = rt();
    let (rds, cw, r53, ec2) = (m.rds(), m.cloudwatch(), m.route53(), m.ec2());
    let id = |node: &str| cutover::provider::deterministic_id("mysql-aurora", "mysql5", node);
    let cluster_id = id("cluster");
    // What the account holds: the network, the source with its custom group, the record.
    let source_endpoint = rt.block_on(async {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let named = |n: &str, kind: ResourceType| {
            TagSpecification::builder()
                .resource_type(kind)
                .tags(Tag::builder().key("Name").value(n).build())
                .build()
        };
        let vpc = ec2
            .create_vpc()
            .cidr_block("10.60.0.0/16")
            .tag_specifications(named("shop-staging", ResourceType::Vpc))
            .send()
            .await
            .unwrap();
        let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
        for (i, az) in ["a", "b"].iter().enumerate() {
            ec2.create_subnet()
                .vpc_id(&vpc)
                .cidr_block(format!("10.60.{i}.0/24"))
                .availability_zone(format!("us-east-1{az}"))
                .tag_specifications(named(&format!("private-{az}"), ResourceType::Subnet))
                .send()
                .await
                .unwrap();
        }
        rds.create_db_parameter_group()
            .db_parameter_group_name("shop-staging-mysql80")
            .db_parameter_group_family("mysql8.0")
            .description("the shop's own parameters")
            .send()
            .await
            .unwrap();
        rds.modify_db_parameter_group()
            .db_parameter_group_name("shop-staging-mysql80")
            .parameters(
                aws_sdk_rds::types::Parameter::builder()
                    .parameter_name("read_only")
                    .parameter_value("0")
                    .apply_method(aws_sdk_rds::types::ApplyMethod::Immediate)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let i = rds
            .create_db_instance()
            .db_instance_identifier("shop-staging-mysql")
            .engine("mysql")
            .engine_version("8.0.35")
            .db_instance_class("db.r5.large")
            .allocated_storage(100)
            .master_username("admin")
            .master_user_password("shop-secret-1")
            .db_parameter_group_name("shop-staging-mysql80")
            .send()
            .await
            .unwrap();
        let endpoint = i
            .db_instance()
            .and_then(|d| d.endpoint())
            .and_then(|e| e.address())
            .unwrap_or("shop-staging-mysql.aaaaaaaaaa.us-east-1.rds.amazonaws.com")
            .to_string();
        let zone = hosted_zone(&r53, "staging.shop.internal", "case5").await;
        upsert(
            &r53,
            &zone,
            "mysql.staging.shop.internal",
            aws_sdk_route53::types::RrType::Cname,
            &endpoint,
        )
        .await;
        (zone, endpoint)
    });
    let (zone, source_endpoint) = source_endpoint;

    // The network and the cluster's parameter group first; then the cluster moto can model.
    let (code, out) = run(&p, &["apply", "mysql5", "--yes", "--until", "cluster"]);
    assert_eq!(code, 0, "{out}");
    rt.block_on(async {
        let sg = ec2
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-name")
                    .values(id("db-sg"))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let sg = sg.security_groups()[0].group_id().unwrap().to_string();
        let standin = rds
            .create_db_cluster()
            .db_cluster_identifier("standin-binlog-source")
            .engine("aurora-mysql")
            .master_username("admin")
            .master_user_password("shop-secret-1")
            .send()
            .await
            .unwrap();
        let standin_arn = standin
            .db_cluster()
            .unwrap()
            .db_cluster_arn()
            .unwrap()
            .to_string();
        rds.create_db_cluster()
            .db_cluster_identifier(&cluster_id)
            .engine("aurora-mysql")
            .engine_version("8.0.mysql_aurora.3.05.2")
            .replication_source_identifier(standin_arn)
            .master_username("admin")
            .master_user_password("shop-secret-1")
            .db_cluster_parameter_group_name(id("cluster-params"))
            .db_subnet_group_name(id("db-subnets"))
            .vpc_security_group_ids(sg)
            .backup_retention_period(7)
            .preferred_backup_window("03:00-04:00")
            .preferred_maintenance_window("sun:04:30-sun:05:30")
            .deletion_protection(false)
            .storage_encrypted(true)
            .set_tags(Some(
                cutover::provider::aws::tags("mysql-aurora", "mysql5", "cluster")
                    .into_iter()
                    .map(|(k, v)| aws_sdk_rds::types::Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .unwrap();
        binlog_lag(&cw, &cluster_id, 0.0).await;
    });
    // `plan import` rightly refuses it: its replication source is not the plan's.
    let (code, out) = run(&p, &["import", "mysql5", "cluster", &cluster_id]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("has replication_source = "), "{out}");
    // With the plan's tags it is what the plan's create would have made: the apply adopts it as
    // it adopts the object of a create that was interrupted after AWS acted.
    let (code, out) = run(&p, &["apply", "mysql5", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Held back by gate `cutover`"), "{out}");
    assert!(
        out.contains("AuroraBinlogReplicaLag of ") && out.contains("is 0 (bound 0)"),
        "{out}"
    );
    assert_eq!(rt.block_on(read_only(&rds)).as_deref(), Some("0"));

    // The cutover with no lag published after the fence: the wait gives up, the fence is
    // lifted, the replica is not promoted.
    let (code, out) = run(&p, &["apply", "mysql5", "--yes", "--approve", "cutover"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("read_only = 1 in parameter group shop-staging-mysql80, in-sync"),
        "{out}"
    );
    assert!(
        out.contains("did not come to 0 or less within 4 s"),
        "{out}"
    );
    assert!(out.contains("read_only = 0 again"), "{out}");
    assert_eq!(rt.block_on(read_only(&rds)).as_deref(), Some("0"));
    let replica_of = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            rds.describe_db_clusters()
                .db_cluster_identifier(&cluster_id)
                .send()
                .await
                .unwrap()
                .db_clusters()[0]
                .replication_source_identifier()
                .map(String::from)
        })
    };
    assert!(replica_of(&rt).is_some(), "not promoted");

    // Again, with the lag published while it runs: fenced, drained, promoted, flipped, scaled.
    let publish = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = {
        let (cw, cluster_id, go) = (cw.clone(), cluster_id.clone(), publish.clone());
        std::thread::spawn(move || {
            let own = super::aws::rt();
            while go.load(std::sync::atomic::Ordering::Relaxed) {
                own.block_on(binlog_lag(&cw, &cluster_id, 0.0));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (code, out) = run(&p, &["apply", "mysql5", "--yes", "--approve", "cutover"]);
    publish.store(false, std::sync::atomic::Ordering::Relaxed);
    publisher.join().unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        rt.block_on(read_only(&rds)).as_deref(),
        Some("1"),
        "still fenced"
    );
    assert_eq!(replica_of(&rt), None, "promoted");
    let endpoint = rt.block_on(async {
        rds.describe_db_clusters()
            .db_cluster_identifier(&cluster_id)
            .send()
            .await
            .unwrap()
            .db_clusters()[0]
            .endpoint()
            .unwrap()
            .to_string()
    });
    let (values, ttl) = rt
        .block_on(record(
            &r53,
            &zone,
            "mysql.staging.shop.internal",
            aws_sdk_route53::types::RrType::Cname,
        ))
        .unwrap();
    assert_eq!((values, ttl), (vec![endpoint], 60));
    let (min, max, target, _) = reader_scaling(&rt, &m.autoscaling(), &cluster_id);
    assert_eq!((min, max, target), (1, 3, 60.0));

    // The finish says what is left by hand; the destroy leaves the source and its group alone.
    let (code, out) = run(&p, &["apply", "mysql5", "--yes", "--approve", "finish"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("aws rds delete-db-instance --db-instance-identifier shop-staging-mysql"),
        "{out}"
    );
    let (code, out) = run(&p, &["destroy", "mysql5", "--yes"]);
    assert_eq!(code, 0, "{out}");
    rt.block_on(async {
        let i = rds
            .describe_db_instances()
            .db_instance_identifier("shop-staging-mysql")
            .send()
            .await
            .unwrap();
        assert_eq!(
            i.db_instances()[0]
                .endpoint()
                .and_then(|e| e.address())
                .unwrap_or_default(),
            source_endpoint
        );
        let left = rds
            .describe_db_clusters()
            .db_cluster_identifier(&cluster_id)
            .send()
            .await;
        assert!(left.is_err(), "{left:?}\n{out}");
    });
    assert_eq!(rt.block_on(read_only(&rds)).as_deref(), Some("1"));
}
