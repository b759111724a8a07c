//! Operations on running databases, as steps: reboot an instance or every instance of a cluster
//! (`aws.rds.reboot`, what pending-reboot parameters need), fail an Aurora cluster over to a named
//! reader (`aws.rds.failover`), and promote an Aurora replica cluster to a standalone cluster
//! (`aws.rds.promote_cluster`). Each reports progress while it waits and has a probe where the
//! effect can be seen, so a resumed apply does not repeat it.
//!
//! They must never act on a database that is not available (a call on a busy one waits first),
//! and the failover and the promotion must never be issued twice for one step.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_rds::types::DbCluster;

use super::cluster::{describe_db_instance, wait_status};
use super::{sdk_err, Aws};
use crate::dsl::{Declare, NodeKind, Output};
use crate::provider::{Ctx, Probe, ProviderError, Registry, Request, StepType};
use crate::value::{get_str, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.step(RebootType { aws: aws.clone() })
        .step(FailoverType { aws: aws.clone() })
        .step(PromoteClusterType { aws });
}

/// The cluster `id`, or None.
pub(super) async fn describe_cluster(
    aws: &Aws,
    id: &str,
) -> Result<Option<DbCluster>, ProviderError> {
    match aws
        .rds()
        .await
        .describe_db_clusters()
        .db_cluster_identifier(id)
        .send()
        .await
    {
        Ok(o) => Ok(o.db_clusters().first().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_db_cluster_not_found_fault()) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_err(&format!("describe cluster {id}"), e)),
    }
}

async fn cluster(aws: &Aws, id: &str) -> Result<DbCluster, ProviderError> {
    describe_cluster(aws, id)
        .await?
        .ok_or_else(|| ProviderError::new(format!("cluster {id} does not exist")))
}

/// (writer, readers) of a cluster, by instance identifier.
fn members(c: &DbCluster) -> (Option<String>, Vec<String>) {
    let mut writer = None;
    let mut readers = vec![];
    for m in c.db_cluster_members() {
        let id = m.db_instance_identifier().unwrap_or_default().to_string();
        if m.is_cluster_writer() == Some(true) {
            writer = Some(id);
        } else {
            readers.push(id);
        }
    }
    readers.sort();
    (writer, readers)
}

async fn wait_instance(aws: &Aws, ctx: &Ctx, node: &str, id: &str) -> Result<(), ProviderError> {
    wait_status(
        ctx,
        node,
        &format!("instance {id}"),
        || async {
            Ok(describe_db_instance(aws, id)
                .await?
                .map(|d| d.db_instance_status().unwrap_or_default().to_string()))
        },
        false,
    )
    .await
}

/// Waits until the cluster is available and `done` holds for it (`pending` names the wait).
async fn wait_cluster(
    aws: &Aws,
    ctx: &Ctx,
    node: &str,
    id: &str,
    pending: &str,
    done: impl Fn(&DbCluster) -> bool,
) -> Result<(), ProviderError> {
    let done = &done;
    wait_status(
        ctx,
        node,
        &format!("cluster {id}"),
        || async move {
            Ok(describe_cluster(aws, id)
                .await?
                .map(|c| match c.status().unwrap_or_default() {
                    "available" if !done(&c) => pending.to_string(),
                    s => s.to_string(),
                }))
        },
        false,
    )
    .await
}

/// Reboots an RDS instance, or every instance of an Aurora cluster (readers first, one at a time,
/// the writer last), waiting for each to be available again: how parameters applied
/// `pending-reboot` take effect.
#[derive(Debug, Clone)]
pub struct Reboot {
    inputs: Attrs,
}

impl Reboot {
    /// An instance (a handle's `identifier()`).
    pub fn instance(id: Output<String>) -> Self {
        Reboot {
            inputs: Attrs::from([("instance".to_string(), id.into())]),
        }
    }
    /// Every instance of a cluster (a cluster handle's `identifier()`).
    pub fn cluster(id: Output<String>) -> Self {
        Reboot {
            inputs: Attrs::from([("cluster".to_string(), id.into())]),
        }
    }
}

impl Declare for Reboot {
    const TYPE: &'static str = "aws.rds.reboot";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        self.inputs
    }
}

struct RebootType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for RebootType {
    fn type_name(&self) -> &'static str {
        "aws.rds.reboot"
    }
    fn service(&self) -> &'static str {
        "rds"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        if inputs.contains_key("cluster") == inputs.contains_key("instance") {
            vec!["a reboot is of one instance or one cluster".into()]
        } else {
            vec![]
        }
    }
    /// A second reboot is harmless: an interrupted one is run again.
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let order = match get_str(req.inputs, "cluster") {
            Some(id) => {
                let (writer, mut readers) = members(&cluster(&self.aws, id).await?);
                readers.extend(writer);
                readers
            }
            None => vec![get_str(req.inputs, "instance")
                .unwrap_or_default()
                .to_string()],
        };
        let rds = self.aws.rds().await;
        for id in &order {
            // Never on a busy instance: wait for it first.
            wait_instance(&self.aws, ctx, req.node, id).await?;
            ctx.report(req.node, &format!("rebooting instance {id}"));
            rds.reboot_db_instance()
                .db_instance_identifier(id)
                .send()
                .await
                .map_err(|e| sdk_err(&format!("reboot instance {id}"), e))?;
            wait_instance(&self.aws, ctx, req.node, id).await?;
        }
        Ok(Attrs::from([(
            "rebooted".to_string(),
            Value::Array(order.into_iter().map(Value::from).collect()),
        )]))
    }
}

/// Fails an Aurora cluster over: the named reader becomes the writer.
#[derive(Debug, Clone)]
pub struct Failover {
    inputs: Attrs,
}

impl Failover {
    /// Fails `cluster` over to the reader `to` (identifiers: handles' `identifier()`).
    pub fn cluster(cluster: Output<String>, to: Output<String>) -> Self {
        Failover {
            inputs: Attrs::from([
                ("cluster".to_string(), cluster.into()),
                ("to".to_string(), to.into()),
            ]),
        }
    }
}

impl Declare for Failover {
    const TYPE: &'static str = "aws.rds.failover";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        self.inputs
    }
}

struct FailoverType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for FailoverType {
    fn type_name(&self) -> &'static str {
        "aws.rds.failover"
    }
    fn service(&self) -> &'static str {
        "rds"
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let id = get_str(req.inputs, "cluster").unwrap_or_default();
        let to = get_str(req.inputs, "to").unwrap_or_default();
        let c = cluster(&self.aws, id).await?;
        let (writer, readers) = members(&c);
        if writer.as_deref() != Some(to) {
            if !readers.iter().any(|r| r == to) {
                return Err(ProviderError::with_fix(
                    format!("instance {to} is not a member of cluster {id}"),
                    "name one of the cluster's readers as the failover target",
                ));
            }
            wait_cluster(&self.aws, ctx, req.node, id, "", |_| true).await?;
            wait_instance(&self.aws, ctx, req.node, to).await?;
            ctx.report(req.node, &format!("failing cluster {id} over to {to}"));
            self.aws
                .rds()
                .await
                .failover_db_cluster()
                .db_cluster_identifier(id)
                .target_db_instance_identifier(to)
                .send()
                .await
                .map_err(|e| sdk_err(&format!("fail over cluster {id}"), e))?;
        }
        wait_cluster(&self.aws, ctx, req.node, id, "failover pending", |c| {
            members(c).0.as_deref() == Some(to)
        })
        .await?;
        Ok(Attrs::from([
            ("writer".to_string(), Value::from(to)),
            (
                "previous_writer".to_string(),
                writer.map(Value::from).unwrap_or(Value::Null),
            ),
        ]))
    }
    async fn probe(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let id = get_str(req.inputs, "cluster").unwrap_or_default();
        let to = get_str(req.inputs, "to").unwrap_or_default();
        Ok(Some(match describe_cluster(&self.aws, id).await? {
            Some(c) if c.status() == Some("available") && members(&c).0.as_deref() == Some(to) => {
                Probe::Done(Attrs::from([("writer".to_string(), Value::from(to))]))
            }
            _ => Probe::NotDone,
        }))
    }
}

/// Promotes an Aurora replica cluster (one made with `AuroraCluster::replica_of`) to a
/// standalone cluster that takes writes.
#[derive(Debug, Clone)]
pub struct PromoteCluster {
    inputs: Attrs,
}

impl PromoteCluster {
    /// The replica cluster (a cluster handle's `identifier()`).
    pub fn replica(cluster: Output<String>) -> Self {
        PromoteCluster {
            inputs: Attrs::from([("cluster".to_string(), cluster.into())]),
        }
    }
}

impl Declare for PromoteCluster {
    const TYPE: &'static str = "aws.rds.promote_cluster";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        self.inputs
    }
}

struct PromoteClusterType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for PromoteClusterType {
    fn type_name(&self) -> &'static str {
        "aws.rds.promote_cluster"
    }
    fn service(&self) -> &'static str {
        "rds"
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let id = get_str(req.inputs, "cluster").unwrap_or_default();
        let mut c = cluster(&self.aws, id).await?;
        let was = c.replication_source_identifier().map(String::from);
        if was.is_some() && c.status() != Some("available") {
            // Busy (a promotion issued by an interrupted run): wait, then look again.
            wait_cluster(&self.aws, ctx, req.node, id, "", |_| true).await?;
            c = cluster(&self.aws, id).await?;
        }
        if c.replication_source_identifier().is_some() {
            ctx.report(req.node, &format!("promoting cluster {id}"));
            self.aws
                .rds()
                .await
                .promote_read_replica_db_cluster()
                .db_cluster_identifier(id)
                .send()
                .await
                .map_err(|e| sdk_err(&format!("promote cluster {id}"), e))?;
        }
        wait_cluster(&self.aws, ctx, req.node, id, "promotion pending", |c| {
            c.replication_source_identifier().is_none()
        })
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
        let id = get_str(req.inputs, "cluster").unwrap_or_default();
        Ok(Some(match describe_cluster(&self.aws, id).await? {
            Some(c)
                if c.status() == Some("available")
                    && c.replication_source_identifier().is_none() =>
            {
                Probe::Done(Attrs::from([("promoted".to_string(), Value::from(id))]))
            }
            _ => Probe::NotDone,
        }))
    }
}
