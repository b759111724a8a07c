//! Desired graph + state -> change set. For each node: create, update (which attributes, old ->
//! new), replace (which attribute forces it), delete (nodes gone from the plan, in reverse
//! dependency order when executed), read (data), run or done (steps), pass or hold (gates).
//!
//! The planner is a pure function of its inputs: it must never call a provider, never write state,
//! and never reveal a secret. A preview is exactly its result, rendered.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::dsl::{NodeKind, NodeSpec};
use crate::graph::Graph;
use crate::provider::{Registry, TypeImpl};
use crate::state::{NodeRecord, State};
use crate::value::{self, Attrs, Value};

/// What holds a node back in this apply. Serialised as the words a person reads (`gate
/// \`cutover\``, `--until validate`), as the JSON preview always had it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hold {
    /// An unapproved gate: `--approve NAME` opens it.
    Gate(String),
    /// `--until NODE`: the apply stops after that node.
    Until(String),
}

impl Hold {
    /// The gate's name, when a gate holds it.
    pub fn gate(&self) -> Option<&str> {
        match self {
            Hold::Gate(g) => Some(g),
            Hold::Until(_) => None,
        }
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Gate(g) => write!(f, "gate `{g}`"),
            Hold::Until(u) => write!(f, "--until {u}"),
        }
    }
}

impl Serialize for Hold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(g) = text
            .strip_prefix("gate `")
            .and_then(|g| g.strip_suffix('`'))
        {
            Ok(Hold::Gate(g.to_string()))
        } else if let Some(u) = text.strip_prefix("--until ") {
            Ok(Hold::Until(u.to_string()))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{text}` is neither gate `NAME` nor --until NODE"
            )))
        }
    }
}

/// What will happen to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Create,
    Update,
    Replace,
    Delete,
    /// Drop the record without touching the object (`retain_on_delete`, or a step no longer declared).
    Forget,
    /// A data node read at apply.
    Read,
    /// A step that will run.
    Run,
    /// A step already done with unchanged triggers; a gate already passed.
    Done,
    /// A gate that opens in this apply (approved, or waits for its window).
    Pass,
    /// A resource with nothing to change.
    NoOp,
    /// A temporary resource retired by teardown: not recreated.
    Retired,
    /// A compensation node: runs only if a node naming it fails.
    Standby,
}

impl ActionKind {
    /// Terraform-style symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            ActionKind::Create => "+",
            ActionKind::Update => "~",
            ActionKind::Replace => "-/+",
            ActionKind::Delete => "-",
            ActionKind::Forget => "x",
            ActionKind::Read => "<=",
            ActionKind::Run => ">",
            ActionKind::Done => "=",
            ActionKind::Pass => ">",
            ActionKind::NoOp => " ",
            ActionKind::Retired => " ",
            ActionKind::Standby => "?",
        }
    }
    /// Whether the executor has work to do for it.
    pub fn is_work(self) -> bool {
        !matches!(
            self,
            ActionKind::Done | ActionKind::NoOp | ActionKind::Retired | ActionKind::Standby
        )
    }
}

/// One attribute's change. Values are JSON; a secret appears as its reference
/// (`{"$secret": "env:NAME"}`), never its value; a value known only after apply is `null` with
/// `unknown: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttrChange {
    pub attribute: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forces_replacement: bool,
}

impl AttrChange {
    fn new(attribute: &str, before: Option<&Value>, after: Option<&Value>, forces: bool) -> Self {
        let unknown = after.map(value::has_refs).unwrap_or(false);
        AttrChange {
            attribute: attribute.into(),
            before: before.cloned(),
            after: if unknown { None } else { after.cloned() },
            unknown,
            forces_replacement: forces,
        }
    }
    /// The old value as people read it.
    pub fn before_text(&self) -> Option<String> {
        self.before.as_ref().map(value::display)
    }
    /// The new value as people read it.
    pub fn after_text(&self) -> Option<String> {
        if self.unknown {
            Some("(known after apply)".into())
        } else {
            self.after.as_ref().map(value::display)
        }
    }
}

/// The identifier a resource node's object has or will have (what `id_for` gives from its
/// declared inputs), for a literal that names it; `None` for other kinds.
/// One node's planned action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub node: String,
    pub kind: NodeKind,
    #[serde(rename = "type")]
    pub type_name: String,
    pub action: ActionKind,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<AttrChange>,
    /// Held back in this apply by an unapproved gate or `--until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<Hold>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub temporary: bool,
    /// For deletes: retire (keep a record) rather than forget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retire: bool,
    /// For a temporary: the step or gate after which an apply retires it (`retire_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_after: Option<String>,
    /// What the node's type says it means to a reviewer.
    #[serde(default, skip_serializing_if = "crate::provider::Review::is_empty")]
    pub review: crate::provider::Review,
    /// The node is protected (`.protect()`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// The object's identifier: the one recorded, or the one a create will give it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// Why the plan declares the node (`Handle::why`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// How long one operation of a resource or a step may take before the apply gives up on it,
    /// in seconds: the node's `.timeout(d)`, or its type's default for its kind of wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_s: Option<u64>,
    #[serde(skip)]
    pub service: String,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    pub replace: usize,
    pub read: usize,
    pub steps_to_run: usize,
    pub steps_done: usize,
    pub held: usize,
}

/// An interrupted operation the next apply reconciles before anything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingNote {
    pub node: String,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// The planner's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub plan: String,
    pub stack: String,
    pub provider: String,
    pub lineage: String,
    pub serial: u64,
    /// Every node, in execution order: deletes of vanished nodes first (dependents before their
    /// dependencies), then the plan's nodes in topological order.
    pub actions: Vec<Action>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingNote>,
    /// Findings of steps' read-only checks, when the preview ran with `--refresh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckNote>,
    /// The plan's time budgets, for the reviewer (measured after an apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetNote>,
    pub summary: Summary,
}

/// A time budget as the preview shows it: from one step's timestamp to another's, plus fixed
/// seconds, against a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetNote {
    pub name: String,
    pub limit_s: f64,
    /// (node, output) of the start and the end.
    pub from: (String, String),
    pub to: (String, String),
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plus: Vec<(f64, String)>,
}

/// One finding of a step's check (a preflight), for the preview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckNote {
    pub node: String,
    pub level: crate::provider::CheckLevel,
    pub message: String,
}

impl ChangeSet {
    /// Why this saved plan does not match `fresh`, one made now, if it does not: another plan or
    /// stack, another state (lineage or serial), or other actions.
    pub fn stale_reason(&self, fresh: &ChangeSet) -> Option<String> {
        let saved = self;
        if saved.plan != fresh.plan || saved.stack != fresh.stack {
            return Some(format!(
                "it was made for plan `{}` on stack `{}`",
                saved.plan, saved.stack
            ));
        }
        // A plan saved before the state existed has no lineage: it holds while the state is new.
        if !saved.lineage.is_empty() && saved.lineage != fresh.lineage {
            return Some("the state was replaced since".into());
        }
        if saved.serial != fresh.serial {
            return Some(format!(
                "the state changed since (serial {} -> {})",
                saved.serial, fresh.serial
            ));
        }
        let strip = |cs: &ChangeSet| {
            let mut v = cs.actions.clone();
            v.iter_mut().for_each(|a| a.service.clear());
            v
        };
        if strip(saved) != strip(fresh) || saved.moved != fresh.moved {
            return Some("the plan's code or stack values changed since".into());
        }
        None
    }
    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        !self.moved.is_empty()
            || self
                .actions
                .iter()
                .any(|a| a.action.is_work() && a.held_by.is_none() && a.action != ActionKind::Read)
    }
}

/// What the run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Apply,
    /// Delete everything in state.
    DestroyAll,
    /// Delete only temporary resources, and record them retired.
    DestroyTemporary,
}

/// Choices of this run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub mode: Mode,
    /// Force replacement of these nodes.
    pub replace: BTreeSet<String>,
    /// Gates approved for this run.
    pub approve: BTreeSet<String>,
    /// Stop before this node (and what depends on it).
    pub until: Option<String>,
    /// `destroy --temporary --force`: retire temporaries whose gate has not passed.
    pub force: bool,
    /// Done steps to run again, with why (a converging step whose probe found work).
    pub rerun: std::collections::BTreeMap<String, String>,
}

/// A plan that cannot be carried out as asked (a protected node would be destroyed, an unknown
/// `--replace` name, invalid inputs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot plan `{plan}`:{}", .problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
pub struct PlanningError {
    pub plan: String,
    pub problems: Vec<String>,
}

/// Computes the change set.
pub fn plan(
    graph: &Graph,
    state: &State,
    registry: &Registry,
    opts: &Options,
) -> Result<ChangeSet, PlanningError> {
    let spec = &graph.spec;
    let mut problems = Vec::new();
    // State as seen through `moved` declarations.
    let mut nodes: BTreeMap<&str, &NodeRecord> =
        state.nodes.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut moved = Vec::new();
    for (old, new) in &spec.moved {
        if let Some(r) = nodes.remove(old.as_str()) {
            if nodes.contains_key(new.as_str()) {
                problems.push(format!("moved `{old}` -> `{new}`: both exist in state; remove one with `plan state` first"));
                nodes.insert(old, r);
            } else {
                nodes.insert(new, r);
                moved.push((old.clone(), new.clone()));
            }
        }
    }
    for name in opts
        .replace
        .iter()
        .chain(opts.until.iter())
        .chain(opts.approve.iter())
    {
        if graph.node(name).is_none() {
            problems.push(format!("`{name}` is not a node of this plan; see `plan state {} list` or the preview for names", spec.stack));
        }
    }

    let destroy = opts.mode != Mode::Apply;
    // Outputs that will be unknown during this apply: node -> None (all) or the known ones.
    let mut unknown: HashMap<&str, Option<&'static [&'static str]>> = HashMap::new();
    // Outputs of objects to be created that are known already (copies of inputs).
    let mut planned: HashMap<&str, Attrs> = HashMap::new();
    let mut actions_by_index: Vec<Option<Action>> = vec![None; spec.nodes.len()];
    let order = graph.topo_order();

    if !destroy {
        for &i in &order {
            let n = &spec.nodes[i];
            let lookup = |node: &str, out: &str| -> Option<Value> {
                if let Some(v) = planned.get(node).and_then(|p| p.get(out)) {
                    return Some(v.clone());
                }
                match unknown.get(node) {
                    Some(None) => return None,
                    Some(Some(stable)) if !stable.contains(&out) => return None,
                    _ => {}
                }
                nodes.get(node).and_then(|r| r.outputs().get(out).cloned())
            };
            let ty = graph.type_of(&n.name);
            let service = ty
                .map(|t| t.service().to_string())
                .unwrap_or_else(|| "core".into());
            let mut a = Action {
                node: n.name.clone(),
                kind: n.kind,
                type_name: n.type_name.clone(),
                action: ActionKind::NoOp,
                reason: String::new(),
                changes: vec![],
                held_by: None,
                temporary: n.options.temporary,
                retire: false,
                retired_after: n.options.retire_after.clone(),
                review: match ty {
                    Some(TypeImpl::Step(st)) => st.review(&n.inputs),
                    Some(TypeImpl::Resource(rt)) => rt.review(&n.inputs),
                    _ => Default::default(),
                },
                protected: n.options.protect,
                object_id: match nodes.get(n.name.as_str()) {
                    Some(NodeRecord::Resource(r)) => Some(r.id.clone()),
                    _ => None,
                },
                why: n.options.why.clone(),
                limit_s: match ty {
                    Some(t @ (TypeImpl::Step(_) | TypeImpl::Resource(_))) => Some(
                        n.options
                            .timeout
                            .unwrap_or_else(|| t.default_timeout(&n.inputs))
                            .as_secs(),
                    ),
                    _ => None,
                },
                service,
            };
            match n.kind {
                NodeKind::Resource => {
                    plan_resource(
                        n,
                        nodes.get(n.name.as_str()).copied(),
                        ty,
                        opts,
                        &lookup,
                        &mut a,
                        &mut problems,
                    );
                    match a.action {
                        ActionKind::Create | ActionKind::Replace => {
                            let known = match ty {
                                Some(TypeImpl::Resource(t)) => {
                                    let inputs = value::resolve_attrs(&n.inputs, &lookup);
                                    let did = graph.deterministic_id(&n.name);
                                    let id = t.id_for(&crate::provider::Request {
                                        node: &n.name,
                                        deterministic_id: &did,
                                        inputs: &inputs,
                                    });
                                    if a.action == ActionKind::Create {
                                        a.object_id = Some(id.clone());
                                    }
                                    t.planned_outputs(&inputs, &id)
                                }
                                _ => Attrs::new(),
                            };
                            planned.insert(&n.name, known);
                            unknown.insert(&n.name, None);
                        }
                        ActionKind::Update => {
                            let stable = match ty {
                                Some(TypeImpl::Resource(t)) => t.stable_outputs(),
                                _ => &[],
                            };
                            unknown.insert(&n.name, Some(stable));
                        }
                        _ => {}
                    }
                }
                NodeKind::Data => {
                    a.action = ActionKind::Read;
                    a.reason = "data is read at every apply".into();
                    let inputs = value::resolve_attrs(&n.inputs, &lookup);
                    if !nodes.contains_key(n.name.as_str()) || inputs.values().any(value::has_refs)
                    {
                        unknown.insert(&n.name, None);
                    }
                }
                NodeKind::Step => {
                    let triggers = value::resolve_attrs(&n.triggers, &lookup);
                    match nodes.get(n.name.as_str()).copied() {
                        Some(NodeRecord::Step(s)) if s.type_name == n.type_name => {
                            let changed: Vec<&String> = triggers
                                .iter()
                                .filter(|(k, v)| {
                                    value::has_refs(v) || s.triggers.get(*k) != Some(v)
                                })
                                .map(|(k, _)| k)
                                .chain(s.triggers.keys().filter(|k| !triggers.contains_key(*k)))
                                .collect();
                            if opts.replace.contains(&n.name) {
                                a.action = ActionKind::Run;
                                a.reason = format!(
                                    "done at {}; run again as requested with --replace",
                                    s.done_at
                                );
                                unknown.insert(&n.name, None);
                            } else if let Some(why) = opts.rerun.get(&n.name) {
                                a.action = ActionKind::Run;
                                a.reason = format!("done at {}; {why}", s.done_at);
                                unknown.insert(&n.name, None);
                            } else if changed.is_empty() {
                                a.action = ActionKind::Done;
                                a.reason = format!("done at {}", s.done_at);
                            } else {
                                a.action = ActionKind::Run;
                                a.reason = format!(
                                    "trigger {} changed",
                                    changed
                                        .iter()
                                        .map(|c| format!("`{c}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                );
                                for k in changed {
                                    a.changes.push(AttrChange::new(
                                        &format!("trigger.{k}"),
                                        s.triggers.get(k),
                                        triggers.get(k),
                                        false,
                                    ));
                                }
                                unknown.insert(&n.name, None);
                            }
                        }
                        _ => {
                            a.action = ActionKind::Run;
                            a.reason = "not run yet".into();
                            unknown.insert(&n.name, None);
                        }
                    }
                }
                NodeKind::Gate => match nodes.get(n.name.as_str()).copied() {
                    Some(NodeRecord::Gate(s)) => {
                        a.action = ActionKind::Done;
                        a.reason = format!("passed at {}", s.done_at);
                    }
                    _ => {
                        a.action = ActionKind::Pass;
                        a.reason = if opts.approve.contains(&n.name) {
                            "approved with --approve".into()
                        } else if let Some(w) = n.options.window {
                            format!("opens in its window {w}")
                        } else {
                            format!("needs `--approve {}`", n.name)
                        };
                    }
                },
            }
            if n.options.rollback_only && a.action.is_work() {
                a.action = ActionKind::Standby;
                a.reason = "runs only if a node it compensates fails".into();
            }
            actions_by_index[i] = Some(a);
        }
        // Holds: unapproved gates without a window, and --until.
        let mut holds: Vec<(usize, Hold)> = Vec::new();
        for (i, n) in spec.nodes.iter().enumerate() {
            let a = actions_by_index[i].as_ref().unwrap();
            if n.kind == NodeKind::Gate
                && a.action == ActionKind::Pass
                && !opts.approve.contains(&n.name)
                && n.options.window.is_none()
            {
                holds.push((i, Hold::Gate(n.name.clone())));
            }
        }
        if let Some(u) = &opts.until {
            if let Some(i) = graph.index_of(u) {
                holds.push((i, Hold::Until(u.clone())));
            }
        }
        // A node behind several gates is held by the one that opens last: gates are applied in
        // topological order, each downstream gate taking over from the ones before it; `--until`
        // holds only what no gate holds.
        let position: std::collections::HashMap<usize, usize> = graph
            .topo_order()
            .into_iter()
            .enumerate()
            .map(|(pos, i)| (i, pos))
            .collect();
        holds.sort_by_key(|(i, why)| (why.gate().is_none(), position.get(i).copied()));
        for (i, why) in holds {
            let is_gate = why.gate().is_some();
            let mut set = graph.downstream(&[i]);
            set.insert(i);
            for j in set {
                let a = actions_by_index[j].as_mut().unwrap();
                let by_gate = a.held_by.as_ref().is_some_and(|h| h.gate().is_some());
                if a.action.is_work() && (a.held_by.is_none() || (is_gate && by_gate)) {
                    a.held_by = Some(why.clone());
                }
            }
        }
    }

    // Retirement: a temporary whose `retire_after` step or gate has passed (in state, or in this
    // run) is deleted and recorded retired; its job waits for that gate's (see build_jobs).
    if opts.mode == Mode::Apply {
        for (i, n) in spec.nodes.iter().enumerate() {
            let Some(g) = &n.options.retire_after else {
                continue;
            };
            let passes_now = graph
                .index_of(g)
                .and_then(|gi| actions_by_index[gi].as_ref())
                .is_some_and(|ga| {
                    ga.held_by.is_none() && matches!(ga.action, ActionKind::Run | ActionKind::Pass)
                });
            let Some(NodeRecord::Resource(r)) = nodes.get(n.name.as_str()).copied() else {
                // Created in this run: it retires in it too when its step or gate passes now.
                if let Some(a) = actions_by_index[i]
                    .as_mut()
                    .filter(|a| passes_now && a.held_by.is_none() && a.action == ActionKind::Create)
                {
                    a.retire = true;
                    a.reason = format!("{}; retires once `{g}` passes in this run", a.reason);
                }
                continue;
            };
            if r.retired {
                continue;
            }
            let passed = matches!(
                nodes.get(g.as_str()),
                Some(NodeRecord::Step(_) | NodeRecord::Gate(_))
            );
            let held = actions_by_index[i].as_ref().and_then(|a| a.held_by.clone());
            if !(passed || passes_now) || held.is_some() {
                continue;
            }
            if let Some(a) = actions_by_index[i].as_mut() {
                a.action = ActionKind::Delete;
                a.retire = true;
                a.changes = vec![];
                a.reason = if passes_now {
                    format!("retires once `{g}` passes in this run")
                } else {
                    format!("retires: `{g}` has passed")
                };
            }
        }
    }

    // Deletes: vanished nodes (or everything / temporaries when destroying), dependents first.
    let mut deletes: Vec<Action> = Vec::new();
    let doomed: Vec<&str> = nodes
        .keys()
        .copied()
        .filter(|name| match opts.mode {
            Mode::Apply => graph.node(name).is_none(),
            Mode::DestroyAll => true,
            Mode::DestroyTemporary => match nodes.get(*name).copied() {
                Some(NodeRecord::Resource(r)) => {
                    !r.retired
                        && (r.temporary
                            || graph
                                .node(name)
                                .map(|n| n.options.temporary)
                                .unwrap_or(false))
                }
                _ => false,
            },
        })
        .collect();
    // `destroy --temporary` honours the same gates as apply's retirement, unless forced.
    if opts.mode == Mode::DestroyTemporary && !opts.force {
        for name in &doomed {
            if let Some(g) = graph
                .node(name)
                .and_then(|n| n.options.retire_after.as_ref())
            {
                if !matches!(
                    nodes.get(g.as_str()),
                    Some(NodeRecord::Step(_) | NodeRecord::Gate(_))
                ) {
                    problems.push(format!(
                        "`{name}` retires after `{g}`, which has not passed: wait for it (apply retires it then), or add --force"
                    ));
                }
            }
        }
    }
    for name in order_deletes(&doomed, &nodes) {
        let r = nodes[name];
        let desired = graph.node(name);
        let protect = desired.map(|n| n.options.protect).unwrap_or(false)
            || matches!(r, NodeRecord::Resource(x) if x.protect);
        let mut a = Action {
            node: name.to_string(),
            kind: match r {
                NodeRecord::Resource(_) => NodeKind::Resource,
                NodeRecord::Data(_) => NodeKind::Data,
                NodeRecord::Step(_) => NodeKind::Step,
                NodeRecord::Gate(_) => NodeKind::Gate,
            },
            type_name: r.type_name().to_string(),
            action: ActionKind::Forget,
            reason: String::new(),
            changes: vec![],
            held_by: None,
            temporary: matches!(r, NodeRecord::Resource(x) if x.temporary),
            retire: false,
            retired_after: None,
            review: match (registry.get(r.type_name()), r) {
                (Some(TypeImpl::Resource(rt)), NodeRecord::Resource(x)) => rt.review(&x.inputs),
                _ => Default::default(),
            },
            protected: protect,
            object_id: match r {
                NodeRecord::Resource(x) => Some(x.id.clone()),
                _ => None,
            },
            why: None,
            limit_s: None,
            service: registry
                .get(r.type_name())
                .map(|t| t.service().to_string())
                .unwrap_or_else(|| "core".into()),
        };
        match r {
            NodeRecord::Resource(x) => {
                if x.retired {
                    a.reason = "retired; forgetting its record".into();
                } else if x.retain_on_delete
                    || desired.map(|n| n.options.retain_on_delete).unwrap_or(false)
                {
                    a.reason = "retain_on_delete: the object is kept, only the record goes".into();
                } else if protect {
                    problems.push(format!(
                        "node `{name}` is protected and would be destroyed ({}); remove `.protect()` from the plan first if this is intended",
                        delete_reason(opts.mode)
                    ));
                    continue;
                } else {
                    a.action = ActionKind::Delete;
                    a.reason = delete_reason(opts.mode).into();
                    a.retire = opts.mode == Mode::DestroyTemporary && desired.is_some();
                    if registry.get(&x.type_name).is_none() {
                        problems.push(format!("node `{name}` has type `{}`, which this stack's provider does not offer, so it cannot be deleted; switch back to the provider that created it", x.type_name));
                    }
                }
            }
            _ if opts.mode == Mode::Apply => {
                a.reason = "no longer declared; forgetting its record".into()
            }
            _ => a.reason = format!("{}: forgetting its record", delete_reason(opts.mode)),
        }
        deletes.push(a);
    }

    if !problems.is_empty() {
        return Err(PlanningError {
            plan: spec.plan.clone(),
            problems,
        });
    }
    let mut actions = deletes;
    for i in order {
        if let Some(a) = actions_by_index[i].take() {
            actions.push(a);
        }
    }
    let mut summary = Summary::default();
    for a in &actions {
        if a.held_by.is_some() {
            summary.held += 1;
            continue;
        }
        match a.action {
            ActionKind::Create => summary.add += 1,
            ActionKind::Update => summary.change += 1,
            ActionKind::Replace => {
                summary.add += 1;
                summary.destroy += 1;
                summary.replace += 1;
            }
            ActionKind::Delete => summary.destroy += 1,
            ActionKind::Read => summary.read += 1,
            ActionKind::Run | ActionKind::Pass => summary.steps_to_run += 1,
            ActionKind::Done if matches!(a.kind, NodeKind::Step | NodeKind::Gate) => {
                summary.steps_done += 1
            }
            _ => {}
        }
    }
    Ok(ChangeSet {
        plan: spec.plan.clone(),
        stack: spec.stack.clone(),
        provider: spec.provider.clone(),
        lineage: state.lineage.clone(),
        serial: state.serial,
        actions,
        moved,
        pending: state
            .pending
            .iter()
            .map(|(n, i)| PendingNote {
                node: n.clone(),
                op: format!("{:?}", i.op).to_lowercase(),
                failed: i.failed.clone(),
            })
            .collect(),
        checks: vec![],
        budgets: spec
            .budgets
            .iter()
            .filter_map(|b| {
                let r = |v| crate::value::as_ref(v).map(|(n, o)| (n.to_string(), o.to_string()));
                Some(BudgetNote {
                    name: b.name.clone(),
                    limit_s: b.limit_s,
                    from: r(&b.from)?,
                    to: r(&b.to)?,
                    plus: b.plus.clone(),
                })
            })
            .collect(),
        summary,
    })
}

fn delete_reason(mode: Mode) -> &'static str {
    match mode {
        Mode::Apply => "no longer in the plan",
        Mode::DestroyAll => "destroy",
        Mode::DestroyTemporary => "destroy --temporary",
    }
}

/// Orders deletions so that a node goes before the nodes it depends on (per state): Kahn's
/// algorithm on the recorded dependencies, name order among equals.
fn order_deletes<'a>(doomed: &[&'a str], nodes: &BTreeMap<&str, &NodeRecord>) -> Vec<&'a str> {
    let index: HashMap<&str, usize> = doomed.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut blockers = vec![0usize; doomed.len()];
    let mut deps_of: Vec<Vec<usize>> = vec![Vec::new(); doomed.len()];
    for (j, name) in doomed.iter().enumerate() {
        for d in nodes[name].deps() {
            if let Some(&i) = index.get(d.as_str()) {
                if i != j {
                    blockers[i] += 1;
                    deps_of[j].push(i);
                }
            }
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..doomed.len())
        .filter(|&i| blockers[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut out = Vec::with_capacity(doomed.len());
    let mut placed = vec![false; doomed.len()];
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        out.push(doomed[i]);
        placed[i] = true;
        for &d in &deps_of[i] {
            blockers[d] -= 1;
            if blockers[d] == 0 {
                ready.push(std::cmp::Reverse(d));
            }
        }
    }
    // A cycle in recorded dependencies (should not happen): the rest in name order.
    out.extend((0..doomed.len()).filter(|&i| !placed[i]).map(|i| doomed[i]));
    out
}

fn plan_resource(
    n: &NodeSpec,
    prior: Option<&NodeRecord>,
    ty: Option<&TypeImpl>,
    opts: &Options,
    lookup: &dyn Fn(&str, &str) -> Option<Value>,
    a: &mut Action,
    problems: &mut Vec<String>,
) {
    let inputs = value::resolve_attrs(&n.inputs, lookup);
    let force_new: &[&str] = match ty {
        Some(TypeImpl::Resource(t)) => t.force_new(),
        _ => &[],
    };
    let r = match prior {
        Some(NodeRecord::Resource(r)) => r,
        Some(other) => {
            a.action = ActionKind::Replace;
            a.reason = format!("state holds a {} under this name", other.kind_name());
            return;
        }
        None => {
            a.action = ActionKind::Create;
            a.reason = "not in state".into();
            a.changes = inputs
                .iter()
                .map(|(k, v)| AttrChange::new(k, None, Some(v), false))
                .collect();
            return;
        }
    };
    if r.retired && n.options.temporary {
        a.action = ActionKind::Retired;
        a.reason = format!("retired at {}; not recreated", r.updated_at);
        return;
    }
    if r.type_name != n.type_name {
        a.action = ActionKind::Replace;
        a.reason = format!("type changed from `{}`", r.type_name);
    }
    let create_only: &[&str] = match ty {
        Some(TypeImpl::Resource(t)) => t.create_only(),
        _ => &[],
    };
    let keys: BTreeSet<&String> = inputs.keys().chain(r.inputs.keys()).collect();
    for k in keys {
        if n.options.ignore_changes.iter().any(|i| i == k) || create_only.contains(&k.as_str()) {
            continue;
        }
        let new = inputs.get(k);
        let old = r.inputs.get(k);
        let differs = match new {
            Some(v) if value::has_refs(v) => true,
            _ => new != old,
        };
        if differs {
            a.changes.push(AttrChange::new(
                k,
                old,
                new,
                force_new.contains(&k.as_str()),
            ));
        }
    }
    let lifecycle = [
        ("temporary", r.temporary, n.options.temporary),
        ("protect", r.protect, n.options.protect),
        (
            "retain_on_delete",
            r.retain_on_delete,
            n.options.retain_on_delete,
        ),
    ];
    for (name, old, new) in lifecycle {
        if old != new {
            a.changes.push(AttrChange::new(
                &format!("lifecycle.{name}"),
                Some(&Value::Bool(old)),
                Some(&Value::Bool(new)),
                false,
            ));
        }
    }
    if a.action == ActionKind::Replace {
        // already decided (type change)
    } else if opts.replace.contains(&n.name) {
        a.action = ActionKind::Replace;
        a.reason = "requested with --replace".into();
    } else if let Some(c) = a.changes.iter().find(|c| c.forces_replacement) {
        a.action = ActionKind::Replace;
        a.reason = format!("`{}` cannot change in place", c.attribute);
    } else if r.retired {
        a.action = ActionKind::Create;
        a.reason = "retired, and no longer temporary".into();
    } else if !a.changes.is_empty() {
        a.action = ActionKind::Update;
        a.reason = if r.drift.is_empty() {
            "inputs changed".into()
        } else {
            format!("drift found by refresh in {}", r.drift.join(", "))
        };
        if let Some(Some(note)) = match ty {
            Some(TypeImpl::Resource(t)) => Some(t.update_note(&r.outputs)),
            _ => None,
        } {
            a.reason = format!("{}; {note}", a.reason);
        }
    } else {
        a.action = ActionKind::NoOp;
        a.reason = "up to date".into();
    }
    if a.action == ActionKind::Replace && (n.options.protect || r.protect) {
        problems.push(format!(
            "node `{}` is protected and would be replaced ({}); remove `.protect()` from the plan first if this is intended",
            n.name, a.reason
        ));
    }
}

#[cfg(test)]
mod tests;
