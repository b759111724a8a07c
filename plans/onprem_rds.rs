//! Case 3: on-premise PostgreSQL (2 TB) into RDS for PostgreSQL 12.8 with zero downtime.
//!
//! The target is an RDS instance (db.r5.2xlarge, 3000 GB of io1 at 9000 IOPS in production) with
//! the case's parameter group, written in the units RDS takes, plus what the migration needs: logical
//! replication on (the target publishes the reverse replication that makes rollback lossless), slots,
//! WAL senders and workers for the table groups. Its static parameters take effect by a reboot before
//! replication starts. Two read replicas; an SNS topic with the case's alarms (CPU above 80 %,
//! connections above 40, read latency above 0.2 s, and each replica's lag above 5 minutes, all over
//! two 5-minute periods) and a tighter alarm per replica (lag above 30 s: reads go to a replica only
//! while it is quiet).
//!
//! The data moves by native logical replication from the source, which the plan does not own
//! (`[values.source]` in the stack): preflight, replication in table groups (the biggest tables each
//! in a group of their own), a lag wait and validation to the keys. Behind the gate `cutover`: the
//! application's health, a lag under 30 s, a snapshot of the target as a rollback point, then the
//! cutover: the source fenced read-only, the catch-up marker, sequences, reverse replication, and
//! the flip of the DNS record the application uses, whose TTL was lowered to `cutover_ttl` ahead of
//! the fence (the old TTL, `record_ttl`, waited out), within the budget `writes-refused`
//! (`window_seconds`, default 60: from the fence to the change accepted, plus that TTL); a flip
//! that fails unfences the source. Then
//! health checks for up to 5 minutes and a bake on quiet alarms; behind the gate `finish`,
//! replication is dropped both ways. `plan rollback STACK` goes back through the reverse
//! replication until then.
//!
//! With `data_path = "dms"` the rows move by AWS DMS instead (the case's replication instance,
//! dms.r5.xlarge with 500 GB in one zone, endpoints with TLS required, a full-load-and-CDC task per
//! table group, and one for the tables of no group), after a schema copy; the cutover's guard reads
//! each task's CDC latency, every task carries its group's catch-up table (the cutover waits for
//! its marker through each), the tasks stop after the fence,
//! and only then does the reverse replication start (created disabled inside the fence); a failed
//! flip resumes them. The DMS objects retire after the bake.

use cutover::prelude::*;

/// A table group: tables that replicate over one slot and subscription.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    tables: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum DataPath {
    Native,
    Dms,
}

/// The master user of the new instance.
const MASTER: &str = "cutover_admin";

pub fn build(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let data_path: DataPath = stack.get("data_path")?;
    let production: bool = stack.get("production")?;
    let db: String = stack.get("database")?;
    let class: String = stack.get("instance_class")?;
    let storage_gb: u64 = stack.get("storage_gb")?;
    let iops: u64 = stack.get("iops")?;
    let replica_class: String = stack.get("replica_class")?;
    let vpc_name: String = stack.get("vpc")?;
    let subnet_pattern: String = stack.get("subnets")?;
    let app_cidr: String = stack.get("app_cidr")?;
    let source_cidr: String = stack.get("source_cidr")?;
    let zone_name: String = stack.get("zone")?;
    let record: String = stack.get("record")?;
    // The record's TTL today, and the one it has from before the fence on: a resolver that
    // cached the old answer sends clients to the read-only source until it expires.
    let record_ttl: u64 = stack.get_or("record_ttl", 300)?;
    let window_s: f64 = stack.get_or("window_seconds", 60.0)?;
    let cutover_ttl: u64 = stack.get_checked("cutover_ttl", ttl_within_window(window_s))?;
    let reader_record: String = stack.get("reader_record")?;
    let monitoring_role: String = stack.get("monitoring_role_arn")?;
    let health_url: String = stack.get("health_url")?;
    let alert_email: String = stack.get("alert_email")?;
    let ca_bundle: String = stack.get("ca_bundle")?;
    let bake_minutes: u64 = stack.get("bake_minutes")?;
    let max_lag_seconds: f64 = stack.get_or("max_lag_seconds", 30.0)?;
    let max_lag_bytes: u64 = stack.get_or("max_lag_bytes", 64 * 1024 * 1024)?;
    let groups: Vec<Group> = stack.get("table_groups")?;
    let backup_window: String = stack.get_or("backup_window", "03:00-04:00".to_string())?;
    let maintenance_window: String =
        stack.get_or("maintenance_window", "sun:04:00-sun:05:00".to_string())?;
    let workers: usize = stack.get_or("load_workers", 4)?;
    let dms_class: String = stack.get_or("dms_class", "dms.r5.xlarge".to_string())?;
    let dms_storage_gb: u64 = stack.get_or("dms_storage_gb", 500)?;

    let source = PgConn::from_stack(stack, "source")?;
    let master_password = stack.secret("master_password")?;

    // The network the instance lives in (the account's, looked up) and who may reach it.
    let vpc = p.add("vpc", Vpc::find(&vpc_name));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named(&subnet_pattern));
    // The application reaches the new database; so does the old server, for the reverse
    // replication (remove `source_cidr` from the stack once `finish` has passed).
    let mut db_sg = SecurityGroup::in_vpc(vpc.vpc_id(), "the new database")
        .ingress_from_cidr(5432, &app_cidr)
        .ingress_from_cidr(5432, &source_cidr);
    // The DMS replication instance writes into the new database.
    let dms_sg = match data_path {
        DataPath::Dms => {
            let sg = p.add(
                "dms-sg",
                SecurityGroup::in_vpc(vpc.vpc_id(), "the DMS replication instance"),
            );
            db_sg = db_sg.ingress_from_group(5432, sg.group_id());
            Some(sg)
        }
        DataPath::Native => None,
    };
    let db_sg = p.add("db-sg", db_sg);
    let db_subnets = p.add(
        "db-subnets",
        SubnetGroup::of(subnets.ids(), "the new database"),
    );

    // The case's parameters, in RDS's units, and what replication needs.
    let slots = groups.len() as u64 + 2;
    let params = ParameterGroup::instance("postgres12", "case 3: the new primary and its replicas")
        .pending_reboot(
            "shared_preload_libraries",
            "pg_stat_statements,auto_explain",
        )
        .memory("effective_cache_size", "24GB")?
        .memory("shared_buffers", "8GB")?
        .memory("work_mem", "256MB")?
        .memory("maintenance_work_mem", "2GB")?
        .pending_reboot("rds.logical_replication", "1")
        .pending_reboot("max_replication_slots", &(slots + 8).to_string())
        .pending_reboot("max_wal_senders", &(slots + 8).to_string())
        .pending_reboot(
            "max_logical_replication_workers",
            &(2 * slots + 4).to_string(),
        )
        .pending_reboot("max_worker_processes", &(2 * slots + 12).to_string());
    let static_params = params.static_digest();
    let params = p.add("params", params);

    let mut target = DbInstance::postgres("12.8", &class, storage_gb)
        .storage_type("io1", Some(iops))
        .master(MASTER, master_password.clone())
        .db_name(&db)
        .parameter_group(params.group_name())
        .subnet_group(db_subnets.group_name())
        .security_groups(vec![db_sg.group_id()])
        .backups(7, &backup_window)
        .maintenance_window(&maintenance_window)
        .performance_insights(7)
        .enhanced_monitoring(60, monitoring_role.as_str())
        .multi_az(production)
        .deletion_protection(production);
    if !production {
        target = target.skip_final_snapshot();
    }
    let target = p.add("target", target);
    let target = if production { target.protect() } else { target };
    // Static parameters take effect before replication starts (and again whenever they change).
    let rebooted = p
        .add(
            "apply-parameters",
            Reboot::instance(target.identifier()).only_pending(),
        )
        .trigger("parameters", static_params.as_str());

    let mut replicas = Vec::new();
    for n in 1..=2 {
        let r = p
            .add(
                &format!("replica-{n}"),
                DbInstance::replica_of(target.identifier(), &replica_class)
                    .performance_insights(7)
                    .enhanced_monitoring(60, monitoring_role.as_str()),
            )
            .after(&rebooted);
        replicas.push(r);
    }

    // Alerts: one topic, the case's four kinds of alarm, two 5-minute periods each.
    let topic = p.add(
        "alerts",
        SnsTopic::new().display_name("case 3 migration alerts"),
    );
    p.add(
        "oncall",
        SnsSubscription::to(topic.arn(), "email", alert_email.as_str()),
    );
    let five_min = |a: Alarm| a.over(300, 2).notify(topic.arn());
    let mut alarms = vec![
        p.add(
            "cpu",
            five_min(Alarm::rds_cpu_above(target.identifier(), 80.0)),
        ),
        p.add(
            "connections",
            five_min(Alarm::rds_connections_above(target.identifier(), 40.0)),
        ),
        p.add(
            "read-latency",
            five_min(Alarm::rds_read_latency_above(target.identifier(), 0.2)),
        ),
    ];
    let zone = p.add("zone", HostedZone::named(&zone_name));
    for (i, r) in replicas.iter().enumerate() {
        let n = i + 1;
        let lag = |bound: f64| {
            Alarm::metric(
                "AWS/RDS",
                "ReplicaLag",
                &[("DBInstanceIdentifier", r.identifier().into())],
                ">",
                bound,
            )
            .statistic("Maximum")
        };
        alarms.push(p.add(&format!("replica-{n}-lag"), five_min(lag(300.0))));
        // Reads go to a replica only while this one is quiet (the application's reader routing
        // watches it; Route53 health checks on alarms are not built).
        p.add(
            &format!("replica-{n}-reads"),
            lag(max_lag_seconds).over(60, 1).notify(topic.arn()),
        );
        p.add(
            &format!("reader-record-{n}"),
            DnsRecord::cname(zone.zone_id(), &reader_record, r.endpoint())
                .ttl(30)
                .weighted(&format!("replica-{n}"), 1),
        );
    }

    let target_conn = target
        .connection(MASTER, master_password.clone())
        .dbname(&db)
        .verify_full(&ca_bundle);
    // The bake after the flip (declared here: the DMS objects retire after it).
    let bake = p
        .add(
            "bake",
            Bake::alarms(
                alarms.iter().map(|a| a.alarm_name()).collect(),
                bake_minutes * 60,
            )
            .since(Output::<String>::of("flip", "flipped_at")),
        )
        .after_name("app-healthy-after");

    // The data path, up to a validated target and the guards of the cutover.
    let gate = p.gate("cutover");
    let healthy = p
        .add(
            "app-healthy",
            HealthCheck::url(health_url.as_str())
                .consecutive(3)
                .within(60),
        )
        .after(&gate);
    let path = match data_path {
        DataPath::Native => {
            let preflight = p
                .add(
                    "preflight",
                    Preflight::between(source.clone().into(), target_conn.clone().into())
                        .slots(groups.len() as u64 + 1),
                )
                .after(&rebooted);
            let mut replicate =
                Replicate::between(source.clone().into(), target_conn.clone().into())
                    .parallel_load(workers, 1024);
            for g in &groups {
                let tables: Vec<&str> = g.tables.iter().map(String::as_str).collect();
                replicate = replicate.group(&g.name, &tables);
            }
            let replicate = p.add("replicate", replicate).after(&preflight);
            let caught_up = p.add(
                "caught-up",
                WaitLag::on(source.clone().into(), replicate.slots())
                    .under_bytes(max_lag_bytes)
                    .under_seconds(max_lag_seconds),
            );
            // Tables created on the source later are taken in at the next apply, and validated.
            let extend = p
                .add("extend-replication", replicate.extend())
                .after(&caught_up);
            let validate = p
                .add(
                    "validate",
                    Validate::between(source.clone().into(), target_conn.clone().into())
                        .live(replicate.slots()),
                )
                .after(&extend)
                .trigger("tables", extend.added());
            let lag_ok = p
                .add(
                    "lag-under-bound",
                    WaitLag::on(source.clone().into(), replicate.slots())
                        .under_bytes(max_lag_bytes)
                        .under_seconds(max_lag_seconds),
                )
                .after(&gate)
                // A guard, not a wait: the cutover does not start while the lag is above it.
                .timeout(Duration::from_secs(600));
            Path {
                validate,
                guards: vec![lag_ok.name().to_string()],
                cutover: Cutover::read_only_fence(
                    source.clone().into(),
                    target_conn.clone().into(),
                )
                .replication(replicate.slots(), replicate.subscriptions())
                .schema_at_start(replicate.schema())
                .reverse_replication(),
                slots: replicate.slots(),
                tasks: vec![],
            }
        }
        DataPath::Dms => {
            // The schema first (tables and keys; DMS moves rows only), the marker table with it.
            // A task per declared group, and one for every other table (`rest`).
            let mut groups = groups.clone();
            if !groups
                .iter()
                .any(|g| g.name == "rest" || g.tables.is_empty())
            {
                groups.push(Group {
                    name: "rest".into(),
                    tables: vec![],
                });
            }
            let schema = p
                .add(
                    "schema",
                    CopySchema::pre(source.clone().into(), target_conn.clone().into()).groups(
                        &groups
                            .iter()
                            .map(|g| TableGroup {
                                name: g.name.clone(),
                                tables: g.tables.clone(),
                            })
                            .collect::<Vec<_>>(),
                    ),
                )
                .after(&rebooted);
            let dms_subnets = p
                .add(
                    "dms-subnets",
                    DmsSubnetGroup::of(subnets.ids(), "the DMS replication instance"),
                )
                .retire_after(&bake);
            let dms = p
                .add(
                    "dms",
                    DmsInstance::new(&dms_class, dms_storage_gb)
                        .multi_az(false)
                        .subnet_group(dms_subnets.group_id())
                        .security_groups(vec![dms_sg.as_ref().expect("declared").group_id()]),
                )
                .retire_after(&bake);
            // TLS required on both endpoints (`require`, the endpoints' default).
            let (source_port, source_user) = source.port_and_user();
            let src_ep = p
                .add(
                    "source-endpoint",
                    DmsEndpoint::source("postgres", source.host(), source_port, &db)
                        .credentials(&source_user, stack.secret("source_password")?)
                        .ssl_mode("require"),
                )
                .retire_after(&bake);
            let dst_ep = p
                .add(
                    "target-endpoint",
                    DmsEndpoint::target("postgres", target.endpoint(), target.port(), &db)
                        .credentials(MASTER, master_password.clone())
                        .ssl_mode("require"),
                )
                .retire_after(&bake);
            let tested = p
                .add(
                    "test-connections",
                    TestConnections::of(dms.arn(), vec![src_ep.arn(), dst_ep.arn()]),
                )
                .after(&schema);
            let mut tasks = Vec::new();
            let mut loaded = Vec::new();
            let split = |t: &str| -> (String, String) {
                let (s, n) = t.split_once('.').unwrap_or(("public", t));
                (s.to_string(), n.to_string())
            };
            let mut catch_up = Vec::new();
            for g in &groups {
                // Each task carries its group's catch-up table: the cutover's proof that this
                // task, not only one of them, applied every write made before the fence.
                let own = catch_up_table(&g.name);
                let mut m = TableMappings::new();
                if g.tables.is_empty() || g.name == "rest" {
                    m = m.include("%", "%");
                    for other in groups.iter().filter(|o| o.name != g.name) {
                        for t in other.tables.iter().chain([&catch_up_table(&other.name)]) {
                            let (schema_name, table) = split(t);
                            m = m.exclude(&schema_name, &table);
                        }
                    }
                } else {
                    for t in g.tables.iter().chain([&own]) {
                        let (schema_name, table) = split(t);
                        m = m.include(&schema_name, &table);
                    }
                }
                catch_up.push(own);
                let task = p
                    .add(
                        &format!("task-{}", g.name),
                        DmsTask::new(
                            dms.arn(),
                            src_ep.arn(),
                            dst_ep.arn(),
                            "full-load-and-cdc",
                            &m,
                            &TaskSettings::default(),
                        ),
                    )
                    .after(&schema)
                    .retire_after(&bake);
                let started = p
                    .add(
                        &format!("start-{}", g.name),
                        StartTask::of(task.identifier(), "start"),
                    )
                    .after(&tested);
                loaded.push(
                    p.add(
                        &format!("loaded-{}", g.name),
                        WaitFullLoad::of(task.identifier()),
                    )
                    .after(&started),
                );
                tasks.push((g.name.clone(), task));
            }
            // Indexes, foreign keys and triggers once the rows are in.
            let mut post = p.add(
                "schema-post",
                CopySchema::post(source.clone().into(), target_conn.clone().into()),
            );
            for l in &loaded {
                post = post.after(l);
            }
            // DMS has no slot position the tool can wait on: validation is exact on a quiet
            // source; DMS's own validation runs alongside (TaskSettings::validation).
            let validate = p
                .add(
                    "validate",
                    Validate::between(source.clone().into(), target_conn.clone().into()),
                )
                .after(&post);
            let mut guards = Vec::new();
            for (name, task) in &tasks {
                let g = p
                    .add(
                        &format!("cdc-under-bound-{name}"),
                        WaitCdcLatency::of(dms.identifier(), task.identifier(), max_lag_seconds),
                    )
                    .after(&gate)
                    .timeout(Duration::from_secs(600));
                guards.push(g.name().to_string());
            }
            Path {
                validate,
                guards,
                cutover: Cutover::read_only_fence(
                    source.clone().into(),
                    target_conn.clone().into(),
                )
                .catch_up_tables(catch_up)
                .reverse_replication_enabled_later(),
                slots: Value::Array(vec![]),
                tasks: tasks
                    .into_iter()
                    .map(|(n, t)| (n, t.identifier()))
                    .collect(),
            }
        }
    };
    let gate = gate.after(&path.validate);

    // The cutover: a rollback point, the fence, then the flip.
    // The TTL lowered and the old one waited out before the fence, so that after the flip no
    // resolver holds the old answer longer than the lowered TTL.
    let lowered = p
        .add(
            "lower-ttl",
            DnsLowerTtl::record(zone.zone_id(), &record, "CNAME", cutover_ttl).was(record_ttl),
        )
        .after(&gate);
    let mut snapshot = p
        .add("rollback-point", Snapshot::of_instance(target.identifier()))
        .after(&healthy)
        .after(&lowered);
    for g in &path.guards {
        snapshot = snapshot.after_name(g);
    }
    let switch = p
        .add(
            "switch",
            path.cutover.validated(path.validate.validated_at(), 3600),
        )
        .after(&snapshot)
        .after(&gate);
    // With DMS: its tasks stop inside the fence's shadow, then the reverse replication starts.
    let mut before_flip: Vec<String> = vec![switch.name().to_string()];
    let mut compensations: Vec<String> = vec![];
    let mut reopened: Vec<String> = vec![switch.name().to_string()];
    if !path.tasks.is_empty() {
        let mut enable = p.add("enable-reverse", switch.enable_reverse());
        for (name, task) in &path.tasks {
            let stop = p
                .add(&format!("stop-{name}"), StopTask::of(task.clone()))
                .after(&switch);
            enable = enable.after(&stop);
            reopened.push(stop.name().to_string());
            // A failed flip resumes the task where it stopped.
            let resume = p
                .add(
                    &format!("resume-{name}"),
                    StartTask::of(task.clone(), "resume"),
                )
                .rollback_only()
                .trigger("cutover", switch.flipped_at());
            compensations.push(resume.name().to_string());
        }
        reopened.push(enable.name().to_string());
        before_flip = vec![enable.name().to_string()];
    }
    let unfence = p
        .add("unfence", switch.unfence())
        .rollback_only()
        .trigger("cutover", switch.flipped_at());
    let unfence = reopened.iter().fold(unfence, |u, n| u.reopens_name(n));
    compensations.insert(0, unfence.name().to_string());
    let mut flip = p.add(
        "flip",
        DnsFlip::record(zone.zone_id(), &record, "CNAME", target.endpoint())
            .from(source.host())
            .ttl(lowered.ttl()),
    );
    for b in &before_flip {
        flip = flip.after_name(b);
    }
    let flip = flip.on_failure(FailurePolicy::Compensate(compensations));
    // From the fence to the record change accepted, plus the lowered TTL: how long a client may
    // find the database refusing writes.
    p.budget(
        Budget::new(
            "writes-refused",
            window_s,
            switch.fenced_at(),
            flip.accepted_at(),
        )
        .plus_lowered_ttl(cutover_ttl),
    );
    p.add(
        "app-healthy-after",
        HealthCheck::url(health_url.as_str())
            .consecutive(5)
            .within(300),
    )
    .after(&flip);
    let finish = p.gate("finish").after(&bake);
    p.add(
        "finish-replication",
        FinishReplication::between(source.into(), target_conn.into(), path.slots),
    )
    .after(&finish);
    Ok(p)
}

/// What a data path gives the cutover.
struct Path {
    validate: Handle<Validate>,
    /// Steps the rollback point waits for (lag or CDC latency under the bound).
    guards: Vec<String>,
    cutover: Cutover,
    /// The forward replication's slots (the native path's), for its end.
    slots: Value,
    /// DMS tasks by group: stopped after the fence, resumed if the flip fails.
    tasks: Vec<(String, Output<String>)>,
}
