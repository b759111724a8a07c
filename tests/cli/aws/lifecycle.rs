//! Every AWS resource type on the provider's driver, killed inside its create: at the moment its
//! intent is recorded and the request not yet sent, and at the moment AWS has acted and its
//! answer not yet arrived; and a create AWS performed but answered with a 503 (the SDK's retry
//! meets what the first attempt made). After each, applies go on until one completes; then
//! exactly one object of each node exists (read by an independent client), a refreshed preview
//! has nothing to do, and a destroy leaves nothing.
//!
//! A resource type registered for the `aws` provider is either in `KINDS` (and so tested here)
//! or named in `TESTED_IN_AWS_RS`; a new type in neither fails
//! `every_registered_aws_type_is_covered_by_the_lifecycle_tests`.

use super::*;

/// A node of the `aws-lifecycle` plan: its type, the action that creates it, and how many objects
/// of it the emulator holds.
struct Kind {
    type_name: &'static str,
    action: &'static str,
    /// How many nodes of the plan are of this type (each one create, one object).
    nodes: usize,
    /// Given the emulator and the proxy's address (DMS answers are read through it: moto's
    /// timestamps are corrected there).
    count: fn(&Moto, &str) -> usize,
}

const KINDS: &[Kind] = &[
    Kind {
        type_name: "aws.ec2.security_group",
        action: "CreateSecurityGroup",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                m.ec2()
                    .describe_security_groups()
                    .send()
                    .await
                    .unwrap()
                    .security_groups()
                    .iter()
                    .filter(|g| g.group_name() == Some("aws-lifecycle-aws-db-sg"))
                    .count()
            })
        },
    },
    Kind {
        type_name: "aws.rds.subnet_group",
        action: "CreateDBSubnetGroup",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                m.rds()
                    .describe_db_subnet_groups()
                    .send()
                    .await
                    .unwrap()
                    .db_subnet_groups()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.rds.cluster",
        action: "CreateDBCluster",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                m.rds()
                    .describe_db_clusters()
                    .send()
                    .await
                    .unwrap()
                    .db_clusters()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.rds.cluster_instance",
        action: "CreateDBInstance",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                m.rds()
                    .describe_db_instances()
                    .send()
                    .await
                    .unwrap()
                    .db_instances()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.dms.subnet_group",
        action: "CreateReplicationSubnetGroup",
        nodes: 1,
        count: |m, via| {
            rt().block_on(async {
                m.dms_via(via)
                    .describe_replication_subnet_groups()
                    .send()
                    .await
                    .unwrap()
                    .replication_subnet_groups()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.dms.instance",
        action: "CreateReplicationInstance",
        nodes: 1,
        count: |m, via| {
            rt().block_on(async {
                m.dms_via(via)
                    .describe_replication_instances()
                    .send()
                    .await
                    .unwrap()
                    .replication_instances()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.dms.endpoint",
        action: "CreateEndpoint",
        nodes: 2,
        count: |m, via| {
            rt().block_on(async {
                m.dms_via(via)
                    .describe_endpoints()
                    .send()
                    .await
                    .unwrap()
                    .endpoints()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.dms.task",
        action: "CreateReplicationTask",
        nodes: 1,
        count: |m, via| {
            rt().block_on(async {
                m.dms_via(via)
                    .describe_replication_tasks()
                    .send()
                    .await
                    .unwrap()
                    .replication_tasks()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.rds.parameter_group",
        action: "CreateDBParameterGroup",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                m.rds()
                    .describe_db_parameter_groups()
                    .send()
                    .await
                    .unwrap()
                    .db_parameter_groups()
                    .iter()
                    .filter(|g| g.db_parameter_group_name() == Some("aws-lifecycle-aws-params"))
                    .count()
            })
        },
    },
    Kind {
        type_name: "aws.rds.cluster_parameter_group",
        action: "CreateDBClusterParameterGroup",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                m.rds()
                    .describe_db_cluster_parameter_groups()
                    .send()
                    .await
                    .unwrap()
                    .db_cluster_parameter_groups()
                    .iter()
                    .filter(|g| {
                        g.db_cluster_parameter_group_name()
                            == Some("aws-lifecycle-aws-cluster-params")
                    })
                    .count()
            })
        },
    },
    Kind {
        type_name: "aws.rds.db_snapshot",
        action: "CreateDBClusterSnapshot",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                m.rds()
                    .describe_db_cluster_snapshots()
                    .snapshot_type("manual")
                    .send()
                    .await
                    .unwrap()
                    .db_cluster_snapshots()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.route53.record",
        action: "ChangeResourceRecordSets",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                let r53 = m.route53();
                let zones = r53.list_hosted_zones().send().await.unwrap();
                let mut n = 0;
                for z in zones.hosted_zones() {
                    let sets = r53
                        .list_resource_record_sets()
                        .hosted_zone_id(z.id())
                        .send()
                        .await
                        .unwrap();
                    n += sets
                        .resource_record_sets()
                        .iter()
                        .filter(|r| r.name().trim_end_matches('.') == "db.example.test")
                        .count();
                }
                n
            })
        },
    },
    Kind {
        type_name: "aws.autoscaling.readers",
        action: "RegisterScalableTarget",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                use aws_sdk_applicationautoscaling::types::ServiceNamespace;
                m.autoscaling()
                    .describe_scalable_targets()
                    .service_namespace(ServiceNamespace::Rds)
                    .send()
                    .await
                    .unwrap()
                    .scalable_targets()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.sns.topic",
        action: "CreateTopic",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                aws_sdk_sns::Client::new(&m.sdk_config(&m.url()))
                    .list_topics()
                    .send()
                    .await
                    .unwrap()
                    .topics()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.sns.subscription",
        action: "Subscribe",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                aws_sdk_sns::Client::new(&m.sdk_config(&m.url()))
                    .list_subscriptions()
                    .send()
                    .await
                    .unwrap()
                    .subscriptions()
                    .len()
            })
        },
    },
    Kind {
        type_name: "aws.cloudwatch.alarm",
        action: "PutMetricAlarm",
        nodes: 1,
        count: |m, _| {
            rt().block_on(async {
                m.cloudwatch()
                    .describe_alarms()
                    .send()
                    .await
                    .unwrap()
                    .metric_alarms()
                    .len()
            })
        },
    },
];

/// Types on the driver whose kills are tested in `aws.rs` instead: an RDS instance's create is
/// the action a cluster instance's is (`CreateDBInstance`), which the proxy's rules cannot tell
/// apart; `a_crash_during_a_wait_resumes_it_without_a_second_create_or_promotion` and
/// `a_create_answered_503_after_aws_acted_is_adopted_not_failed` cover it.
const TESTED_IN_AWS_RS: &[&str] = &["aws.rds.instance"];

#[test]
fn every_registered_aws_type_is_covered_by_the_lifecycle_tests() {
    let p = Project::new();
    p.stack(
        "aws",
        "plan = \"aws-lifecycle\"\nprovider = \"aws\"\nregion = \"us-east-1\"\n[secrets]\nsource_password = \"env:CUTOVER_TEST_SOURCE_PASSWORD\"\n",
    );
    let stack = cutover::stack::Stack::load(p.root(), "aws").unwrap();
    let registry = cutover::provider::registry_for_stack(&stack).unwrap();
    let registered: Vec<String> = registry
        .names(cutover::dsl::NodeKind::Resource)
        .into_iter()
        .filter(|t| t.starts_with("aws."))
        .collect();
    let mut covered: Vec<String> = KINDS
        .iter()
        .map(|k| k.type_name)
        .chain(TESTED_IN_AWS_RS.iter().copied())
        .map(String::from)
        .collect();
    covered.sort();
    assert_eq!(
        registered, covered,
        "a registered aws resource type must be in KINDS (lifecycle-tested) or TESTED_IN_AWS_RS"
    );
    // And the plan the kills run has one node of every type in KINDS.
    let (code, out) = run_env(&p, &["preview", "aws"], ENV);
    for k in KINDS {
        assert!(out.contains(&format!("({})", k.type_name)), "{code} {out}");
    }
}

/// The DMS endpoint's password, from the environment as a stack's secret.
const ENV: &[(&str, &str)] = &[("CUTOVER_TEST_SOURCE_PASSWORD", "s3cr3t-Source-4d1")];

fn lifecycle_project(m: &Moto, proxy: &TestProxy) -> Project {
    rt().block_on(make_network(&m.ec2()));
    rt().block_on(async {
        m.route53()
            .create_hosted_zone()
            .name("example.test")
            .caller_reference("lifecycle")
            .send()
            .await
            .unwrap()
    });
    let p = Project::new();
    p.stack(
        "aws",
        &format!(
            "plan = \"aws-lifecycle\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[secrets]\nsource_password = \"env:CUTOVER_TEST_SOURCE_PASSWORD\"\n",
            proxy.url()
        ),
    );
    p
}

fn spawn_apply(p: &Project) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(p.root())
        .args(["apply", "aws", "--yes"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .envs(ENV.iter().copied())
        .stdout(Stdio::from(
            std::fs::File::create(p.root().join("apply.log")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(p.root().join("apply.log"))
                .unwrap(),
        ))
        .spawn()
        .unwrap()
}

/// After the kills: exactly one object per node, a refreshed preview with nothing to do, and a
/// destroy that leaves nothing.
fn converged_then_destroyed(m: &Moto, proxy: &TestProxy, p: &Project, after: &str) {
    for k in KINDS {
        assert_eq!(
            (k.count)(m, &proxy.url()),
            k.nodes,
            "{}: one object per node {after}",
            k.type_name
        );
    }
    let (code, out) = run_env(
        p,
        &["preview", "aws", "--refresh", "--detailed-exitcode"],
        ENV,
    );
    assert_eq!(code, 0, "nothing to do {after}: {out}");
    let (code, out) = run_env(p, &["destroy", "aws", "--yes"], ENV);
    assert_eq!(code, 0, "{out}");
    for k in KINDS {
        assert_eq!(
            (k.count)(m, &proxy.url()),
            0,
            "{}: left after destroy: {out}",
            k.type_name
        );
    }
}

/// Arms every create with `arm`, then runs applies, killing each one as soon as a create is held
/// (`held(action)` counts them), until one completes.
fn kill_inside_every_create(
    arm: &dyn Fn(&TestProxy, &str),
    held: &dyn Fn(&TestProxy, &str) -> usize,
    moment: &str,
) {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let p = lifecycle_project(&m, &proxy);
    for k in KINDS {
        for _ in 0..k.nodes {
            arm(&proxy, k.action);
        }
    }
    let total = || KINDS.iter().map(|k| held(&proxy, k.action)).sum::<usize>();
    let mut kills = 0;
    loop {
        let creates: usize = KINDS.iter().map(|k| k.nodes).sum();
        assert!(kills <= creates, "more kills than creates: {kills}");
        let before = total();
        let mut child = spawn_apply(&p);
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if total() > before {
                break None;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "apply hung");
            std::thread::sleep(Duration::from_millis(10));
        };
        match status {
            Some(s) => {
                assert_eq!(
                    s.code(),
                    Some(0),
                    "an apply after {kills} kill(s) {moment}: {}",
                    p.read("apply.log")
                );
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    for k in KINDS {
        assert_eq!(
            held(&proxy, k.action),
            k.nodes,
            "{} was held once per node {moment}",
            k.action
        );
    }
    converged_then_destroyed(&m, &proxy, &p, &format!("after {kills} kills {moment}"));
}

#[test]
fn a_kill_before_any_create_is_sent_is_resumed_with_one_object_each() {
    kill_inside_every_create(
        &|proxy, a| proxy.delay_request(a, Duration::from_secs(10)),
        &|proxy, a| proxy.held_requests(a),
        "before the create was sent",
    );
}

#[test]
fn a_kill_after_aws_made_each_object_and_before_its_answer_adopts_it_once() {
    kill_inside_every_create(
        &|proxy, a| proxy.delay_answer(a, Duration::from_secs(10)),
        &|proxy, a| proxy.count(a),
        "after AWS acted",
    );
}

#[test]
fn creates_answered_503_after_aws_acted_are_retried_and_adopted_not_duplicated() {
    let bin = require_moto();
    let m = Moto::start(&bin);
    let proxy = TestProxy::start(m.port);
    let p = lifecycle_project(&m, &proxy);
    for k in KINDS {
        for _ in 0..k.nodes {
            proxy.fail_after(k.action);
        }
    }
    let (code, out) = run_env(&p, &["apply", "aws", "--yes"], ENV);
    assert_eq!(code, 0, "{out}");
    for k in KINDS {
        assert_eq!(
            proxy.count(k.action),
            2 * k.nodes,
            "{}: the first attempt and the SDK's retry, per node: {out}",
            k.action
        );
    }
    converged_then_destroyed(&m, &proxy, &p, "after 503s");
}
