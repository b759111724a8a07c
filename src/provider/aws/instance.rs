//! RDS DB instances (`aws.rds.instance`: postgres or mysql, class, storage, multi-AZ, parameter
//! group, subnet group, security groups, backups and windows, monitoring), instance read replicas
//! (the same type with a `replica_of` source), the promote step (`aws.rds.promote`), whose
//! probe (no replication source left) keeps it from running twice, and the snapshot step
//! (`aws.rds.snapshot`, of an instance or a cluster: a rollback point), and the look-up of an
//! instance the plan does not own (`aws.rds.existing_instance`: a migration's source, read at
//! every apply, never changed or deleted).
//!
//! Instances carry our tags; one that exists without them is never taken over. Deleting one takes a
//! final snapshot unless the plan says otherwise, and deletion protection is honoured.

use std::sync::Arc;

use async_trait::async_trait;

use super::cluster::{
    aws_tags, b, describe_db_instance, observed, orderable, sdk_tags, sorted, tag_pairs,
    wait_status,
};
use super::driver::{AwsError, AwsObject, Call, Driven, Found as DriverFound, Ownership, Status};
use super::{ours, sdk_err, Aws};
use crate::dsl::{Declare, Handle, NodeKind, Output};
use crate::provider::model::Model;
use crate::provider::{Ctx, DataType, Observed, Probe, ProviderError, Registry, Request, StepType};
use crate::value::{get_str, get_u64, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.data(ExistingInstanceType { aws: aws.clone() });
    r.resource(Driven(DbInstanceType { aws: aws.clone() }));
    r.step(PromoteType { aws: aws.clone() });
    r.step(SnapshotType { aws: aws.clone() });
    r.resource(Driven(DbSnapshotType {
        snap: SnapshotType { aws },
    }));
}

/// An RDS DB instance that exists and is not the plan's (a migration's source), by identifier:
/// read at every apply; the plan never changes or deletes it.
#[derive(Debug, Clone)]
pub struct ExistingInstance {
    id: String,
}

impl ExistingInstance {
    pub fn find(identifier: &str) -> Self {
        ExistingInstance {
            id: identifier.into(),
        }
    }
}

impl Declare for ExistingInstance {
    const TYPE: &'static str = "aws.rds.existing_instance";
    const KIND: NodeKind = NodeKind::Data;
    fn inputs(self) -> Attrs {
        Attrs::from([("id".to_string(), Value::from(self.id))])
    }
}

crate::outputs!(ExistingInstance {
    identifier: String = "id",
    arn: String = "arn",
    endpoint: String = "endpoint",
    port: u64 = "port",
    /// The DB parameter group the instance uses.
    parameter_group: String = "parameter_group",
});

struct ExistingInstanceType {
    aws: Arc<Aws>,
}

#[async_trait]
impl DataType for ExistingInstanceType {
    fn type_name(&self) -> &'static str {
        "aws.rds.existing_instance"
    }
    fn service(&self) -> &'static str {
        "rds"
    }
    async fn read(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let id = get_str(req.inputs, "id").unwrap_or_default();
        let d = describe_db_instance(&self.aws, id).await?.ok_or_else(|| {
            ProviderError::refused(
                format!("no DB instance `{id}` in this region"),
                "check the stack's identifier and region: the plan reads this instance, it does not create it",
            )
        })?;
        let group = d
            .db_parameter_groups()
            .first()
            .map(|g| {
                (
                    g.db_parameter_group_name().unwrap_or_default().to_string(),
                    g.parameter_apply_status().unwrap_or_default().to_string(),
                )
            })
            .unwrap_or_default();
        Ok(Attrs::from([
            ("id".to_string(), Value::from(id)),
            (
                "arn".to_string(),
                Value::from(d.db_instance_arn().unwrap_or_default()),
            ),
            (
                "endpoint".to_string(),
                Value::from(d.endpoint().and_then(|e| e.address()).unwrap_or_default()),
            ),
            (
                "port".to_string(),
                Value::from(d.endpoint().and_then(|e| e.port()).unwrap_or(0) as u64),
            ),
            (
                "engine".to_string(),
                Value::from(d.engine().unwrap_or_default()),
            ),
            (
                "engine_version".to_string(),
                Value::from(d.engine_version().unwrap_or_default()),
            ),
            ("parameter_group".to_string(), Value::from(group.0)),
            ("parameter_apply_status".to_string(), Value::from(group.1)),
            (
                "status".to_string(),
                Value::from(d.db_instance_status().unwrap_or_default()),
            ),
        ]))
    }
}

crate::model! {
    /// What an RDS DB instance, or a read replica of one, is declared with.
    pub struct DbInstanceArgs {
        /// `postgres` or `mysql`; a replica's comes from its source.
        engine: Option<String> [replace],
        engine_version: Option<String>,
        /// `db.r6g.large` and the like.
        class: String,
        /// Allocated storage in GB.
        storage: Option<u64>,
        storage_type: Option<String>,
        iops: Option<u64>,
        multi_az: Option<bool>,
        master_username: Option<String> [replace],
        master_password: Option<String> [sensitive],
        manage_master_user_password: Option<bool>,
        subnet_group: Option<String> [replace],
        /// The source instance's identifier, recorded at creation; promotion removes it on
        /// purpose.
        replica_of: Option<String> [replace, create_only],
        db_name: Option<String> [replace],
        storage_encrypted: Option<bool> [replace],
        kms_key_id: Option<String> [replace],
        parameter_group: Option<String>,
        /// VPC security group ids, a set.
        security_groups: Option<Vec<String>>,
        backup_retention_period: Option<u64>,
        preferred_backup_window: Option<String>,
        preferred_maintenance_window: Option<String>,
        monitoring_interval: Option<u64>,
        monitoring_role_arn: Option<String>,
        performance_insights: Option<bool>,
        performance_insights_retention: Option<u64>,
        deletion_protection: Option<bool>,
        skip_final_snapshot: Option<bool>,
        apply_immediately: Option<bool>,
    }
}

crate::model! {
    /// What an RDS DB instance reports.
    pub struct DbInstanceOut {
        id: String,
        arn: String,
        endpoint: String,
        port: u64,
        /// The Secrets Manager secret RDS keeps the master password in (`managed_master` only).
        master_secret_arn: Option<String>,
    }
}

/// An RDS DB instance, or a read replica of one (`replica_of`).
#[derive(Debug, Clone)]
pub struct DbInstance {
    inputs: Attrs,
}

impl DbInstance {
    fn new(engine: &str, version: &str, class: &str, storage_gb: u64) -> Self {
        DbInstance {
            inputs: Attrs::from([
                (DbInstanceArgs::engine.to_string(), Value::from(engine)),
                (
                    DbInstanceArgs::engine_version.to_string(),
                    Value::from(version),
                ),
                (DbInstanceArgs::class.to_string(), Value::from(class)),
                (DbInstanceArgs::storage.to_string(), Value::from(storage_gb)),
                (DbInstanceArgs::storage_type.to_string(), Value::from("gp3")),
                (DbInstanceArgs::multi_az.to_string(), Value::Bool(false)),
            ]),
        }
    }
    pub fn postgres(version: &str, class: &str, storage_gb: u64) -> Self {
        DbInstance::new("postgres", version, class, storage_gb)
    }
    pub fn mysql(version: &str, class: &str, storage_gb: u64) -> Self {
        DbInstance::new("mysql", version, class, storage_gb)
    }
    /// A read replica of `source` (an instance handle's `identifier()`): engine, version, storage
    /// and master user come from the source.
    pub fn replica_of(source: Output<String>, class: &str) -> Self {
        DbInstance {
            inputs: Attrs::from([
                (DbInstanceArgs::replica_of.to_string(), source.into()),
                (DbInstanceArgs::class.to_string(), Value::from(class)),
                (DbInstanceArgs::multi_az.to_string(), Value::Bool(false)),
            ]),
        }
    }
    fn set(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.inputs.insert(k.into(), v.into());
        self
    }
    pub fn master(self, user: &str, password: Output<String>) -> Self {
        self.set(DbInstanceArgs::master_username, user)
            .set(DbInstanceArgs::master_password, password)
    }
    /// The database RDS creates on the new instance (`DBName`); without it only `postgres`.
    pub fn db_name(self, name: &str) -> Self {
        self.set(DbInstanceArgs::db_name, name)
    }
    /// Master user whose password RDS keeps in Secrets Manager (`master_secret_arn()` names it).
    pub fn managed_master(self, user: &str) -> Self {
        self.set(DbInstanceArgs::master_username, user)
            .set(DbInstanceArgs::manage_master_user_password, true)
    }
    /// `gp2`, `gp3`, `io1` or `io2`, with provisioned IOPS for the last two (and gp3 above 400 GB).
    pub fn storage_type(self, t: &str, iops: Option<u64>) -> Self {
        let s = self.set(DbInstanceArgs::storage_type, t);
        match iops {
            Some(i) => s.set(DbInstanceArgs::iops, i),
            None => s,
        }
    }
    pub fn multi_az(self, on: bool) -> Self {
        self.set(DbInstanceArgs::multi_az, on)
    }
    pub fn parameter_group(self, name: Output<String>) -> Self {
        self.set(DbInstanceArgs::parameter_group, name)
    }
    pub fn subnet_group(self, name: Output<String>) -> Self {
        self.set(DbInstanceArgs::subnet_group, name)
    }
    pub fn security_groups(self, ids: Vec<Output<String>>) -> Self {
        self.set(
            DbInstanceArgs::security_groups,
            Value::Array(ids.into_iter().map(Into::into).collect()),
        )
    }
    pub fn backups(self, retention_days: u32, window: &str) -> Self {
        self.set(
            DbInstanceArgs::backup_retention_period,
            retention_days as u64,
        )
        .set(DbInstanceArgs::preferred_backup_window, window)
    }
    pub fn maintenance_window(self, window: &str) -> Self {
        self.set(DbInstanceArgs::preferred_maintenance_window, window)
    }
    /// Enhanced monitoring interval in seconds (0, 1, 5, 10, 15, 30, 60).
    pub fn monitoring_interval(self, seconds: u32) -> Self {
        self.set(DbInstanceArgs::monitoring_interval, seconds as u64)
    }
    /// Enhanced monitoring every `seconds` (1, 5, 10, 15, 30, 60), published by `role_arn` (an
    /// IAM role RDS assumes, with the `AmazonRDSEnhancedMonitoringRole` policy).
    pub fn enhanced_monitoring(self, seconds: u32, role_arn: impl Into<Value>) -> Self {
        self.set(DbInstanceArgs::monitoring_interval, seconds as u64)
            .set(DbInstanceArgs::monitoring_role_arn, role_arn)
    }
    /// Performance Insights, keeping `retention_days` of data (7 is the free tier; or a multiple
    /// of 31 up to 731).
    pub fn performance_insights(self, retention_days: u32) -> Self {
        self.set(DbInstanceArgs::performance_insights, true).set(
            DbInstanceArgs::performance_insights_retention,
            retention_days as u64,
        )
    }
    pub fn deletion_protection(self, on: bool) -> Self {
        self.set(DbInstanceArgs::deletion_protection, on)
    }
    pub fn skip_final_snapshot(self) -> Self {
        self.set(DbInstanceArgs::skip_final_snapshot, true)
    }
    /// Encrypt storage (and its backups, snapshots and replicas) with this KMS key: a key ARN
    /// (`arn:aws:kms:REGION:ACCOUNT:key/ID`), as RDS reports it back. Changing it replaces the
    /// instance; RDS cannot encrypt an instance in place.
    pub fn kms_key(self, key_arn: impl Into<Value>) -> Self {
        self.set(DbInstanceArgs::storage_encrypted, true)
            .set(DbInstanceArgs::kms_key_id, key_arn)
    }
    /// Apply modifications now rather than in the maintenance window (default: the stack's
    /// `apply_immediately`, itself false unless set).
    pub fn apply_immediately(self, on: bool) -> Self {
        self.set(DbInstanceArgs::apply_immediately, on)
    }
}

crate::declare!(DbInstance, DbInstanceType::TYPE, Resource);

impl Handle<DbInstance> {
    pub fn identifier(&self) -> Output<String> {
        self.output(DbInstanceOut::id)
    }
    pub fn endpoint(&self) -> Output<String> {
        self.output(DbInstanceOut::endpoint)
    }
    pub fn port(&self) -> Output<u64> {
        self.output(DbInstanceOut::port)
    }
    pub fn arn(&self) -> Output<String> {
        self.output(DbInstanceOut::arn)
    }
    /// The Secrets Manager secret RDS keeps the master password in (`managed_master` only).
    pub fn master_secret_arn(&self) -> Output<String> {
        self.output(DbInstanceOut::master_secret_arn)
    }
    /// A connection to this instance for the data-plane steps: its endpoint and port, `user`
    /// with `password` (a secret reference), named after this node for `[connect]`. Add the
    /// database and TLS: `.dbname("app").verify_full(&ca_bundle)`.
    pub fn connection(
        &self,
        user: &str,
        password: Output<String>,
    ) -> crate::provider::pg_conn::PgConn {
        crate::provider::pg_conn::PgConn::of_database(
            self.name(),
            self.endpoint(),
            self.port(),
            user,
            password,
        )
    }
}

struct DbInstanceType {
    aws: Arc<Aws>,
}

struct Found {
    status: String,
    deletion_protection: bool,
    replica_of: Option<String>,
    observed: Observed,
    tags: Vec<(String, String)>,
}

async fn find(aws: &Aws, id: &str) -> Result<Option<Found>, ProviderError> {
    let Some(d) = describe_db_instance(aws, id).await? else {
        return Ok(None);
    };
    let mut groups: Vec<String> = d
        .vpc_security_groups()
        .iter()
        .filter_map(|g| g.vpc_security_group_id().map(String::from))
        .collect();
    groups.sort();
    let replica_of = d
        .read_replica_source_db_instance_identifier()
        .map(String::from);
    let inputs = DbInstanceArgs {
        engine: d.engine().map(String::from),
        engine_version: d.engine_version().map(String::from),
        class: d.db_instance_class().unwrap_or_default().into(),
        storage: d.allocated_storage().map(|s| s as u64),
        storage_type: d.storage_type().map(String::from),
        iops: d.iops().map(|s| s as u64),
        multi_az: d.multi_az(),
        master_username: d.master_username().map(String::from),
        master_password: None,
        manage_master_user_password: Some(d.master_user_secret().is_some()),
        subnet_group: (d.db_subnet_group())
            .and_then(|g| g.db_subnet_group_name())
            .map(String::from),
        replica_of: replica_of.clone(),
        db_name: d.db_name().map(String::from),
        storage_encrypted: d.storage_encrypted(),
        kms_key_id: d.kms_key_id().map(String::from),
        parameter_group: (d.db_parameter_groups().first())
            .and_then(|g| g.db_parameter_group_name())
            .map(String::from),
        security_groups: Some(groups),
        backup_retention_period: d.backup_retention_period().map(|p| p as u64),
        preferred_backup_window: d.preferred_backup_window().map(String::from),
        preferred_maintenance_window: d.preferred_maintenance_window().map(String::from),
        monitoring_interval: d.monitoring_interval().map(|m| m as u64),
        monitoring_role_arn: d.monitoring_role_arn().map(String::from),
        performance_insights: d.performance_insights_enabled(),
        performance_insights_retention: (d.performance_insights_retention_period())
            .map(|p| p as u64),
        deletion_protection: d.deletion_protection(),
        skip_final_snapshot: None,
        apply_immediately: None,
    };
    let outputs = DbInstanceOut {
        id: id.into(),
        arn: d.db_instance_arn().unwrap_or_default().into(),
        endpoint: (d.endpoint().and_then(|e| e.address()))
            .unwrap_or_default()
            .into(),
        port: d.endpoint().and_then(|e| e.port()).unwrap_or(0) as u64,
        master_secret_arn: (d.master_user_secret())
            .and_then(|m| m.secret_arn())
            .map(String::from),
    };
    Ok(Some(Found {
        status: d.db_instance_status().unwrap_or_default().to_string(),
        deletion_protection: d.deletion_protection().unwrap_or(false),
        replica_of,
        tags: tag_pairs(d.tag_list()),
        observed: Observed {
            id: id.into(),
            inputs: inputs.to_attrs(),
            outputs: outputs.to_attrs(),
        },
    }))
}

async fn wait(aws: &Aws, ctx: &Ctx, node: &str, id: &str, gone: bool) -> Result<(), ProviderError> {
    wait_status(
        ctx,
        node,
        &format!("instance {id}"),
        || async { Ok(find(aws, id).await?.map(|f| f.status)) },
        gone,
    )
    .await
}

#[async_trait]
impl AwsObject for DbInstanceType {
    const TYPE: &'static str = "aws.rds.instance";
    const SERVICE: &'static str = "rds";
    const WHAT: &'static str = "DB instance";
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = DbInstanceArgs;
    const NOT_FOUND: &'static [&'static str] = &["DBInstanceNotFound", "DBInstanceNotFoundFault"];
    const EXISTS: &'static [&'static str] = &["DBInstanceAlreadyExists"];
    /// Its subnet and parameter groups are deleted after it: only once it is gone.
    const WAIT_GONE: bool = true;
    /// A read replica of terabytes takes hours to create.
    fn default_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(24 * 3600)
    }
    /// Its identifier is known before it exists: the deterministic one.
    fn planned_outputs(&self, _inputs: &Attrs, id: &str) -> Attrs {
        Attrs::from([(DbInstanceOut::id.to_string(), Value::from(id))])
    }
    /// A primary holds data; a read replica's copy is its source's.
    fn review(&self, inputs: &Attrs) -> crate::provider::Review {
        type A = DbInstanceArgs;
        crate::provider::Review {
            holds_data: !inputs.contains_key(A::replica_of),
            billed_as: super::billed_as(inputs, A::class, A::multi_az),
            ..Default::default()
        }
    }
    fn check_id(&self, id: &str) -> Result<(), String> {
        crate::provider::rds_identifier(id)
    }
    fn validate_refs(
        &self,
        inputs: &Attrs,
        referenced: &dyn Fn(&str) -> Option<(String, Attrs)>,
    ) -> Vec<String> {
        super::rds::check_family(inputs, DbInstanceArgs::parameter_group, referenced)
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        type O = DbInstanceOut;
        &[O::id, O::arn, O::endpoint]
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        let mut v = vec![];
        let replica = inputs.contains_key(DbInstanceArgs::replica_of);
        match get_str(inputs, DbInstanceArgs::engine) {
            Some("postgres" | "mysql") => {}
            None if replica => {}
            Some(e) => v.push(format!(
                "engine `{e}`: use postgres or mysql (Aurora is aws.rds.cluster)"
            )),
            None => v.push("an instance needs an engine (or replica_of)".into()),
        }
        if !replica
            && !inputs.contains_key(DbInstanceArgs::master_password)
            && !inputs.contains_key(DbInstanceArgs::master_username)
        {
            v.push(
                "an instance needs a master user: .master(user, secret) or .managed_master(user)"
                    .into(),
            );
        }
        if inputs.contains_key(DbInstanceArgs::master_password)
            && b(inputs, DbInstanceArgs::manage_master_user_password) == Some(true)
        {
            v.push("give either a master password or managed_master, not both".into());
        }
        if let Some(m) = get_u64(inputs, DbInstanceArgs::monitoring_interval) {
            if ![0, 1, 5, 10, 15, 30, 60].contains(&m) {
                v.push(format!(
                    "monitoring interval {m} s: RDS takes 0, 1, 5, 10, 15, 30 or 60"
                ));
            }
            if m > 0
                && !inputs.contains_key(DbInstanceArgs::monitoring_role_arn)
                && !inputs.contains_key(DbInstanceArgs::replica_of)
            {
                v.push("enhanced monitoring needs a monitoring role: .enhanced_monitoring(seconds, role_arn)".into());
            }
        }
        if let Some(r) = get_u64(inputs, DbInstanceArgs::performance_insights_retention) {
            if r != 7 && (r % 31 != 0 || r > 731) {
                v.push(format!("Performance Insights retention {r} days: RDS takes 7, or a multiple of 31 up to 731"));
            }
        }
        if let Some(c) = get_str(inputs, DbInstanceArgs::class) {
            if !c.starts_with("db.") {
                v.push(format!(
                    "instance class `{c}`: RDS classes start with `db.`"
                ));
            }
        }
        match (
            get_str(inputs, DbInstanceArgs::storage_type),
            get_u64(inputs, DbInstanceArgs::iops),
        ) {
            (Some("io1" | "io2"), None) => {
                v.push("io1 and io2 storage need provisioned IOPS".into())
            }
            (Some("gp2"), Some(_)) => v.push("gp2 storage takes no provisioned IOPS".into()),
            _ => {}
        }
        if let Some(k) = get_str(inputs, DbInstanceArgs::kms_key_id) {
            if let Err(e) = super::rds::kms_key_arn(k) {
                v.push(e);
            }
        }
        v
    }
    async fn check(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
    ) -> Result<Option<Vec<(crate::provider::CheckLevel, String)>>, ProviderError> {
        // A replica's engine and version are its source's: checked there.
        match (
            get_str(req.inputs, DbInstanceArgs::engine),
            get_str(req.inputs, DbInstanceArgs::class),
        ) {
            (Some(engine), Some(class)) => {
                orderable(
                    &self.aws,
                    engine,
                    get_str(req.inputs, DbInstanceArgs::engine_version),
                    class,
                )
                .await
            }
            _ => Ok(None),
        }
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<DriverFound>, AwsError> {
        Ok(find(&self.aws, id).await?.map(|f| DriverFound {
            status: Status::rds(&f.status),
            observed: observed(f.observed, &f.tags, req.inputs),
        }))
    }
    /// A read replica of `replica_of`, or a primary.
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        a: &DbInstanceArgs,
        id: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let rds = self.aws.rds().await;
        let groups = a.security_groups.as_deref().map(sorted);
        let int = |v: Option<u64>| v.map(|v| v as i32);
        if let Some(source) = &a.replica_of {
            rds.create_db_instance_read_replica()
                .db_instance_identifier(id)
                .source_db_instance_identifier(source)
                .db_instance_class(&a.class)
                .set_multi_az(a.multi_az)
                .set_vpc_security_group_ids(groups)
                .set_tags(Some(sdk_tags(tags)))
                .send()
                .await
                .during(&format!("create read replica {id} of {source}"))?;
        } else {
            rds.create_db_instance()
                .db_instance_identifier(id)
                .engine(a.engine.clone().unwrap_or_default())
                .set_engine_version(a.engine_version.clone())
                .db_instance_class(&a.class)
                .set_allocated_storage(int(a.storage))
                .set_storage_type(a.storage_type.clone())
                .set_iops(int(a.iops))
                .set_multi_az(a.multi_az)
                .set_storage_encrypted(a.storage_encrypted)
                .set_kms_key_id(a.kms_key_id.clone())
                .set_db_name(a.db_name.clone())
                .set_master_username(a.master_username.clone())
                .set_master_user_password(a.master_password.clone())
                .set_manage_master_user_password(a.manage_master_user_password)
                .set_db_parameter_group_name(a.parameter_group.clone())
                .set_db_subnet_group_name(a.subnet_group.clone())
                .set_vpc_security_group_ids(groups)
                .set_backup_retention_period(int(a.backup_retention_period))
                .set_preferred_backup_window(a.preferred_backup_window.clone())
                .set_preferred_maintenance_window(a.preferred_maintenance_window.clone())
                .set_monitoring_interval(int(a.monitoring_interval))
                .set_monitoring_role_arn(a.monitoring_role_arn.clone())
                .set_enable_performance_insights(a.performance_insights)
                .set_performance_insights_retention_period(int(a.performance_insights_retention))
                .set_deletion_protection(a.deletion_protection)
                .set_tags(Some(sdk_tags(tags)))
                .send()
                .await
                .during(&format!("create instance {id}"))?;
        }
        Ok(id.to_string())
    }
    async fn modify(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        a: &DbInstanceArgs,
        id: &str,
        changed: &[String],
    ) -> Result<(), AwsError> {
        type A = DbInstanceArgs;
        let has = |k: &str| changed.iter().any(|c| c == k);
        let s = |k: &str, v: &Option<String>| v.clone().filter(|_| has(k));
        let n = |k: &str, v: Option<u64>| v.filter(|_| has(k)).map(|v| v as i32);
        let flag = |k: &str, v: Option<bool>| v.filter(|_| has(k));
        self.aws
            .rds()
            .await
            .modify_db_instance()
            .db_instance_identifier(id)
            .apply_immediately(a.apply_immediately.unwrap_or(self.aws.apply_immediately))
            .set_engine_version(s(A::engine_version, &a.engine_version))
            .set_allow_major_version_upgrade(has(A::engine_version).then_some(true))
            .set_db_instance_class(has(A::class).then(|| a.class.clone()))
            .set_allocated_storage(n(A::storage, a.storage))
            .set_storage_type(s(A::storage_type, &a.storage_type))
            .set_iops(n(A::iops, a.iops))
            .set_multi_az(flag(A::multi_az, a.multi_az))
            .set_db_parameter_group_name(s(A::parameter_group, &a.parameter_group))
            .set_vpc_security_group_ids(
                (a.security_groups.as_deref())
                    .filter(|_| has(A::security_groups))
                    .map(sorted),
            )
            .set_backup_retention_period(n(A::backup_retention_period, a.backup_retention_period))
            .set_preferred_backup_window(s(A::preferred_backup_window, &a.preferred_backup_window))
            .set_preferred_maintenance_window(s(
                A::preferred_maintenance_window,
                &a.preferred_maintenance_window,
            ))
            .set_monitoring_interval(n(A::monitoring_interval, a.monitoring_interval))
            .set_monitoring_role_arn(s(A::monitoring_role_arn, &a.monitoring_role_arn))
            .set_enable_performance_insights(flag(A::performance_insights, a.performance_insights))
            .set_performance_insights_retention_period(n(
                A::performance_insights_retention,
                a.performance_insights_retention,
            ))
            .set_deletion_protection(flag(A::deletion_protection, a.deletion_protection))
            .set_master_user_password(s(A::master_password, &a.master_password))
            .set_manage_master_user_password(flag(
                A::manage_master_user_password,
                a.manage_master_user_password,
            ))
            .send()
            .await
            .during(&format!("modify instance {id}"))?;
        Ok(())
    }
    /// Refused while deletion protection is on; a primary's final snapshot is taken unless the
    /// plan skips it, and listed with what the run kept.
    async fn delete(&self, ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        let Some(f) = find(&self.aws, id).await? else {
            return Err(AwsError {
                code: Some("DBInstanceNotFound".into()),
                error: ProviderError::new(format!("instance {id} does not exist")),
            });
        };
        if f.deletion_protection {
            return Err(ProviderError::refused(
                format!("instance {id} has deletion protection on"),
                "set .deletion_protection(false) in the plan and apply, then destroy",
            )
            .into());
        }
        // A replica needs no final snapshot: its source keeps the data.
        let skip = f.replica_of.is_some()
            || req
                .inputs
                .get(DbInstanceArgs::skip_final_snapshot)
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let final_snapshot = (!skip).then(|| super::final_snapshot_name(id));
        self.aws
            .rds()
            .await
            .delete_db_instance()
            .db_instance_identifier(id)
            .skip_final_snapshot(skip)
            .set_final_db_snapshot_identifier(final_snapshot.clone())
            .send()
            .await
            .during(&format!("delete instance {id}"))?;
        if let Some(s) = final_snapshot {
            ctx.keep(
                req.node,
                format!("final snapshot `{s}` of instance `{id}`"),
                super::delete_snapshot_command(false, &s),
            );
        }
        Ok(())
    }
}

/// Promotes an instance read replica to a standalone instance.
#[derive(Debug, Clone)]
pub struct Promote {
    inputs: Attrs,
}

impl Promote {
    pub fn replica(replica: Output<String>) -> Self {
        Promote {
            inputs: Attrs::from([("replica".to_string(), replica.into())]),
        }
    }
    /// A precondition: promote only while the replica's lag (CloudWatch `ReplicaLag`, the latest
    /// one-minute maximum) is at most `seconds`; otherwise the step fails, promoting nothing, and
    /// a later apply tries again. No recent datapoint fails it too: the bound cannot be shown.
    pub fn max_lag(mut self, seconds: u64) -> Self {
        self.inputs
            .insert("max_lag_seconds".into(), Value::from(seconds));
        self
    }
}

crate::declare!(Promote, "aws.rds.promote", Step);

struct PromoteType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for PromoteType {
    fn type_name(&self) -> &'static str {
        Promote::TYPE
    }
    fn service(&self) -> &'static str {
        "rds"
    }
    async fn run(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
    ) -> Result<crate::value::Attrs, ProviderError> {
        let id = get_str(req.inputs, "replica").unwrap_or_default();
        let mut f = find(&self.aws, id)
            .await?
            .ok_or_else(|| ProviderError::new(format!("instance {id} does not exist")))?;
        let was = f.replica_of.clone();
        if f.replica_of.is_some() && f.status != "available" {
            // Busy (a promotion issued by an interrupted run shows `modifying`): wait, then look
            // again rather than issue a second promotion.
            wait(&self.aws, ctx, req.node, id, false).await?;
            f = find(&self.aws, id)
                .await?
                .ok_or_else(|| ProviderError::new(format!("instance {id} does not exist")))?;
        }
        if f.replica_of.is_some() {
            if let Some(bound) = get_u64(req.inputs, "max_lag_seconds") {
                let lag = super::monitoring::latest_maximum(
                    &self.aws,
                    "AWS/RDS",
                    "ReplicaLag",
                    &[("DBInstanceIdentifier", id)],
                )
                .await?;
                match lag {
                    None => {
                        return Err(ProviderError::with_fix(
                            format!("no ReplicaLag datapoint for {id} in the last ten minutes: its lag cannot be shown to be under {bound} s; nothing was promoted"),
                            "check the replica's CloudWatch metrics and apply again, or drop .max_lag(..)",
                        ))
                    }
                    Some(l) if l > bound as f64 => {
                        return Err(ProviderError::with_fix(
                            format!("replica {id} lags {l} s behind its source, above the bound of {bound} s; nothing was promoted"),
                            "wait for the replica to catch up and apply again",
                        ))
                    }
                    Some(l) => ctx.report(
                        req.node,
                        &format!("replica lag {l} s, within the bound of {bound} s"),
                    ),
                }
            }
            self.aws
                .rds()
                .await
                .promote_read_replica()
                .db_instance_identifier(id)
                .send()
                .await
                .map_err(|e| sdk_err(&format!("promote {id}"), e))?;
        }
        // Done when the instance is available and no longer names a source (right after the call
        // it may still show both for a moment).
        wait_status(
            ctx,
            req.node,
            &format!("instance {id}"),
            || async {
                Ok(find(&self.aws, id).await?.map(|f| {
                    if f.replica_of.is_some() && f.status == "available" {
                        "promotion pending".to_string()
                    } else {
                        f.status
                    }
                }))
            },
            false,
        )
        .await?;
        Ok(Attrs::from([
            ("promoted".to_string(), Value::from(id)),
            (
                "was_replica_of".to_string(),
                was.map(Value::from).unwrap_or(Value::Null),
            ),
        ]))
    }
    async fn probe(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let id = get_str(req.inputs, "replica").unwrap_or_default();
        Ok(Some(match find(&self.aws, id).await? {
            Some(f) if f.replica_of.is_none() && f.status == "available" => {
                Probe::Done(Attrs::from([("promoted".to_string(), Value::from(id))]))
            }
            _ => Probe::NotDone,
        }))
    }
}

/// A snapshot of an instance or a cluster taken as a step (a rollback point before a cutover),
/// tagged, waited on until available. Probe: the snapshot exists.
#[derive(Debug, Clone)]
pub struct Snapshot {
    inputs: Attrs,
}

impl Snapshot {
    /// A snapshot of an RDS instance (an instance handle's `identifier()`).
    pub fn of_instance(instance: Output<String>) -> Self {
        Snapshot {
            inputs: Attrs::from([("instance".to_string(), instance.into())]),
        }
    }
    /// A snapshot of an Aurora cluster (a cluster handle's `identifier()`).
    pub fn of_cluster(cluster: Output<String>) -> Self {
        Snapshot {
            inputs: Attrs::from([("cluster".to_string(), cluster.into())]),
        }
    }
}

crate::declare!(Snapshot, "aws.rds.snapshot", Step);

struct SnapshotType {
    aws: Arc<Aws>,
}

/// A snapshot as a describe shows it.
struct SnapshotFound {
    status: String,
    source: String,
    arn: String,
    tags: Vec<(String, String)>,
}

impl SnapshotType {
    /// The snapshot `id` of a cluster or an instance, if it exists.
    async fn describe(
        &self,
        cluster: bool,
        id: &str,
    ) -> Result<Option<SnapshotFound>, ProviderError> {
        let rds = self.aws.rds().await;
        if cluster {
            match rds
                .describe_db_cluster_snapshots()
                .db_cluster_snapshot_identifier(id)
                .send()
                .await
            {
                Ok(o) => Ok(o.db_cluster_snapshots().first().map(|s| SnapshotFound {
                    status: s.status().unwrap_or_default().to_string(),
                    source: s.db_cluster_identifier().unwrap_or_default().to_string(),
                    arn: s.db_cluster_snapshot_arn().unwrap_or_default().to_string(),
                    tags: tag_pairs(s.tag_list()),
                })),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_db_cluster_snapshot_not_found_fault()) =>
                {
                    Ok(None)
                }
                Err(e) => Err(sdk_err(&format!("describe cluster snapshot {id}"), e)),
            }
        } else {
            match rds
                .describe_db_snapshots()
                .db_snapshot_identifier(id)
                .send()
                .await
            {
                Ok(o) => Ok(o.db_snapshots().first().map(|s| SnapshotFound {
                    status: s.status().unwrap_or_default().to_string(),
                    source: s.db_instance_identifier().unwrap_or_default().to_string(),
                    arn: s.db_snapshot_arn().unwrap_or_default().to_string(),
                    tags: tag_pairs(s.tag_list()),
                })),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_db_snapshot_not_found_fault()) =>
                {
                    Ok(None)
                }
                Err(e) => Err(sdk_err(&format!("describe snapshot {id}"), e)),
            }
        }
    }

    /// The snapshot's status, if it exists.
    async fn status(&self, cluster: bool, id: &str) -> Result<Option<String>, ProviderError> {
        Ok(self.describe(cluster, id).await?.map(|f| f.status))
    }

    /// Takes the snapshot `id` of `source` unless it exists, tagged for `node`, and waits until
    /// it is available.
    async fn take(
        &self,
        ctx: &Ctx,
        node: &str,
        cluster: bool,
        id: &str,
        source: &str,
    ) -> Result<(), ProviderError> {
        if self.status(cluster, id).await?.is_none() {
            let rds = self.aws.rds().await;
            // "Already exists" after a look-up found nothing: an attempt the SDK retried made
            // it if it carries our tags; anything else is refused.
            let exists = if cluster {
                match rds
                    .create_db_cluster_snapshot()
                    .db_cluster_snapshot_identifier(id)
                    .db_cluster_identifier(source)
                    .set_tags(Some(aws_tags(ctx, node)))
                    .send()
                    .await
                {
                    Ok(_) => false,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_db_cluster_snapshot_already_exists_fault()) =>
                    {
                        true
                    }
                    Err(e) => return Err(sdk_err(&format!("snapshot cluster {source}"), e)),
                }
            } else {
                match rds
                    .create_db_snapshot()
                    .db_snapshot_identifier(id)
                    .db_instance_identifier(source)
                    .set_tags(Some(aws_tags(ctx, node)))
                    .send()
                    .await
                {
                    Ok(_) => false,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_db_snapshot_already_exists_fault()) =>
                    {
                        true
                    }
                    Err(e) => return Err(sdk_err(&format!("snapshot instance {source}"), e)),
                }
            };
            if exists
                && !self
                    .describe(cluster, id)
                    .await?
                    .is_some_and(|f| ours(&f.tags, &ctx.plan, &ctx.stack, node))
            {
                return Err(super::not_ours(ctx, "snapshot", id, node, id));
            }
        }
        wait_status(
            ctx,
            node,
            &format!("snapshot {id}"),
            || async { self.status(cluster, id).await },
            false,
        )
        .await
    }
}

fn snapshot_validate(inputs: &Attrs) -> Vec<String> {
    if inputs.contains_key("cluster") == inputs.contains_key("instance") {
        vec!["a snapshot is of one instance or one cluster".into()]
    } else {
        vec![]
    }
}

/// (is a cluster snapshot, source identifier) of snapshot inputs.
fn snapshot_source(inputs: &Attrs) -> (bool, String) {
    let cluster = inputs.contains_key("cluster");
    let source = get_str(inputs, if cluster { "cluster" } else { "instance" })
        .unwrap_or_default()
        .to_string();
    (cluster, source)
}

#[async_trait]
impl StepType for SnapshotType {
    /// A snapshot of terabytes takes hours.
    fn default_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(24 * 3600)
    }
    fn type_name(&self) -> &'static str {
        Snapshot::TYPE
    }
    fn service(&self) -> &'static str {
        "rds"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        snapshot_validate(inputs)
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let id = req.deterministic_id;
        let (cluster, source) = snapshot_source(req.inputs);
        self.take(ctx, req.node, cluster, id, &source).await?;
        Ok(Attrs::from([
            ("snapshot".to_string(), Value::from(id)),
            ("of".to_string(), Value::from(source)),
            (
                "kind".to_string(),
                Value::from(if cluster { "cluster" } else { "instance" }),
            ),
        ]))
    }
    fn kept(&self, outputs: &Attrs) -> Option<(String, String)> {
        let id = get_str(outputs, "snapshot")?;
        let of = get_str(outputs, "of").unwrap_or("?");
        Some(match get_str(outputs, "kind") {
            Some(kind @ ("cluster" | "instance")) => (
                format!("snapshot `{id}` of {kind} `{of}`"),
                super::delete_snapshot_command(kind == "cluster", id),
            ),
            // Recorded before the kind was: both commands.
            _ => (
                format!("snapshot `{id}` of `{of}`"),
                format!(
                    "{} (a cluster's: {})",
                    super::delete_snapshot_command(false, id),
                    super::delete_snapshot_command(true, id)
                ),
            ),
        })
    }
    async fn probe(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let cluster = req.inputs.contains_key("cluster");
        Ok(Some(
            match self.status(cluster, req.deterministic_id).await?.as_deref() {
                Some("available") => Probe::Done(Attrs::from([(
                    "snapshot".to_string(),
                    Value::from(req.deterministic_id),
                )])),
                _ => Probe::NotDone,
            },
        ))
    }
}

crate::model! {
    /// What a snapshot resource is declared with: one of the two sources.
    pub struct DbSnapshotArgs {
        /// The instance's identifier.
        instance: Option<String> [replace],
        /// The cluster's identifier.
        cluster: Option<String> [replace],
    }
}

crate::model! {
    /// What a snapshot resource reports.
    pub struct DbSnapshotOut {
        id: String,
        arn: String,
        status: String,
        tags: Value,
    }
}

/// A snapshot of an instance or a cluster kept as a resource: taken once, recorded, deleted with
/// the stack (or kept: `.retain_on_delete()` on the node). Its source cannot change: a new source
/// replaces it.
#[derive(Debug, Clone)]
pub struct DbSnapshot {
    inputs: Attrs,
}

impl DbSnapshot {
    /// A snapshot of an RDS instance (an instance handle's `identifier()`).
    pub fn of_instance(instance: Output<String>) -> Self {
        DbSnapshot {
            inputs: Attrs::from([(DbSnapshotArgs::instance.to_string(), instance.into())]),
        }
    }
    /// A snapshot of an Aurora cluster (a cluster handle's `identifier()`).
    pub fn of_cluster(cluster: Output<String>) -> Self {
        DbSnapshot {
            inputs: Attrs::from([(DbSnapshotArgs::cluster.to_string(), cluster.into())]),
        }
    }
}

crate::declare!(DbSnapshot, DbSnapshotType::TYPE, Resource);

crate::outputs!(DbSnapshot {
    /// The snapshot identifier (what a restore names).
    identifier: String = DbSnapshotOut::id,
    arn: String = DbSnapshotOut::arn,
});

struct DbSnapshotType {
    snap: SnapshotType,
}

#[async_trait]
impl AwsObject for DbSnapshotType {
    const TYPE: &'static str = "aws.rds.db_snapshot";
    const SERVICE: &'static str = "rds";
    const WHAT: &'static str = "snapshot";
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = DbSnapshotArgs;
    const NOT_FOUND: &'static [&'static str] = &[
        "DBSnapshotNotFound",
        "DBSnapshotNotFoundFault",
        "DBClusterSnapshotNotFoundFault",
    ];
    const EXISTS: &'static [&'static str] = &[
        "DBSnapshotAlreadyExists",
        "DBSnapshotAlreadyExistsFault",
        "DBClusterSnapshotAlreadyExistsFault",
    ];
    /// Deleted only once gone (a source deleted after it would otherwise meet it).
    const WAIT_GONE: bool = true;
    /// A snapshot of terabytes takes hours.
    fn default_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(24 * 3600)
    }
    fn review(&self, _inputs: &Attrs) -> crate::provider::Review {
        crate::provider::Review {
            holds_data: true,
            ..Default::default()
        }
    }
    /// A retained snapshot that a destroy forgets: listed with its delete command (a cluster's
    /// ARN says `cluster-snapshot`).
    fn kept(&self, id: &str, outputs: &Attrs) -> Option<(String, String)> {
        let cluster =
            get_str(outputs, DbSnapshotOut::arn).is_some_and(|a| a.contains(":cluster-snapshot:"));
        Some((
            format!(
                "{}snapshot `{id}` (retained)",
                if cluster { "cluster " } else { "" }
            ),
            super::delete_snapshot_command(cluster, id),
        ))
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        &[DbSnapshotOut::id, DbSnapshotOut::arn]
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        snapshot_validate(inputs)
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<DriverFound>, AwsError> {
        let cluster = req.inputs.contains_key(DbSnapshotArgs::cluster);
        Ok(self.snap.describe(cluster, id).await?.map(|f| {
            let source = Some(f.source);
            let inputs = if cluster {
                DbSnapshotArgs {
                    instance: None,
                    cluster: source,
                }
            } else {
                DbSnapshotArgs {
                    instance: source,
                    cluster: None,
                }
            };
            DriverFound {
                status: Status::rds(&f.status),
                observed: Observed {
                    id: id.to_string(),
                    inputs: inputs.to_attrs(),
                    outputs: DbSnapshotOut {
                        id: id.into(),
                        arn: f.arn,
                        status: f.status,
                        tags: super::tags_value(&f.tags),
                    }
                    .to_attrs(),
                },
            }
        }))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        a: &DbSnapshotArgs,
        id: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let rds = self.snap.aws.rds().await;
        match (&a.cluster, &a.instance) {
            (Some(cluster), _) => {
                rds.create_db_cluster_snapshot()
                    .db_cluster_snapshot_identifier(id)
                    .db_cluster_identifier(cluster)
                    .set_tags(Some(sdk_tags(tags)))
                    .send()
                    .await
                    .during(&format!("snapshot cluster {cluster}"))?;
            }
            (None, instance) => {
                let instance = instance.clone().unwrap_or_default();
                rds.create_db_snapshot()
                    .db_snapshot_identifier(id)
                    .db_instance_identifier(&instance)
                    .set_tags(Some(sdk_tags(tags)))
                    .send()
                    .await
                    .during(&format!("snapshot instance {instance}"))?;
            }
        }
        Ok(id.to_string())
    }
    /// Every input forces replacement: nothing changes in place.
    async fn modify(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        _args: &DbSnapshotArgs,
        _id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        Ok(())
    }
    async fn delete(&self, _ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        let rds = self.snap.aws.rds().await;
        if req.inputs.contains_key(DbSnapshotArgs::cluster) {
            rds.delete_db_cluster_snapshot()
                .db_cluster_snapshot_identifier(id)
                .send()
                .await
                .during(&format!("delete cluster snapshot {id}"))?;
        } else {
            rds.delete_db_snapshot()
                .db_snapshot_identifier(id)
                .send()
                .await
                .during(&format!("delete snapshot {id}"))?;
        }
        Ok(())
    }
}
