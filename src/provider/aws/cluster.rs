//! Aurora clusters and their instances (`aws.rds.cluster`, `aws.rds.cluster_instance`). A create
//! waits until the object is `available`, reporting each status change; updates go through the
//! modify calls with the plan's apply-immediately choice; a cluster's delete takes a final snapshot
//! unless the plan says otherwise, and refuses while deletion protection is on.
//!
//! The master password arrives revealed for the call only; it is never observed, stored or logged.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_rds::types::Tag;

use super::driver::{AwsError, AwsObject, Call, Driven, Found, Ownership, Status, Until};
use super::{sdk_err, tags, tags_value, Aws};
use crate::dsl::{Declare, Handle, NodeKind, Output};
use crate::provider::model::Model;
use crate::provider::{Ctx, Observed, ProviderError, Registry, Request};
use crate::value::{get_str, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.resource(Driven(ClusterType { aws: aws.clone() }))
        .resource(Driven(InstanceType { aws }));
}

/// A list of strings input, sorted (as the describe calls report them).
/// The ids sorted (a set's order is never drift).
pub(super) fn sorted(ids: &[String]) -> Vec<String> {
    let mut v = ids.to_vec();
    v.sort();
    v
}

pub(super) fn b(inputs: &Attrs, k: &str) -> Option<bool> {
    inputs.get(k).and_then(Value::as_bool)
}

pub(super) fn aws_tags(ctx: &Ctx, node: &str) -> Vec<Tag> {
    sdk_tags(&tags(&ctx.plan, &ctx.stack, node))
}

/// Tags as RDS takes them.
pub(super) fn sdk_tags(tags: &[(String, String)]) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub(super) fn tag_pairs(t: &[Tag]) -> Vec<(String, String)> {
    t.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The DB instance `id` (of a cluster or standalone), or None.
pub(super) async fn describe_db_instance(
    aws: &Aws,
    id: &str,
) -> Result<Option<aws_sdk_rds::types::DbInstance>, ProviderError> {
    match aws
        .rds()
        .await
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
    {
        Ok(o) => Ok(o.db_instances().first().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_db_instance_not_found_fault()) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_err(&format!("describe instance {id}"), e)),
    }
}

/// Whether `class` is orderable for `engine` (and `version`, when known) in the client's region,
/// as a check finding: `error` naming what is offered instead, or a `warning` when the region
/// lists nothing for the engine at all (the class could not be checked). Quiet when orderable.
pub(super) async fn orderable(
    aws: &Aws,
    engine: &str,
    version: Option<&str>,
    class: &str,
) -> Result<Option<Vec<(crate::provider::CheckLevel, String)>>, ProviderError> {
    let rds = aws.rds().await;
    // Up to `pages` pages of (class, version) offered for the engine (and version, class).
    let list = |version: Option<&str>, class: Option<&str>, pages: usize| {
        let (version, class) = (version.map(String::from), class.map(String::from));
        async move {
            let mut out: Vec<(String, String)> = vec![];
            let mut marker = None;
            for _ in 0..pages {
                let r = rds
                    .describe_orderable_db_instance_options()
                    .engine(engine)
                    .set_engine_version(version.clone())
                    .set_db_instance_class(class.clone())
                    .set_marker(marker.clone())
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("orderable options of {engine}"), e))?;
                out.extend(r.orderable_db_instance_options().iter().map(|o| {
                    (
                        o.db_instance_class().unwrap_or_default().to_string(),
                        o.engine_version().unwrap_or_default().to_string(),
                    )
                }));
                marker = r.marker().map(String::from);
                if marker.is_none() {
                    break;
                }
            }
            Ok::<_, ProviderError>(out)
        }
    };
    let of_version = match version {
        Some(v) => format!("{engine} {v}"),
        None => engine.to_string(),
    };
    let region = aws.region.clone().unwrap_or_else(|| "this region".into());
    // (The class filter is applied here too: moto 5.2.5 ignores it.)
    if list(version, Some(class), 5)
        .await?
        .iter()
        .any(|(c, _)| c == class)
    {
        return Ok(Some(vec![]));
    }
    let offered = list(version, None, 5).await?;
    if !offered.is_empty() {
        let mut classes: Vec<&str> = offered.iter().map(|(c, _)| c.as_str()).collect();
        classes.sort();
        classes.dedup();
        return Ok(Some(vec![(
            crate::provider::CheckLevel::Error,
            format!(
                "instance class {class} is not orderable for {of_version} in {region}; orderable classes: {}",
                classes.join(", ")
            ),
        )]));
    }
    if version.is_some() {
        let any = list(None, None, 5).await?;
        if !any.is_empty() {
            let mut versions: Vec<&str> = any.iter().map(|(_, v)| v.as_str()).collect();
            versions.sort();
            versions.dedup();
            return Ok(Some(vec![(
                crate::provider::CheckLevel::Error,
                format!(
                    "{of_version} is not offered in {region}; versions offered: {}",
                    versions.join(", ")
                ),
            )]));
        }
    }
    Ok(Some(vec![(
        crate::provider::CheckLevel::Warning,
        format!("{region} lists no orderable instance options for {engine}: class {class} could not be checked"),
    )]))
}

/// What a describe found, as the engine sees it: only the attributes the plan sets (AWS fills in
/// the rest; they are not drift), and the tags (`owned` reads them).
pub(super) fn observed(mut o: Observed, tags: &[(String, String)], declared: &Attrs) -> Observed {
    o.inputs.retain(|k, _| declared.contains_key(k));
    // Security groups are a set: the declared order is not drift.
    if let (Some(Value::Array(mut have)), Some(Value::Array(want))) = (
        o.inputs.get("security_groups").cloned(),
        declared.get("security_groups"),
    ) {
        let key = |v: &Value| v.as_str().unwrap_or_default().to_string();
        have.sort_by_key(key);
        let mut sorted = want.clone();
        sorted.sort_by_key(key);
        if have == sorted {
            o.inputs
                .insert("security_groups".into(), Value::Array(want.clone()));
        }
    }
    o.outputs.insert("tags".into(), tags_value(tags));
    o
}

/// Waits through the one poller ([`super::driver::poll`]) until `status` says `available` (or,
/// with `gone_ok`, until the object is gone), an RDS status naming a failure ending the wait.
pub(super) async fn wait_status<F, Fut>(
    ctx: &Ctx,
    node: &str,
    what: &str,
    mut status: F,
    gone_ok: bool,
) -> Result<(), ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, ProviderError>>,
{
    let until = if gone_ok { Until::Gone } else { Until::Ready };
    super::driver::poll(ctx, node, what, until, || {
        let s = status();
        async move { Ok(s.await?.map(|s| Status::rds(&s))) }
    })
    .await
}

crate::model! {
    /// What an Aurora cluster is declared with.
    pub struct ClusterArgs {
        /// The cluster identifier when not the node's deterministic one.
        name: Option<String> [replace],
        /// `aurora-postgresql` or `aurora-mysql`.
        engine: String [replace],
        engine_version: Option<String>,
        master_username: Option<String> [replace],
        master_password: Option<String> [sensitive],
        manage_master_user_password: Option<bool>,
        /// The ARN of the instance or cluster this one replicates, recorded at creation;
        /// promotion removes it on purpose.
        replication_source: Option<String> [replace, create_only],
        parameter_group: Option<String>,
        port: Option<u64>,
        subnet_group: Option<String> [replace],
        /// VPC security group ids, a set.
        security_groups: Option<Vec<String>>,
        backup_retention_period: Option<u64>,
        preferred_backup_window: Option<String>,
        preferred_maintenance_window: Option<String>,
        deletion_protection: Option<bool>,
        storage_encrypted: Option<bool> [replace],
        kms_key_id: Option<String> [replace],
        skip_final_snapshot: Option<bool>,
        apply_immediately: Option<bool>,
    }
}

crate::model! {
    /// What an Aurora cluster reports.
    pub struct ClusterOut {
        id: String,
        arn: String,
        endpoint: String,
        reader_endpoint: String,
        port: u64,
        status: String,
        /// The Secrets Manager secret RDS keeps the master password in (`managed_master` only).
        master_secret_arn: Option<String>,
    }
}

/// An Aurora cluster.
#[derive(Debug, Clone)]
pub struct AuroraCluster {
    inputs: Attrs,
}

impl AuroraCluster {
    fn new(engine: &str, version: &str) -> Self {
        type A = ClusterArgs;
        AuroraCluster {
            inputs: [
                (A::engine, Value::from(engine)),
                (A::engine_version, Value::from(version)),
                (A::backup_retention_period, Value::from(7u64)),
                (A::deletion_protection, Value::Bool(true)),
                (A::storage_encrypted, Value::Bool(true)),
                (A::skip_final_snapshot, Value::Bool(false)),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
        }
    }
    /// Aurora PostgreSQL of `version` (e.g. `15.4`).
    pub fn postgres(version: &str) -> Self {
        Self::new("aurora-postgresql", version)
    }
    /// Aurora MySQL of `version`.
    pub fn mysql(version: &str) -> Self {
        Self::new("aurora-mysql", version)
    }
    fn set(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.inputs.insert(k.into(), v.into());
        self
    }
    /// The cluster identifier (default: derived from plan, stack and node).
    pub fn named(self, id: &str) -> Self {
        self.set(ClusterArgs::name, id)
    }
    /// Master user with its password from a secret reference (`stack.secret(..)`).
    pub fn master(self, user: &str, password: Output<String>) -> Self {
        self.set(ClusterArgs::master_username, user)
            .set(ClusterArgs::master_password, password)
    }
    /// Master user whose password RDS manages in Secrets Manager.
    pub fn managed_master(self, user: &str) -> Self {
        self.set(ClusterArgs::master_username, user)
            .set(ClusterArgs::manage_master_user_password, true)
    }
    pub fn parameter_group(self, name: Output<String>) -> Self {
        self.set(ClusterArgs::parameter_group, name)
    }
    /// The DB subnet group (a subnet group handle's `group_name()`); changing it replaces the
    /// cluster.
    pub fn subnet_group(self, name: Output<String>) -> Self {
        self.set(ClusterArgs::subnet_group, name)
    }
    /// VPC security groups (security group handles' `group_id()`), changed in place.
    pub fn security_groups(self, ids: Vec<Output<String>>) -> Self {
        self.set(
            ClusterArgs::security_groups,
            Value::Array(ids.into_iter().map(Into::into).collect()),
        )
    }
    pub fn port(self, port: u16) -> Self {
        self.set(ClusterArgs::port, port as u64)
    }
    pub fn backups(self, retention_days: u32, window: &str) -> Self {
        self.set(ClusterArgs::backup_retention_period, retention_days as u64)
            .set(ClusterArgs::preferred_backup_window, window)
    }
    pub fn maintenance_window(self, window: &str) -> Self {
        self.set(ClusterArgs::preferred_maintenance_window, window)
    }
    pub fn deletion_protection(self, on: bool) -> Self {
        self.set(ClusterArgs::deletion_protection, on)
    }
    /// Encrypt storage with this KMS key (an ARN) instead of the account's default RDS key;
    /// changing it replaces the cluster.
    pub fn kms_key(self, key_arn: Output<String>) -> Self {
        self.set(ClusterArgs::storage_encrypted, true)
            .set(ClusterArgs::kms_key_id, key_arn)
    }
    /// Delete without a final snapshot (rehearsals; never the production target).
    pub fn skip_final_snapshot(self) -> Self {
        self.set(ClusterArgs::skip_final_snapshot, true)
    }
    /// Apply modifications now rather than in the maintenance window (default: the stack's
    /// `apply_immediately`, itself false unless set).
    pub fn apply_immediately(self, on: bool) -> Self {
        self.set(ClusterArgs::apply_immediately, on)
    }
    /// An Aurora replica of an RDS instance or an Aurora cluster (its ARN), kept in sync by RDS
    /// until a `PromoteCluster` step makes it standalone. The master user comes from the source.
    pub fn replica_of(self, source_arn: Output<String>) -> Self {
        self.set(ClusterArgs::replication_source, source_arn)
    }
}

crate::declare!(AuroraCluster, ClusterType::TYPE, Resource);

impl Handle<AuroraCluster> {
    pub fn identifier(&self) -> Output<String> {
        self.output(ClusterOut::id)
    }
    pub fn endpoint(&self) -> Output<String> {
        self.output(ClusterOut::endpoint)
    }
    pub fn reader_endpoint(&self) -> Output<String> {
        self.output(ClusterOut::reader_endpoint)
    }
    pub fn port(&self) -> Output<u64> {
        self.output(ClusterOut::port)
    }
    /// A connection to this cluster's writer endpoint for the data-plane steps (see
    /// `Handle<DbInstance>::connection`).
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
    pub fn arn(&self) -> Output<String> {
        self.output(ClusterOut::arn)
    }
    /// The Secrets Manager secret RDS keeps the master password in (`managed_master` only).
    pub fn master_secret_arn(&self) -> Output<String> {
        self.output(ClusterOut::master_secret_arn)
    }
}

struct ClusterType {
    aws: Arc<Aws>,
}

struct ClusterFound {
    status: String,
    observed: Observed,
    tags: Vec<(String, String)>,
    deletion_protection: bool,
}

impl ClusterType {
    async fn find(&self, id: &str) -> Result<Option<ClusterFound>, ProviderError> {
        let rds = self.aws.rds().await;
        let out = match rds
            .describe_db_clusters()
            .db_cluster_identifier(id)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_db_cluster_not_found_fault()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(sdk_err(&format!("describe cluster {id}"), e)),
        };
        let Some(c) = out.db_clusters().first() else {
            return Ok(None);
        };
        let mut groups: Vec<String> = c
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(String::from))
            .collect();
        groups.sort();
        let inputs = ClusterArgs {
            name: None,
            engine: c.engine().unwrap_or_default().into(),
            engine_version: c.engine_version().map(String::from),
            master_username: c.master_username().map(String::from),
            master_password: None,
            manage_master_user_password: Some(c.master_user_secret().is_some()),
            replication_source: c.replication_source_identifier().map(String::from),
            parameter_group: c.db_cluster_parameter_group().map(String::from),
            port: c.port().map(|p| p as u64),
            subnet_group: c.db_subnet_group().map(String::from),
            security_groups: Some(groups),
            backup_retention_period: c.backup_retention_period().map(|p| p as u64),
            preferred_backup_window: c.preferred_backup_window().map(String::from),
            preferred_maintenance_window: c.preferred_maintenance_window().map(String::from),
            deletion_protection: c.deletion_protection(),
            storage_encrypted: c.storage_encrypted(),
            kms_key_id: c.kms_key_id().map(String::from),
            skip_final_snapshot: None,
            apply_immediately: None,
        }
        .to_attrs();
        let outputs = ClusterOut {
            id: id.into(),
            arn: c.db_cluster_arn().unwrap_or_default().into(),
            endpoint: c.endpoint().unwrap_or_default().into(),
            reader_endpoint: c.reader_endpoint().unwrap_or_default().into(),
            port: c.port().unwrap_or(0) as u64,
            status: c.status().unwrap_or_default().into(),
            master_secret_arn: c
                .master_user_secret()
                .and_then(|m| m.secret_arn())
                .map(String::from),
        }
        .to_attrs();
        Ok(Some(ClusterFound {
            status: c.status().unwrap_or_default().to_string(),
            deletion_protection: c.deletion_protection().unwrap_or(false),
            tags: tag_pairs(c.tag_list()),
            observed: Observed {
                id: id.into(),
                inputs,
                outputs,
            },
        }))
    }
}

#[async_trait]
impl AwsObject for ClusterType {
    const TYPE: &'static str = "aws.rds.cluster";
    const SERVICE: &'static str = "rds";
    const WHAT: &'static str = "cluster";
    const NAMED: bool = true;
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = ClusterArgs;
    const NOT_FOUND: &'static [&'static str] = &["DBClusterNotFoundFault"];
    const EXISTS: &'static [&'static str] = &["DBClusterAlreadyExistsFault"];
    /// Its instances are deleted before it, its subnet and parameter groups after it.
    const WAIT_GONE: bool = true;
    /// A replica cluster of an instance of terabytes takes hours to create.
    fn default_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(24 * 3600)
    }
    /// Its identifier is known before it exists: the deterministic one.
    fn planned_outputs(&self, _inputs: &Attrs, id: &str) -> Attrs {
        Attrs::from([(ClusterOut::id.to_string(), Value::from(id))])
    }
    fn review(&self, _inputs: &Attrs) -> crate::provider::Review {
        crate::provider::Review {
            holds_data: true,
            ..Default::default()
        }
    }
    fn check_id(&self, id: &str) -> Result<(), String> {
        crate::provider::rds_identifier(id)
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        type O = ClusterOut;
        &[O::id, O::arn, O::endpoint, O::reader_endpoint]
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        type A = ClusterArgs;
        let mut v = vec![];
        if let Some(k) = get_str(inputs, A::kms_key_id) {
            if let Err(e) = super::rds::kms_key_arn(k) {
                v.push(e);
            }
        }
        let engine = get_str(inputs, A::engine).unwrap_or_default();
        if !matches!(engine, "aurora-postgresql" | "aurora-mysql") {
            v.push(format!(
                "engine `{engine}` is not an Aurora engine; use AuroraCluster::postgres or ::mysql"
            ));
        }
        if !inputs.contains_key(A::master_username) && !inputs.contains_key(A::replication_source) {
            v.push("a master user is required: .master(user, stack.secret(..)?) or .managed_master(user)".into());
        }
        if inputs.contains_key(A::master_password)
            && b(inputs, A::manage_master_user_password) == Some(true)
        {
            v.push("give either a master password or manage_master_user_password, not both".into());
        }
        v
    }
    fn validate_refs(
        &self,
        inputs: &Attrs,
        referenced: &dyn Fn(&str) -> Option<(String, Attrs)>,
    ) -> Vec<String> {
        super::rds::check_family(inputs, ClusterArgs::parameter_group, referenced)
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Found>, AwsError> {
        Ok(self.find(id).await?.map(|f| Found {
            status: Status::rds(&f.status),
            observed: observed(f.observed, &f.tags, req.inputs),
        }))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        a: &ClusterArgs,
        id: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let rds = self.aws.rds().await;
        rds.create_db_cluster()
            .db_cluster_identifier(id)
            .engine(&a.engine)
            .set_engine_version(a.engine_version.clone())
            .set_master_username(a.master_username.clone())
            .set_master_user_password(a.master_password.clone())
            .set_manage_master_user_password(a.manage_master_user_password)
            .set_db_cluster_parameter_group_name(a.parameter_group.clone())
            .set_port(a.port.map(|p| p as i32))
            .set_db_subnet_group_name(a.subnet_group.clone())
            .set_vpc_security_group_ids(a.security_groups.as_ref().map(|g| sorted(g)))
            .set_backup_retention_period(a.backup_retention_period.map(|p| p as i32))
            .set_preferred_backup_window(a.preferred_backup_window.clone())
            .set_preferred_maintenance_window(a.preferred_maintenance_window.clone())
            .set_deletion_protection(a.deletion_protection)
            .set_storage_encrypted(a.storage_encrypted)
            .set_kms_key_id(a.kms_key_id.clone())
            .set_replication_source_identifier(a.replication_source.clone())
            .set_tags(Some(sdk_tags(tags)))
            .send()
            .await
            .during(&format!("create cluster {id}"))?;
        Ok(id.to_string())
    }
    async fn modify(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        a: &ClusterArgs,
        id: &str,
        changed: &[String],
    ) -> Result<(), AwsError> {
        type A = ClusterArgs;
        let has = |k: &str| changed.iter().any(|c| c == k);
        let when = |k: &str, v: &Option<String>| v.clone().filter(|_| has(k));
        let rds = self.aws.rds().await;
        rds.modify_db_cluster()
            .db_cluster_identifier(id)
            .set_engine_version(when(A::engine_version, &a.engine_version))
            .set_allow_major_version_upgrade(has(A::engine_version).then_some(true))
            .set_db_cluster_parameter_group_name(when(A::parameter_group, &a.parameter_group))
            .set_port(a.port.filter(|_| has(A::port)).map(|p| p as i32))
            .set_vpc_security_group_ids(
                (a.security_groups.as_ref())
                    .filter(|_| has(A::security_groups))
                    .map(|g| sorted(g)),
            )
            .set_backup_retention_period(
                (a.backup_retention_period)
                    .filter(|_| has(A::backup_retention_period))
                    .map(|p| p as i32),
            )
            .set_preferred_backup_window(when(
                A::preferred_backup_window,
                &a.preferred_backup_window,
            ))
            .set_preferred_maintenance_window(when(
                A::preferred_maintenance_window,
                &a.preferred_maintenance_window,
            ))
            .set_deletion_protection(
                a.deletion_protection
                    .filter(|_| has(A::deletion_protection)),
            )
            .set_master_user_password(when(A::master_password, &a.master_password))
            .set_manage_master_user_password(
                (a.manage_master_user_password).filter(|_| has(A::manage_master_user_password)),
            )
            .apply_immediately(a.apply_immediately.unwrap_or(self.aws.apply_immediately))
            .send()
            .await
            .during(&format!("modify cluster {id}"))?;
        Ok(())
    }
    /// Refused while deletion protection is on; a final snapshot is taken unless the plan skips
    /// it, and listed with what the run kept.
    async fn delete(&self, ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        if self.find(id).await?.is_some_and(|f| f.deletion_protection) {
            return Err(ProviderError::refused(
                format!("cluster {id} has deletion protection on"),
                "set .deletion_protection(false) in the plan and apply, then destroy",
            )
            .into());
        }
        let skip = b(req.inputs, ClusterArgs::skip_final_snapshot).unwrap_or(false);
        let rds = self.aws.rds().await;
        let final_snapshot = (!skip).then(|| super::final_snapshot_name(id));
        rds.delete_db_cluster()
            .db_cluster_identifier(id)
            .skip_final_snapshot(skip)
            .set_final_db_snapshot_identifier(final_snapshot.clone())
            .send()
            .await
            .during(&format!("delete cluster {id}"))?;
        if let Some(s) = final_snapshot {
            ctx.keep(
                req.node,
                format!("final snapshot `{s}` of cluster `{id}`"),
                super::delete_snapshot_command(true, &s),
            );
        }
        Ok(())
    }
}

crate::model! {
    /// What an instance of an Aurora cluster is declared with.
    pub struct ClusterInstanceArgs {
        /// The cluster's identifier.
        cluster: String [replace],
        engine: String [replace],
        /// `db.r6g.large` and the like.
        class: String,
        promotion_tier: Option<u64>,
        performance_insights: Option<bool>,
        monitoring_interval: Option<u64>,
        apply_immediately: Option<bool>,
    }
}

crate::model! {
    /// What an instance of an Aurora cluster reports.
    pub struct ClusterInstanceOut {
        id: String,
        arn: String,
        endpoint: String,
        status: String,
    }
}

/// An instance of an Aurora cluster (the writer or a reader).
#[derive(Debug, Clone)]
pub struct ClusterInstance {
    inputs: Attrs,
}

impl ClusterInstance {
    /// An instance of class `class` in `cluster` (a cluster handle's `identifier()`).
    pub fn of(cluster: Output<String>, engine: &str, class: &str) -> Self {
        type A = ClusterInstanceArgs;
        ClusterInstance {
            inputs: Attrs::from([
                (A::cluster.to_string(), cluster.into()),
                (A::engine.to_string(), Value::from(engine)),
                (A::class.to_string(), Value::from(class)),
            ]),
        }
    }
    fn set(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.inputs.insert(k.into(), v.into());
        self
    }
    /// Failover order: 0 first.
    pub fn promotion_tier(self, tier: u32) -> Self {
        self.set(ClusterInstanceArgs::promotion_tier, tier as u64)
    }
    pub fn performance_insights(self, on: bool) -> Self {
        self.set(ClusterInstanceArgs::performance_insights, on)
    }
    /// Enhanced monitoring interval in seconds (0, 1, 5, 10, 15, 30, 60).
    pub fn monitoring_interval(self, seconds: u32) -> Self {
        self.set(ClusterInstanceArgs::monitoring_interval, seconds as u64)
    }
    /// Apply modifications now rather than in the maintenance window (default: the stack's
    /// `apply_immediately`, itself false unless set).
    pub fn apply_immediately(self, on: bool) -> Self {
        self.set(ClusterInstanceArgs::apply_immediately, on)
    }
}

impl Declare for ClusterInstance {
    const TYPE: &'static str = InstanceType::TYPE;
    const KIND: NodeKind = NodeKind::Resource;
    fn inputs(self) -> Attrs {
        self.inputs
    }
    /// The first instance declared for a cluster becomes its writer: the later ones follow it,
    /// so that AWS never makes whichever finishes first the writer.
    fn follows(&self, before: &[crate::dsl::NodeSpec]) -> Vec<String> {
        before
            .iter()
            .find(|n| {
                let key = ClusterInstanceArgs::cluster;
                n.type_name == Self::TYPE && n.inputs.get(key) == self.inputs.get(key)
            })
            .map(|first| vec![first.name.clone()])
            .unwrap_or_default()
    }
}

crate::outputs!(ClusterInstance {
    /// The instance identifier (a failover target, a reboot).
    identifier: String = ClusterInstanceOut::id,
    endpoint: String = ClusterInstanceOut::endpoint,
});

struct InstanceType {
    aws: Arc<Aws>,
}

struct InstanceFound {
    status: String,
    observed: Observed,
    tags: Vec<(String, String)>,
}

impl InstanceType {
    async fn find(&self, id: &str) -> Result<Option<InstanceFound>, ProviderError> {
        let Some(d) = describe_db_instance(&self.aws, id).await? else {
            return Ok(None);
        };
        let inputs = ClusterInstanceArgs {
            cluster: d.db_cluster_identifier().unwrap_or_default().into(),
            engine: d.engine().unwrap_or_default().into(),
            class: d.db_instance_class().unwrap_or_default().into(),
            promotion_tier: d.promotion_tier().map(|t| t as u64),
            performance_insights: d.performance_insights_enabled(),
            monitoring_interval: d.monitoring_interval().map(|m| m as u64),
            apply_immediately: None,
        };
        let outputs = ClusterInstanceOut {
            id: id.into(),
            arn: d.db_instance_arn().unwrap_or_default().into(),
            endpoint: (d.endpoint().and_then(|e| e.address()))
                .unwrap_or_default()
                .into(),
            status: d.db_instance_status().unwrap_or_default().into(),
        };
        Ok(Some(InstanceFound {
            status: outputs.status.clone(),
            tags: tag_pairs(d.tag_list()),
            observed: Observed {
                id: id.into(),
                inputs: inputs.to_attrs(),
                outputs: outputs.to_attrs(),
            },
        }))
    }
}

#[async_trait]
impl AwsObject for InstanceType {
    const TYPE: &'static str = "aws.rds.cluster_instance";
    const SERVICE: &'static str = "rds";
    const WHAT: &'static str = "DB instance";
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = ClusterInstanceArgs;
    const NOT_FOUND: &'static [&'static str] = &["DBInstanceNotFound", "DBInstanceNotFoundFault"];
    const EXISTS: &'static [&'static str] = &["DBInstanceAlreadyExists"];
    /// The cluster is deleted after its instances: only once they are gone.
    const WAIT_GONE: bool = true;
    /// Its identifier is known before it exists: the deterministic one.
    fn planned_outputs(&self, _inputs: &Attrs, id: &str) -> Attrs {
        Attrs::from([(ClusterInstanceOut::id.to_string(), Value::from(id))])
    }
    fn check_id(&self, id: &str) -> Result<(), String> {
        crate::provider::rds_identifier(id)
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        type O = ClusterInstanceOut;
        &[O::id, O::arn, O::endpoint]
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match get_str(inputs, ClusterInstanceArgs::class) {
            Some(c) if c.starts_with("db.") => vec![],
            Some(c) => vec![format!(
                "class `{c}` is not an RDS instance class (they start with `db.`)"
            )],
            None => vec!["input `class` is required".into()],
        }
    }
    async fn check(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
    ) -> Result<Option<Vec<(crate::provider::CheckLevel, String)>>, ProviderError> {
        type A = ClusterInstanceArgs;
        match (
            get_str(req.inputs, A::engine),
            get_str(req.inputs, A::class),
        ) {
            (Some(engine), Some(class)) => orderable(&self.aws, engine, None, class).await,
            _ => Ok(None),
        }
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Found>, AwsError> {
        Ok(self.find(id).await?.map(|f| Found {
            status: Status::rds(&f.status),
            observed: observed(f.observed, &f.tags, req.inputs),
        }))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        a: &ClusterInstanceArgs,
        id: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let rds = self.aws.rds().await;
        rds.create_db_instance()
            .db_instance_identifier(id)
            .db_cluster_identifier(&a.cluster)
            .db_instance_class(&a.class)
            .engine(&a.engine)
            .set_promotion_tier(a.promotion_tier.map(|t| t as i32))
            .set_enable_performance_insights(a.performance_insights)
            .set_monitoring_interval(a.monitoring_interval.map(|m| m as i32))
            .set_tags(Some(sdk_tags(tags)))
            .send()
            .await
            .during(&format!("create instance {id}"))?;
        Ok(id.to_string())
    }
    async fn modify(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        a: &ClusterInstanceArgs,
        id: &str,
        changed: &[String],
    ) -> Result<(), AwsError> {
        type A = ClusterInstanceArgs;
        let has = |k: &str| changed.iter().any(|c| c == k);
        let rds = self.aws.rds().await;
        rds.modify_db_instance()
            .db_instance_identifier(id)
            .set_db_instance_class(has(A::class).then(|| a.class.clone()))
            .set_promotion_tier(
                (a.promotion_tier)
                    .filter(|_| has(A::promotion_tier))
                    .map(|t| t as i32),
            )
            .set_enable_performance_insights(
                a.performance_insights
                    .filter(|_| has(A::performance_insights)),
            )
            .set_monitoring_interval(
                (a.monitoring_interval)
                    .filter(|_| has(A::monitoring_interval))
                    .map(|m| m as i32),
            )
            .apply_immediately(a.apply_immediately.unwrap_or(self.aws.apply_immediately))
            .send()
            .await
            .during(&format!("modify instance {id}"))?;
        Ok(())
    }
    /// Cluster instances have no snapshots of their own (the cluster's cover them).
    async fn delete(&self, _ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        self.aws
            .rds()
            .await
            .delete_db_instance()
            .db_instance_identifier(id)
            .skip_final_snapshot(true)
            .send()
            .await
            .during(&format!("delete instance {id}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ResourceType;
    use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
    use aws_smithy_types::body::SdkBody;

    /// Without `.after(&writer)`, a cluster's later instances follow its first (the writer);
    /// another cluster's first instance follows nothing.
    #[test]
    fn a_clusters_first_instance_is_its_writer_and_the_others_follow_it() {
        let p = crate::dsl::Plan::named("p", "t", "aws");
        let a = p.add("a", AuroraCluster::postgres("15.4"));
        let b = p.add("b", AuroraCluster::postgres("15.4"));
        let inst = |c: &Handle<AuroraCluster>| {
            ClusterInstance::of(c.identifier(), "aurora-postgresql", "db.r6g.large")
        };
        let writer = p.add("a-writer", inst(&a));
        p.add("a-reader-1", inst(&a));
        p.add("a-reader-2", inst(&a)).after(&writer);
        p.add("b-writer", inst(&b));
        p.add("b-reader", inst(&b));
        let spec = p.finish();
        let after = |n: &str| {
            spec.nodes
                .iter()
                .find(|x| x.name == n)
                .unwrap()
                .after
                .clone()
        };
        assert!(after("a-writer").is_empty());
        assert_eq!(after("a-reader-1"), ["a-writer"]);
        assert_eq!(after("a-reader-2"), ["a-writer"], "named once");
        assert!(after("b-writer").is_empty());
        assert_eq!(after("b-reader"), ["b-writer"]);
    }

    /// moto 5.2.5 models an Aurora replica of another cluster only (and insists on a master
    /// user), so the replica of an RDS PostgreSQL or MySQL instance, the usual first hop of a
    /// migration to Aurora (case 5's cluster), is checked by the exact request the SDK sends: the
    /// source instance's ARN as replication source, the engine, our tags, and no master user or
    /// password.
    #[tokio::test]
    async fn a_replica_of_an_rds_instance_sends_its_source_and_no_master_user() {
        for (cluster, source, engine) in [
            (
                AuroraCluster::postgres("15.4"),
                "arn:aws:rds:us-east-1:123456789012:db:legacy-pg",
                "aurora-postgresql",
            ),
            (
                AuroraCluster::mysql("8.0.mysql_aurora.3.05.2"),
                "arn:aws:rds:us-east-1:123456789012:db:shop-mysql",
                "aurora-mysql",
            ),
        ] {
            replica_request(cluster, source, engine).await;
        }
    }

    async fn replica_request(cluster: AuroraCluster, source: &str, engine: &str) {
        let answer = |status: u16, body: &str| {
            ReplayEvent::new(
                http::Request::builder()
                    .uri("https://rds.us-east-1.amazonaws.com/")
                    .body(SdkBody::empty())
                    .unwrap(),
                http::Response::builder()
                    .status(status)
                    .body(SdkBody::from(body.to_string()))
                    .unwrap(),
            )
        };
        let http = StaticReplayClient::new(vec![
            answer(
                404,
                r#"<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>Sender</Type><Code>DBClusterNotFoundFault</Code><Message>DBCluster t not found.</Message></Error><RequestId>1</RequestId></ErrorResponse>"#,
            ),
            // The reply does not matter here; a refusal ends the create after the request.
            answer(
                400,
                r#"<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>Sender</Type><Code>InvalidParameterCombination</Code><Message>stop here</Message></Error><RequestId>2</RequestId></ErrorResponse>"#,
            ),
        ]);
        let conf = aws_sdk_rds::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_rds::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_rds::config::Credentials::new(
                "a", "b", None, None, "t",
            ))
            .http_client(http.clone())
            .build();
        let t = Driven(ClusterType {
            aws: Aws::with_rds(aws_sdk_rds::Client::from_conf(conf)),
        });
        let inputs = cluster.replica_of(Output::from(source)).inputs();
        assert_eq!(
            t.validate(&inputs),
            Vec::<String>::new(),
            "no master needed"
        );
        let ctx = Ctx::new(
            std::path::PathBuf::from("."),
            "p",
            "s",
            Arc::new(crate::value::EnvSecrets),
        );
        let req = Request {
            node: "target",
            deterministic_id: "p-s-target",
            inputs: &inputs,
        };
        let e = t.create(&ctx, &req).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("InvalidParameterCombination: stop here"),
            "the service's code and message, not the raw response: {e}"
        );
        let bodies: Vec<String> = http
            .actual_requests()
            .map(|r| {
                std::str::from_utf8(r.body().bytes().unwrap())
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(bodies.len(), 2, "{bodies:?}");
        assert!(
            bodies[0].contains("Action=DescribeDBClusters"),
            "{}",
            bodies[0]
        );
        let create = &bodies[1];
        for want in [
            "Action=CreateDBCluster".to_string(),
            "DBClusterIdentifier=p-s-target".to_string(),
            format!("Engine={engine}"),
            format!("ReplicationSourceIdentifier={}", source.replace(':', "%3A")),
            "Tags.Tag.3.Key=cutover%3Anode".to_string(),
            "Tags.Tag.3.Value=target".to_string(),
        ] {
            assert!(create.contains(&want), "{want} missing from {create}");
        }
        assert!(!create.contains("MasterUsername"), "{create}");
        assert!(!create.contains("MasterUserPassword"), "{create}");
    }
}
