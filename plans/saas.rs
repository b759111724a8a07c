//! Case 4: a write-heavy SaaS PostgreSQL (40 million rows) moved into a new AWS environment with
//! zero downtime, cut over by DNS in a 15-second window.
//!
//! The target is an RDS for PostgreSQL instance in the new environment's VPC with the encryption
//! the account requires: storage under the account's KMS key (`kms_key_arn`), and TLS forced
//! (`rds.force_ssl`) and verified to the name (`verify-full`, the RDS CA bundle) by every
//! connection this plan makes. Its parameter group gives the replication the workers the table
//! groups need (one slot, one WAL sender and one apply worker per group, sync workers for the
//! initial copy) and publishes the reverse replication that makes rollback lossless.
//!
//! The rows move by native logical replication from the old database, which the plan does not
//! own (`[values.source]`). The preflight weighs the source's decoding and sender settings and the
//! target's workers against the table groups and says what to tune: the case's lesson is that
//! heavily updated large tables built up a replication queue until the primary was tuned, so the
//! biggest, busiest tables each get a group (a slot and an apply worker) of their own. Then a
//! parallel initial load, a wait until the lag is under `max_lag_seconds` (2 s), and validation
//! without locks: row counts and whole-row checksums to the keys, and the columns, indexes,
//! foreign keys and check constraints of both sides compared.
//!
//! Behind the gate `cutover`: the application's health, the record's TTL lowered to
//! `cutover_ttl` and the old TTL waited out (so no resolver holds the old answer longer than the
//! window), the lag under 2 s again, a snapshot of the target as a rollback point; then the
//! cutover itself: the source fenced read-only (there is no pooler we run in front of it; every
//! session, whatever its client, loses the right to write), the catch-up marker through every
//! group, sequences, reverse replication; then the flip of the record. The budget `dns-window`
//! is the case's 15 seconds: from the fence to the record change Route53 accepted, plus the
//! lowered TTL a resolver may still serve the old answer; Route53's INSYNC wait is outside it,
//! and the run's summary reports the budget used. A flip that fails unfences the source. After
//! it: health checks for up to 5 minutes and a bake on quiet alarms; behind the gate `finish`,
//! replication is dropped both ways. `plan rollback STACK` goes back until then.

use cutover::prelude::*;

/// A table group: tables that replicate over one slot and subscription.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    tables: Vec<String>,
}

/// The master user of the new instance.
const MASTER: &str = "cutover_admin";

pub fn build(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let production: bool = stack.get("production")?;
    let db: String = stack.get("database")?;
    let version: String = stack.get_or("engine_version", "15.7".to_string())?;
    let class: String = stack.get("instance_class")?;
    let storage_gb: u64 = stack.get("storage_gb")?;
    let kms_key: String = stack.get_checked("kms_key_arn", |k: &String| kms_key_arn(k))?;
    let vpc_name: String = stack.get("vpc")?;
    let subnet_pattern: String = stack.get("subnets")?;
    let app_cidr: String = stack.get("app_cidr")?;
    let source_cidr: String = stack.get("source_cidr")?;
    let zone_name: String = stack.get("zone")?;
    let record: String = stack.get("record")?;
    let record_ttl: u64 = stack.get("record_ttl")?;
    let window_s: f64 = stack.get_or("window_seconds", 15.0)?;
    // The lowered TTL counts against the window: it must leave time for the fence and the flip.
    let cutover_ttl: u64 = stack.get_checked("cutover_ttl", ttl_within_window(window_s))?;
    let health_url: String = stack.get("health_url")?;
    let alert_email: String = stack.get("alert_email")?;
    let ca_bundle: String = stack.get("ca_bundle")?;
    let bake_minutes: u64 = stack.get("bake_minutes")?;
    let max_lag_seconds: f64 = stack.get_or("max_lag_seconds", 2.0)?;
    let max_lag_bytes: u64 = stack.get_or("max_lag_bytes", 16 * 1024 * 1024)?;
    let groups: Vec<Group> = stack.get("table_groups")?;
    let workers: usize = stack.get_or("load_workers", 4)?;
    let sync_workers: u64 = stack.get_or("sync_workers", 4)?;
    let backup_window: String = stack.get_or("backup_window", "03:00-04:00".to_string())?;
    let maintenance_window: String =
        stack.get_or("maintenance_window", "sun:04:30-sun:05:30".to_string())?;

    let source = PgConn::from_stack(stack, "source")?;
    let master_password = stack.secret("master_password")?;

    // The new environment's network (looked up) and who may reach the database: the
    // application, and the old environment for the reverse replication (remove `source_cidr`
    // from the stack once `finish` has passed).
    let vpc = p.add("vpc", Vpc::find(&vpc_name));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named(&subnet_pattern));
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

    // A slot, a WAL sender and an apply worker per group and one for the tables of no group; the
    // reverse replication needs as many on this side after the cutover; sync workers copy.
    let streams = groups.len() as u64 + 1;
    let params = ParameterGroup::instance(
        &format!("postgres{}", version.split('.').next().unwrap_or("15")),
        "case 4: the new primary, TLS forced, replication both ways",
    )
    .immediate("rds.force_ssl", "1")
    .pending_reboot("rds.logical_replication", "1")
    .pending_reboot("max_replication_slots", &(streams + 8).to_string())
    .pending_reboot("max_wal_senders", &(streams + 8).to_string())
    .pending_reboot(
        "max_logical_replication_workers",
        &(streams + sync_workers + 4).to_string(),
    )
    .immediate(
        "max_sync_workers_per_subscription",
        &sync_workers.to_string(),
    )
    .pending_reboot(
        "max_worker_processes",
        &(streams + sync_workers + 12).to_string(),
    )
    .memory("logical_decoding_work_mem", "256MB")?;
    let static_params = params.static_digest();
    let params = p.add("params", params);

    let mut target = DbInstance::postgres(&version, &class, storage_gb)
        .kms_key(kms_key.as_str())
        .master(MASTER, master_password.clone())
        .db_name(&db)
        .parameter_group(params.group_name())
        .subnet_group(db_subnets.group_name())
        .security_groups(vec![db_sg.group_id()])
        .backups(7, &backup_window)
        .maintenance_window(&maintenance_window)
        .performance_insights(7)
        .multi_az(production)
        .deletion_protection(production);
    if !production {
        target = target.skip_final_snapshot();
    }
    let target = p.add("target", target);
    let target = if production { target.protect() } else { target };
    let rebooted = p
        .add(
            "apply-parameters",
            Reboot::instance(target.identifier()).only_pending(),
        )
        .trigger("parameters", static_params.as_str());
    let target_conn = target
        .connection(MASTER, master_password.clone())
        .dbname(&db)
        .verify_full(&ca_bundle);

    // Alerts on the new primary, two 5-minute periods each; the bake after the flip reads them.
    let topic = p.add(
        "alerts",
        SnsTopic::new().display_name("case 4 migration alerts"),
    );
    p.add(
        "oncall",
        SnsSubscription::to(topic.arn(), "email", alert_email.as_str()),
    );
    let five_min = |a: Alarm| a.over(300, 2).notify(topic.arn());
    let alarms = [
        p.add(
            "cpu",
            five_min(Alarm::rds_cpu_above(target.identifier(), 80.0)),
        ),
        p.add(
            "connections",
            five_min(Alarm::rds_connections_above(target.identifier(), 400.0)),
        ),
        // The write-heavy load's risk on the new side: WAL kept for the reverse replication.
        p.add(
            "replication-slot-lag",
            five_min(
                Alarm::metric(
                    "AWS/RDS",
                    "OldestReplicationSlotLag",
                    &[("DBInstanceIdentifier", target.identifier().into())],
                    ">",
                    1024.0 * 1024.0 * 1024.0,
                )
                .statistic("Maximum"),
            ),
        ),
    ];

    // The data: preflight, replication in table groups, the lag, validation.
    let preflight = p
        .add(
            "preflight",
            Preflight::between(source.clone().into(), target_conn.clone().into()).slots(streams),
        )
        .after(&rebooted);
    let mut replicate = Replicate::between(source.clone().into(), target_conn.clone().into())
        .parallel_load(workers, 1024);
    for g in &groups {
        let tables: Vec<&str> = g.tables.iter().map(String::as_str).collect();
        replicate = replicate.group(&g.name, &tables);
    }
    let replicate = p.add("replicate", replicate).after(&preflight);
    let lag = || {
        WaitLag::on(source.clone().into(), replicate.slots())
            .under_bytes(max_lag_bytes)
            .under_seconds(max_lag_seconds)
    };
    let caught_up = p.add("caught-up", lag());
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

    // Behind the gate: the guards, the TTL, the rollback point.
    let gate = p.gate("cutover").after(&validate);
    let healthy = p
        .add(
            "app-healthy",
            HealthCheck::url(health_url.as_str())
                .consecutive(3)
                .within(60),
        )
        .after(&gate);
    let zone = p.add("zone", HostedZone::named(&zone_name));
    let lowered = p
        .add(
            "lower-ttl",
            DnsLowerTtl::record(zone.zone_id(), &record, "CNAME", cutover_ttl).was(record_ttl),
        )
        .after(&gate);
    let lag_ok = p
        .add("lag-under-bound", lag())
        .after(&lowered)
        // A guard, not a wait: the cutover does not start while the lag is above it.
        .timeout(Duration::from_secs(600));
    let snapshot = p
        .add("rollback-point", Snapshot::of_instance(target.identifier()))
        .after(&healthy)
        .after(&lag_ok);

    // The cutover: the fence, catch-up, sequences and reverse replication; then the flip.
    let switch = p
        .add(
            "switch",
            Cutover::read_only_fence(source.clone().into(), target_conn.clone().into())
                .replication(replicate.slots(), replicate.subscriptions())
                .validated(validate.validated_at(), 3600)
                .schema_at_start(replicate.schema())
                .guards(max_lag_bytes, 5.0)
                .max_lag_seconds(max_lag_seconds)
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
                .ttl(lowered.ttl()),
        )
        .after(&switch)
        .compensate_with(&[&unfence]);
    p.budget(
        Budget::new(
            "dns-window",
            window_s,
            switch.fenced_at(),
            flip.accepted_at(),
        )
        .plus_lowered_ttl(cutover_ttl),
    );
    let after = p
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
        .after(&after);
    let finish = p.gate("finish").after(&bake);
    p.add(
        "finish-replication",
        FinishReplication::between(source.into(), target_conn.into(), replicate.slots()),
    )
    .after(&finish);
    Ok(p)
}
