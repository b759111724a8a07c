//! Case 1: a dozen single-tenant RDS for PostgreSQL instances consolidated into one multi-tenant
//! Aurora PostgreSQL cluster, tenant by tenant, with a temporary import instance for the big ones.
//!
//! The layout is a database per tenant in the one cluster, each keeping its name, schemas and
//! owner. Native logical replication cannot rename a schema, and a schema per tenant would need
//! DMS renames: no reverse replication for a lossless rollback, LOB limits, and a cutover guard
//! that cannot prove every write arrived the way a subscription's slot proves it. A database per
//! tenant keeps each tenant's replication, validation, fence, flip and rollback apart from the
//! others' (one tenant's `plan rollback --node` never touches another), and per-tenant grants,
//! dumps and restores work as they did. The application changes only the host it connects to,
//! through the tenant's DNS record.
//!
//! The stack lists the tenants (`tenants = [{ name, source, size_gb }]`: the tenant's RDS
//! instance, not this plan's, and the size of its data). For each tenant:
//! - `source-T` reads the tenant's instance (its endpoint); `database-T` creates the tenant's
//!   database in the cluster.
//! - A tenant below `import_threshold_gb` replicates straight from its instance (`replicate-T`:
//!   publication and slot, a parallel load from an exported snapshot, the subscription).
//! - A tenant at or above it gets an import instance (`import-T`, `import_class`, temporary): a
//!   read replica of the tenant's instance, which RDS builds by restoring a snapshot of it and
//!   then streams, so the source's own instance serves no bulk read. Its LSN is exact, by the
//!   steps of case 2: `capture-slots-T` on the tenant's instance first, `pause-replay-T` (the
//!   import instance replays past every slot and pauses; its LSN is recorded), `verify-lsn-T`
//!   (on the tenant's instance: the replica is its own and each slot still serves that LSN),
//!   `load-T` from the paused import instance, and `replicate-T` starts each subscription at
//!   that LSN. A snapshot restored into a standalone instance would not do: RDS exposes no
//!   position where a restore's data ends, so change capture could not start exactly there.
//!   The import instance is retired once the tenant validated (`validate-T`).
//! - Then `caught-up-T` and `validate-T`; behind the tenant's own gate `cutover-T`: the lag
//!   under its bound, the tenant's record's TTL lowered (the old one waited out), the cutover
//!   (the tenant's instance fenced read-only, catch-up, sequences, reverse replication from the
//!   cluster's database back to the tenant's instance) and the flip of the record to the
//!   cluster's endpoint, within the budget `writes-refused-T`; a failed flip unfences the
//!   source. After a bake on the cluster's alarms, behind `finish-T`, replication ends both ways.
//!   One tenant goes back with `plan rollback STACK --node flip-T` (its record names its
//!   instance again) then `--node switch-T` (through its reverse replication), until then.

use std::collections::BTreeSet;

use cutover::prelude::*;

/// A tenant as the stack lists it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Tenant {
    /// The tenant's name: its nodes' suffix, its database and its record's first label.
    name: String,
    /// The tenant's RDS instance identifier (not this plan's); checked by `check_tenants`.
    #[serde(default)]
    source: String,
    /// The size of the tenant's data, in GB: at or above `import_threshold_gb` it gets an
    /// import instance. Checked by `check_tenants`.
    #[serde(default)]
    size_gb: Option<u64>,
    /// The database on the tenant's instance (default: the tenant's name); the cluster's
    /// database has the same name.
    #[serde(default)]
    database: Option<String>,
    /// Big tables that replicate each over a slot of their own; the rest share one.
    #[serde(default)]
    large_tables: Vec<String>,
}

/// The cluster's master user.
const MASTER: &str = "cutover_admin";

/// Refuses what cannot be a tenant list: none, a name twice, a name that is no database and
/// DNS label, a tenant without its instance, two tenants on one database of one instance.
fn check_tenants(tenants: &Vec<Tenant>) -> Result<(), String> {
    if tenants.is_empty() {
        return Err(
            "the tenant list is empty: list at least one tenant, e.g. { name = \"acme\", source = \"tenant-acme\", size_gb = 120 }"
                .into(),
        );
    }
    let mut names = BTreeSet::new();
    let mut sources = BTreeSet::new();
    for t in tenants {
        let ok = t.name.len() <= 40
            && t.name.starts_with(|c: char| c.is_ascii_lowercase())
            && t.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !t.name.ends_with('-');
        if !ok {
            return Err(format!(
                "tenant name `{}`: use 1 to 40 lowercase letters, digits and hyphens, starting with a letter (it names the tenant's database, nodes and DNS record)",
                t.name
            ));
        }
        if !names.insert(t.name.as_str()) {
            return Err(format!(
                "two tenants are named `{}`: give each tenant its own name",
                t.name
            ));
        }
        if t.source.trim().is_empty() {
            return Err(format!(
                "tenant `{}` has no source: set `source` to its RDS instance identifier",
                t.name
            ));
        }
        if t.size_gb.is_none() {
            return Err(format!(
                "tenant `{}` has no size: set `size_gb` to the size of its data in GB (it decides whether the tenant gets an import instance)",
                t.name
            ));
        }
        let db = t.database.clone().unwrap_or_else(|| t.name.clone());
        if !sources.insert((t.source.clone(), db.clone())) {
            return Err(format!(
                "tenant `{}`: database `{db}` of instance `{}` is another tenant's too: each tenant moves its own database",
                t.name, t.source
            ));
        }
    }
    Ok(())
}

pub fn build(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let production: bool = stack.get("production")?;
    let tenants: Vec<Tenant> = stack.get_checked("tenants", check_tenants)?;
    let version: String = stack.get("engine_version")?;
    let writer_class: String = stack.get("writer_class")?;
    let import_class: String = stack.get_or("import_class", "db.m5.8xlarge".to_string())?;
    let threshold_gb: u64 = stack.get("import_threshold_gb")?;
    let source_user: String = stack.get("source_user")?;
    let vpc_name: String = stack.get("vpc")?;
    let subnet_pattern: String = stack.get("subnets")?;
    let app_cidr: String = stack.get("app_cidr")?;
    let zone_name: String = stack.get("zone")?;
    let record_suffix: String = stack.get("record_suffix")?;
    let record_ttl: u64 = stack.get_or("record_ttl", 300)?;
    let window_s: f64 = stack.get_or("window_seconds", 60.0)?;
    let cutover_ttl: u64 = stack.get_checked("cutover_ttl", ttl_within_window(window_s))?;
    let ca_bundle: String = stack.get("ca_bundle")?;
    let bake_minutes: u64 = stack.get("bake_minutes")?;
    let alert_email: String = stack.get("alert_email")?;
    let max_lag_seconds: f64 = stack.get_or("max_lag_seconds", 30.0)?;
    let max_lag_bytes: u64 = stack.get_or("max_lag_bytes", 64 * 1024 * 1024)?;
    let workers: usize = stack.get_or("load_workers", 4)?;
    let import_workers: usize = stack.get_or("import_load_workers", 8)?;
    let backup_window: String = stack.get_or("backup_window", "03:00-04:00".to_string())?;
    let maintenance_window: String =
        stack.get_or("maintenance_window", "sun:04:30-sun:05:30".to_string())?;
    let master_password = stack.secret("master_password")?;

    // The network, the cluster and its writer, sized for every tenant's subscriptions.
    let vpc = p.add("vpc", Vpc::find(&vpc_name));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named(&subnet_pattern));
    let sg = p.add(
        "db-sg",
        SecurityGroup::in_vpc(vpc.vpc_id(), "the multi-tenant cluster")
            .ingress_from_cidr(5432, &app_cidr),
    );
    let db_subnets = p.add(
        "db-subnets",
        SubnetGroup::of(subnets.ids(), "the multi-tenant cluster"),
    );
    let streams: u64 = tenants
        .iter()
        .map(|t| t.large_tables.len() as u64 + 1)
        .sum();
    let major = version.split('.').next().unwrap_or("15");
    // Logical replication on: the cluster publishes each tenant's reverse replication.
    let params = ParameterGroup::cluster(
        &format!("aurora-postgresql{major}"),
        "case 1: the multi-tenant cluster, fed by a subscription per tenant",
    )
    .pending_reboot("rds.logical_replication", "1")
    .pending_reboot("max_replication_slots", &(streams + 8).to_string())
    .pending_reboot("max_wal_senders", &(streams + 8).to_string())
    .pending_reboot(
        "max_logical_replication_workers",
        &(streams + 4).to_string(),
    )
    .pending_reboot("max_worker_processes", &(streams + 12).to_string());
    let static_params = params.static_digest();
    let params = p.add("cluster-params", params);
    let mut cluster = AuroraCluster::postgres(&version)
        .master(MASTER, master_password.clone())
        .parameter_group(params.group_name())
        .subnet_group(db_subnets.group_name())
        .security_groups(vec![sg.group_id()])
        .backups(7, &backup_window)
        .maintenance_window(&maintenance_window)
        .deletion_protection(production);
    if !production {
        cluster = cluster.skip_final_snapshot();
    }
    let cluster = p.add("cluster", cluster);
    let cluster = if production {
        cluster.protect()
    } else {
        cluster
    };
    let writer = p.add(
        "writer",
        ClusterInstance::of(cluster.identifier(), "aurora-postgresql", &writer_class)
            .promotion_tier(0),
    );
    let rebooted = p
        .add(
            "apply-parameters",
            Reboot::instance(writer.identifier()).only_pending(),
        )
        .trigger("parameters", static_params.as_str());
    let admin = cluster
        .connection(MASTER, master_password.clone())
        .dbname("postgres")
        .verify_full(&ca_bundle);

    let topic = p.add(
        "alerts",
        SnsTopic::new().display_name("case 1 consolidation alerts"),
    );
    p.add(
        "oncall",
        SnsSubscription::to(topic.arn(), "email", alert_email.as_str()),
    );
    let cluster_alarm = |name: &str, metric: &str, op: &str, bound: f64| {
        p.add(
            name,
            Alarm::metric(
                "AWS/RDS",
                metric,
                &[("DBClusterIdentifier", cluster.identifier().into())],
                op,
                bound,
            )
            .over(300, 2)
            .notify(topic.arn()),
        )
    };
    let alarms = [
        cluster_alarm("cpu", "CPUUtilization", ">", 80.0),
        cluster_alarm("connections", "DatabaseConnections", ">", 1000.0),
        cluster_alarm("memory", "FreeableMemory", "<", 1024.0 * 1024.0 * 1024.0),
    ];
    let zone = p.add("zone", HostedZone::named(&zone_name));

    for t in &tenants {
        let n = &t.name;
        let db = t.database.clone().unwrap_or_else(|| n.clone());
        let password = stack.secret(&format!("{}_password", n.replace('-', "_")))?;
        let source_node = format!("source-{n}");
        let source = p.add(&source_node, ExistingInstance::find(&t.source));
        let source_conn: Value = PgConn::of_database(
            &source_node,
            source.endpoint(),
            source.port(),
            &source_user,
            password.clone(),
        )
        .dbname(&db)
        .verify_full(&ca_bundle)
        .into();
        let target_conn: Value = cluster
            .connection(MASTER, master_password.clone())
            .dbname(&db)
            .verify_full(&ca_bundle)
            .into();
        let database = p
            .add(
                &format!("database-{n}"),
                CreateDatabase::on(admin.clone().into(), &db),
            )
            .after(&rebooted);
        let groups: Vec<TableGroup> = t
            .large_tables
            .iter()
            .map(|table| TableGroup {
                name: table.rsplit('.').next().unwrap_or(table).replace('_', "-"),
                tables: vec![table.clone()],
            })
            .collect();
        let prefix = format!("cutover_{}", n.replace('-', "_"));
        let preflight = p
            .add(
                &format!("preflight-{n}"),
                Preflight::between(source_conn.clone(), target_conn.clone())
                    .slots(groups.len() as u64 + 1),
            )
            .after(&database);
        // The data: straight from the tenant's instance, or through an import instance.
        let size_gb = t.size_gb.unwrap_or_default();
        let (slots, subscriptions, schema, caught_up_after) = if size_gb >= threshold_gb {
            let import_node = format!("import-{n}");
            let import = p
                .add(
                    &import_node,
                    DbInstance::replica_of(source.identifier(), &import_class),
                )
                .retire_after_name(&format!("validate-{n}"))
                .why(&format!(
                    "tenant `{n}` holds {size_gb} GB, at or above import_threshold_gb = {threshold_gb}: its load reads a {import_class} read replica paused at a verified LSN, not the tenant's instance"
                ));
            let import_conn: Value = import
                .connection(&source_user, password.clone())
                .dbname(&db)
                .verify_full(&ca_bundle)
                .into();
            let slots = p
                .add(
                    &format!("capture-slots-{n}"),
                    CaptureSlots::on(source_conn.clone(), &groups).prefix(&prefix),
                )
                .after(&preflight)
                .after(&import);
            let paused = p.add(
                &format!("pause-replay-{n}"),
                PauseReplay::on(import_conn.clone(), slots.position()),
            );
            let verified = p.add(
                &format!("verify-lsn-{n}"),
                VerifyLsn::on(
                    source_conn.clone(),
                    import_conn.clone(),
                    slots.slots(),
                    paused.lsn(),
                ),
            );
            let load = p
                .add(
                    &format!("load-{n}"),
                    LoadFromStandby::of(import_conn, target_conn.clone(), paused.lsn())
                        .parallel(import_workers, 1024),
                )
                .after(&verified);
            let capture = p
                .add(
                    &format!("replicate-{n}"),
                    ReplicateFrom::at(
                        source_conn.clone(),
                        target_conn.clone(),
                        slots.groups(),
                        verified.start(),
                    ),
                )
                .after(&load);
            (
                capture.slots(),
                capture.subscriptions(),
                None,
                capture.name().to_string(),
            )
        } else {
            let mut r = Replicate::between(source_conn.clone(), target_conn.clone())
                .parallel_load(workers, 1024)
                .prefix(&prefix);
            for g in &groups {
                let tables: Vec<&str> = g.tables.iter().map(String::as_str).collect();
                r = r.group(&g.name, &tables);
            }
            let r = p.add(&format!("replicate-{n}"), r).after(&preflight);
            (
                r.slots(),
                r.subscriptions(),
                Some(r.schema()),
                r.name().to_string(),
            )
        };
        let lag = || {
            WaitLag::on(source_conn.clone(), slots.clone())
                .under_bytes(max_lag_bytes)
                .under_seconds(max_lag_seconds)
        };
        let caught_up = p
            .add(&format!("caught-up-{n}"), lag())
            .after_name(&caught_up_after);
        let validate = p
            .add(
                &format!("validate-{n}"),
                Validate::between(source_conn.clone(), target_conn.clone()).live(slots.clone()),
            )
            .after(&caught_up);

        // The tenant's cutover, behind its own gate.
        let gate = p.gate(&format!("cutover-{n}")).after(&validate);
        let guard = p
            .add(&format!("lag-under-bound-{n}"), lag())
            .after(&gate)
            .timeout(Duration::from_secs(600));
        let record = format!("{n}.{record_suffix}");
        let lowered = p
            .add(
                &format!("lower-ttl-{n}"),
                DnsLowerTtl::record(zone.zone_id(), &record, "CNAME", cutover_ttl).was(record_ttl),
            )
            .after(&gate);
        let mut cutover = Cutover::read_only_fence(source_conn.clone(), target_conn.clone())
            .replication(slots.clone(), subscriptions)
            .reverse_replication();
        if let Some(schema) = schema {
            cutover = cutover.schema_at_start(schema);
        }
        let switch = p
            .add(
                &format!("switch-{n}"),
                cutover
                    .validated(validate.validated_at(), 3600)
                    .max_lag_seconds(max_lag_seconds),
            )
            .after(&guard)
            .after(&lowered);
        let unfence = p
            .add(&format!("unfence-{n}"), switch.unfence())
            .rollback_only()
            .trigger("cutover", switch.flipped_at())
            .reopens_name(switch.name());
        let flip = p
            .add(
                &format!("flip-{n}"),
                DnsFlip::record(zone.zone_id(), &record, "CNAME", cluster.endpoint())
                    .from(source.endpoint())
                    .ttl(lowered.ttl()),
            )
            .after(&switch)
            .on_failure(FailurePolicy::Compensate(vec![unfence.name().to_string()]));
        p.budget(
            Budget::new(
                &format!("writes-refused-{n}"),
                window_s,
                switch.fenced_at(),
                flip.accepted_at(),
            )
            .plus_lowered_ttl(cutover_ttl),
        );
        let bake = p
            .add(
                &format!("bake-{n}"),
                Bake::alarms(
                    alarms.iter().map(|a| a.alarm_name()).collect(),
                    bake_minutes * 60,
                )
                .since(flip.output::<String>("flipped_at")),
            )
            .after(&flip);
        let finish = p.gate(&format!("finish-{n}")).after(&bake);
        p.add(
            &format!("finish-replication-{n}"),
            FinishReplication::between(source_conn, target_conn, slots),
        )
        .after(&finish);
    }
    Ok(p)
}
