//! Reader autoscaling for an Aurora cluster (`aws.autoscaling.readers`): an Application Auto
//! Scaling target on `rds:cluster:ReadReplicaCount` with a minimum and a maximum, and a
//! target-tracking policy on the readers' average CPU (or connections) with cooldowns.
//!
//! The policy carries the node's deterministic name; a target registered by someone else (no
//! policy of that name) is never taken over.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_applicationautoscaling::types::{
    MetricType, PolicyType, PredefinedMetricSpecification, ScalableDimension, ServiceNamespace,
    TargetTrackingScalingPolicyConfiguration,
};

use super::Aws;
use crate::dsl::{Declare, NodeKind, Output};
use crate::provider::{Ctx, Observed, ProviderError, Registry, Request, ResourceType};
use crate::value::{get_str, get_u64, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.resource(ReadersType { aws });
}

/// Readers scaled between `min` and `max` to keep a metric near a target.
#[derive(Debug, Clone)]
pub struct ReaderAutoscaling {
    inputs: Attrs,
}

impl ReaderAutoscaling {
    /// Autoscaling of the readers of `cluster` (a cluster handle's `identifier()`).
    pub fn of(cluster: Output<String>) -> Self {
        ReaderAutoscaling {
            inputs: Attrs::from([
                ("cluster".to_string(), cluster.into()),
                ("min".to_string(), Value::from(1u64)),
                ("max".to_string(), Value::from(2u64)),
                ("metric".to_string(), Value::from("cpu")),
                ("target".to_string(), Value::from(70.0)),
                ("scale_in_cooldown".to_string(), Value::from(300u64)),
                ("scale_out_cooldown".to_string(), Value::from(300u64)),
            ]),
        }
    }
    fn set(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.inputs.insert(k.into(), v.into());
        self
    }
    pub fn between(self, min: u32, max: u32) -> Self {
        self.set("min", min as u64).set("max", max as u64)
    }
    /// Keep the readers' average CPU near `percent`.
    pub fn target_cpu(self, percent: f64) -> Self {
        self.set("metric", "cpu").set("target", percent)
    }
    /// Keep the readers' average connections near `n`.
    pub fn target_connections(self, n: f64) -> Self {
        self.set("metric", "connections").set("target", n)
    }
    pub fn cooldowns(self, scale_in_seconds: u32, scale_out_seconds: u32) -> Self {
        self.set("scale_in_cooldown", scale_in_seconds as u64)
            .set("scale_out_cooldown", scale_out_seconds as u64)
    }
}

impl Declare for ReaderAutoscaling {
    const TYPE: &'static str = "aws.autoscaling.readers";
    const KIND: NodeKind = NodeKind::Resource;
    fn inputs(self) -> Attrs {
        self.inputs
    }
}

struct ReadersType {
    aws: Arc<Aws>,
}

fn resource_id(inputs: &Attrs) -> String {
    format!("cluster:{}", get_str(inputs, "cluster").unwrap_or_default())
}

impl ReadersType {
    async fn put(&self, req: &Request<'_>) -> Result<(), ProviderError> {
        let c = self.aws.autoscaling().await;
        let i = req.inputs;
        let rid = resource_id(i);
        c.register_scalable_target()
            .service_namespace(ServiceNamespace::Rds)
            .resource_id(&rid)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .min_capacity(get_u64(i, "min").unwrap_or(1) as i32)
            .max_capacity(get_u64(i, "max").unwrap_or(1) as i32)
            .send()
            .await
            .map_err(|e| super::sdk_err(&format!("register scalable target {rid}"), e))?;
        let metric = match get_str(i, "metric") {
            Some("connections") => MetricType::RdsReaderAverageDatabaseConnections,
            _ => MetricType::RdsReaderAverageCpuUtilization,
        };
        let config = TargetTrackingScalingPolicyConfiguration::builder()
            .target_value(i.get("target").and_then(Value::as_f64).unwrap_or(70.0))
            .predefined_metric_specification(
                PredefinedMetricSpecification::builder()
                    .predefined_metric_type(metric)
                    .build()
                    .map_err(|e| ProviderError::new(e.to_string()))?,
            )
            .scale_in_cooldown(get_u64(i, "scale_in_cooldown").unwrap_or(300) as i32)
            .scale_out_cooldown(get_u64(i, "scale_out_cooldown").unwrap_or(300) as i32)
            .build()
            .map_err(|e| ProviderError::new(e.to_string()))?;
        c.put_scaling_policy()
            .policy_name(req.deterministic_id)
            .service_namespace(ServiceNamespace::Rds)
            .resource_id(&rid)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .policy_type(PolicyType::TargetTrackingScaling)
            .target_tracking_scaling_policy_configuration(config)
            .send()
            .await
            .map_err(|e| super::sdk_err(&format!("put scaling policy on {rid}"), e))?;
        Ok(())
    }

    /// The target and our policy, as inputs; `None` when either is missing.
    async fn find(&self, rid: &str, policy: &str) -> Result<Option<(Attrs, bool)>, ProviderError> {
        let c = self.aws.autoscaling().await;
        let t = c
            .describe_scalable_targets()
            .service_namespace(ServiceNamespace::Rds)
            .resource_ids(rid)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .send()
            .await
            .map_err(|e| super::sdk_err("describe scalable targets", e))?;
        let Some(target) = t.scalable_targets().first() else {
            return Ok(None);
        };
        let mut inputs = Attrs::from([
            (
                "cluster".to_string(),
                Value::from(rid.trim_start_matches("cluster:")),
            ),
            ("min".to_string(), Value::from(target.min_capacity() as u64)),
            ("max".to_string(), Value::from(target.max_capacity() as u64)),
        ]);
        let p = c
            .describe_scaling_policies()
            .service_namespace(ServiceNamespace::Rds)
            .resource_id(rid)
            .scalable_dimension(ScalableDimension::RdsClusterReadReplicaCount)
            .send()
            .await
            .map_err(|e| super::sdk_err("describe scaling policies", e))?;
        let ours = p
            .scaling_policies()
            .iter()
            .find(|x| x.policy_name() == policy);
        if let Some(cfg) = ours.and_then(|x| x.target_tracking_scaling_policy_configuration()) {
            inputs.insert("target".into(), Value::from(cfg.target_value()));
            let metric = match cfg
                .predefined_metric_specification()
                .map(|m| m.predefined_metric_type())
            {
                Some(MetricType::RdsReaderAverageDatabaseConnections) => "connections",
                _ => "cpu",
            };
            inputs.insert("metric".into(), Value::from(metric));
            if let Some(s) = cfg.scale_in_cooldown() {
                inputs.insert("scale_in_cooldown".into(), Value::from(s as u64));
            }
            if let Some(s) = cfg.scale_out_cooldown() {
                inputs.insert("scale_out_cooldown".into(), Value::from(s as u64));
            }
        }
        Ok(Some((inputs, ours.is_some())))
    }

    fn observed(rid: &str, policy: &str, inputs: Attrs, ours: bool) -> Observed {
        Observed {
            id: rid.into(),
            inputs,
            outputs: Attrs::from([
                ("id".to_string(), Value::from(rid)),
                ("policy".to_string(), Value::from(policy)),
                ("ours".to_string(), Value::Bool(ours)),
            ]),
        }
    }
}

#[async_trait]
impl ResourceType for ReadersType {
    fn type_name(&self) -> &'static str {
        "aws.autoscaling.readers"
    }
    fn service(&self) -> &'static str {
        "applicationautoscaling"
    }
    fn force_new(&self) -> &'static [&'static str] {
        &["cluster"]
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        let (min, max) = (
            get_u64(inputs, "min").unwrap_or(0),
            get_u64(inputs, "max").unwrap_or(0),
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
    fn id_for(&self, req: &Request<'_>) -> String {
        resource_id(req.inputs)
    }
    fn owned(&self, _ctx: &Ctx, _node: &str, found: &Observed) -> bool {
        found
            .outputs
            .get("ours")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
    async fn create(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError> {
        let rid = resource_id(req.inputs);
        if let Some((_, false)) = self.find(&rid, req.deterministic_id).await? {
            return Err(ProviderError::refused(
                format!("{rid} already has reader autoscaling that this plan did not set up"),
                "remove it, or adopt it with `plan import` under this node",
            ));
        }
        self.put(req).await?;
        let (inputs, ours) = self
            .find(&rid, req.deterministic_id)
            .await?
            .ok_or_else(|| ProviderError::new(format!("{rid}: the scalable target vanished")))?;
        Ok(Self::observed(&rid, req.deterministic_id, inputs, ours))
    }
    async fn read(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Observed>, ProviderError> {
        Ok(self
            .find(id, req.deterministic_id)
            .await?
            .map(|(inputs, ours)| Self::observed(id, req.deterministic_id, inputs, ours)))
    }
    async fn update(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        _id: &str,
        _changed: &[String],
    ) -> Result<Observed, ProviderError> {
        // Registering and putting again changes both in place.
        self.put(req).await?;
        let rid = resource_id(req.inputs);
        let (inputs, ours) = self
            .find(&rid, req.deterministic_id)
            .await?
            .ok_or_else(|| ProviderError::new(format!("{rid}: the scalable target vanished")))?;
        Ok(Self::observed(&rid, req.deterministic_id, inputs, ours))
    }
    async fn delete(&self, _ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), ProviderError> {
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
                .map_err(|e| super::sdk_err(&format!("deregister scalable target {id}"), e))?;
        }
        Ok(())
    }
}
