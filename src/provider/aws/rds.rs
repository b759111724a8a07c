//! RDS parameter groups (DB and DB cluster): family, description, and parameters each with an apply
//! method (`immediate` or `pending-reboot`). Each parameter is an input of its own
//! (`parameter.NAME`), so a preview diffs them one by one and shows which need a reboot.
//!
//! Family, name and description cannot change in place (replacement). Parameters removed from the
//! plan are reset to the family's default.
//!
//! The parameter fence (`aws.rds.parameter_fence`, lifted by `aws.rds.lift_parameter_fence`) sets
//! one parameter (a MySQL source's `read_only = 1`) in the custom parameter group of an instance
//! the plan does not own, records what it was, and verifies what the API shows: the value set and
//! the instance's group `in-sync`, never `pending-reboot`. It touches that one parameter and
//! nothing else of a group that is not ours, and refuses a default group (which nobody can modify).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_rds::types::{ApplyMethod, Parameter, Tag};

use super::driver::{AwsError, AwsObject, Call, Driven, Ownership};
use super::{sdk_err, tags_value, Aws};
use crate::dsl::{Declare, Handle, NodeKind, Output};
use crate::provider::model::Model;
use crate::provider::{Ctx, Observed, ProviderError, Registry, Request, StepType};
use crate::value::{get_str, get_u64, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.resource(Driven(Groups::<false>(ParameterGroupType {
        aws: aws.clone(),
        cluster: false,
    })))
    .resource(Driven(Groups::<true>(ParameterGroupType {
        aws: aws.clone(),
        cluster: true,
    })));
    r.step(FenceType {
        groups: ParameterGroupType {
            aws: aws.clone(),
            cluster: false,
        },
        lift: false,
    });
    r.step(FenceType {
        groups: ParameterGroupType {
            aws,
            cluster: false,
        },
        lift: true,
    });
}

/// Families we know, for offline checks (a typo fails at preview, before any call).
/// The parameter group family of an engine version (`postgres` `15.4` -> `postgres15`,
/// `aurora-mysql` `8.0.mysql_aurora.3.04.0` -> `aurora-mysql8.0`), or None when unknown.
pub(super) fn family_for(engine: &str, version: &str) -> Option<String> {
    let mut parts = version.split('.');
    let major = parts.next()?;
    match engine {
        "postgres" | "aurora-postgresql" => {
            let m: u32 = major.parse().ok()?;
            Some(format!("{engine}{m}"))
        }
        "mysql" | "aurora-mysql" => {
            let minor = parts.next()?;
            Some(format!("{engine}{major}.{minor}"))
        }
        _ => None,
    }
}

/// The offline check that a parameter group (the node `input` refers to) is of the family of
/// `engine` `version`.
pub(super) fn check_family(
    inputs: &Attrs,
    input: &str,
    referenced: &dyn Fn(&str) -> Option<(String, Attrs)>,
) -> Vec<String> {
    let (Some(engine), Some(version)) =
        (get_str(inputs, "engine"), get_str(inputs, "engine_version"))
    else {
        return vec![];
    };
    let Some(want) = family_for(engine, version) else {
        return vec![];
    };
    match referenced(input) {
        Some((t, group)) if t.ends_with("parameter_group") => match get_str(&group, "family") {
            Some(family) if family != want => vec![format!(
                "`{input}` is a parameter group of family `{family}`, but {engine} {version} needs family `{want}`; change the group's family or the engine version"
            )],
            _ => vec![],
        },
        _ => vec![],
    }
}

const FAMILIES: &[&str] = &[
    "postgres11",
    "postgres12",
    "postgres13",
    "postgres14",
    "postgres15",
    "postgres16",
    "postgres17",
    "aurora-postgresql11",
    "aurora-postgresql12",
    "aurora-postgresql13",
    "aurora-postgresql14",
    "aurora-postgresql15",
    "aurora-postgresql16",
    "aurora-postgresql17",
    "mysql5.7",
    "mysql8.0",
    "mysql8.4",
    "aurora-mysql5.7",
    "aurora-mysql8.0",
];

crate::model! {
    /// What a DB parameter group or a DB cluster parameter group is declared with.
    pub struct ParameterGroupArgs {
        /// The group's name when not the node's deterministic one.
        name: Option<String> [replace],
        family: String [replace],
        description: String [replace],
        cluster: bool [replace],
        ..
        /// `parameter.NAME` (see [`PARAMETER`]): `{"value": .., "apply": "immediate" or
        /// "pending-reboot"}`, one input per parameter so a preview diffs them one by one.
        parameters: BTreeMap<String, Value>,
    }
}

crate::model! {
    /// What a parameter group reports.
    pub struct ParameterGroupOut {
        id: String,
        name: String,
        arn: String,
        tags: Value,
    }
}

/// The prefix of a parameter's input key.
pub const PARAMETER: &str = "parameter.";

/// A DB parameter group (instances) or, with [`ParameterGroup::cluster`], a DB cluster parameter
/// group (Aurora clusters).
#[derive(Debug, Clone)]
pub struct ParameterGroup {
    cluster: bool,
    family: String,
    description: String,
    name: Option<String>,
    parameters: BTreeMap<String, (String, &'static str)>,
}

impl ParameterGroup {
    /// A DB parameter group of `family` (e.g. `postgres15`).
    pub fn instance(family: &str, description: &str) -> Self {
        ParameterGroup {
            cluster: false,
            family: family.into(),
            description: description.into(),
            name: None,
            parameters: BTreeMap::new(),
        }
    }
    /// A DB cluster parameter group of `family` (e.g. `aurora-postgresql15`).
    pub fn cluster(family: &str, description: &str) -> Self {
        ParameterGroup {
            cluster: true,
            ..Self::instance(family, description)
        }
    }
    /// The group's name (default: derived from plan, stack and node).
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }
    /// A dynamic parameter, applied at once.
    pub fn immediate(mut self, name: &str, value: &str) -> Self {
        self.parameters
            .insert(name.into(), (value.into(), "immediate"));
        self
    }
    /// A static parameter, applied at the next reboot (a reboot step makes it take effect).
    pub fn pending_reboot(mut self, name: &str, value: &str) -> Self {
        self.parameters
            .insert(name.into(), (value.into(), "pending-reboot"));
        self
    }
    /// A PostgreSQL memory parameter given as a size (`"8GB"`, `"256MB"`, `"64kB"`), written
    /// in the unit RDS takes for it (8 kB pages for `shared_buffers`, kB for `work_mem`, ...),
    /// applied at once or at the next reboot as the parameter requires.
    pub fn memory(self, name: &str, size: &str) -> Result<Self, crate::dsl::PlanError> {
        let (value, apply) =
            rds_memory(name, size).map_err(|message| crate::dsl::PlanError::Value {
                what: format!("parameter `{name}` = \"{size}\""),
                message,
            })?;
        Ok(match apply {
            "immediate" => self.immediate(name, &value),
            _ => self.pending_reboot(name, &value),
        })
    }
    /// The static parameters, as `name=value` lines: a trigger for the reboot that applies them.
    pub fn static_digest(&self) -> String {
        self.parameters
            .iter()
            .filter(|(_, (_, m))| *m == "pending-reboot")
            .map(|(k, (v, _))| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// PostgreSQL's memory parameters: the unit of their value in kB, and whether a change needs a
/// restart (static).
const MEMORY_PARAMETERS: &[(&str, u64, bool)] = &[
    ("shared_buffers", 8, true),
    ("wal_buffers", 8, true),
    ("effective_cache_size", 8, false),
    ("temp_buffers", 8, false),
    ("work_mem", 1, false),
    ("maintenance_work_mem", 1, false),
    ("autovacuum_work_mem", 1, false),
    ("logical_decoding_work_mem", 1, false),
    ("max_wal_size", 1024, false),
    ("min_wal_size", 1024, false),
];

/// A KMS key as RDS reports it back for an encrypted instance or cluster: the key's ARN. An
/// alias or a bare key id would be accepted at creation and then read back as the ARN, a change
/// on every later preview.
pub fn kms_key_arn(k: &str) -> Result<(), String> {
    let parts: Vec<&str> = k.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "kms"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("key/")
            .is_some_and(|id| !id.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "KMS key `{k}`: give the key's ARN (arn:aws:kms:REGION:ACCOUNT:key/KEY-ID), not an alias or a key id; `aws kms describe-key --key-id ALIAS` prints it"
        ))
    }
}

/// `size` (a number and kB, MB, GB or TB, 1024-based as PostgreSQL reads them) for parameter
/// `name`, in that parameter's unit, and its apply method.
pub fn rds_memory(name: &str, size: &str) -> Result<(String, &'static str), String> {
    let Some(&(_, unit_kb, restart)) = MEMORY_PARAMETERS.iter().find(|(n, _, _)| *n == name) else {
        return Err(format!(
            "not a memory parameter this knows; give its value in RDS's unit with .immediate or .pending_reboot (memory parameters: {})",
            MEMORY_PARAMETERS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ")
        ));
    };
    let s = size.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "write a whole number and a unit, e.g. \"8GB\"".to_string())?;
    let kb = match suffix.trim() {
        "kB" | "KB" => n,
        "MB" => n * 1024,
        "GB" => n * 1024 * 1024,
        "TB" => n * 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unit `{other}`: use kB, MB, GB or TB (PostgreSQL's units, 1024-based)"
            ))
        }
    };
    if kb % unit_kb != 0 {
        return Err(format!(
            "{size} is not a whole number of the parameter's unit ({unit_kb} kB)"
        ));
    }
    Ok((
        (kb / unit_kb).to_string(),
        if restart {
            "pending-reboot"
        } else {
            "immediate"
        },
    ))
}

impl Declare for ParameterGroup {
    const TYPE: &'static str = Groups::<false>::TYPE;
    const KIND: NodeKind = NodeKind::Resource;
    fn type_name(&self) -> &'static str {
        if self.cluster {
            Groups::<true>::TYPE
        } else {
            Self::TYPE
        }
    }
    fn inputs(self) -> Attrs {
        ParameterGroupArgs {
            name: self.name,
            family: self.family,
            description: self.description,
            cluster: self.cluster,
            parameters: setting_inputs(
                self.parameters
                    .iter()
                    .map(|(k, (v, m))| (k.as_str(), v.as_str(), *m)),
            ),
        }
        .to_attrs()
    }
}

/// The `parameter.NAME` inputs of these (name, value, apply method) settings.
fn setting_inputs<'a>(
    settings: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
) -> BTreeMap<String, Value> {
    settings
        .map(|(k, v, m)| {
            (
                format!("{PARAMETER}{k}"),
                serde_json::json!({ "value": v, "apply": m }),
            )
        })
        .collect()
}

crate::outputs!(ParameterGroup {
    /// The group's name (known at plan time when set).
    group_name: String = ParameterGroupOut::name,
    arn: String = ParameterGroupOut::arn,
});

/// A write fence through an instance's parameter group: `read_only = 1` in the custom DB parameter
/// group of a MySQL instance the plan does not own, applied immediately, verified through the API
/// (the value set, the instance's group `in-sync`), with the previous value recorded for the lift.
#[derive(Debug, Clone)]
pub struct ParameterFence {
    inputs: Attrs,
}

impl ParameterFence {
    /// `read_only = 1` in `group`, the parameter group `instance` (an identifier) uses.
    pub fn read_only(instance: impl Into<Value>, group: &str) -> Self {
        ParameterFence {
            inputs: Attrs::from([
                ("instance".to_string(), instance.into()),
                ("group".to_string(), Value::from(group)),
                ("parameter".to_string(), Value::from("read_only")),
                ("value".to_string(), Value::from("1")),
                ("within_s".to_string(), Value::from(600u64)),
                ("poll_ms".to_string(), Value::from(5000u64)),
            ]),
        }
    }
    pub fn poll_ms(mut self, ms: u64) -> Self {
        self.inputs.insert("poll_ms".into(), Value::from(ms));
        self
    }
}

crate::declare!(ParameterFence, "aws.rds.parameter_fence", Step);

impl Handle<ParameterFence> {
    /// When the fence was verified (RFC 3339, milliseconds).
    pub fn fenced_at(&self) -> Output<String> {
        self.output("fenced_at")
    }
    /// The step that puts the parameter back as it was (a compensation: `.rollback_only()`).
    pub fn lift(&self) -> LiftParameterFence {
        let mut inputs = Attrs::new();
        for k in ["instance", "group", "parameter", "poll_ms", "within_s"] {
            inputs.insert(k.to_string(), self.output::<Value>(k).into());
        }
        inputs.insert("previous".into(), self.output::<Value>("previous").into());
        LiftParameterFence { inputs }
    }
}

/// Puts a parameter fence's parameter back as it was: its previous value, or the engine's
/// default when it had none of its own.
#[derive(Debug, Clone)]
pub struct LiftParameterFence {
    inputs: Attrs,
}

crate::declare!(LiftParameterFence, "aws.rds.lift_parameter_fence", Step);

struct FenceType {
    groups: ParameterGroupType,
    lift: bool,
}

impl FenceType {
    /// Waits until the instance's group `group` is `in-sync`; `pending-reboot` is a refusal
    /// (the API then cannot show that the value took effect).
    async fn in_sync(
        &self,
        ctx: &Ctx,
        node: &str,
        instance: &str,
        group: &str,
        inputs: &Attrs,
    ) -> Result<(), ProviderError> {
        let within = std::time::Duration::from_secs(get_u64(inputs, "within_s").unwrap_or(600));
        let poll = std::time::Duration::from_millis(get_u64(inputs, "poll_ms").unwrap_or(5000));
        let start = std::time::Instant::now();
        loop {
            let status = instance_group(&self.groups.aws, instance, group).await?;
            match status.as_str() {
                "in-sync" => return Ok(()),
                "pending-reboot" => {
                    return Err(ProviderError::with_fix(
                        format!("instance {instance}: parameter group {group} is pending-reboot: changes in it wait for a reboot, and the API cannot show that {} took effect", get_str(inputs, "parameter").unwrap_or("the parameter")),
                        "reboot the instance in a quiet moment (or apply the group's pending changes) so that it is in-sync, then run again",
                    ))
                }
                s => {
                    if start.elapsed() >= within {
                        return Err(ProviderError::new(format!(
                            "instance {instance}: parameter group {group} is still `{s}` after {} s",
                            within.as_secs()
                        )));
                    }
                    ctx.report(node, &format!("instance {instance}: parameter group {group} {s}"));
                    tokio::time::sleep(poll).await;
                }
            }
        }
    }

    /// Sets `parameter` to `value` in `group` (immediately), or back to the engine default.
    async fn set(
        &self,
        group: &str,
        parameter: &str,
        value: Option<&str>,
    ) -> Result<(), ProviderError> {
        let p = BTreeMap::from([(
            parameter.to_string(),
            (
                value.unwrap_or_default().to_string(),
                "immediate".to_string(),
            ),
        )]);
        match value {
            Some(_) => self.groups.modify(group, &p).await,
            None => self.groups.reset(group, &p).await,
        }
    }
}

/// The apply status of `group` on `instance`, refusing an instance that does not use it.
async fn instance_group(aws: &Aws, instance: &str, group: &str) -> Result<String, ProviderError> {
    let d = super::cluster::describe_db_instance(aws, instance)
        .await?
        .ok_or_else(|| ProviderError::new(format!("no DB instance `{instance}` in this region")))?;
    let groups: Vec<(String, String)> = d
        .db_parameter_groups()
        .iter()
        .map(|g| {
            (
                g.db_parameter_group_name().unwrap_or_default().to_string(),
                g.parameter_apply_status().unwrap_or_default().to_string(),
            )
        })
        .collect();
    match groups.iter().find(|(n, _)| n == group) {
        Some((_, s)) => Ok(s.clone()),
        None => Err(ProviderError::refused(
            format!(
                "instance {instance} uses parameter group {}, not {group}",
                groups
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "name the instance's own custom parameter group in the stack (or attach that group to the instance first: it takes a reboot)",
        )),
    }
}

#[async_trait]
impl StepType for FenceType {
    fn type_name(&self) -> &'static str {
        if self.lift {
            "aws.rds.lift_parameter_fence"
        } else {
            "aws.rds.parameter_fence"
        }
    }
    fn service(&self) -> &'static str {
        "rds"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match get_str(inputs, "group") {
            Some(g) if g.starts_with("default.") => vec![format!(
                "parameter group `{g}` is a default group, which nobody can modify: attach a custom parameter group to the source instance in advance (copy the default one; attaching it takes a reboot), then name it"
            )],
            _ => vec![],
        }
    }
    fn review(&self, inputs: &Attrs) -> crate::provider::Review {
        if self.lift {
            return crate::provider::Review::default();
        }
        crate::provider::Review {
            fences_writes: true,
            caveat: Some(format!(
                "the fence is verified through the RDS API ({} = {} in the group, the instance's group in-sync), not from inside MySQL: with no MySQL client in the project, that the server refuses writes (SELECT @@global.read_only) is not checked, and a user with SUPER or CONNECTION_ADMIN would still write",
                get_str(inputs, "parameter").unwrap_or("read_only"),
                get_str(inputs, "value").unwrap_or("1"),
            )),
            ..Default::default()
        }
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let i = req.inputs;
        let instance = get_str(i, "instance").unwrap_or_default();
        let group = get_str(i, "group").unwrap_or_default();
        let parameter = get_str(i, "parameter").unwrap_or("read_only");
        if self.lift {
            let previous = get_str(i, "previous");
            // Only while the instance still uses the group: never touch a group it left.
            instance_group(&self.groups.aws, instance, group).await?;
            self.set(group, parameter, previous).await?;
            self.in_sync(ctx, req.node, instance, group, i).await?;
            ctx.report(
                req.node,
                &format!(
                    "instance {instance}: {parameter} {} in parameter group {group}: the fence is lifted",
                    previous.map(|v| format!("= {v} again")).unwrap_or_else(|| "back to the engine default".into())
                ),
            );
            return Ok(Attrs::from([(
                "lifted_at".to_string(),
                Value::from(
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                ),
            )]));
        }
        let value = get_str(i, "value").unwrap_or("1");
        // The instance must use the group, and the group must be settled before the change.
        self.in_sync(ctx, req.node, instance, group, i).await?;
        let user = self
            .groups
            .find(group)
            .await?
            .ok_or_else(|| ProviderError::new(format!("no DB parameter group `{group}`")))?
            .params;
        let mut previous = user.get(parameter).map(|(v, _)| v.clone());
        if previous.as_deref() == Some(value) {
            // Set already: by an interrupted run of this step, or by hand. The lift then goes
            // back to the engine default.
            ctx.report(
                req.node,
                &format!("{parameter} is {value} in {group} already (an interrupted fence, or set by hand): lifting the fence will reset it to the engine default"),
            );
            previous = None;
        }
        self.set(group, parameter, Some(value)).await?;
        let verified = async {
            self.in_sync(ctx, req.node, instance, group, i).await?;
            let now = self
                .groups
                .find(group)
                .await?
                .and_then(|f| f.params.get(parameter).map(|(v, _)| v.clone()));
            if now.as_deref() != Some(value) {
                return Err(ProviderError::new(format!(
                    "{parameter} in {group} reads {now:?} after it was set to {value}"
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = verified {
            // Not verified: put it back as it was, so a failed fence never leaves it half set.
            self.set(group, parameter, previous.as_deref()).await?;
            return Err(ProviderError {
                unchanged: true,
                ..e
            });
        }
        ctx.report(
            req.node,
            &format!("instance {instance}: {parameter} = {value} in parameter group {group}, in-sync: writes are refused"),
        );
        Ok(Attrs::from([
            ("instance".to_string(), Value::from(instance)),
            ("group".to_string(), Value::from(group)),
            ("parameter".to_string(), Value::from(parameter)),
            (
                "previous".to_string(),
                previous.map(Value::from).unwrap_or(Value::Null),
            ),
            (
                "fenced_at".to_string(),
                Value::from(
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                ),
            ),
            (
                "poll_ms".to_string(),
                Value::from(get_u64(i, "poll_ms").unwrap_or(5000)),
            ),
            (
                "within_s".to_string(),
                Value::from(get_u64(i, "within_s").unwrap_or(600)),
            ),
        ]))
    }
}

struct ParameterGroupType {
    aws: Arc<Aws>,
    cluster: bool,
}

fn parameters(inputs: &Attrs) -> BTreeMap<String, (String, String)> {
    inputs
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(PARAMETER)?;
            let value = v.get("value").and_then(Value::as_str)?.to_string();
            let apply = v
                .get("apply")
                .and_then(Value::as_str)
                .unwrap_or("pending-reboot")
                .to_string();
            Some((name.to_string(), (value, apply)))
        })
        .collect()
}

fn to_sdk(params: &BTreeMap<String, (String, String)>) -> Vec<Parameter> {
    params
        .iter()
        .map(|(k, (v, m))| {
            Parameter::builder()
                .parameter_name(k)
                .parameter_value(v)
                .apply_method(if m == "immediate" {
                    ApplyMethod::Immediate
                } else {
                    ApplyMethod::PendingReboot
                })
                .build()
        })
        .collect()
}

struct Found {
    arn: String,
    family: String,
    description: String,
    params: BTreeMap<String, (String, String)>,
    tags: Vec<(String, String)>,
}

impl ParameterGroupType {
    async fn find(&self, name: &str) -> Result<Option<Found>, ProviderError> {
        let rds = self.aws.rds().await;
        let (arn, family, description) = if self.cluster {
            match rds
                .describe_db_cluster_parameter_groups()
                .db_cluster_parameter_group_name(name)
                .send()
                .await
            {
                Ok(o) => match o.db_cluster_parameter_groups().first() {
                    // An emulator answers an empty list where AWS says "not found".
                    None => return Ok(None),
                    Some(g) => (
                        g.db_cluster_parameter_group_arn()
                            .unwrap_or_default()
                            .to_string(),
                        g.db_parameter_group_family()
                            .unwrap_or_default()
                            .to_string(),
                        g.description().unwrap_or_default().to_string(),
                    ),
                },
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_db_parameter_group_not_found_fault()) =>
                {
                    return Ok(None)
                }
                Err(e) => {
                    return Err(sdk_err(
                        &format!("describe DB cluster parameter group {name}"),
                        e,
                    ))
                }
            }
        } else {
            match rds
                .describe_db_parameter_groups()
                .db_parameter_group_name(name)
                .send()
                .await
            {
                Ok(o) => match o.db_parameter_groups().first() {
                    None => return Ok(None),
                    Some(g) => (
                        g.db_parameter_group_arn().unwrap_or_default().to_string(),
                        g.db_parameter_group_family()
                            .unwrap_or_default()
                            .to_string(),
                        g.description().unwrap_or_default().to_string(),
                    ),
                },
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_db_parameter_group_not_found_fault()) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(sdk_err(&format!("describe DB parameter group {name}"), e)),
            }
        };
        let mut params = BTreeMap::new();
        let mut marker: Option<String> = None;
        loop {
            let (list, next): (Vec<Parameter>, Option<String>) = if self.cluster {
                let o = rds
                    .describe_db_cluster_parameters()
                    .db_cluster_parameter_group_name(name)
                    .source("user")
                    .set_marker(marker.clone())
                    .send()
                    .await
                    .map_err(|e| sdk_err("describe cluster parameters", e))?;
                (o.parameters().to_vec(), o.marker().map(String::from))
            } else {
                let o = rds
                    .describe_db_parameters()
                    .db_parameter_group_name(name)
                    .source("user")
                    .set_marker(marker.clone())
                    .send()
                    .await
                    .map_err(|e| sdk_err("describe parameters", e))?;
                (o.parameters().to_vec(), o.marker().map(String::from))
            };
            for p in list {
                if let (Some(n), Some(v)) = (p.parameter_name(), p.parameter_value()) {
                    let m = p
                        .apply_method()
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_else(|| "pending-reboot".into());
                    params.insert(n.to_string(), (v.to_string(), m));
                }
            }
            match next {
                Some(m) if !m.is_empty() => marker = Some(m),
                _ => break,
            }
        }
        let tags = rds
            .list_tags_for_resource()
            .resource_name(&arn)
            .send()
            .await
            .map_err(|e| sdk_err("list tags", e))?
            .tag_list()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Ok(Some(Found {
            arn,
            family,
            description,
            params,
            tags,
        }))
    }

    fn observed(&self, name: &str, f: &Found) -> Observed {
        let inputs = ParameterGroupArgs {
            name: None,
            family: f.family.clone(),
            description: f.description.clone(),
            cluster: self.cluster,
            parameters: setting_inputs(
                f.params
                    .iter()
                    .map(|(k, (v, m))| (k.as_str(), v.as_str(), m.as_str())),
            ),
        };
        Observed {
            id: name.into(),
            inputs: inputs.to_attrs(),
            outputs: ParameterGroupOut {
                id: name.into(),
                name: name.into(),
                arn: f.arn.clone(),
                tags: tags_value(&f.tags),
            }
            .to_attrs(),
        }
    }

    async fn modify(
        &self,
        name: &str,
        params: &BTreeMap<String, (String, String)>,
    ) -> Result<(), ProviderError> {
        let rds = self.aws.rds().await;
        let all = to_sdk(params);
        // RDS takes at most 20 parameters per call.
        for chunk in all.chunks(20) {
            if self.cluster {
                rds.modify_db_cluster_parameter_group()
                    .db_cluster_parameter_group_name(name)
                    .set_parameters(Some(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_err(&format!("modify DB cluster parameter group {name}"), e)
                    })?;
            } else {
                rds.modify_db_parameter_group()
                    .db_parameter_group_name(name)
                    .set_parameters(Some(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("modify DB parameter group {name}"), e))?;
            }
        }
        Ok(())
    }

    async fn reset(
        &self,
        name: &str,
        params: &BTreeMap<String, (String, String)>,
    ) -> Result<(), ProviderError> {
        let rds = self.aws.rds().await;
        for chunk in to_sdk(params).chunks(20) {
            let reset: Vec<Parameter> = chunk
                .iter()
                .map(|p| {
                    Parameter::builder()
                        .set_parameter_name(p.parameter_name().map(String::from))
                        .set_apply_method(p.apply_method().cloned())
                        .build()
                })
                .collect();
            if self.cluster {
                rds.reset_db_cluster_parameter_group()
                    .db_cluster_parameter_group_name(name)
                    .set_parameters(Some(reset))
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("reset parameters of {name}"), e))?;
            } else {
                rds.reset_db_parameter_group()
                    .db_parameter_group_name(name)
                    .set_parameters(Some(reset))
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("reset parameters of {name}"), e))?;
            }
        }
        Ok(())
    }
}

/// The engine's view of a parameter group: an instance one (`Groups<false>`) or a cluster one
/// (`Groups<true>`), on the AWS driver.
struct Groups<const C: bool>(ParameterGroupType);

#[async_trait]
impl<const C: bool> AwsObject for Groups<C> {
    const TYPE: &'static str = if C {
        "aws.rds.cluster_parameter_group"
    } else {
        "aws.rds.parameter_group"
    };
    const SERVICE: &'static str = "rds";
    const WHAT: &'static str = if C {
        "DB cluster parameter group"
    } else {
        "DB parameter group"
    };
    const NAMED: bool = true;
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = ParameterGroupArgs;
    const NOT_FOUND: &'static [&'static str] = &["DBParameterGroupNotFound"];
    const EXISTS: &'static [&'static str] = &["DBParameterGroupAlreadyExists"];
    fn stable_outputs(&self) -> &'static [&'static str] {
        type O = ParameterGroupOut;
        &[O::id, O::name, O::arn]
    }
    fn planned_outputs(&self, _inputs: &Attrs, id: &str) -> Attrs {
        Attrs::from([
            (ParameterGroupOut::name.to_string(), Value::from(id)),
            (ParameterGroupOut::id.to_string(), Value::from(id)),
        ])
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        let mut v = vec![];
        let family = get_str(inputs, ParameterGroupArgs::family).unwrap_or_default();
        if !FAMILIES.contains(&family) {
            v.push(format!(
                "family `{family}` is not a parameter group family RDS offers; use one of {}",
                FAMILIES.join(", ")
            ));
        } else if C != family.starts_with("aurora") {
            v.push(format!(
                "family `{family}` is for {}; use {} here",
                if family.starts_with("aurora") {
                    "Aurora clusters"
                } else {
                    "RDS instances"
                },
                if C {
                    "a cluster parameter group of an aurora-* family"
                } else {
                    "an instance parameter group of a non-Aurora family, or ParameterGroup::cluster"
                }
            ));
        }
        if let Some(n) = get_str(inputs, ParameterGroupArgs::name) {
            if !n.starts_with(|c: char| c.is_ascii_alphabetic())
                || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                || n.contains("--")
                || n.ends_with('-')
                || n.len() > 255
            {
                v.push(format!("name `{n}` breaks RDS's rules: a letter first, then letters, digits and single hyphens, not ending in a hyphen"));
            }
        }
        for (k, p) in parameters(inputs) {
            if p.1 != "immediate" && p.1 != "pending-reboot" {
                v.push(format!(
                    "parameter `{k}`: apply method `{}` is neither immediate nor pending-reboot",
                    p.1
                ));
            }
        }
        v
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        name: &str,
    ) -> Result<Option<super::driver::Found>, AwsError> {
        Ok(self
            .0
            .find(name)
            .await?
            .map(|f| super::driver::Found::ready(self.0.observed(name, &f))))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &ParameterGroupArgs,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let (family, description) = (&args.family, &args.description);
        let t: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let rds = self.0.aws.rds().await;
        if C {
            rds.create_db_cluster_parameter_group()
                .db_cluster_parameter_group_name(name)
                .db_parameter_group_family(family)
                .description(description)
                .set_tags(Some(t))
                .send()
                .await
                .during(&format!("create DB cluster parameter group {name}"))?;
        } else {
            rds.create_db_parameter_group()
                .db_parameter_group_name(name)
                .db_parameter_group_family(family)
                .description(description)
                .set_tags(Some(t))
                .send()
                .await
                .during(&format!("create DB parameter group {name}"))?;
        }
        Ok(name.to_string())
    }
    /// The parameters are not part of the create call: set after it (and after an adoption).
    async fn settle(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &ParameterGroupArgs,
        name: &str,
    ) -> Result<(), AwsError> {
        Ok(self.0.modify(name, &parameters(&args.parameters)).await?)
    }
    /// Sets what changed and resets what the plan no longer sets.
    async fn modify(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &ParameterGroupArgs,
        id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        let want = parameters(&args.parameters);
        let have = self.0.find(id).await?.ok_or_else(|| {
            ProviderError::new(format!(
                "parameter group {id} does not exist; run `plan refresh` to record that"
            ))
        })?;
        let changed: BTreeMap<String, (String, String)> = want
            .iter()
            .filter(|(k, v)| have.params.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let removed: BTreeMap<String, (String, String)> = have
            .params
            .iter()
            .filter(|(k, _)| !want.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !changed.is_empty() {
            self.0.modify(id, &changed).await?;
        }
        if !removed.is_empty() {
            self.0.reset(id, &removed).await?;
        }
        Ok(())
    }
    async fn delete(&self, _ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        let rds = self.0.aws.rds().await;
        if C {
            rds.delete_db_cluster_parameter_group()
                .db_cluster_parameter_group_name(id)
                .send()
                .await
                .during(&format!("delete DB cluster parameter group {id}"))?;
        } else {
            rds.delete_db_parameter_group()
                .db_parameter_group_name(id)
                .send()
                .await
                .during(&format!("delete DB parameter group {id}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::planner::{plan, ActionKind, Options};
    use crate::state::State;

    #[test]
    fn a_kms_key_is_its_arn_not_an_alias_or_an_id() {
        assert!(kms_key_arn("arn:aws:kms:us-east-1:333333333333:key/1a2b-3c").is_ok());
        assert!(kms_key_arn("arn:aws-us-gov:kms:us-gov-west-1:333333333333:key/x").is_ok());
        for bad in [
            "alias/rds-data",
            "1a2b3c4d-5e6f",
            "arn:aws:kms:us-east-1:333333333333:alias/rds",
            "arn:aws:kms:us-east-1:3333:key/x",
            "arn:aws:kms::333333333333:key/x",
            "arn:aws:kms:us-east-1:333333333333:key/",
            "arn:aws:s3:us-east-1:333333333333:key/x",
        ] {
            let e = kms_key_arn(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("key's ARN"), "{e}");
        }
    }

    #[test]
    fn memory_sizes_are_written_in_the_units_rds_takes() {
        // Case 3's parameters: 8 kB pages for the buffers, kB for the work memories.
        assert_eq!(
            rds_memory("shared_buffers", "8GB").unwrap(),
            ("1048576".to_string(), "pending-reboot")
        );
        assert_eq!(
            rds_memory("effective_cache_size", "24GB").unwrap(),
            ("3145728".to_string(), "immediate")
        );
        assert_eq!(
            rds_memory("work_mem", "256MB").unwrap(),
            ("262144".to_string(), "immediate")
        );
        assert_eq!(
            rds_memory("maintenance_work_mem", "2GB").unwrap(),
            ("2097152".to_string(), "immediate")
        );
        assert_eq!(rds_memory("max_wal_size", "4GB").unwrap().0, "4096");
        assert!(rds_memory("shared_buffers", "12kB")
            .unwrap_err()
            .contains("whole number of the parameter's unit (8 kB)"));
        assert!(rds_memory("work_mem", "256 mb")
            .unwrap_err()
            .contains("unit `mb`"));
        assert!(rds_memory("max_connections", "1GB")
            .unwrap_err()
            .contains("not a memory parameter"));
        let g = ParameterGroup::instance("postgres12", "t")
            .memory("shared_buffers", "8GB")
            .unwrap()
            .pending_reboot("rds.logical_replication", "1")
            .immediate("work_mem", "1024");
        assert_eq!(
            g.static_digest(),
            "rds.logical_replication=1\nshared_buffers=1048576"
        );
    }

    fn registry() -> Registry {
        let stack = crate::stack::Stack::parse(
            "t",
            std::path::Path::new("stacks/t.toml"),
            "plan = \"p\"\nprovider = \"aws\"\nregion = \"us-east-1\"\n",
        )
        .unwrap();
        crate::provider::registry_for_stack(&stack).unwrap()
    }

    /// moto 5.2.5 answers ResetDBParameterGroup and ResetDBClusterParameterGroup with a 500, so
    /// the reset of parameters removed from a plan is checked here instead: the exact request the
    /// SDK sends, captured before it leaves.
    #[tokio::test]
    async fn removed_parameters_are_reset_with_the_exact_request() {
        for cluster in [false, true] {
            let (http, rx) = aws_smithy_http_client::test_util::capture_request(None);
            let conf = aws_sdk_rds::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_rds::config::Region::new("us-east-1"))
                .credentials_provider(aws_sdk_rds::config::Credentials::new(
                    "a", "b", None, None, "t",
                ))
                .http_client(http)
                .build();
            let t = ParameterGroupType {
                aws: Aws::with_rds(aws_sdk_rds::Client::from_conf(conf)),
                cluster,
            };
            let removed = BTreeMap::from([(
                "work_mem".to_string(),
                ("262144".to_string(), "immediate".to_string()),
            )]);
            // The captured reply is empty, which the SDK may not parse: the request is what counts.
            let _ = t.reset("target-params", &removed).await;
            let req = rx.expect_request();
            let body = std::str::from_utf8(req.body().bytes().unwrap())
                .unwrap()
                .to_string();
            let (action, group) = if cluster {
                (
                    "ResetDBClusterParameterGroup",
                    "DBClusterParameterGroupName",
                )
            } else {
                ("ResetDBParameterGroup", "DBParameterGroupName")
            };
            assert!(body.contains(&format!("Action={action}")), "{body}");
            assert!(body.contains(&format!("{group}=target-params")), "{body}");
            assert!(
                body.contains("Parameters.Parameter.1.ParameterName=work_mem"),
                "{body}"
            );
            assert!(
                body.contains("Parameters.Parameter.1.ApplyMethod=immediate"),
                "{body}"
            );
            assert!(
                !body.contains("ResetAllParameters=true"),
                "only the removed parameter is reset: {body}"
            );
        }
    }

    #[test]
    fn families_are_checked_offline_with_the_fix() {
        let r = registry();
        let p = crate::dsl::Plan::named("p", "t", "aws");
        p.add("typo", ParameterGroup::instance("postgres99", "x"));
        p.add(
            "wrong-kind",
            ParameterGroup::instance("aurora-postgresql15", "x"),
        );
        let err = Graph::build(p.finish(), &|t, k| r.resolve(t, k))
            .unwrap_err()
            .to_string();
        assert!(err.contains("node `typo` (aws.rds.parameter_group): family `postgres99` is not a parameter group family RDS offers"), "{err}");
        assert!(err.contains("node `wrong-kind` (aws.rds.parameter_group): family `aurora-postgresql15` is for Aurora clusters"), "{err}");
    }

    #[test]
    fn a_parameter_group_of_another_family_than_the_engine_version_fails_offline() {
        assert_eq!(
            family_for("postgres", "15.4").as_deref(),
            Some("postgres15")
        );
        assert_eq!(
            family_for("aurora-mysql", "8.0.mysql_aurora.3.04.0").as_deref(),
            Some("aurora-mysql8.0")
        );
        assert_eq!(family_for("mysql", "8.0.35").as_deref(), Some("mysql8.0"));
        let r = registry();
        let p = crate::dsl::Plan::named("p", "t", "aws");
        let cluster_params = p.add(
            "cluster-params",
            ParameterGroup::cluster("aurora-postgresql14", "x"),
        );
        p.add(
            "target",
            crate::prelude::AuroraCluster::postgres("15.4")
                .managed_master("admin")
                .parameter_group(cluster_params.group_name()),
        );
        let params = p.add("params", ParameterGroup::instance("postgres15", "x"));
        p.add(
            "fine",
            crate::prelude::DbInstance::postgres("15.4", "db.m6g.large", 100)
                .managed_master("admin")
                .parameter_group(params.group_name()),
        );
        let err = Graph::build(p.finish(), &|t, k| r.resolve(t, k))
            .unwrap_err()
            .to_string();
        assert!(err.contains("node `target` (aws.rds.cluster): `parameter_group` is a parameter group of family `aurora-postgresql14`, but aurora-postgresql 15.4 needs family `aurora-postgresql15`; change the group's family or the engine version"), "{err}");
        assert!(!err.contains("node `fine`"), "{err}");
    }

    #[test]
    fn parameters_diff_one_by_one_and_family_forces_replacement() {
        let r = registry();
        let mk = |family: &str, work_mem: &str| {
            let p = crate::dsl::Plan::named("p", "t", "aws");
            p.add(
                "params",
                ParameterGroup::instance(family, "target")
                    .immediate("work_mem", work_mem)
                    .pending_reboot("shared_buffers", "8192"),
            );
            Graph::build(p.finish(), &|t, k| r.resolve(t, k)).unwrap()
        };
        let g = mk("postgres15", "262144");
        let mut st = State::new("p", "t");
        st.nodes.insert(
            "params".into(),
            crate::state::NodeRecord::Resource(crate::state::ResourceRecord {
                type_name: "aws.rds.parameter_group".into(),
                id: "p-t-params".into(),
                inputs: g.spec.nodes[0].inputs.clone(),
                outputs: Attrs::new(),
                deps: vec![],
                temporary: false,
                protect: false,
                retain_on_delete: false,
                retired: false,
                drift: vec![],
                updated_at: "t".into(),
                location: None,
            }),
        );
        let cs = plan(&mk("postgres15", "524288"), &st, &r, &Options::default()).unwrap();
        let a = &cs.actions[0];
        assert_eq!(a.action, ActionKind::Update);
        assert_eq!(a.changes.len(), 1);
        assert_eq!(a.changes[0].attribute, "parameter.work_mem");
        let cs = plan(&mk("postgres16", "262144"), &st, &r, &Options::default()).unwrap();
        assert_eq!(cs.actions[0].action, ActionKind::Replace);
        assert_eq!(cs.actions[0].reason, "`family` cannot change in place");
    }
}
