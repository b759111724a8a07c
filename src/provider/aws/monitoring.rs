//! SNS and CloudWatch: topics (`aws.sns.topic`) and their subscriptions (`aws.sns.subscription`),
//! metric alarms (`aws.cloudwatch.alarm`, with helpers for the alarms a migration watches), and
//! the bake step (`aws.cloudwatch.bake`): wait until a set of alarms has stayed OK for a period,
//! the usual gate before temporaries retire; and the metric wait (`aws.cloudwatch.wait_metric`):
//! until a metric's latest datapoint (after a given time) is at or under a bound, within a
//! deadline.
//!
//! Topics and alarms carry our tags; one that exists without them is never taken over (the error
//! names the `plan import` command). Subscriptions cannot be tagged: an existing identical
//! subscription is refused the same way, before SUBSCRIBE (which would silently return it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, StateValue, Statistic};

use super::driver::{AwsError, AwsObject, Call, Driven, Found, Ownership};
use super::{sdk_err, tags, tags_value, Aws};
use crate::dsl::{Declare, NodeKind, Output};
use crate::provider::model::Model;
use crate::provider::{Ctx, Observed, Probe, ProviderError, Registry, Request, StepType};
use crate::value::{get_str, get_u64, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.resource(Driven(TopicType { aws: aws.clone() }));
    r.resource(Driven(SubscriptionType { aws: aws.clone() }));
    r.resource(Driven(AlarmType { aws: aws.clone() }));
    r.step(BakeType { aws: aws.clone() });
    r.step(WaitMetricType { aws });
}

fn list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// SNS topic

crate::model! {
    /// What an SNS topic is declared with.
    pub struct TopicArgs {
        /// The topic's name when not the node's deterministic one.
        name: Option<String> [replace],
        display_name: Option<String>,
    }
}

crate::model! {
    /// What an SNS topic reports.
    pub struct TopicOut {
        arn: String,
        name: String,
        tags: Value,
    }
}

/// An SNS topic (named after the node unless given a name).
#[derive(Debug, Clone, Default)]
pub struct Topic {
    inputs: Attrs,
}

impl Topic {
    pub fn new() -> Self {
        Topic::default()
    }
    pub fn named(mut self, name: &str) -> Self {
        self.inputs
            .insert(TopicArgs::name.into(), Value::from(name));
        self
    }
    pub fn display_name(mut self, d: &str) -> Self {
        self.inputs
            .insert(TopicArgs::display_name.into(), Value::from(d));
        self
    }
}

crate::declare!(Topic, TopicType::TYPE, Resource);

crate::outputs!(Topic {
    arn: String = TopicOut::arn,
});

struct TopicType {
    aws: Arc<Aws>,
}

impl TopicType {
    async fn find_arn(&self, name: &str) -> Result<Option<String>, AwsError> {
        let c = self.aws.sns().await;
        let mut token = None;
        loop {
            let out = c
                .list_topics()
                .set_next_token(token)
                .send()
                .await
                .during("list topics")?;
            if let Some(t) = out
                .topics()
                .iter()
                .filter_map(|t| t.topic_arn())
                .find(|a| a.rsplit(':').next() == Some(name))
            {
                return Ok(Some(t.to_string()));
            }
            token = out.next_token().map(String::from);
            if token.is_none() {
                return Ok(None);
            }
        }
    }
}

#[async_trait]
impl AwsObject for TopicType {
    const TYPE: &'static str = "aws.sns.topic";
    const SERVICE: &'static str = "sns";
    const WHAT: &'static str = "SNS topic";
    const NAMED: bool = true;
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = TopicArgs;
    const NOT_FOUND: &'static [&'static str] = &["NotFound"];
    /// The topic as found; `name` among its inputs only when it is not the node's default. A
    /// create's intent knows it by name (its ARN comes back from the create): found by name then.
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        reference: &str,
    ) -> Result<Option<Found>, AwsError> {
        let arn = if reference.starts_with("arn:") {
            reference.to_string()
        } else {
            match self.find_arn(reference).await? {
                Some(a) => a,
                None => return Ok(None),
            }
        };
        let c = self.aws.sns().await;
        let attrs = c
            .get_topic_attributes()
            .topic_arn(&arn)
            .send()
            .await
            .during(&format!("describe topic {arn}"))?
            .attributes()
            .cloned()
            .unwrap_or_default();
        let t = c
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .during(&format!("tags of topic {arn}"))?;
        let found: Vec<(String, String)> = t
            .tags()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
        let name = arn.rsplit(':').next().unwrap_or_default().to_string();
        let inputs = TopicArgs {
            name: (name != req.deterministic_id).then(|| name.clone()),
            display_name: attrs.get("DisplayName").filter(|d| !d.is_empty()).cloned(),
        };
        Ok(Some(Found::ready(Observed {
            id: arn.clone(),
            inputs: inputs.to_attrs(),
            outputs: TopicOut {
                arn,
                name,
                tags: tags_value(&found),
            }
            .to_attrs(),
        })))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &TopicArgs,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let c = self.aws.sns().await;
        let mut b = c.create_topic().name(name);
        if let Some(d) = &args.display_name {
            b = b.attributes("DisplayName", d);
        }
        for (k, v) in tags {
            b = b.tags(
                aws_sdk_sns::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .map_err(|e| ProviderError::new(e.to_string()))?,
            );
        }
        let out = b.send().await.during(&format!("create topic {name}"))?;
        Ok(out.topic_arn().unwrap_or_default().to_string())
    }
    async fn modify(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &TopicArgs,
        id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        self.aws
            .sns()
            .await
            .set_topic_attributes()
            .topic_arn(id)
            .attribute_name("DisplayName")
            .attribute_value(args.display_name.clone().unwrap_or_default())
            .send()
            .await
            .during(&format!("update topic {id}"))?;
        Ok(())
    }
    async fn delete(&self, _ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        self.aws
            .sns()
            .await
            .delete_topic()
            .topic_arn(id)
            .send()
            .await
            .during(&format!("delete topic {id}"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// SNS subscription

crate::model! {
    /// What a subscription is declared with; AWS changes none of it in place.
    pub struct SubscriptionArgs {
        /// The topic's ARN.
        topic: String [replace],
        protocol: String [replace],
        endpoint: String [replace],
    }
}

crate::model! {
    /// What a subscription reports.
    pub struct SubscriptionOut {
        arn: String,
    }
}

/// A subscription of an endpoint to a topic: `email`, `https`, `sqs` (a queue ARN) or `lambda`
/// (a function ARN).
#[derive(Debug, Clone)]
pub struct Subscription {
    inputs: Attrs,
}

impl Subscription {
    pub fn to(topic: Output<String>, protocol: &str, endpoint: impl Into<Value>) -> Self {
        Subscription {
            inputs: Attrs::from([
                (SubscriptionArgs::topic.to_string(), topic.into()),
                (
                    SubscriptionArgs::protocol.to_string(),
                    Value::from(protocol),
                ),
                (SubscriptionArgs::endpoint.to_string(), endpoint.into()),
            ]),
        }
    }
}

crate::declare!(Subscription, SubscriptionType::TYPE, Resource);

struct SubscriptionType {
    aws: Arc<Aws>,
}

impl SubscriptionType {
    async fn existing(
        &self,
        topic: &str,
        protocol: &str,
        endpoint: &str,
    ) -> Result<Option<String>, AwsError> {
        let c = self.aws.sns().await;
        let mut token = None;
        loop {
            let out = c
                .list_subscriptions_by_topic()
                .topic_arn(topic)
                .set_next_token(token)
                .send()
                .await
                .during(&format!("list subscriptions of {topic}"))?;
            if let Some(s) = out
                .subscriptions()
                .iter()
                .find(|s| s.protocol() == Some(protocol) && s.endpoint() == Some(endpoint))
            {
                return Ok(s.subscription_arn().map(String::from));
            }
            token = out.next_token().map(String::from);
            if token.is_none() {
                return Ok(None);
            }
        }
    }
}

#[async_trait]
impl AwsObject for SubscriptionType {
    const TYPE: &'static str = "aws.sns.subscription";
    const SERVICE: &'static str = "sns";
    const WHAT: &'static str = "subscription";
    const OWNERSHIP: Ownership = Ownership::Untagged(
        "subscriptions carry no tags, and a create refuses an identical one that exists",
    );
    type Args = SubscriptionArgs;
    const NOT_FOUND: &'static [&'static str] = &["NotFound"];
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match get_str(inputs, SubscriptionArgs::protocol) {
            Some("email" | "email-json" | "https" | "http" | "sqs" | "lambda" | "sms") | None => {
                vec![]
            }
            Some(p) => vec![format!(
                "protocol `{p}`: use email, https, sqs or lambda (or email-json, http, sms)"
            )],
        }
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        reference: &str,
    ) -> Result<Option<Found>, AwsError> {
        let arn = if reference.starts_with("arn:") {
            reference.to_string()
        } else {
            let get = |k| get_str(req.inputs, k).unwrap_or_default();
            let (topic, protocol, endpoint) = (
                get(SubscriptionArgs::topic),
                get(SubscriptionArgs::protocol),
                get(SubscriptionArgs::endpoint),
            );
            match self.existing(topic, protocol, endpoint).await? {
                // An email subscription not yet confirmed has no ARN.
                Some(a) if a.starts_with("arn:") => a,
                _ => return Ok(None),
            }
        };
        let out = self
            .aws
            .sns()
            .await
            .get_subscription_attributes()
            .subscription_arn(&arn)
            .send()
            .await
            .during(&format!("describe subscription {arn}"))?;
        let a = out.attributes().cloned().unwrap_or_default();
        let get = |k: &str| a.get(k).cloned().unwrap_or_default();
        Ok(Some(Found::ready(Observed {
            id: arn.clone(),
            inputs: SubscriptionArgs {
                topic: get("TopicArn"),
                protocol: get("Protocol"),
                endpoint: get("Endpoint"),
            }
            .to_attrs(),
            outputs: SubscriptionOut { arn }.to_attrs(),
        })))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &SubscriptionArgs,
        _name: &str,
        _tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let out = self
            .aws
            .sns()
            .await
            .subscribe()
            .topic_arn(&args.topic)
            .protocol(&args.protocol)
            .endpoint(&args.endpoint)
            .return_subscription_arn(true)
            .send()
            .await
            .during(&format!("subscribe {} to {}", args.endpoint, args.topic))?;
        Ok(out.subscription_arn().unwrap_or_default().to_string())
    }
    /// Every input forces replacement; nothing to update in place.
    async fn modify(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        _args: &SubscriptionArgs,
        _id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        Ok(())
    }
    async fn delete(&self, _ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        self.aws
            .sns()
            .await
            .unsubscribe()
            .subscription_arn(id)
            .send()
            .await
            .during(&format!("unsubscribe {id}"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// CloudWatch metric alarm

crate::model! {
    /// What a metric alarm is declared with (PutMetricAlarm replaces all of it in place).
    pub struct AlarmArgs {
        /// The alarm's name when not the node's deterministic one.
        name: Option<String> [replace],
        namespace: String,
        metric: String,
        /// Dimension name to value (an identifier).
        dimensions: BTreeMap<String, String>,
        statistic: String,
        /// Seconds per period.
        period: u64,
        evaluation_periods: u64,
        /// `>`, `>=`, `<` or `<=`.
        comparison: String,
        threshold: f64,
        treat_missing_data: String,
        alarm_actions: Vec<String>,
        ok_actions: Vec<String>,
    }
}

crate::model! {
    /// What a metric alarm reports.
    pub struct AlarmOut {
        name: String,
        arn: String,
        tags: Value,
    }
}

/// A metric alarm. Helpers build the ones a migration watches; `notify` sends alarm and OK
/// notifications to a topic.
#[derive(Debug, Clone)]
pub struct Alarm {
    inputs: Attrs,
    /// Built by an `rds_*` helper: the dimension follows what the identifier refers to (a
    /// cluster's metrics are published under `DBClusterIdentifier`, an instance's under
    /// `DBInstanceIdentifier`).
    rds_target: bool,
}

/// The dimension key of an RDS metric on the object a value refers to: the cluster's when it is
/// an output of an `aws.rds.cluster`, else the instance's.
fn rds_dimension(v: &Value, before: &[crate::dsl::NodeSpec]) -> &'static str {
    let cluster = crate::value::as_ref(v)
        .and_then(|(node, _)| before.iter().find(|n| n.name == node))
        .is_some_and(|n| n.type_name == "aws.rds.cluster");
    if cluster {
        "DBClusterIdentifier"
    } else {
        "DBInstanceIdentifier"
    }
}

impl Alarm {
    /// `metric` of `namespace` with `dimensions`, `statistic` over `period` seconds, in alarm when
    /// `comparison` (`>`, `>=`, `<`, `<=`) `threshold` for `evaluation_periods` periods.
    pub fn metric(
        namespace: &str,
        metric: &str,
        dimensions: &[(&str, Value)],
        comparison: &str,
        threshold: f64,
    ) -> Self {
        let dims: serde_json::Map<String, Value> = dimensions
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        type A = AlarmArgs;
        Alarm {
            inputs: [
                (A::namespace, Value::from(namespace)),
                (A::metric, Value::from(metric)),
                (A::dimensions, Value::Object(dims)),
                (A::statistic, Value::from("Average")),
                (A::period, Value::from(60u64)),
                (A::evaluation_periods, Value::from(3u64)),
                (A::comparison, Value::from(comparison)),
                (A::threshold, Value::from(threshold)),
                (A::treat_missing_data, Value::from("missing")),
                (A::alarm_actions, Value::Array(vec![])),
                (A::ok_actions, Value::Array(vec![])),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
            rds_target: false,
        }
    }

    /// An RDS metric of an instance or a cluster (`instance.identifier()`,
    /// `cluster.identifier()`, or an instance's name): the dimension is chosen when the alarm
    /// is declared, by the node the identifier refers to.
    fn rds(metric: &str, target: Value, threshold: f64) -> Self {
        let mut a = Alarm::metric(
            "AWS/RDS",
            metric,
            &[("DBInstanceIdentifier", target)],
            ">",
            threshold,
        );
        a.rds_target = true;
        a
    }
    /// An RDS instance's or cluster's CPU above `percent` (80 in the cases).
    pub fn rds_cpu_above(target: impl Into<Value>, percent: f64) -> Self {
        Alarm::rds("CPUUtilization", target.into(), percent)
    }
    /// An RDS instance's or cluster's connections above `n` (40 in the cases).
    pub fn rds_connections_above(target: impl Into<Value>, n: f64) -> Self {
        Alarm::rds("DatabaseConnections", target.into(), n)
    }
    /// An RDS instance's or cluster's read latency above `seconds` (0.2 in the cases).
    pub fn rds_read_latency_above(target: impl Into<Value>, seconds: f64) -> Self {
        Alarm::rds("ReadLatency", target.into(), seconds)
    }
    /// A DMS task's CDC latency at the target above `seconds` (300 in the cases).
    pub fn dms_cdc_latency_above(
        instance: impl Into<Value>,
        task: impl Into<Value>,
        seconds: f64,
    ) -> Self {
        Alarm::metric(
            "AWS/DMS",
            "CDCLatencyTarget",
            &[
                ("ReplicationInstanceIdentifier", instance.into()),
                ("ReplicationTaskIdentifier", task.into()),
            ],
            ">",
            seconds,
        )
    }
    fn set(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.inputs.insert(k.into(), v.into());
        self
    }
    pub fn named(self, name: &str) -> Self {
        self.set(AlarmArgs::name, name)
    }
    pub fn statistic(self, s: &str) -> Self {
        self.set(AlarmArgs::statistic, s)
    }
    /// `period` seconds, in alarm after `evaluation_periods` periods beyond the threshold.
    pub fn over(self, period: u64, evaluation_periods: u64) -> Self {
        self.set(AlarmArgs::period, period)
            .set(AlarmArgs::evaluation_periods, evaluation_periods)
    }
    /// `missing`, `notBreaching`, `breaching` or `ignore`.
    pub fn missing_data(self, treatment: &str) -> Self {
        self.set(AlarmArgs::treat_missing_data, treatment)
    }
    /// Alarm and OK notifications to `topic` (a topic's `arn()`).
    pub fn notify(mut self, topic: Output<String>) -> Self {
        let v: Value = topic.into();
        for k in [AlarmArgs::alarm_actions, AlarmArgs::ok_actions] {
            if let Some(Value::Array(a)) = self.inputs.get_mut(k) {
                a.push(v.clone());
            }
        }
        self
    }
}

impl Declare for Alarm {
    const TYPE: &'static str = AlarmType::TYPE;
    const KIND: NodeKind = NodeKind::Resource;
    fn inputs(self) -> Attrs {
        self.inputs
    }
    fn inputs_given(mut self, before: &[crate::dsl::NodeSpec]) -> Attrs {
        if self.rds_target {
            if let Some(Value::Object(dims)) = self.inputs.get_mut(AlarmArgs::dimensions) {
                if let Some(v) = dims.remove("DBInstanceIdentifier") {
                    dims.insert(rds_dimension(&v, before).to_string(), v);
                }
            }
        }
        self.inputs
    }
}

crate::outputs!(Alarm {
    /// The alarm's name (what a bake step watches).
    alarm_name: String = AlarmOut::name,
});

fn comparison(s: &str) -> Result<ComparisonOperator, String> {
    Ok(match s {
        ">" => ComparisonOperator::GreaterThanThreshold,
        ">=" => ComparisonOperator::GreaterThanOrEqualToThreshold,
        "<" => ComparisonOperator::LessThanThreshold,
        "<=" => ComparisonOperator::LessThanOrEqualToThreshold,
        other => return Err(format!("comparison `{other}`: use >, >=, < or <=")),
    })
}

fn comparison_str(c: &ComparisonOperator) -> &'static str {
    match c {
        ComparisonOperator::GreaterThanThreshold => ">",
        ComparisonOperator::GreaterThanOrEqualToThreshold => ">=",
        ComparisonOperator::LessThanThreshold => "<",
        ComparisonOperator::LessThanOrEqualToThreshold => "<=",
        _ => "?",
    }
}

struct AlarmType {
    aws: Arc<Aws>,
}

impl AlarmType {
    /// The alarm as found; `name` among its inputs only when it is not the node's default.
    async fn observe(&self, name: &str, default: &str) -> Result<Option<Observed>, AwsError> {
        let c = self.aws.cloudwatch().await;
        let out = c
            .describe_alarms()
            .alarm_names(name)
            .send()
            .await
            .during(&format!("describe alarm {name}"))?;
        let Some(a) = out.metric_alarms().first() else {
            return Ok(None);
        };
        let arn = a.alarm_arn().unwrap_or_default().to_string();
        let found: Vec<(String, String)> = if arn.is_empty() {
            vec![]
        } else {
            c.list_tags_for_resource()
                .resource_arn(&arn)
                .send()
                .await
                .during(&format!("tags of alarm {name}"))?
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_string(),
                        t.value().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        let inputs = AlarmArgs {
            name: (name != default).then(|| name.to_string()),
            namespace: a.namespace().unwrap_or_default().into(),
            metric: a.metric_name().unwrap_or_default().into(),
            dimensions: a
                .dimensions()
                .iter()
                .map(|d| {
                    (
                        d.name().unwrap_or_default().to_string(),
                        d.value().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            statistic: a.statistic().map(|s| s.as_str()).unwrap_or_default().into(),
            period: a.period().unwrap_or(0) as u64,
            evaluation_periods: a.evaluation_periods().unwrap_or(0) as u64,
            comparison: a
                .comparison_operator()
                .map(comparison_str)
                .unwrap_or("?")
                .into(),
            threshold: a.threshold().unwrap_or(0.0),
            treat_missing_data: a.treat_missing_data().unwrap_or("missing").into(),
            alarm_actions: a.alarm_actions().to_vec(),
            ok_actions: a.ok_actions().to_vec(),
        };
        Ok(Some(Observed {
            id: name.to_string(),
            inputs: inputs.to_attrs(),
            outputs: AlarmOut {
                name: name.into(),
                arn,
                tags: tags_value(&found),
            }
            .to_attrs(),
        }))
    }

    /// PutMetricAlarm: creates the alarm, or replaces its whole definition in place (AWS ignores
    /// the tags of a put on an existing alarm).
    async fn put(
        &self,
        a: &AlarmArgs,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<(), AwsError> {
        let mut b = self
            .aws
            .cloudwatch()
            .await
            .put_metric_alarm()
            .alarm_name(name)
            .namespace(&a.namespace)
            .metric_name(&a.metric)
            .statistic(Statistic::from(a.statistic.as_str()))
            .period(a.period as i32)
            .evaluation_periods(a.evaluation_periods as i32)
            .threshold(a.threshold)
            .comparison_operator(comparison(&a.comparison).map_err(ProviderError::new)?)
            .treat_missing_data(&a.treat_missing_data)
            .set_alarm_actions(Some(a.alarm_actions.clone()))
            .set_ok_actions(Some(a.ok_actions.clone()));
        for (k, v) in &a.dimensions {
            b = b.dimensions(Dimension::builder().name(k).value(v).build());
        }
        for (k, v) in tags {
            b = b.tags(
                aws_sdk_cloudwatch::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build(),
            );
        }
        b.send().await.during(&format!("put alarm {name}"))?;
        Ok(())
    }
}

#[async_trait]
impl AwsObject for AlarmType {
    const TYPE: &'static str = "aws.cloudwatch.alarm";
    const SERVICE: &'static str = "cloudwatch";
    const WHAT: &'static str = "alarm";
    const NAMED: bool = true;
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = AlarmArgs;
    const NOT_FOUND: &'static [&'static str] = &["ResourceNotFound"];
    /// An RDS dimension must name an object the plan knows (a node, by a reference to it or by
    /// its identifier, or a look-up such as `ExistingInstance`), of the kind whose metrics are
    /// published under that dimension: an instance dimension on a cluster's identifier, or one
    /// naming nothing the plan knows, would never see a datapoint.
    fn validate_refs(
        &self,
        inputs: &Attrs,
        referenced: &dyn Fn(&str) -> Option<(String, Attrs)>,
    ) -> Vec<String> {
        let Some(dims) = inputs.get(AlarmArgs::dimensions).and_then(Value::as_object) else {
            return vec![];
        };
        let mut out = vec![];
        for (key, value) in dims {
            let rds = matches!(key.as_str(), "DBInstanceIdentifier" | "DBClusterIdentifier");
            let Some((t, _)) = referenced(&format!("{}.{key}", AlarmArgs::dimensions)) else {
                if rds {
                    out.push(format!(
                        "dimension `{key}` = {} names no node of this plan and no look-up: the alarm would watch an object the plan does not know, perhaps never seeing a datapoint; use the node's `identifier()`, or `ExistingInstance::find(..).identifier()` for an instance the plan does not own",
                        crate::value::display(value)
                    ));
                }
                continue;
            };
            let cluster = t == "aws.rds.cluster";
            let instance = t == "aws.rds.instance"
                || t == "aws.rds.cluster_instance"
                || t == "aws.rds.existing_instance";
            let wrong = match key.as_str() {
                "DBInstanceIdentifier" => cluster.then_some("DBClusterIdentifier"),
                "DBClusterIdentifier" => instance.then_some("DBInstanceIdentifier"),
                _ => None,
            };
            if let Some(right) = wrong {
                out.push(format!(
                    "dimension `{key}` names an identifier of a `{t}`, whose metrics are published under `{right}`: the alarm would never see a datapoint; use `{right}` (the `Alarm::rds_*` helpers choose it)"
                ));
            }
        }
        out
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        let mut v = vec![];
        if let Some(c) = get_str(inputs, AlarmArgs::comparison) {
            if let Err(e) = comparison(c) {
                v.push(e);
            }
        }
        if let Some(t) = get_str(inputs, AlarmArgs::treat_missing_data) {
            if !["missing", "notBreaching", "breaching", "ignore"].contains(&t) {
                v.push(format!(
                    "missing-data treatment `{t}`: use missing, notBreaching, breaching or ignore"
                ));
            }
        }
        if let Some(p) = get_u64(inputs, AlarmArgs::period) {
            if p < 10 || (p > 30 && p % 60 != 0) {
                v.push(format!(
                    "period {p} s: use 10, 20, 30 or a multiple of 60 seconds"
                ));
            }
        }
        v
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        name: &str,
    ) -> Result<Option<Found>, AwsError> {
        Ok(self
            .observe(name, req.deterministic_id)
            .await?
            .map(Found::ready))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &AlarmArgs,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        self.put(args, name, tags).await?;
        Ok(name.to_string())
    }
    async fn modify(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        args: &AlarmArgs,
        id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        self.put(args, id, &tags(&ctx.plan, &ctx.stack, req.node))
            .await
    }
    async fn delete(&self, _ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        self.aws
            .cloudwatch()
            .await
            .delete_alarms()
            .alarm_names(id)
            .send()
            .await
            .during(&format!("delete alarm {id}"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The bake step

/// Waits until every alarm of `alarms` has been OK for `seconds` without a break. An alarm in
/// ALARM ends the step with an error naming it; INSUFFICIENT_DATA restarts the count.
#[derive(Debug, Clone)]
pub struct Bake {
    inputs: Attrs,
}

impl Bake {
    pub fn alarms(alarms: Vec<Output<String>>, seconds: u64) -> Self {
        Bake {
            inputs: Attrs::from([
                (
                    "alarms".to_string(),
                    Value::Array(alarms.into_iter().map(Into::into).collect()),
                ),
                ("seconds".to_string(), Value::from(seconds)),
                ("poll_ms".to_string(), Value::from(30_000u64)),
            ]),
        }
    }
    /// Count the bake from this time (RFC 3339, e.g. a flip's `flipped_at`) at the earliest, so a
    /// bake interrupted by a crash resumes instead of starting over.
    pub fn since(mut self, at: impl Into<Value>) -> Self {
        self.inputs.insert("since".into(), at.into());
        self
    }
    /// How often the alarms are read (default 30 s).
    pub fn poll_ms(mut self, ms: u64) -> Self {
        self.inputs.insert("poll_ms".into(), Value::from(ms));
        self
    }
}

crate::declare!(Bake, "aws.cloudwatch.bake", Step);

struct BakeType {
    aws: Arc<Aws>,
}

/// Where a bake stands.
enum Baked {
    /// All OK since this time (seconds since the epoch).
    OkSince(f64),
    Waiting(String),
    Failed(String),
}

impl BakeType {
    async fn look(&self, names: &[String]) -> Result<Baked, ProviderError> {
        let out = self
            .aws
            .cloudwatch()
            .await
            .describe_alarms()
            .set_alarm_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_err("describe alarms", e))?;
        let found: BTreeMap<&str, _> = out
            .metric_alarms()
            .iter()
            .map(|a| (a.alarm_name().unwrap_or_default(), a))
            .collect();
        let mut since = 0f64;
        let mut waiting = vec![];
        for n in names {
            let Some(a) = found.get(n.as_str()) else {
                return Ok(Baked::Failed(format!("alarm `{n}` does not exist")));
            };
            match a.state_value() {
                Some(StateValue::Alarm) => {
                    return Ok(Baked::Failed(format!(
                        "alarm `{n}` is in ALARM: {}",
                        a.state_reason().unwrap_or("no reason given")
                    )))
                }
                Some(StateValue::Ok) => {
                    let t = a
                        .state_updated_timestamp()
                        .map(|t| t.as_secs_f64())
                        .unwrap_or(0.0);
                    since = since.max(t);
                }
                other => waiting.push(format!(
                    "`{n}` is {}",
                    other.map(|s| s.as_str()).unwrap_or("in no state")
                )),
            }
        }
        Ok(if waiting.is_empty() {
            Baked::OkSince(since)
        } else {
            Baked::Waiting(waiting.join(", "))
        })
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn since_input(inputs: &Attrs) -> Option<f64> {
    get_str(inputs, "since")
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

#[async_trait]
impl StepType for BakeType {
    fn review(&self, inputs: &Attrs) -> crate::provider::Review {
        crate::provider::Review {
            guards: vec![format!(
                "{} alarm(s) OK for {} min",
                inputs
                    .get("alarms")
                    .and_then(Value::as_array)
                    .map_or(0, |a| a.len()),
                get_u64(inputs, "seconds").unwrap_or(0) / 60
            )],
            ..Default::default()
        }
    }
    fn type_name(&self) -> &'static str {
        Bake::TYPE
    }
    fn service(&self) -> &'static str {
        "cloudwatch"
    }
    /// The bake's period, and the usual hour beyond it for the alarms to settle: a bake longer
    /// than an hour never gives up before it could pass.
    fn timeout_for(&self, inputs: &Attrs) -> std::time::Duration {
        std::time::Duration::from_secs(get_u64(inputs, "seconds").unwrap_or(0))
            + crate::provider::DEFAULT_TIMEOUT
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        if inputs
            .get("alarms")
            .and_then(Value::as_array)
            .is_some_and(|a| a.is_empty())
        {
            vec!["a bake needs at least one alarm".into()]
        } else {
            vec![]
        }
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let names = list(req.inputs.get("alarms"));
        let period = get_u64(req.inputs, "seconds").unwrap_or(0) as f64;
        let poll = Duration::from_millis(get_u64(req.inputs, "poll_ms").unwrap_or(30_000));
        let start = since_input(req.inputs).unwrap_or_else(now_secs);
        let mut last = String::new();
        loop {
            let msg = match self.look(&names).await? {
                Baked::Failed(why) => {
                    return Err(ProviderError::new(format!(
                    "the bake failed: {why}; investigate, then run it again with `--replace {}`",
                    req.node
                )))
                }
                Baked::Waiting(why) => format!("waiting: {why}"),
                Baked::OkSince(t) => {
                    let ok_for = now_secs() - t.max(start);
                    if ok_for >= period {
                        return Ok(Attrs::from([
                            (
                                "baked_at".to_string(),
                                Value::from(
                                    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                                        .to_string(),
                                ),
                            ),
                            ("alarms".to_string(), serde_json::json!(names)),
                        ]));
                    }
                    format!(
                        "{} alarm(s) OK for {:.0} s of {:.0} s",
                        names.len(),
                        ok_for.max(0.0),
                        period
                    )
                }
            };
            if msg != last {
                ctx.report(req.node, &msg);
                last = msg;
            }
            tokio::time::sleep(poll).await;
        }
    }
    async fn probe(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        // Only a bake counted from a recorded time can be judged done after a crash.
        let Some(start) = since_input(req.inputs) else {
            return Ok(Some(Probe::NotDone));
        };
        let names = list(req.inputs.get("alarms"));
        let period = get_u64(req.inputs, "seconds").unwrap_or(0) as f64;
        Ok(Some(match self.look(&names).await? {
            Baked::OkSince(t) if now_secs() - t.max(start) >= period => {
                Probe::Done(Attrs::from([(
                    "alarms".to_string(),
                    serde_json::json!(names),
                )]))
            }
            _ => Probe::NotDone,
        }))
    }
}

/// The latest one-minute maximum of a CloudWatch metric in the last ten minutes, if any.
pub(super) async fn latest_maximum(
    aws: &Aws,
    namespace: &str,
    metric: &str,
    dimensions: &[(&str, &str)],
) -> Result<Option<f64>, ProviderError> {
    Ok(latest_datapoint(aws, namespace, metric, dimensions, None)
        .await?
        .map(|(_, v)| v))
}

/// The latest one-minute maximum of a metric in the last ten minutes (or since `since`, when
/// that is later): (its time, in seconds since the epoch, and its value).
pub(super) async fn latest_datapoint(
    aws: &Aws,
    namespace: &str,
    metric: &str,
    dimensions: &[(&str, &str)],
    since: Option<std::time::SystemTime>,
) -> Result<Option<(f64, f64)>, ProviderError> {
    let now = std::time::SystemTime::now();
    // `since` rounded up to the second: CloudWatch counts whole seconds, and a datapoint from
    // the fraction of a second before it must not count.
    let since = since.map(|t| {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(whole)
    });
    let start =
        (now - std::time::Duration::from_secs(600)).max(since.unwrap_or(std::time::UNIX_EPOCH));
    // CloudWatch counts whole seconds: a window under one is empty (and refused as one).
    if now
        .duration_since(start)
        .map_or(true, |d| d < std::time::Duration::from_secs(1))
    {
        return Ok(None);
    }
    let mut q = aws
        .cloudwatch()
        .await
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name(metric)
        .start_time(start.into())
        .end_time(now.into())
        .period(60)
        .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum);
    for (name, value) in dimensions {
        q = q.dimensions(
            aws_sdk_cloudwatch::types::Dimension::builder()
                .name(*name)
                .value(*value)
                .build(),
        );
    }
    let out = q.send().await.map_err(|e| {
        super::sdk_err(
            &format!(
                "{namespace} {metric} of {}",
                dimensions
                    .iter()
                    .map(|(_, v)| *v)
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            e,
        )
    })?;
    Ok(out
        .datapoints()
        .iter()
        .filter_map(|d| Some((d.timestamp()?.as_secs_f64(), d.maximum()?)))
        .max_by(|a, b| a.0.total_cmp(&b.0)))
}

/// Waits until a metric's latest one-minute maximum is at or under a bound, e.g. an Aurora
/// replica's `AuroraBinlogReplicaLag` at zero. With `since` (a step's timestamp output), only a
/// datapoint from that time on counts: a lag of zero measured before a fence proves nothing about
/// the writes made before it. Gives up after `within_s` (default an hour) saying what it last saw,
/// so a metric that is never published does not hold the run forever.
#[derive(Debug, Clone)]
pub struct WaitMetric {
    inputs: Attrs,
}

impl WaitMetric {
    /// `metric` of `namespace` with `dimensions`, at or under `bound`.
    pub fn at_most(
        namespace: &str,
        metric: &str,
        dimensions: &[(&str, Value)],
        bound: f64,
    ) -> Self {
        let dims: serde_json::Map<String, Value> = dimensions
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        WaitMetric {
            inputs: Attrs::from([
                ("namespace".to_string(), Value::from(namespace)),
                ("metric".to_string(), Value::from(metric)),
                ("dimensions".to_string(), Value::Object(dims)),
                ("at_most".to_string(), Value::from(bound)),
                ("within_s".to_string(), Value::from(3600u64)),
                ("poll_ms".to_string(), Value::from(30_000u64)),
            ]),
        }
    }
    /// Only datapoints from this time on count (RFC 3339, a step's timestamp output).
    pub fn since(mut self, at: impl Into<Value>) -> Self {
        self.inputs.insert("since".into(), at.into());
        self
    }
    /// Give up after this many seconds (default 3600).
    pub fn within(mut self, seconds: u64) -> Self {
        self.inputs.insert("within_s".into(), Value::from(seconds));
        self
    }
    pub fn poll_ms(mut self, ms: u64) -> Self {
        self.inputs.insert("poll_ms".into(), Value::from(ms));
        self
    }
}

crate::declare!(WaitMetric, "aws.cloudwatch.wait_metric", Step);

struct WaitMetricType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for WaitMetricType {
    fn review(&self, inputs: &Attrs) -> crate::provider::Review {
        crate::provider::Review {
            guards: vec![format!(
                "{} at most {}{} (gives up after {} s)",
                get_str(inputs, "metric").unwrap_or_default(),
                inputs.get("at_most").and_then(Value::as_f64).unwrap_or(0.0),
                if inputs.contains_key("since") {
                    ", measured after the step before"
                } else {
                    ""
                },
                get_u64(inputs, "within_s").unwrap_or(3600)
            )],
            ..Default::default()
        }
    }
    fn type_name(&self) -> &'static str {
        WaitMetric::TYPE
    }
    fn service(&self) -> &'static str {
        "cloudwatch"
    }
    /// Its own deadline (`within`, an hour by default), and ten minutes beyond it to say what
    /// it last saw.
    fn timeout_for(&self, inputs: &Attrs) -> std::time::Duration {
        std::time::Duration::from_secs(get_u64(inputs, "within_s").unwrap_or(3600) + 600)
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        let mut v = vec![];
        if inputs.get("at_most").and_then(Value::as_f64).is_none() {
            v.push("input `at_most` must be a number".into());
        }
        if get_u64(inputs, "within_s").unwrap_or(0) == 0 {
            v.push("input `within_s` must be a positive number of seconds: every wait ends".into());
        }
        v
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let ns = get_str(req.inputs, "namespace").unwrap_or_default();
        let metric = get_str(req.inputs, "metric").unwrap_or_default();
        let dims: Vec<(String, String)> = req
            .inputs
            .get("dimensions")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let dims_ref: Vec<(&str, &str)> =
            dims.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let bound = req
            .inputs
            .get("at_most")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let since = match get_str(req.inputs, "since") {
            Some(t) => Some(
                humantime::parse_rfc3339_weak(t)
                    .map_err(|_| {
                        ProviderError::new(format!("input `since` = {t:?} is not a time"))
                    })?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            ),
            None => None,
        };
        let within = Duration::from_secs(get_u64(req.inputs, "within_s").unwrap_or(3600));
        let poll = Duration::from_millis(get_u64(req.inputs, "poll_ms").unwrap_or(30_000));
        let what = format!(
            "{ns} {metric} of {}",
            dims.iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("/")
        );
        let start = std::time::Instant::now();
        let mut last = String::new();
        loop {
            let point = latest_datapoint(
                &self.aws,
                ns,
                metric,
                &dims_ref,
                since.map(|s| std::time::UNIX_EPOCH + Duration::from_secs_f64(s)),
            )
            .await?;
            let msg = match point {
                Some((at, v)) if since.is_none_or(|s| at >= s) && v <= bound => {
                    ctx.report(req.node, &format!("{what} is {v} (bound {bound})"));
                    return Ok(Attrs::from([
                        ("value".to_string(), Value::from(v)),
                        (
                            "at".to_string(),
                            Value::from(
                                humantime::format_rfc3339_millis(
                                    std::time::UNIX_EPOCH + Duration::from_secs_f64(at),
                                )
                                .to_string(),
                            ),
                        ),
                    ]));
                }
                Some((at, v)) if since.is_none_or(|s| at >= s) => {
                    format!("{what} is {v}; waiting for {bound} or less")
                }
                Some(_) => format!("{what}: no datapoint since the start of the wait's window yet"),
                None => format!("{what}: no datapoint in the last ten minutes"),
            };
            if start.elapsed() >= within {
                return Err(ProviderError::new(format!(
                    "{what} did not come to {bound} or less within {} s (last: {msg}); find out why (is it published? is the replica replicating?), then run again",
                    within.as_secs()
                )));
            }
            if msg != last {
                ctx.report(req.node, &msg);
                last = msg;
            }
            tokio::time::sleep(
                poll.min(within.saturating_sub(start.elapsed()))
                    .max(Duration::from_millis(10)),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::aws::cluster::{AuroraCluster, ClusterInstance};

    /// A bake of two hours, or a metric wait of three, is not given up after the usual hour.
    #[test]
    fn a_long_bake_or_metric_wait_gets_a_limit_beyond_its_own_length() {
        let r = super::super::offline_registry();
        let limit = |t: &str, inputs: Attrs| r.get(t).unwrap().default_timeout(&inputs);
        let bake = Bake::alarms(vec![Output::from("cpu")], 7200).inputs();
        assert_eq!(
            limit("aws.cloudwatch.bake", bake),
            Duration::from_secs(3 * 3600)
        );
        let wait = Attrs::from([("within_s".to_string(), Value::from(3 * 3600u64))]);
        assert_eq!(
            limit("aws.cloudwatch.wait_metric", wait),
            Duration::from_secs(3 * 3600 + 600)
        );
    }

    /// Aurora publishes a cluster's CPU, connections and latency under `DBClusterIdentifier`; an
    /// alarm on the cluster's identifier under `DBInstanceIdentifier` never sees a datapoint.
    #[test]
    fn an_rds_alarm_on_a_cluster_uses_the_clusters_dimension_and_on_an_instance_the_instances() {
        let p = crate::dsl::Plan::named("p", "t", "aws");
        let cluster = p.add("target", AuroraCluster::postgres("15.4"));
        let writer = p.add(
            "writer",
            ClusterInstance::of(cluster.identifier(), "aurora-postgresql", "db.r6g.large"),
        );
        p.add("cpu", Alarm::rds_cpu_above(cluster.identifier(), 80.0));
        p.add(
            "conn",
            Alarm::rds_connections_above(cluster.identifier(), 4.0),
        );
        p.add(
            "lat",
            Alarm::rds_read_latency_above(cluster.identifier(), 0.2),
        );
        p.add(
            "cpu-writer",
            Alarm::rds_cpu_above(writer.identifier(), 80.0),
        );
        // By the identifier the writer will have: it names the writer.
        p.add("cpu-named", Alarm::rds_cpu_above("p-t-writer", 80.0));
        // By an identifier no node of the plan has and no look-up reads.
        p.add("cpu-unknown", Alarm::rds_cpu_above("legacy-1", 80.0));
        // An alarm written with its own dimensions keeps them.
        p.add(
            "own",
            Alarm::metric(
                "AWS/RDS",
                "CPUUtilization",
                &[("DBInstanceIdentifier", cluster.identifier().into())],
                ">",
                1.0,
            ),
        );
        let spec = p.finish();
        let dims_of = |name: &str| {
            let n = spec.nodes.iter().find(|n| n.name == name).unwrap();
            n.inputs["dimensions"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        for n in ["cpu", "conn", "lat"] {
            assert_eq!(dims_of(n), ["DBClusterIdentifier"], "{n}");
        }
        assert_eq!(dims_of("cpu-writer"), ["DBInstanceIdentifier"]);
        assert_eq!(dims_of("cpu-named"), ["DBInstanceIdentifier"]);
        assert_eq!(dims_of("cpu-unknown"), ["DBInstanceIdentifier"]);
        assert_eq!(dims_of("own"), ["DBInstanceIdentifier"]);
        // That one is refused when the graph is built, with the fix; the helpers' are not.
        let stack = crate::stack::Stack::parse(
            "t",
            std::path::Path::new("stacks/t.toml"),
            "plan = \"p\"\nprovider = \"aws\"\nregion = \"us-east-1\"\n",
        )
        .unwrap();
        let r = crate::provider::registry_for_stack(&stack).unwrap();
        let err = crate::graph::Graph::build(spec, &|t, k| r.resolve(t, k))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node `own` (aws.cloudwatch.alarm): dimension `DBInstanceIdentifier` names an identifier of a `aws.rds.cluster`, whose metrics are published under `DBClusterIdentifier`"),
            "{err}"
        );
        assert!(
            err.contains("node `cpu-unknown` (aws.cloudwatch.alarm): dimension `DBInstanceIdentifier` = \"legacy-1\" names no node of this plan and no look-up"),
            "{err}"
        );
        assert!(
            err.contains("ExistingInstance::find(..).identifier()"),
            "{err}"
        );
        for ok in ["`cpu`", "`conn`", "`lat`", "`cpu-writer`", "`cpu-named`"] {
            assert!(!err.contains(ok), "{ok}: {err}");
        }
    }
}
