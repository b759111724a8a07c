//! The network a migration needs: a VPC and its subnets looked up by id or `Name` tag (read-only
//! data nodes, `aws.ec2.vpc`, `aws.ec2.subnets`), security groups with their ingress rules
//! (`aws.ec2.security_group`: the database port from a CIDR or from another group), and the DB
//! subnet group RDS and Aurora place instances in (`aws.rds.subnet_group`).
//!
//! Security groups and subnet groups carry our tags; one that exists without them is never taken
//! over. Rules are diffed one by one: a changed rule set revokes what went and authorizes what
//! came, never touching the rest.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, ResourceType as Ec2ResourceType, Tag, TagSpecification,
    UserIdGroupPair,
};

use super::driver::{AwsError, AwsObject, Call, Driven, Found, Ownership};
use super::{sdk_err, tags_value, Aws};
use crate::dsl::{Declare, NodeKind, Output};
use crate::provider::model::Model;
use crate::provider::{Ctx, DataType, Observed, ProviderError, Registry, Request};
use crate::value::{get_str, Attrs, Value};

pub fn register(r: &mut Registry, aws: Arc<Aws>) {
    r.data(VpcType { aws: aws.clone() });
    r.data(SubnetsType { aws: aws.clone() });
    r.resource(Driven(SecurityGroupType { aws: aws.clone() }));
    r.resource(Driven(SubnetGroupType { aws }));
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

fn name_filter(name: &str) -> Filter {
    Filter::builder().name("tag:Name").values(name).build()
}

// ---------------------------------------------------------------------------------------------
// Look-ups

/// A VPC by id (`vpc-...`) or by its `Name` tag.
#[derive(Debug, Clone)]
pub struct Vpc {
    key: String,
}

impl Vpc {
    pub fn find(id_or_name: &str) -> Self {
        Vpc {
            key: id_or_name.into(),
        }
    }
}

impl Declare for Vpc {
    const TYPE: &'static str = "aws.ec2.vpc";
    const KIND: NodeKind = NodeKind::Data;
    fn inputs(self) -> Attrs {
        Attrs::from([("find".to_string(), Value::from(self.key))])
    }
}

crate::outputs!(Vpc {
    vpc_id: String = "id",
});

struct VpcType {
    aws: Arc<Aws>,
}

#[async_trait]
impl DataType for VpcType {
    fn type_name(&self) -> &'static str {
        "aws.ec2.vpc"
    }
    fn service(&self) -> &'static str {
        "ec2"
    }
    async fn read(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let key = get_str(req.inputs, "find").unwrap_or_default();
        let mut q = self.aws.ec2().await.describe_vpcs();
        q = if key.starts_with("vpc-") {
            q.vpc_ids(key)
        } else {
            q.filters(name_filter(key))
        };
        let out = q
            .send()
            .await
            .map_err(|e| sdk_err(&format!("find VPC {key}"), e))?;
        match out.vpcs() {
            [v] => Ok(Attrs::from([
                ("id".to_string(), Value::from(v.vpc_id().unwrap_or_default())),
                (
                    "cidr".to_string(),
                    Value::from(v.cidr_block().unwrap_or_default()),
                ),
            ])),
            [] => Err(ProviderError::new(format!(
                "no VPC `{key}` (by id, or by its Name tag) in this region: check the stack's region and the name"
            ))),
            many => Err(ProviderError::new(format!(
                "{} VPCs are named `{key}`: refer to one by id",
                many.len()
            ))),
        }
    }
}

/// The subnets of a VPC, optionally only those whose `Name` tag matches (wildcards allowed).
#[derive(Debug, Clone)]
pub struct Subnets {
    inputs: Attrs,
}

impl Subnets {
    pub fn of(vpc: Output<String>) -> Self {
        Subnets {
            inputs: Attrs::from([("vpc".to_string(), vpc.into())]),
        }
    }
    pub fn named(mut self, pattern: &str) -> Self {
        self.inputs.insert("name".into(), Value::from(pattern));
        self
    }
}

crate::declare!(Subnets, "aws.ec2.subnets", Data);

crate::outputs!(Subnets {
    /// The subnet ids, sorted.
    ids: Vec<String> = "ids",
});

struct SubnetsType {
    aws: Arc<Aws>,
}

#[async_trait]
impl DataType for SubnetsType {
    fn type_name(&self) -> &'static str {
        Subnets::TYPE
    }
    fn service(&self) -> &'static str {
        "ec2"
    }
    async fn read(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let vpc = get_str(req.inputs, "vpc").unwrap_or_default();
        let mut q = self
            .aws
            .ec2()
            .await
            .describe_subnets()
            .filters(Filter::builder().name("vpc-id").values(vpc).build());
        if let Some(n) = get_str(req.inputs, "name") {
            q = q.filters(name_filter(n));
        }
        let out = q
            .send()
            .await
            .map_err(|e| sdk_err(&format!("subnets of {vpc}"), e))?;
        let mut found: Vec<(String, String)> = out
            .subnets()
            .iter()
            .map(|s| {
                (
                    s.subnet_id().unwrap_or_default().to_string(),
                    s.availability_zone().unwrap_or_default().to_string(),
                )
            })
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(ProviderError::new(format!(
                "VPC {vpc} has no subnets{}",
                get_str(req.inputs, "name")
                    .map(|n| format!(" named `{n}`"))
                    .unwrap_or_default()
            )));
        }
        let zones: BTreeSet<&String> = found.iter().map(|(_, z)| z).collect();
        Ok(Attrs::from([
            (
                "ids".to_string(),
                serde_json::json!(found.iter().map(|(i, _)| i).collect::<Vec<_>>()),
            ),
            ("zones".to_string(), serde_json::json!(zones)),
        ]))
    }
}

// ---------------------------------------------------------------------------------------------
// Security group

crate::model! {
    /// What a security group is declared with.
    pub struct SecurityGroupArgs {
        /// The VPC's id (AWS cannot move a group, nor change its description).
        vpc: String [replace],
        description: String [replace],
        /// `tcp PORT from SOURCE` (a CIDR or a group id), a set.
        ingress: Vec<String>,
    }
}

crate::model! {
    /// What a security group reports.
    pub struct SecurityGroupOut {
        id: String,
        name: String,
        tags: Value,
    }
}

/// A security group in a VPC with TCP ingress rules.
#[derive(Debug, Clone)]
pub struct SecurityGroup {
    inputs: Attrs,
    rules: Vec<Value>,
}

impl SecurityGroup {
    pub fn in_vpc(vpc: Output<String>, description: &str) -> Self {
        SecurityGroup {
            inputs: Attrs::from([
                (SecurityGroupArgs::vpc.to_string(), vpc.into()),
                (
                    SecurityGroupArgs::description.to_string(),
                    Value::from(description),
                ),
            ]),
            rules: vec![],
        }
    }
    /// TCP `port` from a CIDR block.
    pub fn ingress_from_cidr(mut self, port: u16, cidr: &str) -> Self {
        self.rules
            .push(Value::from(format!("tcp {port} from {cidr}")));
        self
    }
    /// TCP `port` from the members of another group (its `group_id()`).
    pub fn ingress_from_group(mut self, port: u16, group: Output<String>) -> Self {
        self.rules.push(
            Output::<String>::from(format!("tcp {port} from ").as_str())
                .join(group)
                .into(),
        );
        self
    }
}

impl Declare for SecurityGroup {
    const TYPE: &'static str = SecurityGroupType::TYPE;
    const KIND: NodeKind = NodeKind::Resource;
    fn inputs(mut self) -> Attrs {
        self.inputs
            .insert(SecurityGroupArgs::ingress.into(), Value::Array(self.rules));
        self.inputs
    }
}

crate::outputs!(SecurityGroup {
    group_id: String = SecurityGroupOut::id,
});

/// A rule `tcp PORT from SOURCE` (a CIDR or a group id).
fn parse_rule(r: &str) -> Result<(i32, String), ProviderError> {
    let bad = || {
        ProviderError::new(format!(
            "ingress rule `{r}`: expected `tcp PORT from CIDR-or-sg-id`"
        ))
    };
    let mut w = r.split_whitespace();
    if w.next() != Some("tcp") {
        return Err(bad());
    }
    let port: i32 = w.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    if w.next() != Some("from") {
        return Err(bad());
    }
    let source = w.next().ok_or_else(bad)?.to_string();
    Ok((port, source))
}

fn permission(port: i32, source: &str) -> IpPermission {
    let b = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port)
        .to_port(port);
    if source.starts_with("sg-") {
        b.user_id_group_pairs(UserIdGroupPair::builder().group_id(source).build())
            .build()
    } else {
        b.ip_ranges(IpRange::builder().cidr_ip(source).build())
            .build()
    }
}

struct SecurityGroupType {
    aws: Arc<Aws>,
}

/// Rules are a set: when the group has exactly the declared rules, report them in the declared
/// order, so order is never drift.
fn in_declared_order(mut o: Observed, declared: &Attrs) -> Observed {
    let key = SecurityGroupArgs::ingress;
    let want = list(declared.get(key));
    let have: BTreeSet<String> = list(o.inputs.get(key)).into_iter().collect();
    if want.len() == have.len() && want.iter().all(|r| have.contains(r)) {
        o.inputs.insert(key.into(), serde_json::json!(want));
    }
    o
}

impl SecurityGroupType {
    /// Brings the group's rules to `want`: revokes what is not wanted, authorizes what is missing.
    async fn set_rules(
        &self,
        req: &Request<'_>,
        id: &str,
        want: &[String],
    ) -> Result<(), AwsError> {
        let have: BTreeSet<String> = match self.describe_id(req, id).await? {
            Some(f) => list(f.observed.inputs.get(SecurityGroupArgs::ingress))
                .into_iter()
                .collect(),
            None => BTreeSet::new(),
        };
        let want: BTreeSet<String> = want.iter().cloned().collect();
        let ec2 = self.aws.ec2().await;
        for r in have.difference(&want) {
            let (port, source) = parse_rule(r)?;
            ec2.revoke_security_group_ingress()
                .group_id(id)
                .ip_permissions(permission(port, &source))
                .send()
                .await
                .during(&format!("revoke `{r}` on {id}"))?;
        }
        for r in want.difference(&have) {
            let (port, source) = parse_rule(r)?;
            ec2.authorize_security_group_ingress()
                .group_id(id)
                .ip_permissions(permission(port, &source))
                .send()
                .await
                .during(&format!("authorize `{r}` on {id}"))?;
        }
        Ok(())
    }

    async fn describe_id(
        &self,
        req: &Request<'_>,
        reference: &str,
    ) -> Result<Option<Found>, AwsError> {
        let ec2 = self.aws.ec2().await;
        // A record keeps the group's id; a create's intent its name, unique in its VPC.
        let b = if reference.starts_with("sg-") {
            ec2.describe_security_groups().group_ids(reference)
        } else {
            ec2.describe_security_groups()
                .filters(
                    Filter::builder()
                        .name("vpc-id")
                        .values(get_str(req.inputs, SecurityGroupArgs::vpc).unwrap_or_default())
                        .build(),
                )
                .filters(
                    Filter::builder()
                        .name("group-name")
                        .values(reference)
                        .build(),
                )
        };
        let out = b
            .send()
            .await
            .during(&format!("describe security group {reference}"))?;
        let Some(g) = out.security_groups().first() else {
            return Ok(None);
        };
        let id = g.group_id().unwrap_or_default();
        let mut rules = BTreeSet::new();
        for p in g.ip_permissions() {
            let port = p.from_port().unwrap_or(0);
            for r in p.ip_ranges() {
                rules.insert(format!(
                    "tcp {port} from {}",
                    r.cidr_ip().unwrap_or_default()
                ));
            }
            for r in p.user_id_group_pairs() {
                rules.insert(format!(
                    "tcp {port} from {}",
                    r.group_id().unwrap_or_default()
                ));
            }
        }
        let tags: Vec<(String, String)> = g
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let o = Observed {
            id: id.to_string(),
            inputs: SecurityGroupArgs {
                vpc: g.vpc_id().unwrap_or_default().into(),
                description: g.description().unwrap_or_default().into(),
                ingress: rules.into_iter().collect(),
            }
            .to_attrs(),
            outputs: SecurityGroupOut {
                id: id.into(),
                name: g.group_name().unwrap_or_default().into(),
                tags: tags_value(&tags),
            }
            .to_attrs(),
        };
        Ok(Some(Found::ready(in_declared_order(o, req.inputs))))
    }
}

#[async_trait]
impl AwsObject for SecurityGroupType {
    const TYPE: &'static str = "aws.ec2.security_group";
    const SERVICE: &'static str = "ec2";
    const WHAT: &'static str = "security group";
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = SecurityGroupArgs;
    const NOT_FOUND: &'static [&'static str] = &["InvalidGroup.NotFound"];
    const EXISTS: &'static [&'static str] = &["InvalidGroup.Duplicate"];
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        list(inputs.get(SecurityGroupArgs::ingress))
            .iter()
            .filter(|r| !crate::value::has_refs(&Value::from(r.as_str())))
            .filter_map(|r| parse_rule(r).err().map(|e| e.message))
            .collect()
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        reference: &str,
    ) -> Result<Option<Found>, AwsError> {
        self.describe_id(req, reference).await
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &SecurityGroupArgs,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let mut spec = TagSpecification::builder().resource_type(Ec2ResourceType::SecurityGroup);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(k).value(v).build());
        }
        Ok(self
            .aws
            .ec2()
            .await
            .create_security_group()
            .group_name(name)
            .description(&args.description)
            .vpc_id(&args.vpc)
            .tag_specifications(spec.build())
            .send()
            .await
            .during(&format!("create security group {name}"))?
            .group_id()
            .unwrap_or_default()
            .to_string())
    }
    /// The rules are not part of the create call: set after it (and after an adoption).
    async fn settle(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        args: &SecurityGroupArgs,
        id: &str,
    ) -> Result<(), AwsError> {
        self.set_rules(req, id, &args.ingress).await
    }
    async fn modify(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        args: &SecurityGroupArgs,
        id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        self.set_rules(req, id, &args.ingress).await
    }
    async fn delete(&self, _ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        match self
            .aws
            .ec2()
            .await
            .delete_security_group()
            .group_id(id)
            .send()
            .await
        {
            Err(e) if e.code() == Some("DependencyViolation") => Err(ProviderError::new(format!(
                "security group {id} is still in use (by an instance or another group's rule): {}",
                e.message().unwrap_or_default()
            ))
            .into()),
            r => r.during(&format!("delete security group {id}")).map(|_| ()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DB subnet group

crate::model! {
    /// What a DB subnet group is declared with.
    pub struct SubnetGroupArgs {
        /// Subnet ids, in at least two availability zones.
        subnets: Vec<String>,
        description: String,
    }
}

crate::model! {
    /// What a DB subnet group reports.
    pub struct SubnetGroupOut {
        name: String,
        arn: String,
        vpc: String,
        tags: Value,
    }
}

/// The subnets RDS and Aurora place instances in (named after the node).
#[derive(Debug, Clone)]
pub struct SubnetGroup {
    inputs: Attrs,
}

impl SubnetGroup {
    pub fn of(subnets: Output<Vec<String>>, description: &str) -> Self {
        SubnetGroup {
            inputs: Attrs::from([
                (SubnetGroupArgs::subnets.to_string(), subnets.into()),
                (
                    SubnetGroupArgs::description.to_string(),
                    Value::from(description),
                ),
            ]),
        }
    }
}

crate::declare!(SubnetGroup, SubnetGroupType::TYPE, Resource);

crate::outputs!(SubnetGroup {
    /// The group's name (what a cluster's `subnet_group` takes).
    group_name: String = SubnetGroupOut::name,
});

struct SubnetGroupType {
    aws: Arc<Aws>,
}

#[async_trait]
impl AwsObject for SubnetGroupType {
    const TYPE: &'static str = "aws.rds.subnet_group";
    const SERVICE: &'static str = "rds";
    const WHAT: &'static str = "DB subnet group";
    const OWNERSHIP: Ownership = Ownership::Tags;
    type Args = SubnetGroupArgs;
    const NOT_FOUND: &'static [&'static str] = &["DBSubnetGroupNotFoundFault"];
    const EXISTS: &'static [&'static str] = &["DBSubnetGroupAlreadyExists"];
    /// Its name is known before it exists: the deterministic one.
    fn planned_outputs(&self, _inputs: &Attrs, id: &str) -> Attrs {
        Attrs::from([(SubnetGroupOut::name.to_string(), Value::from(id))])
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match inputs
            .get(SubnetGroupArgs::subnets)
            .and_then(Value::as_array)
        {
            Some(a) if a.len() < 2 => {
                vec!["a DB subnet group needs subnets in at least two availability zones".into()]
            }
            _ => vec![],
        }
    }
    async fn describe(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        name: &str,
    ) -> Result<Option<Found>, AwsError> {
        let rds = self.aws.rds().await;
        let out = rds
            .describe_db_subnet_groups()
            .db_subnet_group_name(name)
            .send()
            .await
            .during(&format!("describe DB subnet group {name}"))?;
        let Some(g) = out.db_subnet_groups().first() else {
            return Ok(None);
        };
        let arn = g.db_subnet_group_arn().unwrap_or_default().to_string();
        let tags: Vec<(String, String)> = if arn.is_empty() {
            vec![]
        } else {
            rds.list_tags_for_resource()
                .resource_name(&arn)
                .send()
                .await
                .during(&format!("tags of DB subnet group {name}"))?
                .tag_list()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_string(),
                        t.value().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        let mut subnets: Vec<String> = g
            .subnets()
            .iter()
            .filter_map(|s| s.subnet_identifier().map(String::from))
            .collect();
        subnets.sort();
        Ok(Some(Found::ready(Observed {
            id: name.to_string(),
            inputs: SubnetGroupArgs {
                subnets,
                description: g.db_subnet_group_description().unwrap_or_default().into(),
            }
            .to_attrs(),
            outputs: SubnetGroupOut {
                name: name.into(),
                arn,
                vpc: g.vpc_id().unwrap_or_default().into(),
                tags: tags_value(&tags),
            }
            .to_attrs(),
        })))
    }
    async fn create(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &SubnetGroupArgs,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let mut b = self
            .aws
            .rds()
            .await
            .create_db_subnet_group()
            .db_subnet_group_name(name)
            .db_subnet_group_description(&args.description)
            .set_subnet_ids(Some(args.subnets.clone()));
        for (k, v) in tags {
            b = b.tags(aws_sdk_rds::types::Tag::builder().key(k).value(v).build());
        }
        b.send()
            .await
            .during(&format!("create DB subnet group {name}"))?;
        Ok(name.to_string())
    }
    async fn modify(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        args: &SubnetGroupArgs,
        id: &str,
        _changed: &[String],
    ) -> Result<(), AwsError> {
        self.aws
            .rds()
            .await
            .modify_db_subnet_group()
            .db_subnet_group_name(id)
            .db_subnet_group_description(&args.description)
            .set_subnet_ids(Some(args.subnets.clone()))
            .send()
            .await
            .during(&format!("modify DB subnet group {id}"))?;
        Ok(())
    }
    async fn delete(&self, _ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), AwsError> {
        self.aws
            .rds()
            .await
            .delete_db_subnet_group()
            .db_subnet_group_name(id)
            .send()
            .await
            .during(&format!("delete DB subnet group {id}"))?;
        Ok(())
    }
}
