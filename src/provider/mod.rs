//! The provider interface: what a resource, data or step type must do for the engine, and the
//! registry the CLI fills with the types a stack's provider offers.
//!
//! The engine (planner, executor, state) sees types only through these traits; it must never name
//! a concrete provider. A provider must never return a revealed secret in what it observes: the
//! engine stores observed attributes in state.

pub mod aws;
pub mod builtin;
pub mod http;
pub mod local_file;
pub mod local_pg;
pub mod model;
pub mod pg_conn;
pub mod pg_steps;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::dsl::NodeKind;
use crate::value::{Attrs, SecretSource};

/// A failure of a provider call, with what to do about it when known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}{}", .fix.as_ref().map(|f| format!("; {f}")).unwrap_or_default())]
pub struct ProviderError {
    pub message: String,
    pub fix: Option<String>,
    /// The call was refused before it changed anything (nothing to reconcile afterwards).
    pub unchanged: bool,
}

impl ProviderError {
    pub fn new(message: impl Into<String>) -> Self {
        ProviderError {
            message: message.into(),
            fix: None,
            unchanged: false,
        }
    }
    pub fn with_fix(message: impl Into<String>, fix: impl Into<String>) -> Self {
        ProviderError {
            message: message.into(),
            fix: Some(fix.into()),
            unchanged: false,
        }
    }
    /// A refusal that changed nothing (its intent is dropped, not reconciled).
    pub fn refused(message: impl Into<String>, fix: impl Into<String>) -> Self {
        ProviderError {
            unchanged: true,
            ..Self::with_fix(message, fix)
        }
    }
}

/// Passwords made at connect time for a database user (RDS IAM authentication tokens), given by
/// the provider whose cloud signs them.
pub trait TokenSource: Send + Sync {
    /// A token for `user` at `host:port`, valid for a short while (15 minutes for RDS).
    fn token<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        user: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>;
}

/// A sink for progress lines of a long operation ("status creating -> available").
pub type ProgressFn = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What every call gets: where relative paths start, where secrets come from, and how to report
/// progress.
#[derive(Clone)]
pub struct Ctx {
    pub root: PathBuf,
    pub plan: String,
    pub stack: String,
    pub secrets: Arc<dyn SecretSource>,
    pub progress: ProgressFn,
    /// The stack's `[connect]` table: a database node's name or a host name -> the `HOST:PORT`
    /// this machine dials instead (data-plane steps apply it to their connections).
    pub connect: Arc<BTreeMap<String, String>>,
    /// Whether servers (a subscription's connection string) dial the `[connect]` addresses too.
    pub connect_servers: bool,
    /// Where database authentication tokens come from (IAM authentication), if the stack's
    /// provider makes them.
    pub tokens: Option<Arc<dyn TokenSource>>,
    /// What this run left in the cloud on purpose (final snapshots, snapshots of forgotten
    /// steps, retained objects), for the list at the end of the run.
    pub kept: Arc<std::sync::Mutex<Vec<Kept>>>,
}

/// Something a delete or a destroy leaves on purpose (a final snapshot, a retained object):
/// still there and still billed, listed at the end of the run with how to delete it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub node: String,
    /// What it is, with its identifier (`final snapshot \`x-final-…\` of cluster \`x\``).
    pub what: String,
    /// How to delete it when it is no longer wanted (a command).
    pub delete_with: String,
}

impl Ctx {
    /// A context with no progress sink.
    pub fn new(root: PathBuf, plan: &str, stack: &str, secrets: Arc<dyn SecretSource>) -> Ctx {
        Ctx {
            root,
            plan: plan.into(),
            stack: stack.into(),
            secrets,
            progress: Arc::new(|_, _| {}),
            connect: Arc::new(BTreeMap::new()),
            connect_servers: false,
            tokens: None,
            kept: Arc::default(),
        }
    }
    /// Records that `node`'s operation left `what` on purpose; `delete_with` deletes it.
    pub fn keep(&self, node: &str, what: String, delete_with: String) {
        self.kept.lock().unwrap().push(Kept {
            node: node.into(),
            what,
            delete_with,
        });
    }
    /// Reports progress of `node`.
    pub fn report(&self, node: &str, message: &str) {
        (self.progress)(node, message)
    }
    /// A path relative to the project root, or absolute.
    pub fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.root.join(p)
        }
    }
}

/// One call's subject: the node, its deterministic identifier and its inputs. For create, update,
/// delete, run and data reads the engine has resolved references and revealed secrets for this call
/// only: a provider must never log them nor return them in what it observes. A step's probe gets
/// them revealed too (it talks to what the step changed); for resource reads that reconcile or
/// refresh, secrets are still references.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub node: &'a str,
    /// Derived from plan, stack and node: the name of the object unless the inputs set one.
    pub deterministic_id: &'a str,
    pub inputs: &'a Attrs,
}

/// An object as the provider sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The object's identifier (an ARN, a path).
    pub id: String,
    /// The inputs as the object has them now (for drift); secrets omitted.
    pub inputs: Attrs,
    pub outputs: Attrs,
}

/// What a step's probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The step's effect is in place: record it done with these outputs.
    Done(Attrs),
    /// The effect is absent: the step may run.
    NotDone,
}

/// The check every imported identifier passes whatever its type: not empty, no control
/// characters, no white space around it, at most 2048 bytes.
pub fn plain_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    if id.len() > 2048 {
        return Err(format!(
            "the id is {} bytes long; no identifier is",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the id holds the control character {c:?}; check what was pasted"
        ));
    }
    if id.trim() != id {
        return Err("the id begins or ends with white space; quote only the id".into());
    }
    Ok(())
}

/// An RDS identifier (instance, cluster): 1-63 letters, digits and hyphens, beginning with a
/// letter, with no two hyphens in a row and none at the end.
pub fn rds_identifier(id: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("an RDS identifier has 1-63 letters, digits and hyphens, begins with a letter, and has no `--` and no `-` at the end (e.g. `orders-db`); an ARN or an endpoint is not one".into())
    }
}

/// How much a finding of a type's check (`check`) matters: an `Error` stops an apply before any
/// change; `Unavailable` says the check could not run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckLevel {
    Note,
    Warning,
    Error,
    Unavailable,
}

impl std::fmt::Display for CheckLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckLevel::Note => "note",
            CheckLevel::Warning => "warning",
            CheckLevel::Error => "error",
            CheckLevel::Unavailable => "unavailable",
        })
    }
}

/// What a node means to a reviewer, from its type (never guessed by a renderer): whether its
/// object holds data, whether the step fences writers or re-points traffic, what it checks
/// before it acts, whether `plan rollback` undoes it, and what it cannot verify.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Review {
    /// Destroying or replacing the object loses data (a database, a snapshot).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holds_data: bool,
    /// The step stops writers (a cutover's fence).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fences_writes: bool,
    /// What the step re-points the application's traffic through (a DNS record, a pooler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moves_traffic: Option<String>,
    /// The bounds the step checks before it acts (or waits for), in a person's words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<String>,
    /// `plan rollback` undoes the step once done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_roll_back: bool,
    /// Running the step ends what a rollback relies on (the reverse replication).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ends_rollback: bool,
    /// Once the step ran, `plan rollback` refuses (and why): see `StepType::rollback_refusal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuses_rollback: Option<String>,
    /// What the step cannot verify, shown under it in the preview.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
    /// What the object is billed by the hour as (`dms.r5.xlarge`, `db.m5.2xlarge postgres`),
    /// for the pull-request comment's list of temporaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_as: Option<String>,
}

impl Review {
    pub fn is_empty(&self) -> bool {
        *self == Review::default()
    }
    /// A guard on a number of bytes, as a person reads it (`lag under 16 MB`).
    pub fn bytes(n: u64) -> String {
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            format!("{} GB", n >> 30)
        } else if n >= 1 << 20 {
            format!("{} MB", n >> 20)
        } else if n >= 1 << 10 {
            format!("{} kB", n >> 10)
        } else {
            format!("{n} bytes")
        }
    }
}

/// A declarative resource type.
#[async_trait]
pub trait ResourceType: Send + Sync {
    fn type_name(&self) -> &'static str;
    /// What the node means to a reviewer (whether its object holds data).
    fn review(&self, _inputs: &Attrs) -> Review {
        Review::default()
    }
    /// The API this type calls, for per-service concurrency limits.
    fn service(&self) -> &'static str;
    /// Inputs that cannot change in place: a change replaces the object.
    fn force_new(&self) -> &'static [&'static str] {
        &[]
    }
    /// Read-only checks that need the cloud (is this instance class orderable here?), shown by
    /// `preview --refresh` and run before an apply creates or changes the object; an `error`
    /// stops the apply before any change. `(level, message)`; `None` when the type has none.
    /// The inputs may still hold references to outputs not known yet, and secrets unrevealed.
    async fn check(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
    ) -> Result<Option<Vec<(CheckLevel, String)>>, ProviderError> {
        Ok(None)
    }
    /// Offline checks against the nodes this one refers to: `referenced(input)` gives the type and
    /// declared inputs of the node an input (or a path into one, `dimensions.KEY`) refers to (a cluster's parameter group, to compare its
    /// family with the engine version). Each message names the input and the fix.
    fn validate_refs(
        &self,
        _inputs: &Attrs,
        _referenced: &dyn Fn(&str) -> Option<(String, Attrs)>,
    ) -> Vec<String> {
        vec![]
    }
    /// Whether `create` finds an object an interrupted create of this node started (by its tags)
    /// and waits for it instead of making another. If so, an apply resumes an interrupted create
    /// (the wait goes on) rather than recording the object as it stands, perhaps not yet usable.
    fn create_resumes(&self) -> bool {
        false
    }
    /// Inputs used only when the object is created; afterwards steps own them (a pooler's routes,
    /// moved by the cutover), so they are never diffed.
    fn create_only(&self) -> &'static [&'static str] {
        &[]
    }
    /// Outputs that an in-place update never changes (the rest become unknown in a preview).
    fn stable_outputs(&self) -> &'static [&'static str] {
        &["id"]
    }
    /// Offline checks of the inputs; each message names the input and the fix.
    fn validate(&self, _inputs: &Attrs) -> Vec<String> {
        vec![]
    }
    /// What an update will do beyond the modify call, given the outputs recorded at the last
    /// apply or refresh (shown in the preview); e.g. a running task is stopped and resumed.
    fn update_note(&self, _recorded: &Attrs) -> Option<String> {
        None
    }
    /// Outputs known before the object exists because they copy an input (a path, a name) or
    /// are its identifier (`id`, what `id_for` gives: the deterministic name of an RDS object),
    /// so that a preview shows the values built from them.
    fn planned_outputs(&self, _inputs: &Attrs, _id: &str) -> Attrs {
        Attrs::new()
    }
    /// Whether an object found by its identifier was created by this plan's node (its tags say
    /// so). Reconciliation never records an object that is not ours.
    fn owned(&self, _ctx: &Ctx, _node: &str, _found: &Observed) -> bool {
        true
    }
    /// What stays when a destroy forgets this object instead of deleting it (`retain_on_delete`),
    /// as (what, the command that deletes it); `None`: nothing worth listing.
    fn kept(&self, _id: &str, _outputs: &Attrs) -> Option<(String, String)> {
        None
    }
    /// How long one create, update or delete of this type (its wait included) may take when the
    /// node sets no `.timeout(d)`: set per kind of wait ([`DEFAULT_TIMEOUT`] unless a type waits
    /// longer, such as a replica of terabytes).
    fn default_timeout(&self) -> Duration {
        DEFAULT_TIMEOUT
    }
    /// The identifier a create with these inputs would give the object.
    fn id_for(&self, req: &Request<'_>) -> String {
        req.deterministic_id.to_string()
    }
    /// What a node of this type holds exclusively on this machine, as (input, what), e.g.
    /// `("port", "TCP port 55432")`: two nodes of a plan never claim the same, and a claim
    /// taken by something else is refused before a preview or an apply starts.
    fn claims(&self, _inputs: &Attrs) -> Vec<(String, String)> {
        vec![]
    }
    /// Who holds the claim of `input` when it is neither free nor held by this node's own
    /// object (`recorded`: the node is in state): a person's description of the holder.
    fn claim_holder(
        &self,
        _ctx: &Ctx,
        _input: &str,
        _inputs: &Attrs,
        _recorded: bool,
    ) -> Option<String> {
        None
    }
    /// Whether `id` can be an identifier of this type's objects at all (`plan import` refuses one
    /// that cannot, before the state is touched): the error says what an identifier looks like.
    /// Any non-empty text without spaces or control characters by default.
    fn check_id(&self, _id: &str) -> Result<(), String> {
        Ok(())
    }
    async fn create(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError>;
    /// The object with identifier `id`, or `None` when it does not exist.
    async fn read(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Observed>, ProviderError>;
    async fn update(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
        changed: &[String],
    ) -> Result<Observed, ProviderError>;
    async fn delete(&self, ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), ProviderError>;
}

/// A read-only lookup.
#[async_trait]
pub trait DataType: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn service(&self) -> &'static str;
    fn validate(&self, _inputs: &Attrs) -> Vec<String> {
        vec![]
    }
    async fn read(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError>;
}

/// A one-shot action.
#[async_trait]
pub trait StepType: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn service(&self) -> &'static str;
    fn validate(&self, _inputs: &Attrs) -> Vec<String> {
        vec![]
    }
    /// How long one run may take when the node sets no `.timeout(d)`: set per kind of wait
    /// ([`DEFAULT_TIMEOUT`] unless the step waits longer: a copy of terabytes takes days).
    fn default_timeout(&self) -> Duration {
        DEFAULT_TIMEOUT
    }
    /// The limit for a node with these (declared) inputs: a step whose inputs say how long it
    /// waits at least (a bake's period) gives itself that much more. [`StepType::default_timeout`]
    /// by default.
    fn timeout_for(&self, _inputs: &Attrs) -> Duration {
        self.default_timeout()
    }
    /// Running it twice is harmless (a wait); an interrupted run is simply run again.
    fn rerun_safe(&self) -> bool {
        false
    }
    /// Done is not for good: at each apply (and `preview --refresh`) a done step of this type is
    /// probed, and runs again when its probe finds work (`Probe::NotDone`). For a step that keeps
    /// something in line with a source that moves (tables created after replication started).
    /// Such a step must be rerun-safe and its probe read-only.
    fn converges(&self) -> bool {
        false
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError>;
    /// Whether the step's effect is already in place. `None`: this type cannot tell.
    async fn probe(&self, _ctx: &Ctx, _req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        Ok(None)
    }
    /// Read-only checks shown by `preview --refresh` (a preflight's findings), as
    /// `(level, message)`; `None` when the type has none.
    async fn check(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
    ) -> Result<Option<Vec<(CheckLevel, String)>>, ProviderError> {
        Ok(None)
    }
    /// Whether the step leaves something no resource owns (a line appended to a file) that a
    /// destroy removes when it forgets the step, through [`StepType::clean_up`].
    fn cleans_up(&self) -> bool {
        false
    }
    /// What the step made that stays in the cloud when a destroy forgets it (a snapshot it
    /// took), as (what, the command that deletes it), from its recorded outputs.
    fn kept(&self, _outputs: &Attrs) -> Option<(String, String)> {
        None
    }
    /// Removes what the step left, given the outputs it recorded, when a destroy forgets it.
    /// Must be safe to repeat (an interrupted clean-up runs again with the next destroy), and
    /// must never undo the step's effect on anything else (a destroy never rolls a cutover back).
    async fn clean_up(&self, _ctx: &Ctx, _outputs: &Attrs) -> Result<(), ProviderError> {
        Ok(())
    }
    /// What a run of the step measured, from its recorded outputs, for the run report (e.g. how
    /// long a fence held clients, a copy's throughput), in a person's words.
    fn measured(&self, _outputs: &Attrs) -> Vec<String> {
        vec![]
    }
    /// What the step means to a reviewer: what it fences or re-points, what it checks, whether
    /// it can be rolled back, what it cannot verify. The default says only the last but one.
    fn review(&self, _inputs: &Attrs) -> Review {
        Review {
            can_roll_back: self.can_roll_back(),
            ..Review::default()
        }
    }
    /// Whether `plan rollback` can undo this step once done.
    fn can_roll_back(&self) -> bool {
        false
    }
    /// Why `plan rollback` must not undo this done step, declared with these inputs (a cutover
    /// without reverse replication: going back would lose the target's writes). Asked of every
    /// step a rollback would undo before it undoes any, so a refusal leaves everything as it was.
    fn rollback_refusal(&self, _inputs: &Attrs) -> Option<String> {
        None
    }
    /// Undoes the step (given the outputs it recorded). Must be safe to repeat: an interrupted
    /// rollback is run again.
    async fn rollback(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        _outputs: &Attrs,
    ) -> Result<Attrs, ProviderError> {
        Err(ProviderError::new(format!(
            "step `{}` cannot be rolled back",
            req.node
        )))
    }
}

impl std::fmt::Debug for TypeImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} type", self.kind())
    }
}

/// One registered type.
#[derive(Clone)]
pub enum TypeImpl {
    Resource(Arc<dyn ResourceType>),
    Data(Arc<dyn DataType>),
    Step(Arc<dyn StepType>),
}

impl TypeImpl {
    pub fn kind(&self) -> NodeKind {
        match self {
            TypeImpl::Resource(_) => NodeKind::Resource,
            TypeImpl::Data(_) => NodeKind::Data,
            TypeImpl::Step(_) => NodeKind::Step,
        }
    }
    /// How long one operation of a node with these (declared) inputs may take when the node sets
    /// no timeout.
    pub fn default_timeout(&self, inputs: &Attrs) -> Duration {
        match self {
            TypeImpl::Resource(t) => t.default_timeout(),
            TypeImpl::Data(_) => DEFAULT_TIMEOUT,
            TypeImpl::Step(t) => t.timeout_for(inputs),
        }
    }
    pub fn service(&self) -> &'static str {
        match self {
            TypeImpl::Resource(t) => t.service(),
            TypeImpl::Data(t) => t.service(),
            TypeImpl::Step(t) => t.service(),
        }
    }
    pub fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match self {
            TypeImpl::Resource(t) => t.validate(inputs),
            TypeImpl::Data(t) => t.validate(inputs),
            TypeImpl::Step(t) => t.validate(inputs),
        }
    }
}

type LocationFn = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The pairs of `recorded` whose key `now` also has with another value, as `key was -> now`
/// (empty when the two could be the same place: a key only one side knows never differs, so a
/// provider names every key it can, with a word for its default, e.g. `endpoint=aws`).
pub fn location_differs(recorded: &str, now: &str) -> Vec<String> {
    let pairs = |s: &str| -> Vec<(String, String)> {
        s.split(", ")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    };
    let now = pairs(now);
    pairs(recorded)
        .into_iter()
        .filter_map(|(k, was)| {
            now.iter()
                .find(|(n, _)| *n == k)
                .filter(|(_, v)| *v != was)
                .map(|(_, v)| format!("{k} {was} -> {v}"))
        })
        .collect()
}

/// The types a run may use, by name.
#[derive(Clone, Default)]
pub struct Registry {
    types: BTreeMap<String, TypeImpl>,
    /// Lines a provider adds to the end of a run (what its SDK retried, for example).
    summaries: Vec<Arc<dyn Fn() -> Option<String> + Send + Sync>>,
    /// Where a provider's objects live, by type-name prefix (`aws.`): see [`Registry::location`].
    locations: Vec<(&'static str, LocationFn)>,
    /// Checks a provider runs before anything is recorded (credentials, region).
    access_checks: Vec<AccessCheck>,
    /// The provider's database authentication tokens (IAM), if it makes them.
    tokens: Option<Arc<dyn TokenSource>>,
    /// Readers of the secret references that are not `env:` (Secrets Manager ARNs).
    secret_readers: Vec<Arc<dyn crate::secrets::SecretReader>>,
    /// Where a stack's `state = ...` key can keep its state, if a provider serves remote state.
    state_backend: Option<StateBackend>,
}

/// A provider's remote state store for a stack's `state` key.
#[derive(Clone)]
pub struct StateBackend {
    /// The key as a person writes it (`state = "s3://BUCKET/PREFIX"`).
    pub form: &'static str,
    /// The store the key names; the error names the line and the fix.
    pub open: Arc<OpenState>,
}

/// Opens the remote store a `state` key names.
pub type OpenState = dyn Fn(
        &crate::stack::StateSpec,
        &crate::stack::Stack,
    ) -> Result<Arc<dyn crate::state::RemoteStore>, String>
    + Send
    + Sync;

/// A provider's check that it can reach its cloud at all; the error names what to set.
pub type AccessCheck = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn resource(&mut self, t: impl ResourceType + 'static) -> &mut Self {
        self.types
            .insert(t.type_name().into(), TypeImpl::Resource(Arc::new(t)));
        self
    }
    pub fn data(&mut self, t: impl DataType + 'static) -> &mut Self {
        self.types
            .insert(t.type_name().into(), TypeImpl::Data(Arc::new(t)));
        self
    }
    pub fn step(&mut self, t: impl StepType + 'static) -> &mut Self {
        self.types
            .insert(t.type_name().into(), TypeImpl::Step(Arc::new(t)));
        self
    }
    /// Adds a line the run's summary shows when `f` has something to say.
    pub fn summary(&mut self, f: impl Fn() -> Option<String> + Send + Sync + 'static) -> &mut Self {
        self.summaries.push(Arc::new(f));
        self
    }
    /// Says where the objects of the types named `prefix…` live, as `key=value` pairs joined by
    /// `, ` (`account=…, region=…, endpoint=…`); what is not known yet (an account before the
    /// access check) is left out. Records keep it; a stack that now points elsewhere is refused.
    pub fn location(
        &mut self,
        prefix: &'static str,
        f: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.locations.push((prefix, Arc::new(f)));
        self
    }
    /// Where an object of `type_name` made now would live; `None` when its provider says nothing.
    pub fn location_of(&self, type_name: &str) -> Option<String> {
        self.locations
            .iter()
            .find(|(p, _)| type_name.starts_with(p))
            .and_then(|(_, f)| f())
    }
    /// Adds a check run before an apply, destroy or rollback records anything.
    pub fn access_check(
        &mut self,
        f: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
            + Send
            + Sync
            + 'static,
    ) -> &mut Self {
        self.access_checks.push(Arc::new(f));
        self
    }
    /// Adds a reader of secret references (`env:` ones need none).
    pub fn secret_reader(&mut self, r: Arc<dyn crate::secrets::SecretReader>) -> &mut Self {
        self.secret_readers.push(r);
        self
    }
    /// Serves the `state = ...` key of stacks (the last one set wins).
    pub fn state_backend(&mut self, b: StateBackend) -> &mut Self {
        self.state_backend = Some(b);
        self
    }
    /// The remote store the stack's `state` key names (`None`: the state stays in its local
    /// directory). An error names the stack file's line and the fix.
    pub fn remote_state(
        &self,
        stack: &crate::stack::Stack,
    ) -> Result<Option<Arc<dyn crate::state::RemoteStore>>, String> {
        let Some(spec) = &stack.state else {
            return Ok(None);
        };
        match &self.state_backend {
            Some(b) => (b.open)(spec, stack).map(Some),
            None => Err(format!(
                "{}:{}: provider `{}` keeps no state remotely; remove `state` to keep it in the stack's directory",
                stack.path.display(),
                spec.line,
                stack.provider
            )),
        }
    }
    /// How a stack names its remote state location, if a provider serves one.
    pub fn remote_state_form(&self) -> Option<&'static str> {
        self.state_backend.as_ref().map(|b| b.form)
    }
    /// Refuses a `[secrets]` entry no reader of this registry takes (never repeating it).
    pub fn check_secret_references(
        &self,
        stack: &crate::stack::Stack,
    ) -> Result<(), crate::stack::StackError> {
        let forms: Vec<String> = self
            .secret_readers
            .iter()
            .map(|r| r.form().to_string())
            .collect();
        stack.check_secret_references(
            &|r: &str| self.secret_readers.iter().any(|x| x.claims(r)),
            &forms,
        )
    }
    /// The readers of secret references, in the order they were added.
    pub fn secret_readers(&self) -> &[Arc<dyn crate::secrets::SecretReader>] {
        &self.secret_readers
    }
    /// Sets where database authentication tokens come from.
    pub fn token_source(&mut self, t: Arc<dyn TokenSource>) -> &mut Self {
        self.tokens = Some(t);
        self
    }
    /// Where database authentication tokens come from, if anywhere.
    pub fn tokens(&self) -> Option<Arc<dyn TokenSource>> {
        self.tokens.clone()
    }
    /// Runs the providers' access checks; the first failure, in a person's words.
    pub async fn check_access(&self) -> Result<(), String> {
        for c in &self.access_checks {
            c().await?;
        }
        Ok(())
    }
    /// The providers' summary lines for the run so far.
    pub fn summaries(&self) -> Vec<String> {
        self.summaries.iter().filter_map(|f| f()).collect()
    }
    /// The names of the registered types of `kind`, sorted.
    pub fn names(&self, kind: NodeKind) -> Vec<String> {
        self.types
            .iter()
            .filter(|(_, t)| t.kind() == kind)
            .map(|(n, _)| n.clone())
            .collect()
    }
    pub fn get(&self, name: &str) -> Option<&TypeImpl> {
        self.types.get(name)
    }
    /// The type `name` of `kind`, for a graph to hold (`None` for a gate, which has no type);
    /// the error says what exists instead.
    pub fn resolve(&self, name: &str, kind: NodeKind) -> Result<Option<TypeImpl>, String> {
        if kind == NodeKind::Gate {
            return Ok(None);
        }
        match self.types.get(name) {
            Some(t) if t.kind() == kind => Ok(Some(t.clone())),
            Some(t) => Err(
                format!("it is a {:?} type, declared here as a {:?}", t.kind(), kind)
                    .to_lowercase(),
            ),
            None => Err(format!(
                "no such type for this stack's provider; known types: {}",
                self.types.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// A provider as a binary offers it, the way it offers its plans: the name a stack's
/// `provider = "..."` gives, the top-level stack keys it reads, and what it registers for a
/// stack (its types, secret readers, remote state, run summaries, access checks), having read
/// and checked those keys.
#[derive(Clone, Copy)]
pub struct ProviderEntry {
    pub name: &'static str,
    /// The top-level keys of a stack file this provider reads beside the core's (`region`).
    pub keys: &'static [&'static str],
    pub register: fn(&mut Registry, &crate::stack::Stack) -> Result<(), crate::stack::StackError>,
}

/// The providers this library has: `local` (this machine's PostgreSQL clusters and poolers) and
/// `aws`. Every stack may read Secrets Manager references and keep its state in S3 (a local
/// rehearsal may use a real secret): with the provider's clients for an `aws` stack, else with
/// clients of its own whose retries are reported too.
pub fn standard() -> Vec<ProviderEntry> {
    vec![
        ProviderEntry {
            name: "local",
            keys: aws::settings::SHARED_KEYS,
            register: |r, stack| {
                local_pg::register(r);
                aws::register_shared(r, aws::Aws::from_stack(stack)?);
                Ok(())
            },
        },
        ProviderEntry {
            name: "aws",
            keys: aws::settings::KEYS,
            register: |r, stack| {
                aws::register(
                    r,
                    aws::Aws::from_stack(stack)?,
                    &stack.path.display().to_string(),
                );
                Ok(())
            },
        },
    ]
}

/// The types every stack has (`core.*`, `wait.*`, `local_file.*`, `http.*`, `pg.*`).
pub fn common() -> Registry {
    let mut r = Registry::new();
    builtin::register(&mut r);
    local_file::register(&mut r);
    http::register(&mut r);
    pg_steps::register(&mut r);
    r
}

/// [`common`] and, for `local`, the local provider's types: a registry without a stack (tests).
pub fn registry_for(provider: &str) -> Registry {
    let mut r = common();
    if provider == "local" {
        local_pg::register(&mut r);
    }
    r
}

/// The registry for a stack: the types every stack has, then what the entry of its provider
/// among `providers` registers, once the stack's other top-level keys are ones that provider
/// reads, and its secret references ones its readers take (each refusal names the line).
pub fn registry_with(
    stack: &crate::stack::Stack,
    providers: &[ProviderEntry],
) -> Result<Registry, crate::stack::StackError> {
    let mut r = common();
    let entry = providers.iter().find(|p| p.name == stack.provider);
    stack.check_settings(entry.map_or(&[], |p| p.keys))?;
    if let Some(p) = entry {
        (p.register)(&mut r, stack)?;
    }
    r.check_secret_references(stack)?;
    Ok(r)
}

/// [`registry_with`] the library's own providers ([`standard`]).
pub fn registry_for_stack(
    stack: &crate::stack::Stack,
) -> Result<Registry, crate::stack::StackError> {
    registry_with(stack, &standard())
}

/// A deterministic object name from plan, stack and node: lowercase letters, digits and single
/// hyphens, starting with a letter, at most 63 characters (RDS's rules, the strictest we meet).
pub fn deterministic_id(plan: &str, stack: &str, node: &str) -> String {
    let raw = format!("{plan}-{stack}-{node}");
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert_str(0, "n-");
    }
    if out.len() > 63 {
        // Keep it unique: a short checksum of the full name replaces the tail.
        let sum = crc32fast::hash(raw.as_bytes());
        out.truncate(54);
        out = format!("{}-{sum:08x}", out.trim_end_matches('-'));
    }
    out.trim_end_matches('-').to_string()
}

/// The default timeout of one operation when neither the node nor its type sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_ids_follow_rds_rules() {
        assert_eq!(
            deterministic_id("demo", "prod", "db.writer_1"),
            "demo-prod-db-writer-1"
        );
        let long = deterministic_id("consolidation", "production", &"tenant-".repeat(20));
        assert!(long.len() <= 63, "{long}");
        assert!(!long.contains("--") && !long.ends_with('-'));
        assert_ne!(
            long,
            deterministic_id("consolidation", "production", &"tenant-".repeat(21))
        );
    }

    #[test]
    fn a_location_differs_only_in_keys_both_sides_know() {
        let rec = "account=111, region=us-east-1, endpoint=aws";
        assert!(location_differs(rec, rec).is_empty());
        // A preview knows no account: region and endpoint still compared.
        assert!(location_differs(rec, "region=us-east-1, endpoint=aws").is_empty());
        assert_eq!(
            location_differs(rec, "region=eu-west-1, endpoint=aws"),
            ["region us-east-1 -> eu-west-1"]
        );
        assert_eq!(
            location_differs(
                rec,
                "account=222, region=us-east-1, endpoint=http://127.0.0.1:5000"
            ),
            [
                "account 111 -> 222",
                "endpoint aws -> http://127.0.0.1:5000"
            ]
        );
    }
}
