//! Case 2: self-managed PostgreSQL 9.6 on EC2 (4.5 TB, one table over 1 TB) into RDS for
//! PostgreSQL 12 with no downtime, without stopping the primary or its read replica.
//!
//! The target is an RDS for PostgreSQL 12 instance (io1 storage sized for the load) with a
//! parameter group for the load and the change capture. The source is three servers the plan does
//! not own: the primary (`[values.source]`), its read replica (never touched), and a
//! "maintenance" replica (`[values.maintenance]`, a streaming standby of the primary) that the
//! load reads from.
//!
//! Phase 1, the full load, at a position both sides agree on:
//! 1. `capture-slots`: one logical slot per table group on the primary, first, so that each can
//!    serve the position the standby is paused at (with the cutover's marker tables).
//! 2. `pause-replay`: the maintenance replica replays past every slot's position, pauses, and its
//!    position (LSN) is recorded (`pg_xlog_replay_pause` and `pg_last_xlog_replay_location` on
//!    9.6).
//! 3. `verify-lsn`: on the primary, the standby is the primary's own (one system identifier) and
//!    every slot exists, is idle and still holds the WAL from that position: a DMS task started
//!    from a position its slot cannot serve fails about an hour later, this fails now.
//! 4. `load`: the schema's tables, then every table's rows read from the paused standby in
//!    `load_workers` parallel streams (six: the five biggest tables lead, the rest follow; a
//!    table above 1 GiB is copied in block ranges), then keys and indexes after the data.
//! 5. `resume-replay`: the maintenance replica goes on.
//!
//! Phase 2, change capture from that position, one stream per table group (the same split as the
//! load), each on its own slot:
//! - `data_path = "dms"` (9.6 has no native logical replication): a DMS replication instance, a
//!   source endpoint per group naming the group's slot and the pglogical plugin (each task then
//!   decodes only its tables), and a CDC-only task per group started at the verified position.
//!   Large values: limited LOB mode with the group's maximum (`lob_max_kb`), and the tables that
//!   must not truncate (`inline_lobs`) a table-level setting of their own. Batch apply only for
//!   groups that ask (`batch_apply`), and the preflight refuses it on a table with a primary key
//!   and another unique constraint (DMS's batch apply loses rows there). Alarms on each task's
//!   CDC latency at the source and the target and on the instance's CPU, memory, swap and free
//!   storage; the cutover's guards wait for each task's latency to be low and for the target's
//!   `awsdms_apply_exceptions` table to be empty.
//! - `data_path = "native"` (a source of 10 or later, and the emulation, whose stand-ins are
//!   PostgreSQL 15): a subscription per group created disabled on the group's slot, its origin
//!   advanced to the verified position, then enabled; the lag waits and the validation read the
//!   slots.
//!
//! Behind the gate `cutover`: the application's health, the capture under its bound, the record's
//! TTL lowered (the old one waited out), a snapshot of the target as a rollback point; then the
//! source fenced read-only, the catch-up marker through every stream (each DMS task carries its
//! group's catch-up table), sequences synced (read one by one on 9.6, which has no
//! `pg_sequences`), the DMS tasks stopped, and the flip of the record, within the budget
//! `writes-refused`. A flip that fails unfences the source (and resumes the tasks). After it:
//! health checks and a bake on quiet alarms; behind `finish`, the slots are dropped. There is no
//! reverse replication (a 9.6 server cannot subscribe): until the flip, a failed flip unfences the
//! source; once `switch` ran, `plan rollback` refuses whole (the target's writes would be lost),
//! and the preview says so.
//!
//! Recovery, as the README names it: a failed task resumes when its group is listed in
//! `resume_tasks` and the stack applied again (its start step runs again, as `resume-processing`).
//! One table group starts over when the stack names it (`restart_group`) and the apply approves
//! the gate `restart`: its task stopped (natively: its subscription dropped, its slot kept for a
//! moment), its slot made again, the standby paused past it and the position verified, the
//! group's tables emptied and reloaded from the standby, the replay resumed, its capture started
//! at that position (`start-replication` from it; natively a subscription advanced to it), and
//! the tables validated again before the gate `cutover` opens. A later restart raises
//! `restart_serial`. A full restart is `plan destroy` and a new apply.

use cutover::prelude::*;

/// A table group: one load stream's lead tables, one slot, one DMS task.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    tables: Vec<String>,
    /// The group's task applies in batches (high-latency groups only).
    #[serde(default)]
    batch_apply: bool,
    /// Limited LOB mode's maximum for the group's task, in kB (default `lob_max_kb`).
    #[serde(default)]
    lob_max_kb: Option<u64>,
    /// Tables whose large values must not be truncated: inline up to `inline_lob_kb`, bigger ones
    /// looked up whole.
    #[serde(default)]
    inline_lobs: Vec<String>,
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
    let version: String = stack.get_or("engine_version", "12.19".to_string())?;
    let class: String = stack.get("instance_class")?;
    let storage_gb: u64 = stack.get("storage_gb")?;
    let iops: u64 = stack.get("iops")?;
    let vpc_name: String = stack.get("vpc")?;
    let subnet_pattern: String = stack.get("subnets")?;
    let app_cidr: String = stack.get("app_cidr")?;
    let zone_name: String = stack.get("zone")?;
    let record: String = stack.get("record")?;
    let record_ttl: u64 = stack.get_or("record_ttl", 300)?;
    let window_s: f64 = stack.get_or("window_seconds", 60.0)?;
    let cutover_ttl: u64 = stack.get_checked("cutover_ttl", ttl_within_window(window_s))?;
    let health_url: String = stack.get("health_url")?;
    let alert_email: String = stack.get("alert_email")?;
    let ca_bundle: String = stack.get("ca_bundle")?;
    let bake_minutes: u64 = stack.get("bake_minutes")?;
    let max_lag_seconds: f64 = stack.get_or("max_lag_seconds", 30.0)?;
    let max_lag_bytes: u64 = stack.get_or("max_lag_bytes", 64 * 1024 * 1024)?;
    let groups: Vec<Group> = stack.get("table_groups")?;
    let workers: usize = stack.get_or("load_workers", 6)?;
    let plugin: String = stack.get_or("plugin", "pglogical".to_string())?;
    let lob_max_kb: u64 = stack.get_or("lob_max_kb", 64)?;
    let inline_lob_kb: u64 = stack.get_or("inline_lob_kb", 32)?;
    let resume_tasks: Vec<String> = stack.get_or("resume_tasks", vec![])?;
    let dms_class: String = stack.get_or("dms_class", "dms.r5.4xlarge".to_string())?;
    let dms_storage_gb: u64 = stack.get_or("dms_storage_gb", 1000)?;
    let backup_window: String = stack.get_or("backup_window", "03:00-04:00".to_string())?;
    let maintenance_window: String =
        stack.get_or("maintenance_window", "sun:04:30-sun:05:30".to_string())?;

    let source = PgConn::from_stack(stack, "source")?;
    let standby = PgConn::from_stack(stack, "maintenance")?;
    let master_password = stack.secret("master_password")?;

    // The groups as the load and the capture see them: the declared ones and `rest`.
    let mut all_groups = groups.clone();
    if !all_groups.iter().any(|g| g.name == "rest") {
        all_groups.push(Group {
            name: "rest".into(),
            tables: vec![],
            batch_apply: false,
            lob_max_kb: None,
            inline_lobs: vec![],
        });
    }
    let table_groups: Vec<TableGroup> = groups
        .iter()
        .map(|g| TableGroup {
            name: g.name.clone(),
            tables: g.tables.clone(),
        })
        .collect();

    // The account's network, the database's firewall and subnets.
    let vpc = p.add("vpc", Vpc::find(&vpc_name));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named(&subnet_pattern));
    let mut db_sg =
        SecurityGroup::in_vpc(vpc.vpc_id(), "the new database").ingress_from_cidr(5432, &app_cidr);
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

    // Built for the load (checkpoints far apart, large maintenance memory for the index builds)
    // and, natively, a subscription per group.
    let streams = all_groups.len() as u64;
    let major = version.split('.').next().unwrap_or("12");
    let mut params = ParameterGroup::instance(
        &format!("postgres{major}"),
        "case 2: the new primary, loaded in parallel, then fed by change capture",
    )
    .memory("maintenance_work_mem", "2GB")?
    .memory("max_wal_size", "64GB")?
    .immediate("checkpoint_timeout", "1800");
    if let DataPath::Native = data_path {
        params = params
            .pending_reboot("max_replication_slots", &(streams + 8).to_string())
            .pending_reboot(
                "max_logical_replication_workers",
                &(streams + 4).to_string(),
            )
            .pending_reboot("max_worker_processes", &(streams + 12).to_string());
    }
    let static_params = params.static_digest();
    let params = p.add("params", params);
    let mut target = DbInstance::postgres(&version, &class, storage_gb)
        .storage_type("io1", Some(iops))
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

    let topic = p.add(
        "alerts",
        SnsTopic::new().display_name("case 2 migration alerts"),
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
            five_min(Alarm::rds_connections_above(target.identifier(), 500.0)),
        ),
    ];

    // Phase 1: the slots, the paused standby, the verified position, the load.
    let batch_tables: Vec<String> = all_groups
        .iter()
        .filter(|g| g.batch_apply)
        .flat_map(|g| g.tables.clone())
        .collect();
    let mut preflight =
        Preflight::between(source.clone().into(), target_conn.clone().into()).slots(streams);
    let slot_plugin = match data_path {
        DataPath::Dms => {
            preflight = preflight.dms(&plugin, &batch_tables);
            match plugin.as_str() {
                "pglogical" => "pglogical_output".to_string(),
                other => other.to_string(),
            }
        }
        DataPath::Native => "pgoutput".to_string(),
    };
    let preflight = p.add("preflight", preflight).after(&rebooted);
    let slots = p
        .add(
            "capture-slots",
            CaptureSlots::on(source.clone().into(), &table_groups).plugin(&slot_plugin),
        )
        .after(&preflight);
    let paused = p.add(
        "pause-replay",
        PauseReplay::on(standby.clone().into(), slots.position()),
    );
    let verified = p.add(
        "verify-lsn",
        VerifyLsn::on(
            source.clone().into(),
            standby.clone().into(),
            slots.slots(),
            paused.lsn(),
        ),
    );
    let load = p
        .add(
            "load",
            LoadFromStandby::of(
                standby.clone().into(),
                target_conn.clone().into(),
                paused.lsn(),
            )
            .parallel(workers, 1024),
        )
        .after(&verified);
    p.add("resume-replay", paused.resume()).after(&load);

    // Phase 2: change capture from the verified position, then validation.
    let gate = p.gate("cutover");
    let (validate, guards, cutover, tasks) = match data_path {
        DataPath::Native => {
            let capture = p
                .add(
                    "replicate",
                    ReplicateFrom::at(
                        source.clone().into(),
                        target_conn.clone().into(),
                        slots.groups(),
                        verified.start(),
                    ),
                )
                .after(&load);
            let lag = || {
                WaitLag::on(source.clone().into(), capture.slots())
                    .under_bytes(max_lag_bytes)
                    .under_seconds(max_lag_seconds)
            };
            let caught_up = p.add("caught-up", lag());
            let validate = p
                .add(
                    "validate",
                    Validate::between(source.clone().into(), target_conn.clone().into())
                        .live(capture.slots()),
                )
                .after(&caught_up);
            let guard = p
                .add("lag-under-bound", lag())
                .after(&gate)
                .timeout(Duration::from_secs(600));
            (
                validate,
                vec![guard.name().to_string()],
                Cutover::read_only_fence(source.clone().into(), target_conn.clone().into())
                    .replication(capture.slots(), capture.subscriptions()),
                vec![],
            )
        }
        DataPath::Dms => {
            // The DMS objects are temporaries: retired once the bake after the flip passed.
            let dms_subnets = p
                .add(
                    "dms-subnets",
                    DmsSubnetGroup::of(subnets.ids(), "the DMS replication instance"),
                )
                .retire_after_name("bake");
            let dms = p
                .add(
                    "dms",
                    DmsInstance::new(&dms_class, dms_storage_gb)
                        .multi_az(false)
                        .subnet_group(dms_subnets.group_id())
                        .security_groups(vec![dms_sg.as_ref().expect("declared").group_id()]),
                )
                .retire_after_name("bake");
            // The instance's own health: CPU, memory, swap and free storage.
            let dms_metric = |metric: &str, op: &str, bound: f64| {
                five_min(Alarm::metric(
                    "AWS/DMS",
                    metric,
                    &[("ReplicationInstanceIdentifier", dms.identifier().into())],
                    op,
                    bound,
                ))
            };
            for (name, metric, op, bound) in [
                ("dms-cpu", "CPUUtilization", ">", 80.0),
                (
                    "dms-memory",
                    "FreeableMemory",
                    "<",
                    1024.0 * 1024.0 * 1024.0,
                ),
                ("dms-swap", "SwapUsage", ">", 512.0 * 1024.0 * 1024.0),
                (
                    "dms-storage",
                    "FreeStorageSpace",
                    "<",
                    dms_storage_gb as f64 * 0.1 * 1024.0 * 1024.0 * 1024.0,
                ),
            ] {
                alarms.push(
                    p.add(name, dms_metric(metric, op, bound))
                        .retire_after_name("bake"),
                );
            }
            let dst_ep = p
                .add(
                    "target-endpoint",
                    DmsEndpoint::target("postgres", target.endpoint(), target.port(), &db)
                        .credentials(MASTER, master_password.clone())
                        .ssl_mode("require"),
                )
                .retire_after_name("bake");
            let (source_port, source_user) = source.port_and_user();
            let split = |t: &str| -> (String, String) {
                let (s, n) = t.split_once('.').unwrap_or(("public", t));
                (s.to_string(), n.to_string())
            };
            let mut tasks = Vec::new();
            let mut catch_up = Vec::new();
            let mut endpoints = vec![dst_ep.arn()];
            let mut started = Vec::new();
            for g in &all_groups {
                // Each group's endpoint names its slot: DMS decodes that slot only.
                let src_ep = p
                    .add(
                        &format!("source-endpoint-{}", g.name),
                        DmsEndpoint::source("postgres", source.host(), source_port, &db)
                            .credentials(&source_user, stack.secret("source_password")?)
                            .ssl_mode("require")
                            .postgres_slot(&plugin, &capture_slot(&g.name)),
                    )
                    .retire_after_name("bake");
                endpoints.push(src_ep.arn());
                let own = catch_up_table(&g.name);
                let mut m = TableMappings::new();
                if g.name == "rest" {
                    m = m.include("%", "%");
                    for other in all_groups.iter().filter(|o| o.name != "rest") {
                        for t in other.tables.iter().chain([&catch_up_table(&other.name)]) {
                            let (s, n) = split(t);
                            m = m.exclude(&s, &n);
                        }
                    }
                } else {
                    for t in g.tables.iter().chain([&own]) {
                        let (s, n) = split(t);
                        m = m.include(&s, &n);
                    }
                }
                for t in &g.inline_lobs {
                    let (s, n) = split(t);
                    m = m.lobs_for(
                        &s,
                        &n,
                        Lobs::Inline {
                            inline_kb: inline_lob_kb,
                        },
                    );
                }
                catch_up.push(own);
                let settings = TaskSettings {
                    lobs: Lobs::Limited {
                        max_kb: g.lob_max_kb.unwrap_or(lob_max_kb),
                    },
                    batch_apply: g.batch_apply,
                    ..TaskSettings::default()
                };
                let task = p
                    .add(
                        &format!("task-{}", g.name),
                        DmsTask::new(dms.arn(), src_ep.arn(), dst_ep.arn(), "cdc", &m, &settings)
                            .cdc_start_position(verified.start()),
                    )
                    .after(&load)
                    .retire_after_name("bake");
                let how = if resume_tasks.contains(&g.name) {
                    "resume"
                } else {
                    "start"
                };
                started.push(
                    p.add(
                        &format!("start-{}", g.name),
                        StartTask::of(task.identifier(), how),
                    )
                    .after_name("test-connections"),
                );
                for (kind, metric) in [
                    ("source", "CDCLatencySource"),
                    ("target", "CDCLatencyTarget"),
                ] {
                    alarms.push(
                        p.add(
                            &format!("cdc-{kind}-{}", g.name),
                            five_min(Alarm::metric(
                                "AWS/DMS",
                                metric,
                                &[
                                    ("ReplicationInstanceIdentifier", dms.identifier().into()),
                                    ("ReplicationTaskIdentifier", task.identifier().into()),
                                ],
                                ">",
                                300.0,
                            )),
                        )
                        .retire_after_name("bake"),
                    );
                }
                tasks.push((g.name.clone(), task.identifier()));
            }
            p.add(
                "test-connections",
                TestConnections::of(dms.arn(), endpoints),
            )
            .after(&load);
            // DMS has no slot position the tool can wait on: validation is exact on a quiet
            // source; DMS's own validation runs alongside (TaskSettings::validation).
            let mut validate = p.add(
                "validate",
                Validate::between(source.clone().into(), target_conn.clone().into()),
            );
            for s in &started {
                validate = validate.after(s);
            }
            let mut guards = Vec::new();
            for (name, task) in &tasks {
                let g = p
                    .add(
                        &format!("cdc-under-bound-{name}"),
                        WaitCdcLatency::of(dms.identifier(), task.clone(), max_lag_seconds),
                    )
                    .after(&gate)
                    .timeout(Duration::from_secs(600));
                guards.push(g.name().to_string());
            }
            // DMS writes the changes it could not apply to a table on the target.
            let exceptions = p
                .add(
                    "no-apply-exceptions",
                    Sql::run(
                        target_conn.clone().into(),
                        "DO $$ BEGIN IF to_regclass('public.awsdms_apply_exceptions') IS NOT NULL AND EXISTS (SELECT 1 FROM public.awsdms_apply_exceptions) THEN RAISE EXCEPTION 'DMS recorded changes it could not apply in public.awsdms_apply_exceptions: read them, fix the cause, and empty the table before the cutover'; END IF; END $$",
                    ),
                )
                .after(&gate);
            guards.push(exceptions.name().to_string());
            (
                validate,
                guards,
                Cutover::read_only_fence(source.clone().into(), target_conn.clone().into())
                    .catch_up_tables(catch_up),
                tasks,
            )
        }
    };
    let mut gate = gate.after(&validate);

    // Recovery: one table group started over (`restart_group`, behind the gate `restart`): its
    // capture stopped, its slot made again, the standby paused past it and that position
    // verified, the group's tables emptied and reloaded from the standby, the replay resumed,
    // and its capture started at that position; then everything validated again. A later
    // restart raises `restart_serial`.
    let names: Vec<String> = all_groups.iter().map(|g| g.name.clone()).collect();
    let restart: Option<String> = match stack.get_or::<Option<String>>("restart_group", None)? {
        Some(_) => Some(stack.get_checked("restart_group", |g: &String| {
            if names.contains(g) {
                Ok(())
            } else {
                Err(format!(
                    "`{g}` is not a table group of this stack: name one of {}",
                    names.join(", ")
                ))
            }
        })?),
        None => None,
    };
    // Read whether or not a group restarts: a serial kept after a restart is no unknown key.
    let serial: u64 = stack.get_or("restart_serial", 1)?;
    if let Some(g) = &restart {
        let rgate = p.gate("restart").after_name("resume-replay");
        let stopped = match tasks.iter().find(|(name, _)| name == g) {
            Some((_, task)) => p
                .add(&format!("restart-stop-{g}"), StopTask::of(task.clone()))
                .after(&rgate)
                .trigger("restart", serial)
                .name()
                .to_string(),
            None => {
                let sub = capture_slot(g);
                p.add(
                    &format!("restart-drop-{g}"),
                    Sql::run(
                        target_conn.clone().into(),
                        &format!(
                            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_subscription WHERE subname = '{sub}') THEN EXECUTE 'ALTER SUBSCRIPTION {sub} DISABLE'; EXECUTE 'ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)'; EXECUTE 'DROP SUBSCRIPTION {sub}'; END IF; END $$"
                        ),
                    ),
                )
                .after(&rgate)
                .trigger("restart", serial)
                .name()
                .to_string()
            }
        };
        let rslot = p
            .add(
                &format!("restart-slot-{g}"),
                CaptureSlots::on(source.clone().into(), &table_groups)
                    .plugin(&slot_plugin)
                    .only(&[g.as_str()])
                    .recreate(),
            )
            .after_name(&stopped)
            .trigger("restart", serial);
        let rpause = p
            .add(
                "restart-pause",
                PauseReplay::on(standby.clone().into(), rslot.position()),
            )
            .trigger("restart", serial);
        let rverify = p
            .add(
                "restart-verify",
                VerifyLsn::on(
                    source.clone().into(),
                    standby.clone().into(),
                    rslot.slots(),
                    rpause.lsn(),
                ),
            )
            .trigger("restart", serial);
        let rload = p
            .add(
                &format!("restart-load-{g}"),
                LoadFromStandby::of(
                    standby.clone().into(),
                    target_conn.clone().into(),
                    rpause.lsn(),
                )
                .parallel(workers, 1024)
                .reload(rslot.groups()),
            )
            .after(&rverify)
            .trigger("restart", serial);
        p.add("restart-resume", rpause.resume())
            .after(&rload)
            .trigger("restart", serial);
        let (started, validated) = match tasks.iter().find(|(name, _)| name == g) {
            Some((_, task)) => (
                p.add(
                    &format!("restart-start-{g}"),
                    StartTask::of(task.clone(), "start").at(rverify.start()),
                )
                .after(&rload)
                .trigger("restart", serial)
                .name()
                .to_string(),
                Validate::between(source.clone().into(), target_conn.clone().into()),
            ),
            None => (
                p.add(
                    &format!("restart-replicate-{g}"),
                    ReplicateFrom::at(
                        source.clone().into(),
                        target_conn.clone().into(),
                        rslot.groups(),
                        rverify.start(),
                    ),
                )
                .after(&rload)
                .trigger("restart", serial)
                .name()
                .to_string(),
                Validate::between(source.clone().into(), target_conn.clone().into())
                    .live(slots.slots()),
            ),
        };
        let revalidated = p
            .add("restart-validate", validated)
            .after_name(&started)
            .trigger("restart", serial);
        gate = gate.after(&revalidated);
    }

    // The cutover.
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
    let mut snapshot = p
        .add("rollback-point", Snapshot::of_instance(target.identifier()))
        .after(&healthy)
        .after(&lowered);
    for g in &guards {
        snapshot = snapshot.after_name(g);
    }
    let switch = p
        .add(
            "switch",
            cutover
                .validated(validate.validated_at(), 3600)
                .max_lag_seconds(max_lag_seconds),
        )
        .after(&snapshot);
    let unfence = p
        .add("unfence", switch.unfence())
        .rollback_only()
        .trigger("cutover", switch.flipped_at());
    let mut compensations = vec![unfence.name().to_string()];
    let mut reopened = vec![switch.name().to_string()];
    let flip = DnsFlip::record(zone.zone_id(), &record, "CNAME", target.endpoint())
        .from(source.host())
        .ttl(lowered.ttl());
    let mut before_flip = vec![switch.name().to_string()];
    if !tasks.is_empty() {
        before_flip.clear();
        for (name, task) in &tasks {
            let stop = p
                .add(&format!("stop-{name}"), StopTask::of(task.clone()))
                .after(&switch);
            reopened.push(stop.name().to_string());
            before_flip.push(stop.name().to_string());
            let resume = p
                .add(
                    &format!("resume-{name}"),
                    StartTask::of(task.clone(), "resume"),
                )
                .rollback_only()
                .trigger("cutover", switch.flipped_at());
            compensations.push(resume.name().to_string());
        }
    }
    reopened.iter().fold(unfence, |u, n| u.reopens_name(n));
    let mut flip = p.add("flip", flip);
    for b in &before_flip {
        flip = flip.after_name(b);
    }
    let flip = flip.on_failure(FailurePolicy::Compensate(compensations));
    p.budget(
        Budget::new(
            "writes-refused",
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
        FinishReplication::between(source.into(), target_conn.into(), slots.slots()),
    )
    .after(&finish);
    Ok(p)
}
