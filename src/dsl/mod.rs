//! The builder a plan is written with: each call declares a node and returns a typed handle whose
//! outputs ([`Output`]) resolve only at apply time. Using an output as another node's input adds
//! the edge; [`Handle::after`] adds an explicit one. [`Plan::finish`] yields a [`PlanSpec`], plain
//! data that the graph, the planner and the executor consume.
//!
//! Building a plan must never touch the world: no provider, no file, no network. Mistakes
//! (duplicate names, dangling references, cycles) are reported all at once by `graph`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stack::{Stack, StackError};
use crate::value::{self, Attrs, Value};

/// The four kinds of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Declarative, diffed against state: create, read, update, delete.
    Resource,
    /// A read-only lookup of an object the plan does not own.
    Data,
    /// A one-shot action, recorded in state when done.
    Step,
    /// A step `apply` does not pass without `--approve NAME` (or outside its time window).
    Gate,
}

/// What happens to the rest of the run when a node fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy", content = "nodes")]
pub enum FailurePolicy {
    /// Skip what depends on the failed node and finish everything independent (the default).
    SkipDependents,
    /// Stop scheduling anything; let running nodes finish.
    Halt,
    /// Stop scheduling, then run the named rollback nodes (declared with `rollback_only`).
    Compensate(Vec<String>),
}

/// A daily time window in UTC, `start`..`end` as minutes after midnight (may wrap midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_minute: u32,
    pub end_minute: u32,
}

impl Window {
    /// Parses `"22:00-02:00"`.
    pub fn parse(s: &str) -> Option<Window> {
        let (a, b) = s.split_once('-')?;
        let hm = |x: &str| -> Option<u32> {
            let (h, m) = x.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        Some(Window {
            start_minute: hm(a)?,
            end_minute: hm(b)?,
        })
    }

    /// Whether `minute` (after midnight UTC) is inside the window.
    pub fn contains(&self, minute: u32) -> bool {
        if self.start_minute <= self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02} UTC",
            self.start_minute / 60,
            self.start_minute % 60,
            self.end_minute / 60,
            self.end_minute % 60
        )
    }
}

/// Options every node has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOptions {
    /// Removed by `destroy --temporary` (and, later, by teardown gates).
    pub temporary: bool,
    /// Refuse delete or replace until the protection is removed in code.
    pub protect: bool,
    /// On delete, forget the object instead of deleting it.
    pub retain_on_delete: bool,
    /// Input attributes whose changes are not applied.
    pub ignore_changes: Vec<String>,
    /// How long one operation on this node may take.
    pub timeout: Option<Duration>,
    pub on_failure: FailurePolicy,
    /// Runs only when a failed node's policy names it (a compensation node).
    pub rollback_only: bool,
    /// For gates: a daily window in which the gate opens by itself.
    pub window: Option<Window>,
    /// A temporary resource retired (deleted, recorded as retired) by `apply` once this step or
    /// gate has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<String>,
    /// Steps whose records this step removes when it completes, so that they run again at the
    /// next apply (a compensation that undid them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reopens: Vec<String>,
    /// Why the plan declares the node, in a person's words (a temporary instance for one tenant
    /// and not another): shown under it in the preview.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            temporary: false,
            protect: false,
            retain_on_delete: false,
            ignore_changes: vec![],
            timeout: None,
            on_failure: FailurePolicy::SkipDependents,
            rollback_only: false,
            window: None,
            retire_after: None,
            reopens: vec![],
            why: None,
        }
    }
}

/// One declared node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub kind: NodeKind,
    /// `provider.type`, for example `local_file.file`.
    pub type_name: String,
    pub inputs: Attrs,
    /// For steps: values whose change makes a done step run again.
    pub triggers: Attrs,
    /// Explicit dependencies by name (`after`); references in inputs add the rest.
    pub after: Vec<String>,
    pub options: NodeOptions,
}

/// A finished plan: plain data.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    pub plan: String,
    pub stack: String,
    pub provider: String,
    pub nodes: Vec<NodeSpec>,
    /// `(old, new)` renames declared in code; state follows them without replacing objects.
    pub moved: Vec<(String, String)>,
    /// Time budgets over the run's steps, reported after an apply.
    pub budgets: Vec<Budget>,
}

/// A time budget: from one step's timestamp output to another's (RFC 3339, fractions of a second
/// kept), plus fixed seconds (a TTL that resolvers may still hold), against a limit. An apply in
/// which the `to` step ran reports the time used, and says so loudly when it is over.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub name: String,
    pub limit_s: f64,
    pub from: Value,
    pub to: Value,
    /// Seconds added, each with what they stand for.
    pub plus: Vec<(f64, String)>,
}

impl Budget {
    /// `name`'s budget of `limit_s` seconds, from the timestamp `from` to the timestamp `to`
    /// (outputs of steps, e.g. a cutover's `fenced_at` and a DNS flip's `accepted_at`).
    pub fn new(name: &str, limit_s: f64, from: impl Into<Value>, to: impl Into<Value>) -> Budget {
        Budget {
            name: name.into(),
            limit_s,
            from: from.into(),
            to: to.into(),
            plus: vec![],
        }
    }
    /// Seconds that count against the budget beyond the two timestamps (`why`: what they are).
    pub fn plus(mut self, seconds: f64, why: &str) -> Budget {
        self.plus.push((seconds, why.into()));
        self
    }
    /// A DNS cutover's lowered TTL, which counts against its window: resolvers may answer with
    /// the old database that long after the flip.
    pub fn plus_lowered_ttl(self, seconds: u64) -> Budget {
        self.plus(
            seconds as f64,
            "the lowered TTL, while resolvers may still answer with the old database",
        )
    }
}

impl Stack {
    /// A secret reference from `[secrets]`, as a value for a node's input. The value itself is
    /// read only by a provider at call time.
    pub fn secret(&self, key: &str) -> Result<Output<String>, StackError> {
        Ok(Output::from_value(crate::value::secret(
            &self.secret_reference(key)?,
        )))
    }
}

/// The output accessors of a declaration's handle, each `name: Type = key` (the key a type's
/// output model names): `outputs!(Topic { arn: String = TopicOut::arn })` gives
/// `Handle<Topic>::arn() -> Output<String>`.
#[macro_export]
macro_rules! outputs {
    ($builder:ty { $( $(#[doc = $doc:expr])* $name:ident : $ty:ty = $key:expr ),* $(,)? }) => {
        impl $crate::dsl::Handle<$builder> {
            $(
                $(#[doc = $doc])*
                pub fn $name(&self) -> $crate::dsl::Output<$ty> {
                    self.output($key)
                }
            )*
        }
    };
}

/// The [`Declare`] impl of a builder that keeps its inputs in an `inputs` field, given its type's
/// name (a type's own constant, so the name is written once) and its kind:
/// `declare!(Topic, TopicType::TYPE, Resource)`.
#[macro_export]
macro_rules! declare {
    ($builder:ty, $type_name:expr, $kind:ident) => {
        impl $crate::dsl::Declare for $builder {
            const TYPE: &'static str = $type_name;
            const KIND: $crate::dsl::NodeKind = $crate::dsl::NodeKind::$kind;
            fn inputs(self) -> $crate::value::Attrs {
                self.inputs
            }
        }
    };
}

/// A typed node declaration. Providers implement it for their resource, data and step types.
pub trait Declare {
    /// `provider.type`.
    const TYPE: &'static str;
    const KIND: NodeKind;
    /// The type of this declaration (one builder may serve related types).
    fn type_name(&self) -> &'static str {
        Self::TYPE
    }
    /// The node's inputs.
    fn inputs(self) -> Attrs;
    /// The node's inputs, given the nodes declared before it, for a declaration whose inputs
    /// depend on what it refers to (an alarm's dimension on a cluster or an instance). The
    /// default is [`Declare::inputs`].
    fn inputs_given(self, _before: &[NodeSpec]) -> Attrs
    where
        Self: Sized,
    {
        self.inputs()
    }
    /// Nodes declared before this one that it must follow though it uses none of their outputs
    /// (a cluster's later instances follow its first, which becomes the writer). None by default.
    fn follows(&self, _before: &[NodeSpec]) -> Vec<String> {
        vec![]
    }
}

/// A value that may be known now or only at apply time.
#[derive(Debug, Clone, PartialEq)]
pub struct Output<T> {
    value: Value,
    _t: PhantomData<fn() -> T>,
}

impl<T> Output<T> {
    /// An output of `node` named `output` (by name; a typed handle is usually better).
    pub fn of(node: &str, output: &str) -> Self {
        Self::raw(value::reference(node, output))
    }
    fn raw(value: Value) -> Self {
        Output {
            value,
            _t: PhantomData,
        }
    }
    /// A typed view of an untyped value (a secret reference, a value built by hand).
    pub fn from_value(value: Value) -> Self {
        Self::raw(value)
    }
    /// The underlying value.
    pub fn into_value(self) -> Value {
        self.value
    }
}

impl<T: Serialize> From<T> for Output<T> {
    fn from(t: T) -> Self {
        Output::raw(serde_json::to_value(t).expect("a plain value serialises"))
    }
}

impl From<&str> for Output<String> {
    fn from(s: &str) -> Self {
        Output::raw(Value::String(s.into()))
    }
}

impl From<&String> for Output<String> {
    fn from(s: &String) -> Self {
        Output::raw(Value::String(s.clone()))
    }
}

impl Output<String> {
    /// This string followed by `suffix` (either may be unknown until apply).
    pub fn join(&self, suffix: impl Into<Output<String>>) -> Output<String> {
        Output::raw(value::concat(vec![self.value.clone(), suffix.into().value]))
    }
}

impl<T> From<Output<T>> for Value {
    fn from(o: Output<T>) -> Value {
        o.value
    }
}

#[derive(Debug)]
struct Inner {
    spec: PlanSpec,
}

/// The builder. Cheap to clone; handles share it.
#[derive(Clone)]
pub struct Plan {
    inner: Rc<RefCell<Inner>>,
}

/// A declared node. Option methods consume and return the handle so they chain.
pub struct Handle<T> {
    plan: Rc<RefCell<Inner>>,
    index: usize,
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle {
            plan: self.plan.clone(),
            index: self.index,
            name: self.name.clone(),
            _t: PhantomData,
        }
    }
}

/// Anything that names a node (a handle of any type).
pub trait NodeName {
    fn node_name(&self) -> &str;
}

impl<T> NodeName for Handle<T> {
    fn node_name(&self) -> &str {
        &self.name
    }
}

/// The marker type of a gate.
pub struct Gate;

impl<T> Handle<T> {
    fn edit(&self, f: impl FnOnce(&mut NodeSpec)) {
        f(&mut self.plan.borrow_mut().spec.nodes[self.index]);
    }
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// An output of this node, by name.
    pub fn output<O>(&self, name: &str) -> Output<O> {
        Output::of(&self.name, name)
    }
    /// Run after `other` even though no input refers to it.
    pub fn after(self, other: &impl NodeName) -> Self {
        self.after_name(other.node_name())
    }
    /// Run after the node named `name` (declared anywhere in the plan).
    pub fn after_name(self, name: &str) -> Self {
        self.edit(|n| {
            if !n.after.iter().any(|a| a == name) {
                n.after.push(name.to_string())
            }
        });
        self
    }
    /// `retire_after` by name: for a node declared later (a bake that watches alarms declared
    /// with the temporaries). The graph refuses a name it does not know.
    pub fn retire_after_name(self, name: &str) -> Self {
        self.edit(|n| {
            n.options.temporary = true;
            n.options.retire_after = Some(name.to_string());
        });
        self
    }
    /// `retire_after` by name (tests of graph validation).
    #[doc(hidden)]
    pub fn retire_after_name_for_tests(self, name: &str) -> Self {
        self.retire_after_name(name)
    }
    /// Removed by `destroy --temporary`.
    pub fn temporary(self) -> Self {
        self.edit(|n| n.options.temporary = true);
        self
    }
    /// Temporary, and retired by `apply` once `gate` (a step or gate: validation passed, a bake
    /// period over) has passed: deleted then, and recorded as retired so that it is not created
    /// again. `destroy --temporary` waits for the same gate unless forced.
    pub fn retire_after(self, gate: &impl NodeName) -> Self {
        let g = gate.node_name().to_string();
        self.edit(|n| {
            n.options.temporary = true;
            n.options.retire_after = Some(g);
        });
        self
    }
    /// Says why the plan declares this node (shown under it in the preview), e.g. which
    /// threshold gave a tenant its temporary import instance.
    pub fn why(self, reason: &str) -> Self {
        let r = reason.to_string();
        self.edit(|n| n.options.why = Some(r));
        self
    }
    /// Refuse delete or replace until this is removed from the code.
    pub fn protect(self) -> Self {
        self.edit(|n| n.options.protect = true);
        self
    }
    /// On delete, forget the object instead of deleting it.
    pub fn retain_on_delete(self) -> Self {
        self.edit(|n| n.options.retain_on_delete = true);
        self
    }
    /// Do not apply changes to these inputs.
    pub fn ignore_changes(self, attrs: &[&str]) -> Self {
        self.edit(|n| {
            n.options
                .ignore_changes
                .extend(attrs.iter().map(|s| s.to_string()))
        });
        self
    }
    /// How long one operation on this node may take.
    pub fn timeout(self, d: Duration) -> Self {
        self.edit(|n| n.options.timeout = Some(d));
        self
    }
    /// What a failure of this node does to the rest of the run.
    pub fn on_failure(self, policy: FailurePolicy) -> Self {
        self.edit(|n| n.options.on_failure = policy);
        self
    }
    /// On failure, stop and run these rollback nodes.
    pub fn compensate_with(self, nodes: &[&dyn NodeName]) -> Self {
        let names = nodes.iter().map(|n| n.node_name().to_string()).collect();
        self.on_failure(FailurePolicy::Compensate(names))
    }
    /// Runs only as another node's compensation.
    pub fn rollback_only(self) -> Self {
        self.edit(|n| n.options.rollback_only = true);
        self
    }
    /// When this step completes, the named done steps are reopened: their records are removed,
    /// so the next apply runs them again. For a compensation that undid them (the unfence after a
    /// failed flip reopens the cutover it undid).
    pub fn reopens(self, steps: &[&dyn NodeName]) -> Self {
        self.edit(|n| {
            n.options
                .reopens
                .extend(steps.iter().map(|s| s.node_name().to_string()))
        });
        self
    }
    /// [`Handle::reopens`] by name (a step declared anywhere in the plan).
    pub fn reopens_name(self, step: &str) -> Self {
        self.edit(|n| n.options.reopens.push(step.to_string()));
        self
    }
    /// The inputs declared so far (a builder that derives one node from another).
    pub fn declared_inputs(&self) -> Attrs {
        self.plan.borrow().spec.nodes[self.index].inputs.clone()
    }
    /// For steps: run again when this value changes.
    pub fn trigger(self, name: &str, value: impl Into<Value>) -> Self {
        let v = value.into();
        self.edit(|n| {
            n.triggers.insert(name.to_string(), v);
        });
        self
    }
}

impl Handle<Gate> {
    /// The gate opens by itself inside this daily UTC window, e.g. `"22:00-02:00"`.
    pub fn window(self, window: Window) -> Self {
        self.edit(|n| n.options.window = Some(window));
        self
    }
}

/// A plan-level error: a stack value problem or a plan's own complaint.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Stack(Box<StackError>),
    #[error("plan `{plan}`: {message}")]
    Invalid { plan: String, message: String },
    /// A value a builder refused (a size in the wrong unit, an unknown parameter).
    #[error("{what}: {message}")]
    Value { what: String, message: String },
}

impl From<StackError> for PlanError {
    fn from(e: StackError) -> Self {
        PlanError::Stack(Box::new(e))
    }
}

impl Plan {
    /// A new plan for `stack` (its plan name and provider come from the stack file).
    pub fn new(stack: &Stack) -> Plan {
        Self::named(&stack.plan, &stack.name, &stack.provider)
    }

    /// A new plan with explicit names (tests and benchmarks).
    pub fn named(plan: &str, stack: &str, provider: &str) -> Plan {
        Plan {
            inner: Rc::new(RefCell::new(Inner {
                spec: PlanSpec {
                    plan: plan.into(),
                    stack: stack.into(),
                    provider: provider.into(),
                    nodes: vec![],
                    moved: vec![],
                    budgets: vec![],
                },
            })),
        }
    }

    fn push<T>(&self, name: &str, kind: NodeKind, type_name: &str, inputs: Attrs) -> Handle<T> {
        let mut inner = self.inner.borrow_mut();
        let index = inner.spec.nodes.len();
        inner.spec.nodes.push(NodeSpec {
            name: name.into(),
            kind,
            type_name: type_name.into(),
            inputs,
            triggers: BTreeMap::new(),
            after: vec![],
            options: NodeOptions::default(),
        });
        Handle {
            plan: self.inner.clone(),
            index,
            name: name.into(),
            _t: PhantomData,
        }
    }

    /// Declares a node of a provider's type.
    pub fn add<T: Declare>(&self, name: &str, decl: T) -> Handle<T> {
        let type_name = decl.type_name();
        let (inputs, follows) = {
            let inner = self.inner.borrow();
            let follows = decl.follows(&inner.spec.nodes);
            (decl.inputs_given(&inner.spec.nodes), follows)
        };
        let h = self.push(name, T::KIND, type_name, inputs);
        follows
            .into_iter()
            .fold(h, |h, before| h.after_name(&before))
    }

    /// Declares a node by type name with untyped inputs (generated plans and tests).
    pub fn add_raw(
        &self,
        name: &str,
        kind: NodeKind,
        type_name: &str,
        inputs: Attrs,
    ) -> Handle<()> {
        self.push(name, kind, type_name, inputs)
    }

    /// Declares a gate: `apply` does not pass it without `--approve NAME` (or inside its window).
    pub fn gate(&self, name: &str) -> Handle<Gate> {
        self.push(name, NodeKind::Gate, "core.gate", BTreeMap::new())
    }

    /// Declares that the node once called `old` is now called `new`: its object is kept.
    pub fn moved(&self, old: &str, new: &str) {
        self.inner
            .borrow_mut()
            .spec
            .moved
            .push((old.into(), new.into()));
    }

    /// Declares a time budget, reported after each apply in which its `to` step ran.
    pub fn budget(&self, budget: Budget) {
        self.inner.borrow_mut().spec.budgets.push(budget);
    }

    /// The finished plan.
    pub fn finish(self) -> PlanSpec {
        match Rc::try_unwrap(self.inner) {
            Ok(cell) => cell.into_inner().spec,
            // A handle outlived the plan function: copy.
            Err(shared) => shared.borrow().spec.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_add_edges_and_options() {
        let p = Plan::named("p", "s", "local");
        let a = p.add_raw("a", NodeKind::Resource, "core.null", Attrs::new());
        let path: Output<String> = a.output("path");
        let mut inputs = Attrs::new();
        inputs.insert("x".into(), path.join("/f").into());
        let b = p
            .add_raw("b", NodeKind::Resource, "core.null", inputs)
            .temporary()
            .after(&a);
        assert_eq!(b.name(), "b");
        let spec = p.finish();
        assert!(spec.nodes[1].options.temporary);
        assert_eq!(spec.nodes[1].after, vec!["a".to_string()]);
        let mut refs = std::collections::BTreeSet::new();
        value::collect_refs(&spec.nodes[1].inputs["x"], &mut refs);
        assert!(refs.contains("a"));
    }

    #[test]
    fn windows_wrap_midnight() {
        let w = Window::parse("22:00-02:00").unwrap();
        assert!(w.contains(23 * 60));
        assert!(w.contains(60));
        assert!(!w.contains(12 * 60));
        assert_eq!(w.to_string(), "22:00-02:00 UTC");
        assert!(Window::parse("25:00-01:00").is_none());
    }
}
