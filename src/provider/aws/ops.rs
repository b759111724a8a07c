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
use crate::dsl::{Declare, Output};
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

/// The members of a cluster whose parameters wait for a reboot.
fn members_pending_reboot(c: &DbCluster) -> Vec<String> {
    c.db_cluster_members()
        .iter()
        .filter(|m| m.db_cluster_parameter_group_status() == Some("pending-reboot"))
        .filter_map(|m| m.db_instance_identifier().map(String::from))
        .collect()
}

/// Whether an instance's DB parameter group waits for a reboot.
async fn instance_pending_reboot(aws: &Aws, id: &str) -> Result<bool, ProviderError> {
    Ok(describe_db_instance(aws, id).await?.is_some_and(|d| {
        d.db_parameter_groups()
            .iter()
            .any(|g| g.parameter_apply_status() == Some("pending-reboot"))
    }))
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
    /// Reboot only instances whose parameters wait for a reboot (`pending-reboot`); the others
    /// are named and left running. With nothing pending the step is done without a call. Give
    /// the step a `.trigger(..)` on the pending-reboot parameters so a later change runs it again.
    pub fn only_pending(mut self) -> Self {
        self.inputs.insert("only_pending".into(), Value::Bool(true));
        self
    }
}

crate::declare!(Reboot, "aws.rds.reboot", Step);

struct RebootType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for RebootType {
    fn type_name(&self) -> &'static str {
        Reboot::TYPE
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
    /// With `only_pending`: done when nothing waits for a reboot.
    async fn probe(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        if req.inputs.get("only_pending").and_then(Value::as_bool) != Some(true) {
            return Ok(None);
        }
        let all = self.all(req).await?;
        Ok(Some(if self.pending(req, &all).await?.is_empty() {
            Probe::Done(Attrs::from([(
                "rebooted".to_string(),
                Value::Array(vec![]),
            )]))
        } else {
            Probe::NotDone
        }))
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let all = self.all(req).await?;
        let order = if req.inputs.get("only_pending").and_then(Value::as_bool) == Some(true) {
            let pending = self.pending(req, &all).await?;
            for id in all.iter().filter(|i| !pending.contains(i)) {
                ctx.report(
                    req.node,
                    &format!("instance {id}: parameters in sync, not rebooted"),
                );
            }
            pending
        } else {
            all
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

impl RebootType {
    /// The instances of the step, readers first and the writer last.
    async fn all(&self, req: &Request<'_>) -> Result<Vec<String>, ProviderError> {
        Ok(match get_str(req.inputs, "cluster") {
            Some(id) => {
                let (writer, mut readers) = members(&cluster(&self.aws, id).await?);
                readers.extend(writer);
                readers
            }
            None => vec![get_str(req.inputs, "instance")
                .unwrap_or_default()
                .to_string()],
        })
    }

    /// Those of `all` (from [`Self::all`]) whose parameters wait for a reboot, in that order.
    async fn pending(
        &self,
        req: &Request<'_>,
        all: &[String],
    ) -> Result<Vec<String>, ProviderError> {
        let pending: Vec<String> = match get_str(req.inputs, "cluster") {
            Some(id) => members_pending_reboot(&cluster(&self.aws, id).await?),
            None => {
                let id = get_str(req.inputs, "instance").unwrap_or_default();
                if instance_pending_reboot(&self.aws, id).await? {
                    vec![id.to_string()]
                } else {
                    vec![]
                }
            }
        };
        Ok(all
            .iter()
            .filter(|i| pending.contains(i))
            .cloned()
            .collect())
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

crate::declare!(Failover, "aws.rds.failover", Step);

struct FailoverType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for FailoverType {
    fn type_name(&self) -> &'static str {
        Failover::TYPE
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

crate::declare!(PromoteCluster, "aws.rds.promote_cluster", Step);

struct PromoteClusterType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for PromoteClusterType {
    fn type_name(&self) -> &'static str {
        PromoteCluster::TYPE
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
    use aws_smithy_types::body::SdkBody;

    /// moto reports every parameter group `in-sync`, so the reboot of only the members whose
    /// parameters wait for it is replayed against recorded RDS answers: the reader pending a
    /// reboot is rebooted (after waiting for it to be available), the writer in sync is not.
    #[tokio::test]
    async fn only_pending_reboots_the_members_waiting_for_it() {
        const NS: &str = "http://rds.amazonaws.com/doc/2014-10-31/";
        let answer = |body: String| {
            ReplayEvent::new(
                http::Request::builder()
                    .uri("https://rds.us-east-1.amazonaws.com/")
                    .body(SdkBody::empty())
                    .unwrap(),
                http::Response::builder()
                    .status(200)
                    .body(SdkBody::from(body))
                    .unwrap(),
            )
        };
        let member = |id: &str, writer: bool, status: &str| {
            format!("<DBClusterMember><DBInstanceIdentifier>{id}</DBInstanceIdentifier><IsClusterWriter>{writer}</IsClusterWriter><DBClusterParameterGroupStatus>{status}</DBClusterParameterGroupStatus></DBClusterMember>")
        };
        let cluster = || {
            answer(format!(
                "<DescribeDBClustersResponse xmlns=\"{NS}\"><DescribeDBClustersResult><DBClusters><DBCluster><DBClusterIdentifier>c</DBClusterIdentifier><Status>available</Status><DBClusterMembers>{}{}</DBClusterMembers></DBCluster></DBClusters></DescribeDBClustersResult></DescribeDBClustersResponse>",
                member("w", true, "in-sync"),
                member("r", false, "pending-reboot")
            ))
        };
        let instance = |status: &str| {
            answer(format!(
                "<DescribeDBInstancesResponse xmlns=\"{NS}\"><DescribeDBInstancesResult><DBInstances><DBInstance><DBInstanceIdentifier>r</DBInstanceIdentifier><DBInstanceStatus>{status}</DBInstanceStatus></DBInstance></DBInstances></DescribeDBInstancesResult></DescribeDBInstancesResponse>"
            ))
        };
        let reboot = answer(format!(
            "<RebootDBInstanceResponse xmlns=\"{NS}\"><RebootDBInstanceResult><DBInstance><DBInstanceIdentifier>r</DBInstanceIdentifier><DBInstanceStatus>rebooting</DBInstanceStatus></DBInstance></RebootDBInstanceResult></RebootDBInstanceResponse>"
        ));
        let http = StaticReplayClient::new(vec![
            cluster(),
            cluster(),
            instance("available"),
            reboot,
            instance("available"),
        ]);
        let conf = aws_sdk_rds::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_rds::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_rds::config::Credentials::new(
                "a", "b", None, None, "t",
            ))
            .http_client(http.clone())
            .build();
        let t = RebootType {
            aws: Aws::with_rds(aws_sdk_rds::Client::from_conf(conf)),
        };
        let inputs = Reboot::cluster(Output::from("c")).only_pending().inputs();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let mut ctx = Ctx::new(
            std::path::PathBuf::from("."),
            "p",
            "s",
            Arc::new(crate::value::EnvSecrets),
        );
        ctx.progress = Arc::new(move |_, m| log.lock().unwrap().push(m.to_string()));
        let req = Request {
            node: "reboot",
            deterministic_id: "p-s-reboot",
            inputs: &inputs,
        };
        let out = t.run(&ctx, &req).await.unwrap();
        assert_eq!(out.get("rebooted"), Some(&serde_json::json!(["r"])));
        let bodies: Vec<String> = http
            .actual_requests()
            .map(|r| {
                std::str::from_utf8(r.body().bytes().unwrap())
                    .unwrap()
                    .to_string()
            })
            .collect();
        let actions: Vec<&str> = bodies
            .iter()
            .map(|b| {
                b.split('&')
                    .find_map(|kv| kv.strip_prefix("Action="))
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            actions,
            vec![
                "DescribeDBClusters",
                "DescribeDBClusters",
                "DescribeDBInstances",
                "RebootDBInstance",
                "DescribeDBInstances"
            ]
        );
        assert!(
            bodies[3].contains("DBInstanceIdentifier=r"),
            "{}",
            bodies[3]
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter()
                .any(|m| m == "instance w: parameters in sync, not rebooted"),
            "{seen:?}"
        );
    }
}
