//! Case 5: RDS MySQL into Aurora MySQL through an Aurora read replica cluster, then reader
//! autoscaling on the readers' average CPU.
//!
//! The source RDS MySQL instance exists and is not the plan's (`source_instance`, a look-up read
//! at every apply; the plan never changes or deletes it, except the one parameter of the fence
//! below). The plan creates an Aurora MySQL cluster that replicates from it by binlog
//! (`AuroraCluster::replica_of`, with a writer and `readers` readers, the writer first so it is the
//! writer), in the account's VPC behind a security group of its own, and waits until the
//! replica's `AuroraBinlogReplicaLag` is zero.
//!
//! Behind the gate `cutover`: the write fence. `read_only = 1` is set in the source's custom DB
//! parameter group (`source_parameter_group`; a default group is refused, since nobody can modify
//! one: attach a custom group in advance, which takes a reboot) and verified through the API: the
//! value set and the instance's group `in-sync`, never `pending-reboot`. Without a MySQL client in
//! the project the fence is not verified from inside MySQL (a user with SUPER or
//! CONNECTION_ADMIN still writes; the preview says so under the step). Then the lag again, counted
//! only from a datapoint after the fence: zero lag measured before it proves nothing about the
//! writes made before it. Then the promotion to a standalone cluster, the flip of the internal
//! record to the new cluster's writer endpoint, and reader autoscaling (`readers_min` to
//! `readers_max`, keeping the readers' average CPU near `reader_cpu_target`). A failure of the
//! lag wait or of the promotion lifts the fence (the old instance takes writes again and nothing
//! was lost); after the promotion the old instance stays read-only.
//!
//! Behind the gate `finish`, nothing of the plan's is temporary: the step `hand-off` says what the
//! user removes by hand (the old instance, which is not ours, and its fence).

use cutover::prelude::*;

pub fn build(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let production: bool = stack.get("production")?;
    let source_id: String = stack.get("source_instance")?;
    let source_group: String = stack.get_checked("source_parameter_group", |g: &String| {
        if g.starts_with("default.") {
            Err(format!("`{g}` is a default parameter group, which nobody can modify, so the write fence cannot be set in it; attach a custom parameter group to the source in advance (copy the default one; attaching it takes a reboot) and name it here"))
        } else {
            Ok(())
        }
    })?;
    let version: String = stack.get("engine_version")?;
    let writer_class: String = stack.get("writer_class")?;
    let reader_class: String = stack.get("reader_class")?;
    let readers: u32 = stack.get("readers")?;
    let readers_min: u32 = stack.get("readers_min")?;
    let readers_max: u32 = stack.get_checked("readers_max", |m: &u32| {
        if *m >= readers_min.max(1) && *m <= 15 {
            Ok(())
        } else {
            Err(format!(
                "{m} readers at most: give at least `readers_min` ({readers_min}, and 1) and at most 15 (Aurora's limit of replicas)"
            ))
        }
    })?;
    let cpu_target: f64 = stack.get("reader_cpu_target")?;
    let vpc_name: String = stack.get("vpc")?;
    let subnet_pattern: String = stack.get("subnets")?;
    let app_cidr: String = stack.get("app_cidr")?;
    let zone_name: String = stack.get("zone")?;
    let record: String = stack.get("record")?;
    let record_ttl: u64 = stack.get_or("record_ttl", 60)?;
    let lag_wait_s: u64 = stack.get_or("lag_wait_seconds", 3600)?;
    let poll_ms: u64 = stack.get_or("poll_ms", 30_000)?;
    let backup_window: String = stack.get_or("backup_window", "03:00-04:00".to_string())?;
    let maintenance_window: String =
        stack.get_or("maintenance_window", "sun:04:30-sun:05:30".to_string())?;

    let source = p.add("source", ExistingInstance::find(&source_id));

    let vpc = p.add("vpc", Vpc::find(&vpc_name));
    let subnets = p.add("subnets", Subnets::of(vpc.vpc_id()).named(&subnet_pattern));
    let sg = p.add(
        "db-sg",
        SecurityGroup::in_vpc(vpc.vpc_id(), "the Aurora MySQL cluster")
            .ingress_from_cidr(3306, &app_cidr),
    );
    let db_subnets = p.add(
        "db-subnets",
        SubnetGroup::of(subnets.ids(), "the Aurora MySQL cluster"),
    );
    let params = p.add(
        "cluster-params",
        ParameterGroup::cluster(
            &format!(
                "aurora-mysql{}",
                version.split(".mysql_aurora").next().unwrap_or("8.0")
            ),
            "case 5: the Aurora MySQL cluster, TLS required",
        )
        .immediate("require_secure_transport", "ON"),
    );

    // The replica cluster (its master user is the source's) and its instances.
    let mut cluster = AuroraCluster::mysql(&version)
        .replica_of(source.arn())
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
        ClusterInstance::of(cluster.identifier(), "aurora-mysql", &writer_class).promotion_tier(0),
    );
    let mut members = vec![writer.name().to_string()];
    for n in 1..=readers {
        // After the writer: the first instance of a cluster becomes its writer.
        let r = p
            .add(
                &format!("reader-{n}"),
                ClusterInstance::of(cluster.identifier(), "aurora-mysql", &reader_class)
                    .promotion_tier(1),
            )
            .after(&writer);
        members.push(r.name().to_string());
    }
    let lag = || {
        WaitMetric::at_most(
            "AWS/RDS",
            "AuroraBinlogReplicaLag",
            &[("DBClusterIdentifier", cluster.identifier().into())],
            0.0,
        )
        .within(lag_wait_s)
        .poll_ms(poll_ms)
    };
    let caught_up = p.add("caught-up", lag()).after(&writer);

    // The cutover: the fence, the lag from after it, the promotion, the flip.
    let mut gate = p.gate("cutover").after(&caught_up);
    for m in &members {
        gate = gate.after_name(m);
    }
    let fence = p
        .add(
            "fence",
            ParameterFence::read_only(source.identifier(), &source_group)
                .poll_ms(poll_ms.min(5000)),
        )
        .after(&gate);
    let lift = p
        .add("lift-fence", fence.lift())
        .rollback_only()
        .reopens(&[&fence])
        .trigger("cutover", fence.fenced_at());
    let drained = p
        .add("drained", lag().since(fence.fenced_at()))
        .after(&fence)
        .compensate_with(&[&lift]);
    let promote = p
        .add("promote", PromoteCluster::replica(cluster.identifier()))
        .after(&drained)
        .compensate_with(&[&lift]);
    let zone = p.add("zone", HostedZone::named(&zone_name));
    let flip = p
        .add(
            "flip",
            DnsFlip::record(zone.zone_id(), &record, "CNAME", cluster.endpoint())
                .from(source.endpoint())
                .ttl(record_ttl),
        )
        .after(&promote);
    p.add(
        "reader-autoscaling",
        ReaderAutoscaling::of(cluster.identifier())
            .between(readers_min, readers_max)
            .target_cpu(cpu_target),
    )
    .after(&promote);

    // The old instance is not ours: the plan never deletes it. What is left to do by hand.
    let finish = p.gate("finish").after(&flip);
    p.add(
        "hand-off",
        Note::lines(vec![
            Value::from(format!(
                "the old instance {source_id} is not this plan's and stays, read-only (read_only = 1 in its parameter group {source_group}); nothing of this plan's is temporary"
            )),
            Value::from(format!(
                "when you no longer need it: aws rds delete-db-instance --db-instance-identifier {source_id} --final-db-snapshot-identifier {source_id}-final"
            )),
        ]),
    )
    .after(&finish);
    Ok(p)
}
