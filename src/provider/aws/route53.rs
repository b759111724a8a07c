//! Route53: a hosted zone looked up by name (`aws.route53.zone`, read-only), record sets the plan
//! owns (`aws.route53.record`: CNAME, A, AAAA, TXT with a TTL, optionally weighted), and the
//! cutover's flip (`aws.route53.flip`): UPSERT a record to the new target, wait until the change
//! is INSYNC, keep the previous value for `plan rollback`.
//!
//! Records cannot carry tags, so a record is created with the CREATE action, which fails when the
//! record exists: an existing record is never taken over, it is adopted with `plan import`. The
//! flip never writes a record whose value is neither the expected old one nor the new one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};

use super::driver::{AwsError, AwsObject, Call, Driven, Found as DriverFound, Ownership};
use super::{sdk_err, Aws};
use crate::dsl::{Declare, NodeKind};
use crate::provider::model::Model;
use crate::provider::{Ctx, DataType, Observed, Probe, ProviderError, Registry, Request, StepType};
use crate::value::{get_str, get_u64, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.data(ZoneType { aws: aws.clone() });
    r.resource(Driven(RecordType { aws: aws.clone() }));
    r.step(FlipType { aws: aws.clone() });
    r.step(LowerTtlType { aws });
}

/// A hosted zone found by its name (read-only).
#[derive(Debug, Clone)]
pub struct HostedZone {
    name: String,
}

impl HostedZone {
    pub fn named(name: &str) -> Self {
        HostedZone { name: name.into() }
    }
}

impl Declare for HostedZone {
    const TYPE: &'static str = "aws.route53.zone";
    const KIND: NodeKind = NodeKind::Data;
    fn inputs(self) -> Attrs {
        Attrs::from([("name".to_string(), Value::from(self.name))])
    }
}

crate::outputs!(HostedZone {
    /// The zone's id (without the `/hostedzone/` prefix).
    zone_id: String = "id",
});

crate::model! {
    /// What a record set is declared with; zone, name, type and set identifier say where it is.
    pub struct RecordArgs {
        /// The hosted zone's id.
        zone_id: String [replace],
        name: String [replace],
        /// CNAME, A, AAAA, TXT and the like.
        r#type: String [replace],
        ttl: Option<u64>,
        values: Option<Vec<String>>,
        /// An alias record's target: its DNS name, its hosted zone, whether its health counts.
        alias_dns: Option<String>,
        alias_zone: Option<String>,
        alias_health: Option<bool>,
        /// One of several weighted records of the same name and type.
        set_identifier: Option<String> [replace],
        weight: Option<u64>,
    }
}

crate::model! {
    /// What a record set reports.
    pub struct RecordOut {
        /// `ZONE/NAME/TYPE[/SET]`.
        id: String,
        fqdn: String,
    }
}

/// A record set: name, type, TTL and values; weighted when given a set identifier and weight.
#[derive(Debug, Clone)]
pub struct Record {
    inputs: Attrs,
}

impl Record {
    /// A record `name` of `kind` (CNAME, A, AAAA, TXT) in `zone` (a zone handle's `zone_id()`).
    pub fn new(zone: impl Into<Value>, name: &str, kind: &str, values: &[&str]) -> Self {
        type A = RecordArgs;
        Record {
            inputs: Attrs::from([
                (A::zone_id.to_string(), zone.into()),
                (A::name.to_string(), Value::from(name)),
                (A::r#type.to_string(), Value::from(kind)),
                (A::ttl.to_string(), Value::from(60u64)),
                (A::values.to_string(), serde_json::json!(values)),
            ]),
        }
    }
    /// A CNAME to `target` (which may be an output, such as a cluster's endpoint).
    pub fn cname(zone: impl Into<Value>, name: &str, target: impl Into<Value>) -> Self {
        let mut r = Record::new(zone, name, "CNAME", &[]);
        r.inputs
            .insert(RecordArgs::values.into(), Value::Array(vec![target.into()]));
        r
    }
    /// An alias A record to another AWS name (a load balancer's DNS name and its hosted zone
    /// id), optionally evaluating the target's health. Aliases have no TTL of their own.
    pub fn alias_a(
        zone: impl Into<Value>,
        name: &str,
        target_dns: impl Into<Value>,
        target_zone: impl Into<Value>,
        evaluate_health: bool,
    ) -> Self {
        type A = RecordArgs;
        Record {
            inputs: Attrs::from([
                (A::zone_id.to_string(), zone.into()),
                (A::name.to_string(), Value::from(name)),
                (A::r#type.to_string(), Value::from("A")),
                (A::alias_dns.to_string(), target_dns.into()),
                (A::alias_zone.to_string(), target_zone.into()),
                (A::alias_health.to_string(), Value::Bool(evaluate_health)),
            ]),
        }
    }
    pub fn ttl(mut self, seconds: u64) -> Self {
        self.inputs
            .insert(RecordArgs::ttl.into(), Value::from(seconds));
        self
    }
    /// One of several weighted records of the same name and type.
    pub fn weighted(mut self, set_identifier: &str, weight: u64) -> Self {
        self.inputs.insert(
            RecordArgs::set_identifier.into(),
            Value::from(set_identifier),
        );
        self.inputs
            .insert(RecordArgs::weight.into(), Value::from(weight));
        self
    }
}

crate::declare!(Record, RecordType::TYPE, Resource);

/// The cutover's DNS flip: `name` (an existing record, often adopted with `plan import`) pointed
/// at new values; the previous ones are kept in state for `plan rollback`.
#[derive(Debug, Clone)]
pub struct Flip {
    inputs: Attrs,
}

impl Flip {
    /// Points the `kind` record `name` of `zone` at `to` (for a CNAME, one host name).
    pub fn record(zone: impl Into<Value>, name: &str, kind: &str, to: impl Into<Value>) -> Self {
        Flip {
            inputs: Attrs::from([
                ("zone_id".to_string(), zone.into()),
                ("name".to_string(), Value::from(name)),
                ("type".to_string(), Value::from(kind)),
                ("to".to_string(), Value::Array(vec![to.into()])),
                ("ttl".to_string(), Value::from(60u64)),
                ("poll_ms".to_string(), Value::from(2000u64)),
            ]),
        }
    }
    /// The value the record must hold before the flip (a safety check; also what a crash-time
    /// probe records as the previous value).
    pub fn from(mut self, value: impl Into<Value>) -> Self {
        self.inputs
            .insert("from".into(), Value::Array(vec![value.into()]));
        self
    }
    /// The record's TTL after the flip (default 60 s): seconds, or a lowering step's `ttl()`, so
    /// the flip keeps the TTL that step lowered the record to.
    pub fn ttl(mut self, seconds: impl Into<Value>) -> Self {
        self.inputs.insert("ttl".into(), seconds.into());
        self
    }
    /// The weighted record with this set identifier.
    pub fn set_identifier(mut self, id: &str) -> Self {
        self.inputs.insert("set_identifier".into(), Value::from(id));
        self
    }
    /// How often the change's status is polled (default 2 s).
    pub fn poll_ms(mut self, ms: u64) -> Self {
        self.inputs.insert("poll_ms".into(), Value::from(ms));
        self
    }
}

/// The check of a DNS cutover's lowered TTL against its time window (for
/// `Stack::get_checked`): the TTL counts against the window, so it must leave time for the fence
/// and the flip.
pub fn ttl_within_window(window_s: f64) -> impl Fn(&u64) -> Result<(), String> {
    move |t: &u64| {
        if *t >= 1 && (*t as f64) < window_s {
            Ok(())
        } else {
            Err(format!(
                "a TTL of {t} s during a window of {window_s} s leaves no time for the fence and the flip; give 1 s or more, well under the window (e.g. 5)"
            ))
        }
    }
}

impl crate::dsl::Handle<LowerTtl> {
    /// The TTL the record has once the step ran: what a flip after it keeps (`Flip::ttl`).
    pub fn ttl(&self) -> crate::dsl::Output<u64> {
        self.output("ttl")
    }
}

impl crate::dsl::Handle<Flip> {
    /// When Route53 accepted the flip's change (RFC 3339, milliseconds), before its INSYNC
    /// wait: the end of a DNS cutover's time budget.
    pub fn accepted_at(&self) -> Value {
        self.output::<String>("accepted_at").into()
    }
}

crate::declare!(Flip, "aws.route53.flip", Step);

/// Lowers an existing record's TTL ahead of a DNS cutover and waits out the old TTL, so that
/// when the flip comes, no resolver holds the old answer longer than the new, short TTL.
#[derive(Debug, Clone)]
pub struct LowerTtl {
    inputs: Attrs,
}

impl LowerTtl {
    /// The `kind` record `name` of `zone`, its TTL lowered to `seconds`.
    pub fn record(zone: impl Into<Value>, name: &str, kind: &str, seconds: u64) -> Self {
        LowerTtl {
            inputs: Attrs::from([
                ("zone_id".to_string(), zone.into()),
                ("name".to_string(), Value::from(name)),
                ("type".to_string(), Value::from(kind)),
                ("ttl".to_string(), Value::from(seconds)),
                ("poll_ms".to_string(), Value::from(2000u64)),
            ]),
        }
    }
    /// The TTL the record has before (when the plan knows it): a run interrupted in its wait
    /// finds the TTL lowered already, and waits this out again rather than trusting it was.
    pub fn was(mut self, seconds: u64) -> Self {
        self.inputs.insert("was".into(), Value::from(seconds));
        self
    }
    /// The weighted record with this set identifier.
    pub fn set_identifier(mut self, id: &str) -> Self {
        self.inputs.insert("set_identifier".into(), Value::from(id));
        self
    }
    /// How often the change's status is polled (default 2 s).
    pub fn poll_ms(mut self, ms: u64) -> Self {
        self.inputs.insert("poll_ms".into(), Value::from(ms));
        self
    }
}

crate::declare!(LowerTtl, "aws.route53.lower_ttl", Step);

/// A record name compared as Route53 does: case-insensitive, trailing dot optional.
fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn values_of(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(norm_value))
                .collect()
        })
        .unwrap_or_default()
}

/// Host names in values are compared without their trailing dot.
fn norm_value(v: &str) -> String {
    v.trim_end_matches('.').to_string()
}

fn rr_type(s: &str) -> Result<RrType, ProviderError> {
    match s {
        "CNAME" => Ok(RrType::Cname),
        "A" => Ok(RrType::A),
        "AAAA" => Ok(RrType::Aaaa),
        "TXT" => Ok(RrType::Txt),
        other => Err(ProviderError::new(format!(
            "record type `{other}` is not supported; use CNAME, A, AAAA or TXT"
        ))),
    }
}

/// Where a record is: zone, name, type and set identifier (its id is these joined by `/`).
#[derive(Debug, Clone, PartialEq)]
struct Key {
    zone: String,
    name: String,
    kind: String,
    set_id: Option<String>,
}

impl Key {
    /// Of a record's inputs, or of a step's that names a record by the same keys.
    fn of(inputs: &Attrs) -> Key {
        type A = RecordArgs;
        Key {
            zone: get_str(inputs, A::zone_id)
                .unwrap_or_default()
                .trim_start_matches("/hostedzone/")
                .to_string(),
            name: norm(get_str(inputs, A::name).unwrap_or_default()),
            kind: get_str(inputs, A::r#type).unwrap_or("CNAME").to_string(),
            set_id: get_str(inputs, A::set_identifier).map(String::from),
        }
    }
    fn id(&self) -> String {
        match &self.set_id {
            Some(s) => format!("{}/{}/{}/{s}", self.zone, self.name, self.kind),
            None => format!("{}/{}/{}", self.zone, self.name, self.kind),
        }
    }
    fn parse(id: &str) -> Option<Key> {
        let mut p = id.split('/');
        Some(Key {
            zone: p.next()?.into(),
            name: p.next()?.into(),
            kind: p.next()?.into(),
            set_id: p.next().map(String::from),
        })
    }
}

/// A record as found: values, TTL, weight.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    values: Vec<String>,
    ttl: Option<i64>,
    weight: Option<i64>,
    alias: Option<Alias>,
}

/// An alias target: another AWS name (a load balancer, a distribution) and its hosted zone.
#[derive(Debug, Clone, PartialEq)]
struct Alias {
    dns: String,
    zone: String,
    health: bool,
}

impl Alias {
    fn of(a: &RecordArgs) -> Option<Alias> {
        Some(Alias {
            dns: norm_value(a.alias_dns.as_deref()?),
            zone: a.alias_zone.clone().unwrap_or_default(),
            health: a.alias_health.unwrap_or(false),
        })
    }
}

/// The existing value record a step changes (`what`: what the step does to it), refusing a
/// missing record (`missing_fix`) and an alias record (`alias_fix`).
async fn value_record(
    aws: &Aws,
    key: &Key,
    what: &str,
    missing_fix: &str,
    alias_fix: &str,
) -> Result<Found, ProviderError> {
    let current = find(aws, key).await?.ok_or_else(|| {
        ProviderError::refused(
            format!(
                "record {} ({}) does not exist in zone {}",
                key.name, key.kind, key.zone
            ),
            missing_fix,
        )
    })?;
    if current.alias.is_some() {
        return Err(ProviderError::refused(
            format!("record {} is an alias record; {what}", key.name),
            alias_fix,
        ));
    }
    Ok(current)
}

async fn find(aws: &Aws, key: &Key) -> Result<Option<Found>, ProviderError> {
    let c = aws.route53().await;
    let out = c
        .list_resource_record_sets()
        .hosted_zone_id(&key.zone)
        .start_record_name(&key.name)
        .start_record_type(rr_type(&key.kind)?)
        .max_items(100)
        .send()
        .await
        .map_err(|e| sdk_err(&format!("list records of zone {}", key.zone), e))?;
    Ok(out
        .resource_record_sets()
        .iter()
        .find(|r| {
            norm(r.name()) == key.name
                && r.r#type().as_str() == key.kind
                && r.set_identifier() == key.set_id.as_deref()
        })
        .map(|r| Found {
            values: r
                .resource_records()
                .iter()
                .map(|v| norm_value(v.value()))
                .collect(),
            ttl: r.ttl(),
            weight: r.weight(),
            alias: r.alias_target().map(|a| Alias {
                dns: norm_value(a.dns_name()),
                zone: a.hosted_zone_id().to_string(),
                health: a.evaluate_target_health(),
            }),
        }))
}

fn record_set(
    key: &Key,
    values: &[String],
    ttl: i64,
    weight: Option<i64>,
    alias: Option<&Alias>,
) -> Result<ResourceRecordSet, ProviderError> {
    let mut b = ResourceRecordSet::builder()
        .name(&key.name)
        .r#type(rr_type(&key.kind)?);
    match alias {
        Some(a) => {
            b = b.alias_target(
                aws_sdk_route53::types::AliasTarget::builder()
                    .dns_name(&a.dns)
                    .hosted_zone_id(&a.zone)
                    .evaluate_target_health(a.health)
                    .build()
                    .map_err(|e| ProviderError::new(e.to_string()))?,
            )
        }
        None => b = b.ttl(ttl),
    }
    for v in values {
        b = b.resource_records(
            ResourceRecord::builder()
                .value(v)
                .build()
                .map_err(|e| ProviderError::new(e.to_string()))?,
        );
    }
    if let Some(s) = &key.set_id {
        b = b.set_identifier(s).weight(weight.unwrap_or(0));
    }
    b.build().map_err(|e| ProviderError::new(e.to_string()))
}

/// Sends one change and returns its id.
async fn change(
    aws: &Aws,
    key: &Key,
    action: ChangeAction,
    set: ResourceRecordSet,
    comment: &str,
) -> Result<String, AwsError> {
    let c = aws.route53().await;
    let built = |e: aws_sdk_route53::error::BuildError| ProviderError::new(e.to_string());
    let batch = ChangeBatch::builder()
        .comment(comment)
        .changes(
            Change::builder()
                .action(action.clone())
                .resource_record_set(set)
                .build()
                .map_err(built)?,
        )
        .build()
        .map_err(built)?;
    let out = c
        .change_resource_record_sets()
        .hosted_zone_id(&key.zone)
        .change_batch(batch)
        .send()
        .await
        .during(&format!(
            "{} record {} ({})",
            action.as_str(),
            key.name,
            key.kind
        ))?;
    Ok(out
        .change_info()
        .map(|i| i.id().trim_start_matches("/change/").to_string())
        .unwrap_or_default())
}

/// Polls the change until INSYNC, reporting its status.
async fn wait_insync(
    aws: &Aws,
    ctx: &Ctx,
    node: &str,
    id: &str,
    poll: Duration,
) -> Result<(), ProviderError> {
    if id.is_empty() {
        return Ok(());
    }
    let c = aws.route53().await;
    let started = std::time::Instant::now();
    loop {
        let out = c
            .get_change()
            .id(id)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("get change {id}"), e))?;
        let status = out.change_info().map(|i| i.status().clone());
        if status == Some(ChangeStatus::Insync) {
            ctx.report(
                node,
                &format!(
                    "change {id} INSYNC after {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
            );
            return Ok(());
        }
        let status = status.map(|s| s.as_str().to_string()).unwrap_or_default();
        if started.elapsed() > INSYNC_TIMEOUT {
            return Err(ProviderError::new(format!(
                "change {id} still {status} after {} s",
                INSYNC_TIMEOUT.as_secs()
            )));
        }
        ctx.report(
            node,
            &format!(
                "change {id} {status} for {:.0} s",
                started.elapsed().as_secs_f64()
            ),
        );
        tokio::time::sleep(poll).await;
    }
}

/// How long a change may stay PENDING (Route53 documents INSYNC within 60 s).
const INSYNC_TIMEOUT: Duration = Duration::from_secs(300);

struct ZoneType {
    aws: Arc<Aws>,
}

#[async_trait]
impl DataType for ZoneType {
    fn type_name(&self) -> &'static str {
        "aws.route53.zone"
    }
    fn service(&self) -> &'static str {
        "route53"
    }
    async fn read(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let name = norm(get_str(req.inputs, "name").unwrap_or_default());
        let out = self
            .aws
            .route53()
            .await
            .list_hosted_zones_by_name()
            .dns_name(&name)
            .max_items(10)
            .send()
            .await
            .map_err(|e| sdk_err("list hosted zones", e))?;
        let zones: Vec<_> = out
            .hosted_zones()
            .iter()
            .filter(|z| norm(z.name()) == name)
            .collect();
        match zones.as_slice() {
            [z] => Ok(Attrs::from([
                (
                    "id".to_string(),
                    Value::from(z.id().trim_start_matches("/hostedzone/")),
                ),
                ("name".to_string(), Value::from(name)),
                (
                    "private".to_string(),
                    Value::Bool(z.config().map(|c| c.private_zone()).unwrap_or(false)),
                ),
            ])),
            [] => Err(ProviderError::new(format!(
                "no hosted zone named `{name}` in this account: check the name, or the stack's profile and region"
            ))),
            _ => Err(ProviderError::new(format!(
                "{} hosted zones are named `{name}` (public and private?): refer to the zone by id instead",
                zones.len()
            ))),
        }
    }
}

struct RecordType {
    aws: Arc<Aws>,
}

impl RecordType {
    fn observed(key: &Key, f: Found) -> Observed {
        let (alias, values) = match &f.alias {
            Some(a) => (Some(a.clone()), None),
            None => (None, Some(f.values)),
        };
        let inputs = RecordArgs {
            zone_id: key.zone.clone(),
            name: key.name.clone(),
            r#type: key.kind.clone(),
            ttl: f.ttl.map(|t| t as u64),
            values,
            alias_dns: alias.as_ref().map(|a| a.dns.clone()),
            alias_zone: alias.as_ref().map(|a| a.zone.clone()),
            alias_health: alias.as_ref().map(|a| a.health),
            set_identifier: key.set_id.clone(),
            weight: key.set_id.as_ref().map(|_| f.weight.unwrap_or(0) as u64),
        };
        Observed {
            id: key.id(),
            inputs: inputs.to_attrs(),
            outputs: RecordOut {
                id: key.id(),
                fqdn: key.name.clone(),
            }
            .to_attrs(),
        }
    }

    /// Sends one change of the record as `a` declares it and waits until it is INSYNC.
    async fn put(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        a: &RecordArgs,
        action: ChangeAction,
    ) -> Result<Key, AwsError> {
        let key = Key::of(req.inputs);
        let values: Vec<String> = a.values.iter().flatten().map(|v| norm_value(v)).collect();
        let set = record_set(
            &key,
            &values,
            a.ttl.unwrap_or(60) as i64,
            a.weight.map(|w| w as i64),
            Alias::of(a).as_ref(),
        )?;
        let id = change(&self.aws, &key, action, set, "cutover").await?;
        wait_insync(&self.aws, ctx, req.node, &id, Duration::from_secs(2)).await?;
        Ok(key)
    }
}

fn parse_key(id: &str) -> Result<Key, ProviderError> {
    Key::parse(id).ok_or_else(|| ProviderError::new(format!("`{id}` is not zone/name/type[/set]")))
}

#[async_trait]
impl AwsObject for RecordType {
    const TYPE: &'static str = "aws.route53.record";
    const SERVICE: &'static str = "route53";
    const WHAT: &'static str = "DNS record";
    /// A CREATE of a record that exists fails (on AWS and in moto 5.2.5 alike).
    const OWNERSHIP: Ownership =
        Ownership::Untagged("records carry no tags, and a CREATE fails on one that exists");
    type Args = RecordArgs;
    /// What a CREATE of a record that exists answers (among other refusals of a batch: the
    /// driver looks before it adopts anything).
    const EXISTS: &'static [&'static str] = &["InvalidChangeBatch"];
    /// A record that is not there is read as `None`, never as an error code.
    const NOT_FOUND: &'static [&'static str] = &[];
    /// A record is known by where it is: zone, name, type and set identifier.
    fn name(&self, req: &Request<'_>) -> String {
        Key::of(req.inputs).id()
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        type A = RecordArgs;
        let mut v = vec![];
        let kind = get_str(inputs, A::r#type);
        if let Some(t) = kind {
            if let Err(e) = rr_type(t) {
                v.push(e.message);
            }
        }
        let values = inputs.get(A::values).and_then(Value::as_array);
        if values.is_some_and(|a| a.is_empty()) {
            v.push("a record needs at least one value".into());
        }
        if kind == Some("CNAME") && values.is_some_and(|a| a.len() > 1) {
            v.push("a CNAME record has exactly one value".into());
        }
        if inputs.contains_key(A::alias_dns) {
            if inputs.contains_key(A::values) || inputs.contains_key(A::ttl) {
                v.push(
                    "an alias record has neither values nor a TTL (it follows its target)".into(),
                );
            }
            if !matches!(kind, Some("A" | "AAAA")) {
                v.push("alias records are A or AAAA".into());
            }
        }
        if inputs.contains_key(A::weight) != inputs.contains_key(A::set_identifier) {
            v.push("a weighted record needs both a set identifier and a weight".into());
        }
        v
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        id: &str,
    ) -> Result<Option<DriverFound>, AwsError> {
        let key = parse_key(id)?;
        Ok(find(&self.aws, &key)
            .await?
            .map(|f| DriverFound::ready(Self::observed(&key, f))))
    }
    async fn create(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        a: &RecordArgs,
        _name: &str,
        _tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        Ok(self.put(ctx, req, a, ChangeAction::Create).await?.id())
    }
    async fn modify(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        a: &RecordArgs,
        _id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        self.put(ctx, req, a, ChangeAction::Upsert)
            .await
            .map(|_| ())
    }
    /// DELETE must name the record exactly as it is: read first.
    async fn delete(&self, ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        let key = parse_key(id)?;
        let Some(f) = find(&self.aws, &key).await? else {
            return Ok(());
        };
        let set = record_set(
            &key,
            &f.values,
            f.ttl.unwrap_or(60),
            f.weight,
            f.alias.as_ref(),
        )?;
        let change_id = change(&self.aws, &key, ChangeAction::Delete, set, "cutover").await?;
        Ok(wait_insync(&self.aws, ctx, req.node, &change_id, Duration::from_secs(2)).await?)
    }
}

struct FlipType {
    aws: Arc<Aws>,
}

impl FlipType {
    async fn point(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        to: &[String],
        ttl: i64,
        weight: Option<i64>,
    ) -> Result<String, ProviderError> {
        let key = Key::of(req.inputs);
        let set = record_set(&key, to, ttl, weight, None)?;
        let id = change(&self.aws, &key, ChangeAction::Upsert, set, "cutover flip").await?;
        let poll = Duration::from_millis(get_u64(req.inputs, "poll_ms").unwrap_or(2000));
        wait_insync(&self.aws, ctx, req.node, &id, poll).await?;
        Ok(id)
    }
}

struct LowerTtlType {
    aws: Arc<Aws>,
}

#[async_trait]
impl StepType for LowerTtlType {
    fn measured(&self, outputs: &Attrs) -> Vec<String> {
        match (get_u64(outputs, "previous_ttl"), get_u64(outputs, "ttl")) {
            (Some(was), Some(now)) => vec![format!(
                "TTL {was} s -> {now} s; waited {} s for the old one to expire",
                get_u64(outputs, "waited_s").unwrap_or(0)
            )],
            _ => vec![],
        }
    }
    fn type_name(&self) -> &'static str {
        LowerTtl::TYPE
    }
    fn service(&self) -> &'static str {
        "route53"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        let mut out = vec![];
        if let Some(Err(e)) = get_str(inputs, "type").map(rr_type) {
            out.push(e.message);
        }
        match get_u64(inputs, "ttl") {
            Some(t) if (1..=172_800).contains(&t) => {}
            _ => out.push("input `ttl` must be a TTL in seconds, from 1 to 172800".into()),
        }
        out
    }
    /// Run again after an interruption: the same UPSERT, and the wait again.
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let key = Key::of(req.inputs);
        let ttl = get_u64(req.inputs, "ttl").unwrap_or(60) as i64;
        let current = value_record(
            &self.aws,
            &key,
            "an alias record has no TTL of its own",
            "the TTL is lowered on the record the flip will re-point: create it first or check the name",
            "lower the TTL of a value record (a CNAME), or drop this step for an alias",
        )
        .await?;
        let now_ttl = current.ttl.unwrap_or(0);
        let was = get_u64(req.inputs, "was").map(|w| w as i64);
        let (previous, wait) = if now_ttl > ttl {
            let set = record_set(&key, &current.values, ttl, current.weight, None)?;
            let id = change(
                &self.aws,
                &key,
                ChangeAction::Upsert,
                set,
                "cutover: lower the TTL",
            )
            .await?;
            let poll = Duration::from_millis(get_u64(req.inputs, "poll_ms").unwrap_or(2000));
            wait_insync(&self.aws, ctx, req.node, &id, poll).await?;
            (now_ttl, now_ttl)
        } else {
            // Low already: lowered by an interrupted run of this step (whose wait is then owed
            // again) or long before. What the plan says it was decides.
            match was {
                Some(w) if w > now_ttl => (w, w),
                _ => (now_ttl, 0),
            }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(wait as u64);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            ctx.report(
                req.node,
                &format!(
                    "TTL {ttl} s; waiting out the old TTL of {previous} s: {} s left",
                    left.as_secs() + 1
                ),
            );
            tokio::time::sleep(left.min(Duration::from_secs(10))).await;
        }
        Ok(Attrs::from([
            ("previous_ttl".to_string(), Value::from(previous as u64)),
            (
                "ttl".to_string(),
                Value::from(ttl.min(now_ttl.max(1)) as u64),
            ),
            ("waited_s".to_string(), Value::from(wait as u64)),
        ]))
    }
}

#[async_trait]
impl StepType for FlipType {
    fn review(&self, inputs: &Attrs) -> crate::provider::Review {
        crate::provider::Review {
            moves_traffic: Some(format!(
                "the DNS record {} ({})",
                get_str(inputs, "name").unwrap_or_default(),
                get_str(inputs, "type").unwrap_or("CNAME")
            )),
            can_roll_back: self.can_roll_back(),
            ..Default::default()
        }
    }
    fn type_name(&self) -> &'static str {
        Flip::TYPE
    }
    fn service(&self) -> &'static str {
        "route53"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match get_str(inputs, "type").map(rr_type) {
            Some(Err(e)) => vec![e.message],
            _ => vec![],
        }
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let key = Key::of(req.inputs);
        let to = values_of(req.inputs.get("to"));
        let from = values_of(req.inputs.get("from"));
        let current = value_record(
            &self.aws,
            &key,
            "this step re-points value records only",
            "the flip re-points an existing record: create it first (an aws.route53.record node) or check the name",
            "flip a CNAME or a value record, or change the alias record's target in the plan",
        )
        .await?;
        if !from.is_empty() && current.values != from && current.values != to {
            return Err(ProviderError::refused(
                format!(
                    "record {} holds {:?}, neither the expected {:?} nor the target {:?}: someone else changed it",
                    key.name, current.values, from, to
                ),
                "find out who changed it; then correct the plan's `from` or the record",
            ));
        }
        let ttl = get_u64(req.inputs, "ttl")
            .map(|t| t as i64)
            .or(current.ttl)
            .unwrap_or(60);
        // Once Route53 accepted the change, the flip is decided (a PENDING change always
        // applies): a wait for INSYNC that fails is reported, not a failure, so a failure of this
        // step always means the record does not name the target (what a compensation that
        // unfences the source relies on).
        let key2 = Key::of(req.inputs);
        let set = record_set(&key2, &to, ttl, current.weight, None)?;
        let id = match change(&self.aws, &key2, ChangeAction::Upsert, set, "cutover flip").await {
            Ok(id) => id,
            Err(e) => {
                let e = ProviderError::from(e);
                // No answer is not a refusal: look at the record before saying what happened.
                match find(&self.aws, &key2).await {
                    Ok(Some(f)) if f.values == to => String::new(),
                    Ok(_) => {
                        return Err(ProviderError {
                            unchanged: true,
                            ..e
                        })
                    }
                    Err(_) => return Err(e),
                }
            }
        };
        // Route53 has the change: the end of a DNS cutover's budget (INSYNC is outside it).
        let accepted = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let poll = Duration::from_millis(get_u64(req.inputs, "poll_ms").unwrap_or(2000));
        if !id.is_empty() {
            if let Err(e) = wait_insync(&self.aws, ctx, req.node, &id, poll).await {
                ctx.report(
                    req.node,
                    &format!(
                        "the record names the target; Route53 has not confirmed INSYNC yet ({e})"
                    ),
                );
            }
        }
        Ok(Attrs::from([
            ("previous".to_string(), serde_json::json!(current.values)),
            (
                "previous_ttl".to_string(),
                Value::from(current.ttl.unwrap_or(60) as u64),
            ),
            ("change_id".to_string(), Value::from(id)),
            ("accepted_at".to_string(), Value::from(accepted)),
            (
                "flipped_at".to_string(),
                Value::from(
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                ),
            ),
        ]))
    }
    async fn probe(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let key = Key::of(req.inputs);
        let to = values_of(req.inputs.get("to"));
        let from = values_of(req.inputs.get("from"));
        Ok(Some(match find(&self.aws, &key).await? {
            Some(f) if f.values == to => Probe::Done(Attrs::from([
                // The value before the flip is known only if the plan stated it.
                (
                    "previous".to_string(),
                    if from.is_empty() {
                        Value::Null
                    } else {
                        serde_json::json!(from)
                    },
                ),
                (
                    "previous_ttl".to_string(),
                    Value::from(f.ttl.unwrap_or(60) as u64),
                ),
            ])),
            _ => Probe::NotDone,
        }))
    }
    fn can_roll_back(&self) -> bool {
        true
    }
    async fn rollback(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        outputs: &Attrs,
    ) -> Result<Attrs, ProviderError> {
        let previous = values_of(outputs.get("previous"));
        if previous.is_empty() {
            return Err(ProviderError::refused(
                "the value before the flip was not recorded (the flip was found done after a crash, and the plan has no `from`)",
                "set the record back by hand, or add `.from(...)` to the flip so the old value is known",
            ));
        }
        let key = Key::of(req.inputs);
        let current = find(&self.aws, &key).await?;
        if current.as_ref().map(|f| &f.values) == Some(&previous) {
            return Ok(Attrs::new());
        }
        let ttl = get_u64(outputs, "previous_ttl").unwrap_or(60) as i64;
        self.point(ctx, req, &previous, ttl, current.and_then(|f| f.weight))
            .await?;
        ctx.report(
            req.node,
            &format!("{} points at {:?} again", key.name, previous),
        );
        Ok(Attrs::new())
    }
}
