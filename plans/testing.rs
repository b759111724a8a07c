//! Plans used only by tests and benchmarks (hidden from `plan list`).

use cutover::prelude::*;

/// `nodes` no-op resources shaped `wide` (independent), `chain` (each after the previous) or
/// `layers` (10 layers, each node after every node of the layer before... bounded to 10 edges).
pub fn bench(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let n: usize = stack.get("nodes")?;
    let shape: String = stack.get("shape")?;
    let layer = (n / 10).max(1);
    let mut handles: Vec<Handle<Null>> = Vec::with_capacity(n);
    for i in 0..n {
        let mut null = Null::new().input("index", i as u64);
        match shape.as_str() {
            "wide" => {}
            "chain" if i > 0 => null = null.input("prev", handles[i - 1].id()),
            "layers" if i >= layer => {
                // Depend on up to 10 nodes of the previous layer (as Terraform's equivalent does).
                let l = i / layer;
                let start = (l - 1) * layer;
                for k in 0..10.min(layer) {
                    let j = start + (i + k) % layer;
                    null = null.input(&format!("dep{k}"), handles[j].id());
                }
            }
            "chain" | "layers" => {}
            other => {
                return Err(PlanError::Invalid {
                    plan: "bench".into(),
                    message: format!("shape `{other}`: use wide, chain or layers"),
                })
            }
        }
        handles.push(p.add(&format!("n{i}"), null));
    }
    Ok(p)
}

/// `chains` parallel chains of `length` links; each link sleeps, writes a file and appends a line
/// once to `log.txt`. Used to kill `plan apply` at random moments.
pub fn crash(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let out: String = stack.get("out_dir")?;
    let chains: u32 = stack.get("chains")?;
    let length: u32 = stack.get("length")?;
    let sleep_ms: u64 = stack.get("sleep_ms")?;
    let dir = p.add("dir", Directory::new(&out));
    for c in 0..chains {
        let mut prev: Option<Handle<Append>> = None;
        for i in 0..length {
            let mut work = p.add(&format!("work-{c}-{i}"), Sleep::ms(sleep_ms));
            if let Some(prev) = &prev {
                work = work.after(prev);
            }
            let file = p
                .add(
                    &format!("file-{c}-{i}"),
                    File::new(
                        dir.path().join(format!("/file-{c}-{i}.txt")),
                        format!("{c}-{i}\n"),
                    ),
                )
                .after(&work);
            let mark = p
                .add(
                    &format!("mark-{c}-{i}"),
                    Append::line(dir.path().join("/log.txt"), format!("mark {c}-{i}")),
                )
                .after(&file);
            prev = Some(mark);
        }
    }
    Ok(p)
}

/// Three nodes in a cycle (an error to report).
pub fn cyclic(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let a = p.add("a", Null::new()).after_name("c");
    let b = p.add("b", Null::new().input("x", a.id()));
    p.add("c", Null::new().input("y", b.id()));
    Ok(p)
}

/// A middle step that fails when `fail = true`, with a dependent and an independent branch.
pub fn failing(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let out: String = stack.get("out_dir")?;
    let fail: bool = stack.get("fail")?;
    let halt: bool = stack.get_or("halt", false)?;
    let compensate: bool = stack.get_or("compensate", false)?;
    let dir = p.add("dir", Directory::new(&out));
    let undo = p
        .add(
            "undo",
            Append::line(dir.path().join("/journal.txt"), "rolled back"),
        )
        .rollback_only();
    let check = p
        .add(
            "check",
            Assert::that(!fail, "the stack asked this step to fail"),
        )
        .after(&dir);
    let check = if halt {
        check.on_failure(FailurePolicy::Halt)
    } else if compensate {
        check.compensate_with(&[&undo])
    } else {
        check
    };
    p.add(
        "after-check",
        File::new(dir.path().join("/after.txt"), "after\n"),
    )
    .after(&check);
    let slow = p.add("slow", Sleep::ms(300)).after(&dir);
    // The same node as another type (its old object is deleted as what it was).
    if stack.get_or("independent_as_directory", false)? {
        p.add(
            "independent",
            Directory::new(dir.path().join("/independent.d")),
        )
        .after(&slow);
    } else {
        p.add(
            "independent",
            File::new(dir.path().join("/independent.txt"), "independent\n"),
        )
        .after(&slow);
    }
    Ok(p)
}

/// A file whose content comes from a secret reference.
pub fn secretive(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let out: String = stack.get("out_dir")?;
    let dir = p.add("dir", Directory::new(&out));
    p.add(
        "secret-file",
        File::new(dir.path().join("/secret.txt"), stack.secret("token")?).mode(0o600),
    );
    Ok(p)
}

/// An instance and a cluster parameter group (AWS provider tests).
pub fn aws_params(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let family: String = stack.get("family")?;
    let work_mem: String = stack.get("work_mem")?;
    p.add(
        "params",
        ParameterGroup::instance(&family, "target instances")
            .immediate("work_mem", &work_mem)
            .pending_reboot("shared_buffers", "8192"),
    );
    p.add(
        "cluster-params",
        ParameterGroup::cluster("aurora-postgresql15", "target cluster")
            .pending_reboot("rds.logical_replication", "1"),
    );
    Ok(p)
}

/// A cluster parameter group, an Aurora cluster, a writer and a reader (AWS provider tests).
pub fn aws_cluster(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let retention: u32 = stack.get("backup_retention")?;
    let reader_class: String = stack.get("reader_class")?;
    let protect: bool = stack.get_or("deletion_protection", false)?;
    let params = p.add(
        "cluster-params",
        ParameterGroup::cluster("aurora-postgresql15", "target cluster")
            .pending_reboot("rds.logical_replication", "1"),
    );
    // RDS may keep the master password in Secrets Manager instead of the stack's secret.
    let managed: bool = stack.get_or("managed_master", false)?;
    let cluster = AuroraCluster::postgres("15.4");
    let cluster = if managed {
        cluster.managed_master("cutover_admin")
    } else {
        cluster.master("cutover_admin", stack.secret("master_password")?)
    };
    let mut cluster = cluster
        .parameter_group(params.group_name())
        .backups(retention, "03:00-04:00")
        .maintenance_window("sun:04:00-sun:05:00")
        .deletion_protection(protect)
        .apply_immediately(true);
    if !protect {
        cluster = cluster.skip_final_snapshot();
    }
    // A rename replaces the cluster (and the instances, scaling and snapshot that name it).
    if let Some(name) = stack.get_or::<Option<String>>("cluster_name", None)? {
        cluster = cluster.named(&name);
    }
    let cluster = p.add("target", cluster);
    p.add(
        "writer",
        ClusterInstance::of(cluster.identifier(), "aurora-postgresql", "db.r6g.large")
            .promotion_tier(0),
    );
    let reader = p.add(
        "reader",
        ClusterInstance::of(cluster.identifier(), "aurora-postgresql", &reader_class)
            .promotion_tier(1)
            .apply_immediately(true),
    );
    // More readers on request (the throttling test's cluster has two).
    let readers: u32 = stack.get_or("readers", 1)?;
    for n in 2..=readers {
        p.add(
            &format!("reader-{n}"),
            ClusterInstance::of(cluster.identifier(), "aurora-postgresql", &reader_class)
                .promotion_tier(n),
        );
    }
    let max_readers: u32 = stack.get_or("max_readers", 4)?;
    p.add(
        "reader-scaling",
        ReaderAutoscaling::of(cluster.identifier())
            .between(1, max_readers)
            .target_cpu(60.0)
            .cooldowns(300, 120),
    )
    .after(&reader);
    // A rollback point of the new cluster (a step: taken once).
    p.add(
        "cluster-snapshot",
        Snapshot::of_cluster(cluster.identifier()),
    )
    .after(&reader);
    Ok(p)
}

/// A hosted zone looked up by name, a CNAME the plan owns, and the flip of an existing record
/// (AWS provider tests).
pub fn aws_dns(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let zone_name: String = stack.get("zone")?;
    let db_target: String = stack.get("db_target")?;
    let old: String = stack.get("app_from")?;
    let new: String = stack.get("app_to")?;
    let also: Option<String> = stack.get_or("also_declare", None)?;
    let db_name: String = stack.get_or("db_name", "db".to_string())?;
    let zone = p.add("zone", HostedZone::named(&zone_name));
    let db = p.add(
        "db-record",
        DnsRecord::cname(
            zone.zone_id(),
            &format!("{db_name}.{zone_name}"),
            db_target.as_str(),
        )
        .ttl(30),
    );
    if let Some(name) = also {
        p.add(
            "also",
            DnsRecord::new(
                zone.zone_id(),
                &format!("{name}.{zone_name}"),
                "A",
                &["10.0.0.9"],
            ),
        );
    }
    if let Some(lb) = stack.get_or::<Option<String>>("alias_to", None)? {
        p.add(
            "www",
            DnsRecord::alias_a(
                zone.zone_id(),
                &format!("www.{zone_name}"),
                lb.as_str(),
                "Z35SXDOTRQ7X7K",
                true,
            ),
        );
    }
    let mut gate = p.gate("cutover").after(&db);
    // A DNS cutover lowers the record's TTL well ahead, and waits the old one out.
    let lowered: Option<u64> = stack.get_or("lower_ttl", None)?;
    if let Some(ttl) = lowered {
        let mut lower =
            DnsLowerTtl::record(zone.zone_id(), &format!("app.{zone_name}"), "CNAME", ttl)
                .poll_ms(100);
        if let Some(was) = stack.get_or::<Option<u64>>("lower_was", None)? {
            lower = lower.was(was);
        }
        let lower = p.add("lower-ttl", lower);
        gate = gate.after(&lower);
    }
    p.add(
        "flip",
        DnsFlip::record(
            zone.zone_id(),
            &format!("app.{zone_name}"),
            "CNAME",
            new.as_str(),
        )
        .from(old.as_str())
        .ttl(lowered.unwrap_or(30))
        .poll_ms(100),
    )
    .after(&gate);
    Ok(p)
}

/// A temporary file that retires after a bake step behind a gate (retirement tests).
pub fn retire(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let out: String = stack.get("out_dir")?;
    let dir = p.add("dir", Directory::new(&out));
    let keep = p.add("keep", File::new(dir.path().join("/keep.txt"), "stays"));
    let gate = p.gate("done").after(&keep);
    let bake = p.add("bake", Sleep::ms(50)).after(&gate);
    p.add(
        "scratch",
        File::new(dir.path().join("/scratch.txt"), "temporary"),
    )
    .retire_after(&bake);
    Ok(p)
}

/// An SNS topic with an email subscription, three RDS alarms notifying it, a temporary DMS
/// latency alarm, and a bake step behind a gate after which the temporary retires (AWS provider
/// tests).
pub fn aws_watch(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let instance: String = stack.get("instance")?;
    let cpu: f64 = stack.get("cpu_threshold")?;
    let bake_seconds: u64 = stack.get("bake_seconds")?;
    let taken: Option<String> = stack.get_or("taken_alarm", None)?;
    let mut topic = SnsTopic::new().display_name("migration alerts");
    if let Some(n) = stack.get_or::<Option<String>>("topic_name", None)? {
        topic = topic.named(&n);
    }
    let topic = p.add("alerts", topic);
    p.add(
        "oncall",
        SnsSubscription::to(topic.arn(), "email", "oncall@example.test"),
    );
    // The instance the alarms watch is not the plan's: a look-up names it.
    let watched = p.add("watched", ExistingInstance::find(&instance));
    let cpu = p.add(
        "cpu",
        Alarm::rds_cpu_above(watched.identifier(), cpu).notify(topic.arn()),
    );
    let conns = p.add(
        "connections",
        Alarm::rds_connections_above(watched.identifier(), 40.0).notify(topic.arn()),
    );
    let latency = p.add(
        "read-latency",
        Alarm::rds_read_latency_above(watched.identifier(), 0.2)
            .over(60, 5)
            .notify(topic.arn()),
    );
    if let Some(name) = taken {
        p.add(
            "taken",
            Alarm::rds_cpu_above(watched.identifier(), 99.0).named(&name),
        );
    }
    let gate = p.gate("watch").after(&cpu).after(&conns).after(&latency);
    let bake = p
        .add(
            "bake",
            Bake::alarms(
                vec![cpu.alarm_name(), conns.alarm_name(), latency.alarm_name()],
                bake_seconds,
            )
            .poll_ms(100),
        )
        .after(&gate);
    p.add(
        "dms-latency",
        Alarm::dms_cdc_latency_above("dms-temp", "task-big", 300.0).notify(topic.arn()),
    )
    .retire_after(&bake);
    Ok(p)
}

/// A VPC and its subnets looked up, an application security group, a database security group
/// open to it and to a CIDR, a DB subnet group, and an Aurora cluster placed in both (AWS provider
/// tests).
pub fn aws_network(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let vpc_name: String = stack.get("vpc")?;
    let office: String = stack.get("office_cidr")?;
    let description: String = stack.get_or("db_sg_description", "database".to_string())?;
    let vpc = p.add("vpc", Vpc::find(&vpc_name));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named("private-*"));
    let app = p.add(
        "app-sg",
        SecurityGroup::in_vpc(vpc.vpc_id(), "application").ingress_from_cidr(443, "10.0.0.0/16"),
    );
    let db = p.add(
        "db-sg",
        SecurityGroup::in_vpc(vpc.vpc_id(), &description)
            .ingress_from_group(5432, app.group_id())
            .ingress_from_cidr(5432, &office),
    );
    let subnet_group = p.add(
        "db-subnets",
        SubnetGroup::of(subnets.ids(), "target database"),
    );
    p.add(
        "target",
        AuroraCluster::postgres("15.4")
            .master("cutover_admin", stack.secret("master_password")?)
            .subnet_group(subnet_group.group_name())
            .security_groups(vec![db.group_id()])
            .deletion_protection(false)
            .skip_final_snapshot(),
    );
    Ok(p)
}

/// The plan of case 2, on the emulator: a target cluster in its network, a DMS replication
/// instance (retired after the bake), a source endpoint and a target endpoint fed by the
/// cluster's outputs, two tasks splitting the tables (the biggest alone), three alarms on one
/// topic, a DNS record for the new database, and behind gates the tasks' start and the bake
/// (AWS provider tests).
pub fn aws_dms(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let class: String = stack.get("dms_class")?;
    let also_exclude: Option<String> = stack.get_or("also_exclude", None)?;
    let target_engine: String = stack.get_or("target_engine", "aurora-postgresql".to_string())?;
    let vpc = p.add("vpc", Vpc::find("migration"));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named("private-*"));
    let sg = p.add(
        "db-sg",
        SecurityGroup::in_vpc(vpc.vpc_id(), "database").ingress_from_cidr(5432, "10.0.0.0/16"),
    );
    let db_subnets = p.add("db-subnets", SubnetGroup::of(subnets.ids(), "target"));
    let cluster = p.add(
        "target",
        AuroraCluster::postgres("15.4")
            .master("cutover_admin", stack.secret("master_password")?)
            .subnet_group(db_subnets.group_name())
            .security_groups(vec![sg.group_id()])
            .deletion_protection(false)
            .skip_final_snapshot(),
    );
    let dms_subnets = p.add(
        "dms-subnets",
        DmsSubnetGroup::of(subnets.ids(), "replication"),
    );
    let gate_start = p.gate("start");
    let gate_done = p.gate("done");
    let bake = p.add("bake", Sleep::ms(10)).after(&gate_done);
    let instance = p
        .add(
            "dms",
            DmsInstance::new(&class, 100)
                .subnet_group(dms_subnets.group_id())
                .security_groups(vec![sg.group_id()]),
        )
        .retire_after(&bake);
    let source = p
        .add(
            "source-endpoint",
            DmsEndpoint::source("postgres", "old-db.internal", 5432, "app")
                .credentials("dms", stack.secret("source_password")?)
                .postgres_slot("pglogical", "dms_slot"),
        )
        .retire_after(&bake);
    let target = p
        .add(
            "target-endpoint",
            DmsEndpoint::target(&target_engine, cluster.endpoint(), cluster.port(), "app")
                .credentials("cutover_admin", stack.secret("master_password")?),
        )
        .retire_after(&bake);
    let settings = TaskSettings::default();
    let big = p
        .add(
            "task-events",
            DmsTask::new(
                instance.arn(),
                source.arn(),
                target.arn(),
                "full-load-and-cdc",
                &TableMappings::new().include("public", "events"),
                &settings,
            ),
        )
        .retire_after(&bake);
    let rest = p
        .add(
            "task-rest",
            DmsTask::new(
                instance.arn(),
                source.arn(),
                target.arn(),
                "full-load-and-cdc",
                &match &also_exclude {
                    Some(t) => TableMappings::new()
                        .include("public", "%")
                        .exclude("public", "events")
                        .exclude("public", t),
                    None => TableMappings::new()
                        .include("public", "%")
                        .exclude("public", "events"),
                },
                &settings,
            ),
        )
        .retire_after(&bake);
    let tested = p
        .add(
            "test-connections",
            TestConnections::of(instance.arn(), vec![source.arn(), target.arn()]).poll_ms(50),
        )
        .after(&gate_start);
    for (name, task) in [("events", &big), ("rest", &rest)] {
        let started = p
            .add(
                &format!("start-{name}"),
                StartTask::of(task.identifier(), "start"),
            )
            .after(&tested);
        p.add(
            &format!("loaded-{name}"),
            WaitFullLoad::of(task.identifier()).poll_ms(50),
        )
        .after(&started);
    }
    p.add(
        "cdc-caught-up",
        WaitCdcLatency::of(instance.identifier(), big.identifier(), 30.0).poll_ms(50),
    )
    .after_name("loaded-events");
    let topic = p.add("alerts", SnsTopic::new());
    p.add(
        "cpu",
        Alarm::rds_cpu_above(cluster.identifier(), 80.0).notify(topic.arn()),
    );
    p.add(
        "connections",
        Alarm::rds_connections_above(cluster.identifier(), 40.0).notify(topic.arn()),
    );
    p.add(
        "cdc-latency",
        Alarm::dms_cdc_latency_above(instance.identifier(), big.identifier(), 300.0)
            .notify(topic.arn()),
    );
    let zone = p.add("zone", HostedZone::named("example.test"));
    p.add(
        "db-record",
        DnsRecord::cname(zone.zone_id(), "db.example.test", cluster.endpoint()),
    );
    Ok(p)
}

/// An RDS PostgreSQL instance with a read replica, and behind a gate the replica's promotion (AWS
/// provider tests).
pub fn aws_instance(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let retention: u32 = stack.get("backup_retention")?;
    let replica_class: String = stack.get("replica_class")?;
    let source = p.add(
        "source",
        DbInstance::postgres("15.4", "db.m6g.large", 100)
            .master("cutover_admin", stack.secret("master_password")?)
            .backups(retention, "03:00-04:00")
            .deletion_protection(false)
            .apply_immediately(true),
    );
    let replica = p.add(
        "replica",
        DbInstance::replica_of(source.identifier(), &replica_class).apply_immediately(true),
    );
    // A snapshot kept as a resource: taken once, deleted with the stack.
    p.add("baseline", DbSnapshot::of_instance(source.identifier()));
    let gate = p.gate("promote").after(&replica);
    // A rollback point before the promotion.
    let snapshot = p
        .add("rollback-point", Snapshot::of_instance(source.identifier()))
        .after(&gate);
    let mut promote = Promote::replica(replica.identifier());
    if let Some(bound) = stack.get_or::<Option<u64>>("max_lag", None)? {
        promote = promote.max_lag(bound);
    }
    p.add("promote-replica", promote).after(&snapshot);
    Ok(p)
}

/// An Aurora replica cluster of another cluster with a writer and a reader, promoted behind a
/// gate, failed over to the reader and rebooted (AWS provider tests).
pub fn aws_replica(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let source = p.add(
        "source",
        AuroraCluster::postgres("15.4")
            .master("cutover_admin", stack.secret("master_password")?)
            .deletion_protection(false)
            .skip_final_snapshot(),
    );
    p.add(
        "source-writer",
        ClusterInstance::of(source.identifier(), "aurora-postgresql", "db.r6g.large"),
    );
    // AWS takes the master user of a replica from its source; moto 5.2.5 insists on one, so the
    // test plan names the source's (a replica without one is checked by its exact request in the
    // cluster module's unit tests).
    let target = p.add(
        "target",
        AuroraCluster::postgres("15.4")
            .master("cutover_admin", stack.secret("master_password")?)
            .replica_of(source.arn())
            .deletion_protection(false)
            .skip_final_snapshot(),
    );
    let writer = p.add(
        "writer",
        ClusterInstance::of(target.identifier(), "aurora-postgresql", "db.r6g.large")
            .promotion_tier(0),
    );
    // The first instance of a cluster becomes its writer: the reader comes after the writer.
    let reader = p
        .add(
            "reader",
            ClusterInstance::of(target.identifier(), "aurora-postgresql", "db.r6g.large")
                .promotion_tier(1),
        )
        .after(&writer);
    let gate = p.gate("cutover").after(&writer).after(&reader);
    let promote = p
        .add(
            "promote-target",
            PromoteCluster::replica(target.identifier()),
        )
        .after(&gate);
    let failover = p
        .add(
            "failover",
            Failover::cluster(target.identifier(), reader.identifier()),
        )
        .after(&promote);
    let reboot = p
        .add("reboot", Reboot::cluster(target.identifier()))
        .after(&failover);
    // Only members whose parameters wait for a reboot (none, here).
    p.add(
        "reboot-pending",
        Reboot::cluster(target.identifier()).only_pending(),
    )
    .trigger("parameters", "rds.logical_replication=1")
    .after(&reboot);
    Ok(p)
}

/// Two local clusters and the schema copy of a data path that moves rows only (DMS): tables and
/// keys first, indexes and foreign keys after (data-plane tests).
pub fn copy_schema(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let root: String = stack.get("data_root")?;
    let (sp, tp): (u16, u16) = (stack.get("source_port")?, stack.get("target_port")?);
    let source = p.add("source", Postgres::new(format!("{root}/source"), sp));
    let target = p.add("target", Postgres::new(format!("{root}/target"), tp));
    let seed = p.add(
        "seed",
        Sql::run(
            source.conn("postgres"),
            "CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL);
             CREATE TABLE orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                                  account bigint NOT NULL REFERENCES accounts(id), total numeric);
             CREATE INDEX orders_account ON orders(account);
             INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 10) g;",
        )
        .probe("SELECT to_regclass('public.orders') IS NOT NULL"),
    );
    let pre = p
        .add(
            "schema",
            CopySchema::pre(source.conn("postgres"), target.conn("postgres")),
        )
        .after(&seed)
        .after(&target);
    p.add(
        "schema-post",
        CopySchema::post(source.conn("postgres"), target.conn("postgres")),
    )
    .after(&pre);
    Ok(p)
}

/// One node of every AWS resource type that runs on the provider's driver, in the network
/// `aws-network` uses: a security group, a DB subnet group, an Aurora cluster in them with a
/// writer, a DMS replication subnet group with a
/// replication instance in it, two DMS endpoints and a task between them, an instance and a cluster parameter group, a topic with a subscription and an alarm notifying it (the lifecycle tests kill a run inside
/// each create).
pub fn aws_lifecycle(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let vpc = p.add("vpc", Vpc::find("migration"));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named("private-*"));
    let sg = p.add(
        "db-sg",
        SecurityGroup::in_vpc(vpc.vpc_id(), "database").ingress_from_cidr(5432, "10.0.0.0/16"),
    );
    let db_subnets = p.add(
        "db-subnets",
        SubnetGroup::of(subnets.ids(), "target database"),
    );
    let cluster = p.add(
        "target",
        AuroraCluster::postgres("15.4")
            .master("cutover_admin", stack.secret("source_password")?)
            .subnet_group(db_subnets.group_name())
            .security_groups(vec![sg.group_id()])
            .deletion_protection(false)
            .skip_final_snapshot(),
    );
    p.add(
        "target-writer",
        ClusterInstance::of(cluster.identifier(), "aurora-postgresql", "db.r6g.large"),
    );
    p.add("baseline", DbSnapshot::of_cluster(cluster.identifier()));
    p.add(
        "readers",
        ReaderAutoscaling::of(cluster.identifier()).between(1, 3),
    );
    let zone = p.add("zone", HostedZone::named("example.test"));
    p.add(
        "db-name",
        DnsRecord::cname(zone.zone_id(), "db.example.test", cluster.endpoint()),
    );
    let dms_subnets = p.add(
        "dms-subnets",
        DmsSubnetGroup::of(subnets.ids(), "replication instance"),
    );
    let dms = p.add(
        "dms",
        DmsInstance::new("dms.t3.medium", 50).subnet_group(dms_subnets.group_id()),
    );
    let source = p.add(
        "source-endpoint",
        DmsEndpoint::source("postgres", "old-db.internal", 5432, "app")
            .credentials("dms", stack.secret("source_password")?),
    );
    let target = p.add(
        "target-endpoint",
        DmsEndpoint::target("aurora-postgresql", "new-db.internal", 5432, "app")
            .credentials("dms", stack.secret("source_password")?),
    );
    p.add(
        "task",
        DmsTask::new(
            dms.arn(),
            source.arn(),
            target.arn(),
            "full-load-and-cdc",
            &TableMappings::new().include("public", "%"),
            &TaskSettings::default(),
        ),
    );
    p.add(
        "params",
        ParameterGroup::instance("postgres15", "target instances").immediate("work_mem", "65536"),
    );
    p.add(
        "cluster-params",
        ParameterGroup::cluster("aurora-postgresql15", "target cluster")
            .pending_reboot("rds.logical_replication", "1"),
    );
    let topic = p.add("alerts", SnsTopic::new().display_name("migration alerts"));
    p.add(
        "oncall",
        SnsSubscription::to(topic.arn(), "email", "oncall@example.test"),
    );
    p.add(
        "cpu",
        Alarm::rds_cpu_above(cluster.identifier(), 80.0).notify(topic.arn()),
    );
    Ok(p)
}
