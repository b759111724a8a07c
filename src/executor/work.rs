//! From a change set to jobs, and from a job to provider calls: the visitor the coordinator drives
//! in a real apply. Each job resolves its inputs from outputs already recorded, returns its intent
//! for the journal, runs the provider call, and turns the result into the node's record.
//!
//! This module must never write state itself (the coordinator does) and never print.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::dsl::{FailurePolicy, NodeKind, NodeSpec};
use crate::graph::Graph;
use crate::planner::{ActionKind, ChangeSet};
use crate::provider::{Ctx, Observed, ProviderError, Registry, Request, TypeImpl};
use crate::state::{
    now, DataRecord, Entry, Intent, NodeRecord, Op, ResourceRecord, State, StepRecord,
};
use crate::value::{self, Attrs};

use super::{Finish, JobSpec, OnFailure, Start};

/// What one job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Create,
    Update,
    Delete,
    Forget,
    Read,
    Run,
    Gate,
}

impl OpKind {
    pub fn symbol(self) -> &'static str {
        match self {
            OpKind::Create => "+",
            OpKind::Update => "~",
            OpKind::Delete => "-",
            OpKind::Forget => "x",
            OpKind::Read => "<=",
            OpKind::Run | OpKind::Gate => ">",
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            OpKind::Create => "creating",
            OpKind::Update => "updating",
            OpKind::Delete => "deleting",
            OpKind::Forget => "forgetting",
            OpKind::Read => "reading",
            OpKind::Run => "running",
            OpKind::Gate => "passing gate",
        }
    }
}

/// One job's subject.
#[derive(Debug, Clone)]
pub struct OpJob {
    pub node: String,
    pub op: OpKind,
    /// The declared node (absent for deletes of vanished nodes).
    pub spec: Option<NodeSpec>,
    /// The declared node's type, as the graph holds it (a delete's, and a vanished node's, is
    /// found by the name its record gives).
    pub ty: Option<TypeImpl>,
    /// What the node's object is named after (the graph's, also for a vanished node).
    pub deterministic_id: String,
    /// The record before this run.
    pub prior: Option<NodeRecord>,
    /// For deletes: keep a retired record.
    pub retire: bool,
    /// Desired dependencies, by name (recorded in state for delete ordering).
    pub deps: Vec<String>,
}

/// Whether the declared node `node` depends on `on` directly.
fn depends_on(graph: &Graph, node: &str, on: &str) -> bool {
    graph.index_of(node).is_some_and(|i| {
        graph
            .deps(i)
            .iter()
            .any(|&d| graph.spec.nodes[d].name == on)
    })
}

/// Jobs for a change set: replaces become delete + create; deletes wait for the dependents
/// (per state) that go too, and for former dependents that are updated first.
///
/// `type_timeout` gives a type's default timeout (a node's own `.timeout(d)` wins).
pub fn build_jobs(
    cs: &ChangeSet,
    graph: &Graph,
    state: &State,
    type_timeout: &dyn Fn(&str, &crate::value::Attrs) -> Duration,
) -> (Vec<JobSpec>, Vec<OpJob>) {
    let mut specs: Vec<JobSpec> = Vec::new();
    let mut ops: Vec<OpJob> = Vec::new();
    let mut apply_job: HashMap<String, usize> = HashMap::new();
    let mut delete_job: HashMap<String, usize> = HashMap::new();
    // Deletes of temporaries created and retired in this run.
    let mut retired_now: Vec<usize> = Vec::new();
    // The node's own limit, else a gate's day, else its type's (a node gone from the plan is
    // known by the type its action names).
    let timeout_of = |n: Option<&NodeSpec>, type_name: &str| {
        n.and_then(|n| n.options.timeout).unwrap_or(match n {
            Some(n) if n.kind == NodeKind::Gate => Duration::from_secs(24 * 3600),
            Some(n) => type_timeout(type_name, &n.inputs),
            None => type_timeout(type_name, &crate::value::Attrs::new()),
        })
    };
    for a in &cs.actions {
        let standby = a.action == ActionKind::Standby;
        if (!a.action.is_work() && !standby) || a.held_by.is_some() {
            continue;
        }
        let spec = graph.node(&a.node).cloned();
        let deps: Vec<String> = graph
            .index_of(&a.node)
            .map(|i| {
                graph
                    .deps(i)
                    .into_iter()
                    .map(|d| graph.spec.nodes[d].name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut push = |op: OpKind, retire: bool| -> usize {
            specs.push(JobSpec {
                label: a.node.clone(),
                deps: vec![],
                service: a.service.clone(),
                timeout: timeout_of(spec.as_ref(), &a.type_name),
                on_failure: OnFailure::Skip,
                // A rollback-only node runs only when a compensation wakes it; its record is
                // deleted or forgotten like any other's (a destroy never waits for it).
                dormant: !matches!(op, OpKind::Delete | OpKind::Forget)
                    && spec
                        .as_ref()
                        .map(|s| s.options.rollback_only)
                        .unwrap_or(false),
            });
            ops.push(OpJob {
                node: a.node.clone(),
                op,
                spec: spec.clone(),
                ty: graph.type_of(&a.node).cloned(),
                deterministic_id: graph.deterministic_id(&a.node),
                prior: state.nodes.get(&a.node).cloned(),
                retire,
                deps: deps.clone(),
            });
            ops.len() - 1
        };
        match a.action {
            ActionKind::Replace => {
                let d = push(OpKind::Delete, false);
                let c = push(OpKind::Create, false);
                specs[c].deps.push(d);
                delete_job.insert(a.node.clone(), d);
                apply_job.insert(a.node.clone(), c);
            }
            ActionKind::Delete => {
                let d = push(OpKind::Delete, a.retire);
                delete_job.insert(a.node.clone(), d);
            }
            ActionKind::Forget => {
                let d = push(OpKind::Forget, false);
                delete_job.insert(a.node.clone(), d);
            }
            ActionKind::Create => {
                let c = push(OpKind::Create, false);
                apply_job.insert(a.node.clone(), c);
                // A temporary whose step or gate passes in this run retires in it too (an
                // import instance is not kept, at its hourly cost, until the next apply).
                if a.retire {
                    let d = push(OpKind::Delete, true);
                    specs[d].deps.push(c);
                    retired_now.push(d);
                }
            }
            ActionKind::Update => {
                apply_job.insert(a.node.clone(), push(OpKind::Update, false));
            }
            ActionKind::Read => {
                apply_job.insert(a.node.clone(), push(OpKind::Read, false));
            }
            ActionKind::Run | ActionKind::Standby => {
                apply_job.insert(a.node.clone(), push(OpKind::Run, false));
            }
            ActionKind::Pass => {
                apply_job.insert(a.node.clone(), push(OpKind::Gate, false));
            }
            ActionKind::Done | ActionKind::NoOp | ActionKind::Retired => {}
        }
    }
    // Edges. Who depends on whom, as recorded in state (for deletions).
    let mut recorded_dependents: HashMap<&str, Vec<&String>> = HashMap::new();
    for (other, rec) in &state.nodes {
        for d in rec.deps() {
            recorded_dependents
                .entry(d.as_str())
                .or_default()
                .push(other);
        }
    }
    for j in 0..ops.len() {
        let node = ops[j].node.clone();
        // A retirement waits for the step or gate it retires after, when that runs now.
        if ops[j].op == OpKind::Delete && ops[j].retire {
            if let Some(g) = ops[j]
                .spec
                .as_ref()
                .and_then(|s| s.options.retire_after.as_ref())
            {
                if let Some(&gj) = apply_job.get(g) {
                    specs[j].deps.push(gj);
                }
            }
        }
        // A temporary created and retired in this run goes after every node that uses it.
        if retired_now.contains(&j) {
            for n in &graph.spec.nodes {
                if let Some(&aj) = apply_job
                    .get(&n.name)
                    .filter(|_| depends_on(graph, &n.name, &node))
                {
                    specs[j].deps.push(aj);
                }
            }
        }
        match ops[j].op {
            OpKind::Delete | OpKind::Forget => {
                for other in recorded_dependents.get(node.as_str()).into_iter().flatten() {
                    if **other == node {
                        continue;
                    }
                    if let Some(&dj) = delete_job.get(*other) {
                        specs[j].deps.push(dj);
                    } else if let Some(&aj) = apply_job.get(*other) {
                        if !depends_on(graph, other, &node) {
                            specs[j].deps.push(aj);
                        }
                    }
                }
            }
            _ => {
                for d in &ops[j].deps {
                    if let Some(&aj) = apply_job.get(d) {
                        specs[j].deps.push(aj);
                    }
                }
            }
        }
        if let Some(FailurePolicy::Compensate(names)) =
            ops[j].spec.as_ref().map(|s| s.options.on_failure.clone())
        {
            let comp: Vec<usize> = names
                .iter()
                .filter_map(|n| apply_job.get(n).copied())
                .collect();
            specs[j].on_failure = OnFailure::Compensate(comp);
        } else if let Some(FailurePolicy::Halt) =
            ops[j].spec.as_ref().map(|s| &s.options.on_failure)
        {
            specs[j].on_failure = OnFailure::Halt;
        }
        specs[j].deps.sort_unstable();
        specs[j].deps.dedup();
    }
    (specs, ops)
}

/// The result of one job's call.
pub enum CallResult {
    Observed(Observed),
    Outputs(Attrs),
    Deleted,
    /// The provider refused before changing anything: a failure with nothing to reconcile.
    Refused(String),
}

/// A provider error as a job's result: refusals that changed nothing keep that fact.
fn refused(e: ProviderError) -> Result<CallResult, String> {
    if e.unchanged {
        Ok(CallResult::Refused(e.to_string()))
    } else {
        Err(e.to_string())
    }
}

/// The work of an apply.
pub struct ApplyWork {
    pub ctx: Arc<Ctx>,
    pub registry: Registry,
    pub ops: Vec<OpJob>,
    /// Known outputs by node (from state, then from jobs as they finish).
    outputs: HashMap<String, Attrs>,
    /// Resolved inputs and triggers of started jobs.
    started: HashMap<usize, (Attrs, Attrs, String)>,
    /// Resources created by this run, by node: a temporary created and retired in one run is
    /// deleted from its record here.
    created: HashMap<String, NodeRecord>,
    /// Each node's last progress message (what it waits for), for a timeout's error.
    last_seen: Arc<std::sync::Mutex<HashMap<String, String>>>,
}

impl ApplyWork {
    pub fn new(ctx: Arc<Ctx>, registry: Registry, ops: Vec<OpJob>, state: &State) -> Self {
        let outputs = state
            .nodes
            .iter()
            .map(|(k, r)| (k.clone(), r.outputs().clone()))
            .collect();
        // Every progress message also kept as its node's last, for a timeout's error.
        let last_seen: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
        let (seen, report) = (last_seen.clone(), ctx.progress.clone());
        let mut c = (*ctx).clone();
        c.progress = Arc::new(move |node: &str, msg: &str| {
            seen.lock()
                .unwrap()
                .insert(node.to_string(), msg.to_string());
            report(node, msg)
        });
        ApplyWork {
            ctx: Arc::new(c),
            registry,
            ops,
            outputs,
            started: HashMap::new(),
            created: HashMap::new(),
            last_seen,
        }
    }

    /// The record a delete acts on: the state's before this run, or the one this run created.
    fn prior(&self, op: &OpJob) -> Option<NodeRecord> {
        op.prior
            .clone()
            .or_else(|| self.created.get(&op.node).cloned())
    }

    fn resolve(&self, attrs: &Attrs) -> Result<Attrs, String> {
        let lookup = |n: &str, o: &str| self.outputs.get(n).and_then(|m| m.get(o)).cloned();
        let out = value::resolve_attrs(attrs, &lookup);
        for (k, v) in &out {
            if value::has_refs(v) {
                let mut refs = std::collections::BTreeSet::new();
                value::collect_refs(v, &mut refs);
                let dep = refs.into_iter().next().unwrap_or_default();
                let known = self
                    .outputs
                    .get(&dep)
                    .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "none recorded".into());
                return Err(format!(
                    "input `{k}` refers to an output of `{dep}` that is not known (its outputs: {known}); fix the output name in the plan"
                ));
            }
        }
        Ok(out)
    }
}

fn record_resource(
    op: &OpJob,
    type_name: &str,
    inputs: Attrs,
    obs: &Observed,
    location: Option<String>,
) -> NodeRecord {
    let o = op
        .spec
        .as_ref()
        .map(|s| s.options.clone())
        .unwrap_or_default();
    NodeRecord::Resource(ResourceRecord {
        type_name: type_name.into(),
        id: obs.id.clone(),
        inputs,
        outputs: obs.outputs.clone(),
        deps: op.deps.clone(),
        temporary: o.temporary,
        protect: o.protect,
        retain_on_delete: o.retain_on_delete,
        retired: false,
        drift: vec![],
        updated_at: now(),
        location,
    })
}

impl super::Work for ApplyWork {
    type Output = CallResult;

    fn start(&mut self, job: usize) -> Start<CallResult> {
        let op = self.ops[job].clone();
        let node = op.node.clone();
        let fail = |error: String| Start::Fail {
            entries: vec![],
            error: format!("`{node}`: {error}"),
        };
        // A delete or a forget acts on the recorded object, so it takes the record's type (a
        // replace whose type changed deletes the old object as what it was); the others take
        // the declared node's.
        let recorded = op.prior.as_ref().map(|p| p.type_name().to_string());
        let declared = op.spec.as_ref().map(|s| s.type_name.clone());
        let type_name = if matches!(op.op, OpKind::Delete | OpKind::Forget) {
            recorded.or(declared)
        } else {
            declared.or(recorded)
        }
        .unwrap_or_default();
        // The graph's implementation, when it is of that type.
        let held = op
            .ty
            .clone()
            .filter(|_| op.spec.as_ref().is_some_and(|s| s.type_name == type_name));
        let det = op.deterministic_id.clone();
        match op.op {
            OpKind::Forget => {
                // What stays in the cloud once forgotten is listed at the end of the run.
                let kept = match (&op.prior, self.registry.get(&type_name)) {
                    (Some(NodeRecord::Step(r)), Some(TypeImpl::Step(st))) => st.kept(&r.outputs),
                    (Some(NodeRecord::Resource(r)), Some(TypeImpl::Resource(rt))) => {
                        rt.kept(&r.id, &r.outputs)
                    }
                    _ => None,
                };
                if let Some((what, delete_with)) = kept {
                    self.ctx.keep(&node, what, delete_with);
                }
                // A step that left something no resource owns cleans it up first.
                let cleaner = match (&op.prior, self.registry.get(&type_name)) {
                    (Some(NodeRecord::Step(r)), Some(TypeImpl::Step(st))) if st.cleans_up() => {
                        Some((st.clone(), r.outputs.clone()))
                    }
                    _ => None,
                };
                let Some((st, outputs)) = cleaner else {
                    return Start::Skip(vec![Entry::Remove { node }]);
                };
                let ctx = self.ctx.clone();
                self.started
                    .insert(job, (Attrs::new(), Attrs::new(), type_name.clone()));
                Start::Run {
                    intent: vec![Entry::Intent {
                        node: node.clone(),
                        intent: Intent {
                            op: Op::Delete,
                            type_name,
                            id: node.clone(),
                            inputs: outputs.clone(),
                            triggers: Attrs::new(),
                            at: now(),
                            failed: None,
                            location: None,
                        },
                    }],
                    fut: Box::pin(async move {
                        st.clean_up(&ctx, &outputs)
                            .await
                            .map(|()| CallResult::Outputs(Attrs::new()))
                            .map_err(|e| e.to_string())
                    }),
                }
            }
            OpKind::Gate => {
                let spec = op.spec.clone().expect("gates are declared");
                let record = Entry::Record {
                    node: node.clone(),
                    record: NodeRecord::Gate(StepRecord {
                        type_name: "core.gate".into(),
                        done_at: now(),
                        triggers: Attrs::new(),
                        outputs: Attrs::new(),
                        deps: op.deps.clone(),
                    }),
                };
                match spec.options.window {
                    None => Start::Skip(vec![record]),
                    Some(w) => {
                        let ctx = self.ctx.clone();
                        Start::Run {
                            intent: vec![],
                            fut: Box::pin(async move {
                                loop {
                                    let secs = std::time::SystemTime::now()
                                        .duration_since(std::time::UNIX_EPOCH)
                                        .map(|d| d.as_secs())
                                        .unwrap_or(0);
                                    let minute = ((secs / 60) % (24 * 60)) as u32;
                                    if w.contains(minute) {
                                        return Ok(CallResult::Outputs(Attrs::new()));
                                    }
                                    ctx.report(&node, &format!("waiting for window {w}"));
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                }
                            }),
                        }
                    }
                }
            }
            _ => {
                let Some(t) = held.or_else(|| self.registry.get(&type_name).cloned()) else {
                    return fail(format!(
                        "type `{type_name}` is not offered by this stack's provider"
                    ));
                };
                let (inputs, triggers) = match &op.spec {
                    Some(s) if op.op != OpKind::Delete => {
                        let i = match self.resolve(&s.inputs) {
                            Ok(i) => i,
                            Err(e) => return fail(e),
                        };
                        let tr = match self.resolve(&s.triggers) {
                            Ok(i) => i,
                            Err(e) => return fail(e),
                        };
                        (i, tr)
                    }
                    _ => match self.prior(&op) {
                        Some(NodeRecord::Resource(r)) => (r.inputs.clone(), Attrs::new()),
                        _ => (Attrs::new(), Attrs::new()),
                    },
                };
                // Secrets are revealed for the call only: intents and records keep references.
                let revealed = match value::reveal_attrs(&inputs, &*self.ctx.secrets) {
                    Ok(r) => r,
                    Err(e) => return fail(e),
                };
                let ctx = self.ctx.clone();
                let prior_id = match self.prior(&op) {
                    Some(NodeRecord::Resource(r)) => Some(r.id.clone()),
                    _ => None,
                };
                let intent = |o: Op, id: String, inputs: &Attrs| Entry::Intent {
                    node: node.clone(),
                    intent: Intent {
                        op: o,
                        type_name: type_name.clone(),
                        id,
                        inputs: inputs.clone(),
                        triggers: triggers.clone(),
                        at: now(),
                        failed: None,
                        location: self.registry.location_of(&type_name),
                    },
                };
                let result = match (op.op, t) {
                    (OpKind::Create, TypeImpl::Resource(rt)) => {
                        let id = rt.id_for(&Request {
                            node: &node,
                            deterministic_id: &det,
                            inputs: &inputs,
                        });
                        let e = intent(Op::Create, id, &inputs);
                        let (n, d, i) = (node.clone(), det.clone(), revealed.clone());
                        Start::Run {
                            intent: vec![e],
                            fut: Box::pin(async move {
                                let req = Request {
                                    node: &n,
                                    deterministic_id: &d,
                                    inputs: &i,
                                };
                                rt.create(&ctx, &req)
                                    .await
                                    .map(CallResult::Observed)
                                    .or_else(refused)
                            }),
                        }
                    }
                    (OpKind::Update, TypeImpl::Resource(rt)) => {
                        let Some(NodeRecord::Resource(prior)) = op.prior.clone() else {
                            return fail("no prior record to update".into());
                        };
                        let mut ignore = op
                            .spec
                            .as_ref()
                            .map(|s| s.options.ignore_changes.clone())
                            .unwrap_or_default();
                        ignore.extend(rt.create_only().iter().map(|s| s.to_string()));
                        let changed: Vec<String> = inputs
                            .keys()
                            .chain(prior.inputs.keys())
                            .filter(|k| {
                                !ignore.contains(k) && inputs.get(*k) != prior.inputs.get(*k)
                            })
                            .cloned()
                            .collect::<std::collections::BTreeSet<_>>()
                            .into_iter()
                            .collect();
                        if changed.is_empty() {
                            // Values known only now turned out unchanged, or only lifecycle options
                            // changed: no call, just the record.
                            let obs = Observed {
                                id: prior.id.clone(),
                                inputs: prior.inputs.clone(),
                                outputs: prior.outputs.clone(),
                            };
                            // No call: the object stays where it was recorded.
                            let rec = record_resource(
                                &op,
                                &type_name,
                                prior.inputs.clone(),
                                &obs,
                                prior.location.clone(),
                            );
                            self.outputs.insert(node.clone(), obs.outputs);
                            return Start::Skip(vec![Entry::Record { node, record: rec }]);
                        }
                        let mut stored = inputs.clone();
                        for k in &ignore {
                            match prior.inputs.get(k) {
                                Some(v) => stored.insert(k.clone(), v.clone()),
                                None => stored.remove(k),
                            };
                        }
                        let e = intent(Op::Update, prior.id.clone(), &stored);
                        let (n, d, id) = (node.clone(), det.clone(), prior.id.clone());
                        let i = revealed.clone();
                        self.started
                            .insert(job, (stored, Attrs::new(), type_name.clone()));
                        return Start::Run {
                            intent: vec![e],
                            fut: Box::pin(async move {
                                let req = Request {
                                    node: &n,
                                    deterministic_id: &d,
                                    inputs: &i,
                                };
                                rt.update(&ctx, &req, &id, &changed)
                                    .await
                                    .map(CallResult::Observed)
                                    .or_else(refused)
                            }),
                        };
                    }
                    (OpKind::Delete, TypeImpl::Resource(rt)) => {
                        let Some(id) = prior_id else {
                            return Start::Skip(vec![Entry::Remove { node }]);
                        };
                        let e = intent(Op::Delete, id.clone(), &inputs);
                        let (n, d, i) = (node.clone(), det.clone(), revealed.clone());
                        Start::Run {
                            intent: vec![e],
                            fut: Box::pin(async move {
                                let req = Request {
                                    node: &n,
                                    deterministic_id: &d,
                                    inputs: &i,
                                };
                                rt.delete(&ctx, &req, &id)
                                    .await
                                    .map(|_| CallResult::Deleted)
                                    .or_else(refused)
                            }),
                        }
                    }
                    (OpKind::Read, TypeImpl::Data(dt)) => {
                        let (n, d, i) = (node.clone(), det.clone(), revealed.clone());
                        Start::Run {
                            intent: vec![],
                            fut: Box::pin(async move {
                                let req = Request {
                                    node: &n,
                                    deterministic_id: &d,
                                    inputs: &i,
                                };
                                dt.read(&ctx, &req)
                                    .await
                                    .map(CallResult::Outputs)
                                    .or_else(refused)
                            }),
                        }
                    }
                    (OpKind::Run, TypeImpl::Step(st)) => {
                        let e = intent(Op::Run, det.clone(), &inputs);
                        let (n, d, i) = (node.clone(), det.clone(), revealed.clone());
                        Start::Run {
                            intent: vec![e],
                            fut: Box::pin(async move {
                                let req = Request {
                                    node: &n,
                                    deterministic_id: &d,
                                    inputs: &i,
                                };
                                st.run(&ctx, &req)
                                    .await
                                    .map(CallResult::Outputs)
                                    .map_err(|e: ProviderError| e.to_string())
                            }),
                        }
                    }
                    (op, t) => {
                        return fail(format!("cannot {op:?} a {:?} type", t.kind()).to_lowercase())
                    }
                };
                self.started.insert(job, (inputs, triggers, type_name));
                result
            }
        }
    }

    fn waiting_on(&self, job: usize) -> Option<String> {
        let node = &self.ops.get(job)?.node;
        self.last_seen.lock().unwrap().get(node).cloned()
    }

    fn finish(&mut self, job: usize, result: Result<CallResult, String>) -> Finish {
        let op = self.ops[job].clone();
        let node = op.node.clone();
        let (inputs, triggers, type_name) = self.started.remove(&job).unwrap_or_default();
        match result {
            Err(e) => {
                let error = format!("`{node}`: {e}");
                let entries = match op.op {
                    OpKind::Read | OpKind::Gate => vec![],
                    _ => vec![Entry::Failed { node, error: e }],
                };
                Finish {
                    entries,
                    error: Some(error),
                }
            }
            Ok(CallResult::Refused(e)) => Finish {
                entries: vec![Entry::ClearIntent { node: node.clone() }],
                error: Some(format!("`{node}`: {e}")),
            },
            Ok(r) => {
                let entry = match (op.op, r) {
                    (OpKind::Create | OpKind::Update, CallResult::Observed(obs)) => {
                        self.outputs.insert(node.clone(), obs.outputs.clone());
                        let record = record_resource(
                            &op,
                            &type_name,
                            inputs,
                            &obs,
                            self.registry.location_of(&type_name),
                        );
                        self.created.insert(node.clone(), record.clone());
                        Entry::Record {
                            node: node.clone(),
                            record,
                        }
                    }
                    (OpKind::Forget, _) => {
                        self.outputs.remove(&node);
                        Entry::Remove { node: node.clone() }
                    }
                    (OpKind::Delete, _) => {
                        self.outputs.remove(&node);
                        match (&self.prior(&op), op.retire) {
                            (Some(NodeRecord::Resource(r)), true) => {
                                let mut r = r.clone();
                                r.retired = true;
                                r.updated_at = now();
                                Entry::Record {
                                    node: node.clone(),
                                    record: NodeRecord::Resource(r),
                                }
                            }
                            _ => Entry::Remove { node: node.clone() },
                        }
                    }
                    (OpKind::Read, CallResult::Outputs(outputs)) => {
                        self.outputs.insert(node.clone(), outputs.clone());
                        Entry::Record {
                            node: node.clone(),
                            record: NodeRecord::Data(DataRecord {
                                type_name,
                                outputs,
                                read_at: now(),
                                deps: op.deps.clone(),
                            }),
                        }
                    }
                    (OpKind::Run, CallResult::Outputs(outputs)) => {
                        self.outputs.insert(node.clone(), outputs.clone());
                        // A step that undid others reopens them: they run again next apply.
                        let reopened: Vec<Entry> = op
                            .spec
                            .as_ref()
                            .map(|s| s.options.reopens.clone())
                            .unwrap_or_default()
                            .into_iter()
                            .map(|n| Entry::Remove { node: n })
                            .collect();
                        let record = Entry::Record {
                            node: node.clone(),
                            record: NodeRecord::Step(StepRecord {
                                type_name,
                                done_at: now(),
                                triggers,
                                outputs,
                                deps: op.deps.clone(),
                            }),
                        };
                        return Finish {
                            entries: std::iter::once(record).chain(reopened).collect(),
                            error: None,
                        };
                    }
                    (OpKind::Gate, _) => Entry::Record {
                        node: node.clone(),
                        record: NodeRecord::Gate(StepRecord {
                            type_name: "core.gate".into(),
                            done_at: now(),
                            triggers: Attrs::new(),
                            outputs: Attrs::new(),
                            deps: op.deps.clone(),
                        }),
                    },
                    (_, _) => {
                        return Finish {
                            entries: vec![],
                            error: Some(format!(
                                "`{node}`: provider returned the wrong kind of result"
                            )),
                        }
                    }
                };
                Finish {
                    entries: vec![entry],
                    error: None,
                }
            }
        }
    }
}

/// Labels for progress: symbol, node, verb.
pub fn labels(ops: &[OpJob]) -> Vec<(String, String, String)> {
    ops.iter()
        .map(|o| {
            (
                o.op.symbol().to_string(),
                o.node.clone(),
                o.op.verb().to_string(),
            )
        })
        .collect()
}
