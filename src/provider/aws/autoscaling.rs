//! Reader autoscaling for an Aurora cluster (`aws.autoscaling.readers`): an Application Auto
//! Scaling target on `rds:cluster:ReadReplicaCount` with a minimum and a maximum, and a
//! target-tracking policy on the readers' average CPU (or connections) with cooldowns.
//!
//! The policy carries the node's deterministic name and is the mark that the target is ours (the
//! emulator, moto 5.2.5, keeps no tags on scalable targets, so a tag could not be tested): a
//! target registered by someone else (no policy of that name) is never taken over.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_applicationautoscaling::types::{
    MetricType, PolicyType, PredefinedMetricSpecification, ScalableDimension, ServiceNamespace,
    TargetTrackingScalingPolicyConfiguration,
};

use super::driver::{AwsError, AwsObject, Call, Driven, Found, Ownership};
use super::Aws;
use crate::dsl::Output;
use crate::provider::model::Model;
use crate::provider::{Ctx, Observed, ProviderError, Registry, Request};
use crate::value::{get_str, get_u64, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.resource(Driven(ReadersType { aws }));
}

crate::model! {
    /// What reader autoscaling is declared with.
    pub struct ReadersArgs {
        /// The cluster's identifier.
        cluster: String [replace],
        min: u64,
        max: u64,
        /// `cpu` or `connections`.
        metric: String,
        target: f64,
        scale_in_cooldown: u64,
        scale_out_cooldown: u64,
    }
}

crate::model! {
    /// What reader autoscaling reports.
    pub struct ReadersOut {
        /// The scalable target's resource id (`cluster:ID`).
        id: String,
        /// The name of our policy on it.
        policy: String,
        /// Whether our policy is there: the mark that the target is this node's.
        ours: bool,
    }
}

/// Readers scaled between `min` and `max` to keep a metric near a target.
#[derive(Debug, Clone)]
pub struct ReaderAutoscaling {
    inputs: Attrs,
}

impl ReaderAutoscaling {
    /// Autoscaling of the readers of `cluster` (a cluster handle's `identifier()`).
    pub fn of(cluster: Output<String>) -> Self {
        type A = ReadersArgs;
        ReaderAutoscaling {
            inputs: Attrs::from([
                (A::cluster.to_string(), cluster.into()),
                (A::min.to_string(), Value::from(1u64)),
                (A::max.to_string(), Value::from(2u64)),
                (A::metric.to_string(), Value::from("cpu")),
                (A::target.to_string(), Value::from(70.0)),
                (A::scale_in_cooldown.to_string(), Value::from(300u64)),
                (A::scale_out_cooldown.to_string(), Value::from(300u64)),
            ]),
        }
    }
    fn set(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.inputs.insert(k.into(), v.into());
        self
    }
    pub fn between(self, min: u32, max: u32) -> Self {
        self.set(ReadersArgs::min, min as u64)
            .set(ReadersArgs::max, max as u64)
    }
    /// Keep the readers' average CPU near `percent`.
    pub fn target_cpu(self, percent: f64) -> Self {
        self.set(ReadersArgs::metric, "cpu")
            .set(ReadersArgs::target, percent)
    }
    /// Keep the readers' average connections near `n`.
    pub fn target_connections(self, n: f64) -> Self {
        self.set(ReadersArgs::metric, "connections")
            .set(ReadersArgs::target, n)
    }
    pub fn cooldowns(self, scale_in_seconds: u32, scale_out_seconds: u32) -> Self {
        self.set(ReadersArgs::scale_in_cooldown, scale_in_seconds as u64)
            .set(ReadersArgs::scale_out_cooldown, scale_out_seconds as u64)
    }
}

crate::declare!(ReaderAutoscaling, ReadersType::TYPE, Resource);

struct ReadersType {
    aws: Arc<Aws>,
}

fn resource_id(inputs: &Attrs) -> String {
    format!(
        "cluster:{}",
        get_str(inputs, ReadersArgs::cluster).unwrap_or_default()
    )
}

impl ReadersType {
    /// Registers the target and puts our policy `policy` on it (both change in place).
    async fn put(&self, a: &ReadersArgs, rid: &str, policy: &str) -> Result<(), AwsError> {
        let c = self.aws.autoscaling().await;
        c.register_scalable_target()
            .service_namespace(ServiceNamespace::Rds)
            .resource_id(rid)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .min_capacity(a.min as i32)
            .max_capacity(a.max as i32)
            .send()
            .await
            .during(&format!("register scalable target {rid}"))?;
        let metric = match a.metric.as_str() {
            "connections" => MetricType::RdsReaderAverageDatabaseConnections,
            _ => MetricType::RdsReaderAverageCpuUtilization,
        };
        let config = TargetTrackingScalingPolicyConfiguration::builder()
            .target_value(a.target)
            .predefined_metric_specification(
                PredefinedMetricSpecification::builder()
                    .predefined_metric_type(metric)
                    .build()
                    .map_err(|e| ProviderError::new(e.to_string()))?,
            )
            .scale_in_cooldown(a.scale_in_cooldown as i32)
            .scale_out_cooldown(a.scale_out_cooldown as i32)
            .build()
            .map_err(|e| ProviderError::new(e.to_string()))?;
        c.put_scaling_policy()
            .policy_name(policy)
            .service_namespace(ServiceNamespace::Rds)
            .resource_id(rid)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .policy_type(PolicyType::TargetTrackingScaling)
            .target_tracking_scaling_policy_configuration(config)
            .send()
            .await
            .during(&format!("put scaling policy on {rid}"))?;
        Ok(())
    }

    /// The target and our policy as found; `None` when there is no target.
    async fn find(&self, rid: &str, policy: &str) -> Result<Option<Observed>, AwsError> {
        let c = self.aws.autoscaling().await;
        let t = c
            .describe_scalable_targets()
            .service_namespace(ServiceNamespace::Rds)
            .resource_ids(rid)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .send()
            .await
            .during("describe scalable targets")?;
        let Some(target) = t.scalable_targets().first() else {
            return Ok(None);
        };
        let p = c
            .describe_scaling_policies()
            .service_namespace(ServiceNamespace::Rds)
            .resource_id(rid)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .send()
            .await
            .during("describe scaling policies")?;
        let ours = p
            .scaling_policies()
            .iter()
            .find(|x| x.policy_name() == policy);
        let mut inputs = Attrs::from([
            (
                ReadersArgs::cluster.to_string(),
                Value::from(rid.trim_start_matches("cluster:")),
            ),
            (
                ReadersArgs::min.to_string(),
                Value::from(target.min_capacity() as u64),
            ),
            (
                ReadersArgs::max.to_string(),
                Value::from(target.max_capacity() as u64),
            ),
        ]);
        // The policy's half of the inputs only when our policy is there.
        if let Some(cfg) = ours.and_then(|x| x.target_tracking_scaling_policy_configuration()) {
            let metric = match cfg
                .predefined_metric_specification()
                .map(|m| m.predefined_metric_type())
            {
                Some(MetricType::RdsReaderAverageDatabaseConnections) => "connections",
                _ => "cpu",
            };
            let full = ReadersArgs {
                cluster: rid.trim_start_matches("cluster:").into(),
                min: target.min_capacity() as u64,
                max: target.max_capacity() as u64,
                metric: metric.into(),
                target: cfg.target_value(),
                scale_in_cooldown: cfg.scale_in_cooldown().unwrap_or(0) as u64,
                scale_out_cooldown: cfg.scale_out_cooldown().unwrap_or(0) as u64,
            };
            inputs = full.to_attrs();
        }
        Ok(Some(Observed {
            id: rid.into(),
            inputs,
            outputs: ReadersOut {
                id: rid.into(),
                policy: policy.into(),
                ours: ours.is_some(),
            }
            .to_attrs(),
        }))
    }
}

#[async_trait]
impl AwsObject for ReadersType {
    const TYPE: &'static str = "aws.autoscaling.readers";
    const SERVICE: &'static str = "applicationautoscaling";
    const WHAT: &'static str = "reader autoscaling";
    const OWNERSHIP: Ownership = Ownership::Mark(ReadersOut::ours);
    type Args = ReadersArgs;
    const NOT_FOUND: &'static [&'static str] = &[];
    /// A scalable target is known by its resource id, `cluster:ID`.
    fn name(&self, req: &Request<'_>) -> String {
        resource_id(req.inputs)
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        let (min, max) = (
            get_u64(inputs, ReadersArgs::min).unwrap_or(0),
            get_u64(inputs, ReadersArgs::max).unwrap_or(0),
        );
        let mut v = vec![];
        if min > max {
            v.push(format!("min {min} is above max {max}"));
        }
        if max > 15 {
            v.push(format!(
                "max {max}: an Aurora cluster has at most 15 readers"
            ));
        }
        v
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Found>, AwsError> {
        Ok(self.find(id, req.deterministic_id).await?.map(Found::ready))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        a: &ReadersArgs,
        rid: &str,
        _tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        self.put(a, rid, req.deterministic_id).await?;
        Ok(rid.to_string())
    }
    async fn modify(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        a: &ReadersArgs,
        id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        self.put(a, id, req.deterministic_id).await
    }
    /// Our policy, then the target.
    async fn delete(&self, _ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        let c = self.aws.autoscaling().await;
        let _ = c
            .delete_scaling_policy()
            .policy_name(req.deterministic_id)
            .service_namespace(ServiceNamespace::Rds)
            .resource_id(id)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .send()
            .await;
        if self.find(id, req.deterministic_id).await?.is_some() {
            c.deregister_scalable_target()
                .service_namespace(ServiceNamespace::Rds)
                .resource_id(id)
                .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
                .send()
                .await
                .during(&format!("deregister scalable target {id}"))?;
        }
        Ok(())
    }
}
