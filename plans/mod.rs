//! The plans compiled into the `plan` binary, by name. A plan is a function from a stack to a
//! `Plan`; add a module here and an entry to `all()` to register one. Plans marked hidden are used
//! only by tests and benchmarks and are not listed by `plan list`.

use cutover::prelude::PlanEntry;

mod demo;
mod ec2_rds;
mod mysql_aurora;
mod onprem_rds;
mod rehearsal;
mod saas;
mod tenants;
mod testing;

/// Every plan of this binary.
pub fn all() -> Vec<PlanEntry> {
    vec![
        PlanEntry {
            name: "demo",
            about: "a rehearsal of the engine on local files: provision, load, gate, cut over",
            hidden: false,
            build: demo::build,
        },
        PlanEntry {
            name: "tenants",
            about: "case 1: a dozen single-tenant RDS PostgreSQL databases into one multi-tenant Aurora PostgreSQL cluster, import instances for the big ones (stacks tenants-staging, tenants-production)",
            hidden: false,
            build: tenants::build,
        },
        PlanEntry {
            name: "ec2-rds",
            about: "case 2: self-managed PostgreSQL 9.6 on EC2 (4.5 TB) into RDS for PostgreSQL 12 from a paused replica's LSN (stacks ec2-rds-staging, ec2-rds-production)",
            hidden: false,
            build: ec2_rds::build,
        },
        PlanEntry {
            name: "onprem-rds",
            about: "case 3: on-premise PostgreSQL into RDS for PostgreSQL 12.8, zero downtime (stacks staging, production)",
            hidden: false,
            build: onprem_rds::build,
        },
        PlanEntry {
            name: "saas",
            about: "case 4: a write-heavy SaaS PostgreSQL into a new AWS environment, cut over by DNS in 15 s (stacks saas-staging, saas-production)",
            hidden: false,
            build: saas::build,
        },
        PlanEntry {
            name: "mysql-aurora",
            about: "case 5: RDS MySQL into Aurora MySQL through an Aurora replica, then reader autoscaling (stacks mysql-aurora-staging, mysql-aurora-production)",
            hidden: false,
            build: mysql_aurora::build,
        },
        PlanEntry {
            name: "rehearsal",
            about: "a PostgreSQL migration rehearsed on local clusters (the local stack)",
            hidden: false,
            build: rehearsal::build,
        },
        PlanEntry {
            name: "bench",
            about: "no-op nodes in a chosen shape (benchmarks)",
            hidden: true,
            build: testing::bench,
        },
        PlanEntry {
            name: "crash",
            about: "files, sleeps and append-once steps (crash tests)",
            hidden: true,
            build: testing::crash,
        },
        PlanEntry {
            name: "cyclic",
            about: "a plan with a cycle (error tests)",
            hidden: true,
            build: testing::cyclic,
        },
        PlanEntry {
            name: "secretive",
            about: "a file whose content is a secret (secret-handling tests)",
            hidden: true,
            build: testing::secretive,
        },
        PlanEntry {
            name: "aws-params",
            about: "RDS parameter groups (AWS provider tests)",
            hidden: true,
            build: testing::aws_params,
        },
        PlanEntry {
            name: "retire",
            about: "a temporary retired after a bake step (retirement tests)",
            hidden: true,
            build: testing::retire,
        },
        PlanEntry {
            name: "aws-watch",
            about:
                "SNS, CloudWatch alarms, a bake step and a retiring temporary (AWS provider tests)",
            hidden: true,
            build: testing::aws_watch,
        },
        PlanEntry {
            name: "aws-network",
            about: "VPC and subnet look-ups, security groups, a DB subnet group and a cluster in them (AWS provider tests)",
            hidden: true,
            build: testing::aws_network,
        },
        PlanEntry {
            name: "aws-lifecycle",
            about: "one node of every AWS type on the provider's driver (lifecycle tests)",
            hidden: true,
            build: testing::aws_lifecycle,
        },
        PlanEntry {
            name: "aws-dms",
            about: "case 2 on the emulator: cluster, DMS instance, endpoints, split tasks, alarms, DNS (AWS provider tests)",
            hidden: true,
            build: testing::aws_dms,
        },
        PlanEntry {
            name: "aws-instance",
            about: "an RDS instance, a read replica and its promotion (AWS provider tests)",
            hidden: true,
            build: testing::aws_instance,
        },
        PlanEntry {
            name: "aws-replica",
            about: "an Aurora replica cluster promoted, failed over and rebooted (AWS provider tests)",
            hidden: true,
            build: testing::aws_replica,
        },
        PlanEntry {
            name: "aws-dns",
            about: "a hosted zone, a record and a DNS flip (AWS provider tests)",
            hidden: true,
            build: testing::aws_dns,
        },
        PlanEntry {
            name: "aws-cluster",
            about: "an Aurora cluster with a writer and a reader (AWS provider tests)",
            hidden: true,
            build: testing::aws_cluster,
        },
        PlanEntry {
            name: "copy-schema",
            about: "the schema copy of a data path that moves rows only (data-plane tests)",
            hidden: true,
            build: testing::copy_schema,
        },
        PlanEntry {
            name: "failing",
            about: "a plan whose middle step fails on request (failure-policy tests)",
            hidden: true,
            build: testing::failing,
        },
    ]
}
