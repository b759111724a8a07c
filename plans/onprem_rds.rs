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
//! the flip of the DNS record the application uses; a flip that fails unfences the source. Then
//! health checks for up to 5 minutes and a bake on quiet alarms; behind the gate `finish`,
//! replication is dropped both ways. `plan rollback STACK` goes back through the reverse
//! replication until then.
//!
//! `data_path = "dms"` (the DMS task moving the data, the cutover reading CDC latency) is not built
//! yet: the stack refuses it, saying so.

use cutover::prelude::*;

/// A table group: tables that replicate over one slot and subscription.
#[derive(Debug, serde::Deserialize)]
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
    if let DataPath::Dms = data_path {
        return Err(PlanError::Invalid {
            plan: stack.plan.clone(),
            message: format!(
                "{}: data_path = \"dms\" is not built yet (the DMS task as the data path, with the cutover reading its CDC latency and stopping it at the fence); use data_path = \"native\"",
                stack.path.display()
            ),
        });
    }
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

    let source = PgConn::from_stack(stack, "source")?;
    let master_password = stack.secret("master_password")?;

    // The network the instance lives in (the account's, looked up) and who may reach it.
    let vpc = p.add("vpc", Vpc::find(&vpc_name));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named(&subnet_pattern));
    // The application reaches the new database; so does the old server, for the reverse
    // replication (remove `source_cidr` from the stack once `finish` has passed).
    let db_sg = p.add(
        "db-sg",
        SecurityGroup::in_vpc(vpc.vpc_id(), "the new database")
            .ingress_from_cidr(5432, &app_cidr)
            .ingress_from_cidr(5432, &source_cidr),
    );
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

    // The data path: native logical replication from the source.
    let target_conn = target
        .connection(MASTER, master_password)
        .dbname(&db)
        .verify_full(&ca_bundle);
    let preflight = p
        .add(
            "preflight",
            Preflight::between(source.clone().into(), target_conn.clone().into())
                .slots(groups.len() as u64 + 1),
        )
        .after(&rebooted);
    let mut replicate = Replicate::between(source.clone().into(), target_conn.clone().into())
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
    let validate = p
        .add(
            "validate",
            Validate::between(source.clone().into(), target_conn.clone().into())
                .live(replicate.slots()),
        )
        .after(&caught_up);

    // The cutover, behind its gate: guards, a rollback point, the fence and the flip.
    let gate = p.gate("cutover").after(&validate);
    let healthy = p
        .add(
            "app-healthy",
            HealthCheck::url(health_url.as_str())
                .consecutive(3)
                .within(60),
        )
        .after(&gate);
    let lag_ok = p
        .add(
            "lag-under-bound",
            WaitLag::on(source.clone().into(), replicate.slots())
                .under_bytes(max_lag_bytes)
                .under_seconds(max_lag_seconds),
        )
        .after(&gate)
        // A guard, not a wait: the cutover does not start while the lag is above its bound.
        .timeout(Duration::from_secs(600));
    let snapshot = p
        .add("rollback-point", Snapshot::of_instance(target.identifier()))
        .after(&healthy)
        .after(&lag_ok);
    let switch = p
        .add(
            "switch",
            Cutover::read_only_fence(source.clone().into(), target_conn.clone().into())
                .replication(replicate.slots(), replicate.subscriptions())
                .validated(validate.validated_at(), 3600)
                .reverse_replication(),
        )
        .after(&snapshot);
    let unfence = p
        .add("unfence", switch.unfence())
        .rollback_only()
        .reopens(&[&switch])
        .trigger("cutover", switch.flipped_at());
    let flip = p
        .add(
            "flip",
            DnsFlip::record(zone.zone_id(), &record, "CNAME", target.endpoint())
                .from(source.host())
                .ttl(30),
        )
        .after(&switch)
        .compensate_with(&[&unfence]);
    let after_flip = p
        .add(
            "app-healthy-after",
            HealthCheck::url(health_url.as_str())
                .consecutive(5)
                .within(300),
        )
        .after(&flip);
    let bake = p
        .add(
            "bake",
            Bake::alarms(
                alarms.iter().map(|a| a.alarm_name()).collect(),
                bake_minutes * 60,
            )
            .since(flip.output::<String>("flipped_at")),
        )
        .after(&after_flip);
    let finish = p.gate("finish").after(&bake);
    p.add(
        "finish-replication",
        FinishReplication::between(source.into(), target_conn.into(), replicate.slots()),
    )
    .after(&finish);
    Ok(p)
}
