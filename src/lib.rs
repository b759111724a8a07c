//! cutover: database migrations to AWS, written as code.
//!
//! A plan is a Rust function that declares resources, data lookups, one-shot steps and gates with
//! the builder in [`dsl`]; a stack file binds it to an environment ([`stack`]). The engine turns the
//! plan into a validated graph ([`graph`]), diffs it against recorded state ([`planner`], [`state`])
//! and walks it with a checkpointing executor ([`executor`]); providers ([`provider`]) do the work.
//! [`render`] and [`cli`] are the only modules that format for people.

// Errors are cold paths that carry the file, line, node and fix for a person to read; their size
// does not matter, their content does.
#![allow(clippy::result_large_err)]

pub mod atomic;
pub mod cli;
pub mod dsl;
pub mod emulate;
pub mod engine;
pub mod executor;
pub mod graph;
pub mod io_error;
pub mod pg;
pub mod planner;
pub mod provider;
pub mod render;
pub mod runlog;
pub mod secrets;
pub mod stack;
pub mod state;
pub mod value;

/// What a plan module needs.
pub mod prelude {
    pub use crate::dsl::{
        Budget, FailurePolicy, Handle, NodeKind, Output, Plan, PlanError, Window,
    };
    pub use crate::engine::PlanEntry;
    pub use crate::pg::replication::{capture_slot, catch_up_table, Group as TableGroup};
    pub use crate::provider::aws::autoscaling::ReaderAutoscaling;
    pub use crate::provider::aws::cluster::{AuroraCluster, ClusterInstance};
    pub use crate::provider::aws::dms::{
        DmsEndpoint, DmsInstance, DmsSubnetGroup, DmsTask, Lobs, StartTask, StopTask,
        TableMappings, TargetPrep, TaskSettings, TestConnections, WaitCdcLatency, WaitFullLoad,
    };
    pub use crate::provider::aws::instance::{
        DbInstance, DbSnapshot, ExistingInstance, Promote, Snapshot,
    };
    pub use crate::provider::aws::monitoring::{
        Alarm, Bake, Subscription as SnsSubscription, Topic as SnsTopic, WaitMetric,
    };
    pub use crate::provider::aws::network::{SecurityGroup, SubnetGroup, Subnets, Vpc};
    pub use crate::provider::aws::ops::{Failover, PromoteCluster, Reboot};
    pub use crate::provider::aws::rds::{kms_key_arn, ParameterFence, ParameterGroup};
    pub use crate::provider::aws::route53::{
        ttl_within_window, Flip as DnsFlip, HostedZone, LowerTtl as DnsLowerTtl,
        Record as DnsRecord,
    };
    pub use crate::provider::builtin::{Assert, Note, Null, Sleep};
    pub use crate::provider::http::HealthCheck;
    pub use crate::provider::local_file::{Append, Directory, File, ReadFile};
    pub use crate::provider::local_pg::{Pgbouncer, Postgres};
    pub use crate::provider::pg_conn::PgConn;
    pub use crate::provider::pg_steps::{
        CaptureSlots, CopySchema, CreateDatabase, Cutover, EnableReverse, ExtendReplication,
        FinishReplication, LoadFromStandby, PauseReplay, Preflight, Replicate, ReplicateFrom,
        ResumeReplay, Sql, Unfence, Validate, VerifyLsn, WaitLag,
    };
    pub use crate::stack::Stack;
    pub use crate::value::Value;
    pub use std::time::Duration;
}
