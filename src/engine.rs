//! The pipelines the CLI runs, as library functions: load a stack and its plan into a validated
//! graph; preview (read state, optionally refresh in memory, plan); prepare an apply (lock,
//! reconcile interrupted operations, plan) and execute it; refresh; import; rename in state.
//!
//! Nothing here prints or asks: the CLI renders results and asks for confirmation. Preview must
//! never take the lock or write anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dsl::{NodeKind, Plan, PlanError};
use crate::executor::work::{build_jobs, labels, ApplyWork, OpJob};
use crate::executor::{self, Event, JobSpec, Limits, Report};
use crate::graph::{Graph, GraphErrors};
use crate::planner::{self, ChangeSet, Options, PlanningError};
use crate::provider::{Ctx, Probe, Registry, Request, TypeImpl};
use crate::stack::{Stack, StackError};
use crate::state::{
    now, DataRecord, Entry, Lock, NodeRecord, Op, ResourceRecord, State, StateAt, StateError,
    StateStore, StepRecord,
};
use crate::value::{self, Attrs};

/// A plan compiled into the binary.
#[derive(Clone)]
pub struct PlanEntry {
    pub name: &'static str,
    pub about: &'static str,
    /// Used only by tests and benchmarks: not listed.
    pub hidden: bool,
    pub build: fn(&Stack) -> Result<Plan, PlanError>,
}

/// Anything that stops a pipeline, each naming what and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Graph(#[from] GraphErrors),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Planning(#[from] PlanningError),
    #[error("{path}:{line}: unknown plan `{plan}`; plans in this binary: {known}. Fix `plan = ...` or add the plan to plans/mod.rs.")]
    UnknownPlan {
        path: String,
        line: usize,
        plan: String,
        known: String,
    },
    #[error("reconciling `{node}` (an interrupted {op}): {message}")]
    Reconcile {
        node: String,
        op: String,
        message: String,
    },
    #[error("refreshing `{node}` (reading its object): {message}")]
    Refresh { node: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("the saved plan is stale: {0}. Run `plan preview` again and review it.")]
    StalePlan(String),
}

/// A stack with its plan built and validated.
pub struct Loaded {
    pub root: PathBuf,
    pub stack: Stack,
    pub graph: Graph,
    pub registry: Registry,
    /// Where the run logs and reports go (and, unless the stack names a remote location, the
    /// state).
    pub state_dir: PathBuf,
    /// Where the state is.
    pub state_at: StateAt,
    /// The run's secrets (Secrets Manager values once fetched, in memory only).
    pub secrets: Arc<crate::secrets::RunSecrets>,
    /// What this command's operations left in the cloud on purpose (every context shares it).
    pub kept: Arc<std::sync::Mutex<Vec<crate::provider::Kept>>>,
}

/// What a binary offers, as `src/bin/plan.rs` hands it to the CLI: its plans and its providers.
#[derive(Clone, Copy)]
pub struct Catalog<'a> {
    pub plans: &'a [PlanEntry],
    pub providers: &'a [crate::provider::ProviderEntry],
}

/// Reads `stacks/<name>.toml`, refusing at its line a stack that names no provider or one the
/// catalog does not offer (naming those it does).
pub fn read_stack(root: &Path, catalog: &Catalog<'_>, name: &str) -> Result<Stack, EngineError> {
    let offered = || {
        catalog
            .providers
            .iter()
            .map(|p| p.name.to_string())
            .collect()
    };
    let stack = match Stack::load(root, name) {
        Err(StackError::NoProvider {
            path, line, column, ..
        }) => {
            return Err(StackError::NoProvider {
                path,
                line,
                column,
                offered: offered(),
            }
            .into())
        }
        other => other?,
    };
    if !catalog.providers.iter().any(|p| p.name == stack.provider) {
        return Err(crate::stack::StackError::Parse {
            path: stack.path.display().to_string(),
            line: stack.provider_line,
            column: 1,
            message: format!(
                "unknown provider `{}`; use one of: {}.",
                stack.provider,
                catalog
                    .providers
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        .into());
    }
    Ok(stack)
}

/// Loads `stacks/<name>.toml`, builds its plan with the registry of its provider, and validates
/// it; a stack naming a plan or a provider the catalog does not offer is refused at its line.
pub fn load(root: &Path, catalog: &Catalog<'_>, name: &str) -> Result<Loaded, EngineError> {
    let plans = catalog.plans;
    let stack = read_stack(root, catalog, name)?;
    let entry =
        plans
            .iter()
            .find(|p| p.name == stack.plan)
            .ok_or_else(|| EngineError::UnknownPlan {
                path: stack.path.display().to_string(),
                line: stack.plan_line,
                plan: stack.plan.clone(),
                known: plans
                    .iter()
                    .filter(|p| !p.hidden)
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
    let registry = crate::provider::registry_with(&stack, catalog.providers)?;
    let plan = (entry.build)(&stack)?;
    stack.check_unused()?;
    let graph = Graph::build(plan.finish(), &|t, k| registry.resolve(t, k))?;
    let state_dir = root.join(
        stack
            .state_dir
            .clone()
            .unwrap_or_else(|| format!(".cutover/{}", stack.name)),
    );
    let state_at = match registry.remote_state(&stack).map_err(EngineError::Usage)? {
        Some(r) => StateAt::Remote(r),
        None => StateAt::Local(state_dir.clone()),
    };
    Ok(Loaded {
        root: root.to_path_buf(),
        stack,
        graph,
        registry,
        state_dir,
        state_at,
        secrets: Arc::new(crate::secrets::RunSecrets::default()),
        kept: Arc::default(),
    })
}

impl Loaded {
    /// A provider context for this stack.
    pub fn ctx(&self) -> Ctx {
        let mut ctx = Ctx::new(
            self.root.clone(),
            &self.graph.spec.plan,
            &self.stack.name,
            self.secrets.clone(),
        );
        ctx.connect = Arc::new(self.stack.connect.clone());
        ctx.connect_servers = self.stack.connect_servers;
        ctx.tokens = self.registry.tokens();
        ctx.kept = self.kept.clone();
        ctx
    }

    /// Fetches the stack's secret references that are not `env:` through the readers its
    /// providers registered (before calls that may reveal them).
    pub async fn fetch_secrets(&self) -> Result<(), EngineError> {
        self.secrets
            .fetch(&self.stack, self.registry.secret_readers())
            .await
            .map_err(EngineError::Usage)
    }

    /// The state as it is on disk (no lock).
    pub fn read_state(&self) -> Result<State, StateError> {
        StateStore::read(&self.state_at, &self.graph.spec.plan, &self.stack.name)
    }

    /// The run summary's lines: what each provider's clients retried, the remote state's
    /// requests, and what the run left in the cloud on purpose, with how to delete each.
    pub fn summaries(&self) -> Vec<String> {
        let mut lines = self.registry.summaries();
        lines.extend(self.state_at.summary());
        for k in self.kept.lock().unwrap().iter() {
            lines.push(format!(
                "kept: {} (`{}`), still billed; delete it when no longer needed: {}",
                k.what, k.node, k.delete_with
            ));
        }
        lines
    }

    /// Executor limits from the stack file.
    pub fn limits(&self) -> Limits {
        Limits {
            global: self.stack.limits.global,
            per_service: self.stack.limits.services.clone().into_iter().collect(),
            default_service: usize::MAX,
        }
    }
}

/// Refuses a plan whose nodes claim the same thing on this machine (a TCP port), or whose claim
/// is taken by something that is not the node's own recorded object, naming the claim, its holder
/// and the stack keys that set it. Runs before a preview or an apply does anything.
pub fn check_claims(l: &Loaded, state: &State) -> Result<(), EngineError> {
    let ctx = l.ctx();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for n in &l.graph.spec.nodes {
        let Some(TypeImpl::Resource(rt)) = l.graph.type_of(&n.name) else {
            continue;
        };
        for (input, what) in rt.claims(&n.inputs) {
            let keys = n
                .inputs
                .get(&input)
                .map(|v| l.stack.keys_with_value(v))
                .unwrap_or_default();
            let set_by = if keys.is_empty() {
                String::new()
            } else {
                format!(" (set by {})", keys.join(", "))
            };
            if let Some(other) = seen.insert(what.clone(), &n.name) {
                problems.push(format!(
                    "nodes `{other}` and `{}` both use {what}{set_by}: give each its own",
                    n.name
                ));
                continue;
            }
            let recorded = state.nodes.contains_key(&n.name);
            if let Some(holder) = rt.claim_holder(&ctx, &input, &n.inputs, recorded) {
                problems.push(format!(
                    "node `{}` needs {what}{set_by}, but {holder} holds it, and that is not a {} this state records; stop that program or give the node another value",
                    n.name, n.type_name
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Usage(format!(
            "stack `{}` cannot run here as it stands. Nothing was changed:\n  {}",
            l.stack.name,
            problems.join("\n  ")
        )))
    }
}

/// Refuses a stack that now points somewhere other than where its recorded objects (and
/// interrupted calls) were made: another region, endpoint or account. Reading them there would
/// find nothing, and a destroy would count them deleted while they run on. Names each node and
/// what moved; runs before a preview, an apply, a destroy or a rollback does anything.
pub fn check_locations(l: &Loaded, state: &State) -> Result<(), EngineError> {
    let recorded = state
        .nodes
        .iter()
        .filter_map(|(n, r)| match r {
            NodeRecord::Resource(r) => Some((n, &r.type_name, r.location.as_deref(), "")),
            _ => None,
        })
        .chain(state.pending.iter().map(|(n, i)| {
            (
                n,
                &i.type_name,
                i.location.as_deref(),
                " (an interrupted call)",
            )
        }));
    let mut moved = Vec::new();
    for (node, type_name, was, what) in recorded {
        let (Some(was), Some(now)) = (was, l.registry.location_of(type_name)) else {
            continue;
        };
        let diff = crate::provider::location_differs(was, &now);
        if !diff.is_empty() {
            moved.push(format!("`{node}`{what}: {}", diff.join(", ")));
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    let n = moved.len();
    let shown = moved
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    let more = if n > 10 {
        format!("\n  ... and {} more", n - 10)
    } else {
        String::new()
    };
    Err(EngineError::Usage(format!(
        "stack `{}` now points somewhere other than where {n} of its recorded objects live, so they could not be read, changed or deleted there. Nothing was changed:\n  {shown}{more}\nPut the settings in {} back to reach them; if they were moved or deleted outside the tool, `plan state {} rm NODE` forgets a record (the object, wherever it is, is left alone).",
        l.stack.name,
        l.stack.path.display(),
        l.stack.name
    )))
}

/// A preview: the change set of the state on disk (refreshed in memory with `refresh`).
pub async fn preview(l: &Loaded, opts: &Options, refresh: bool) -> Result<ChangeSet, EngineError> {
    let mut state = l.read_state()?;
    check_locations(l, &state)?;
    if opts.mode == crate::planner::Mode::Apply {
        check_claims(l, &state)?;
    }
    let mut opts = opts.clone();
    let mut unavailable = vec![];
    if refresh {
        let ctx = l.ctx();
        for (e, _) in refresh_entries(l, &state, &ctx).await? {
            state.apply(&e);
        }
        // Probes and checks that need a secret that cannot be read are skipped.
        let _ = l.fetch_secrets().await;
        (opts.rerun, unavailable) = converging(l, &state).await;
    }
    let mut cs = planner::plan(&l.graph, &state, &l.registry, &opts)?;
    if refresh {
        // Checks that need a secret that cannot be read are skipped, as are those whose inputs
        // are not known yet; the preview itself never needs a secret's value.
        cs.checks = run_checks(l, &state).await;
        cs.checks.extend(unavailable);
    }
    Ok(cs)
}

/// The done steps of converging types (`StepType::converges`) whose probe finds work again, with
/// why; each probe bounded in time. A probe that cannot answer leaves its step done and says so
/// (what the step keeps in line has its own guard: the cutover refuses an unreplicated table).
async fn converging(
    l: &Loaded,
    state: &State,
) -> (
    std::collections::BTreeMap<String, String>,
    Vec<planner::CheckNote>,
) {
    let ctx = l.ctx();
    let mut out = std::collections::BTreeMap::new();
    let mut notes = vec![];
    for n in &l.graph.spec.nodes {
        let Some(TypeImpl::Step(st)) = l.graph.type_of(&n.name) else {
            continue;
        };
        if !st.converges() || !matches!(state.nodes.get(&n.name), Some(NodeRecord::Step(_))) {
            continue;
        }
        let unavailable = |message: String| planner::CheckNote {
            node: n.name.clone(),
            level: crate::provider::CheckLevel::Unavailable,
            message,
        };
        let lookup =
            |x: &str, o: &str| state.nodes.get(x).and_then(|r| r.outputs().get(o).cloned());
        let inputs = value::resolve_attrs(&n.inputs, &lookup);
        if inputs.values().any(value::has_refs) {
            continue;
        }
        let Ok(revealed) = value::reveal_attrs(&inputs, &*ctx.secrets) else {
            notes.push(unavailable(
                "whether it has work again could not be checked: a secret it needs is unreadable"
                    .into(),
            ));
            continue;
        };
        let det = l.graph.deterministic_id(&n.name);
        let req = Request {
            node: &n.name,
            deterministic_id: &det,
            inputs: &revealed,
        };
        match tokio::time::timeout(std::time::Duration::from_secs(30), st.probe(&ctx, &req)).await {
            Ok(Ok(Some(Probe::NotDone))) => {
                out.insert(
                    n.name.clone(),
                    "its probe found work again: it runs again".to_string(),
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => notes.push(unavailable(format!(
                "whether it has work again could not be checked ({e}); it stays done"
            ))),
            Err(_) => notes.push(unavailable(
                "whether it has work again could not be checked within 30 s; it stays done".into(),
            )),
        }
    }
    (out, notes)
}

/// Runs the read-only checks of every step whose inputs are known from state (a preflight of
/// databases that exist), each bounded in time. Never fails: a check that cannot run says so.
async fn run_checks(l: &Loaded, state: &State) -> Vec<planner::CheckNote> {
    run_checks_of(l, state, &|_| true).await
}

/// [`run_checks`] of the nodes `pick` chooses. Resources are checked with the inputs known so far
/// (references to outputs not known yet stay references, secrets stay unrevealed); steps only
/// once every input is known.
async fn run_checks_of(
    l: &Loaded,
    state: &State,
    pick: &dyn Fn(&str) -> bool,
) -> Vec<planner::CheckNote> {
    let ctx = l.ctx();
    let mut out = Vec::new();
    for n in &l.graph.spec.nodes {
        if !pick(&n.name) {
            continue;
        }
        let lookup =
            |x: &str, o: &str| state.nodes.get(x).and_then(|r| r.outputs().get(o).cloned());
        let inputs = value::resolve_attrs(&n.inputs, &lookup);
        let det = l.graph.deterministic_id(&n.name);
        let check = match l.graph.type_of(&n.name) {
            Some(TypeImpl::Step(st)) => {
                if inputs.values().any(value::has_refs) {
                    continue;
                }
                let Ok(revealed) = value::reveal_attrs(&inputs, &*ctx.secrets) else {
                    continue;
                };
                let req = Request {
                    node: &n.name,
                    deterministic_id: &det,
                    inputs: &revealed,
                };
                tokio::time::timeout(std::time::Duration::from_secs(15), st.check(&ctx, &req)).await
            }
            Some(TypeImpl::Resource(rt)) => {
                let req = Request {
                    node: &n.name,
                    deterministic_id: &det,
                    inputs: &inputs,
                };
                tokio::time::timeout(std::time::Duration::from_secs(15), rt.check(&ctx, &req)).await
            }
            _ => continue,
        };
        use crate::provider::CheckLevel;
        let note = |level: CheckLevel, message: String| planner::CheckNote {
            node: n.name.clone(),
            level,
            message,
        };
        match check {
            Ok(Ok(Some(findings))) => {
                out.extend(findings.into_iter().map(|(level, m)| note(level, m)))
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => out.push(note(CheckLevel::Unavailable, e.to_string())),
            Err(_) => out.push(note(
                CheckLevel::Unavailable,
                "the check did not answer within 15 s".into(),
            )),
        }
    }
    out
}

/// What reconciling or refreshing found, for people.
#[derive(Debug, Clone)]
pub struct Note {
    pub node: String,
    pub message: String,
}

/// An apply ready to execute: locked, reconciled, planned.
pub struct Prepared {
    pub lock: Lock,
    pub store: StateStore,
    pub changes: ChangeSet,
    pub reconciled: Vec<Note>,
    pub opts: Options,
}

/// Takes the lock, reconciles interrupted operations, and plans; with a `saved` plan (a reviewed
/// `preview --format json`), refuses when the fresh plan differs from it.
pub async fn prepare(
    l: &Loaded,
    mut opts: Options,
    command: &str,
    saved: Option<&ChangeSet>,
) -> Result<Prepared, EngineError> {
    // Credentials and region first: without them nothing is locked, read or recorded.
    l.registry
        .check_access()
        .await
        .map_err(EngineError::Usage)?;
    // Before anything is locked or recorded: an unreadable secret stops the run with nothing
    // changed.
    l.fetch_secrets().await?;
    if opts.mode == crate::planner::Mode::Apply {
        check_claims(l, &l.read_state()?)?;
    }
    let lock = Lock::acquire(&l.state_at, &l.stack.name, command)?;
    let mut store = StateStore::open(&l.state_at, &l.graph.spec.plan, &l.stack.name)?;
    check_locations(l, store.state())?;
    let ctx = l.ctx();
    let mut reconciled = Vec::new();
    let pending: Vec<(String, crate::state::Intent)> = store
        .state()
        .pending
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // An apply resumes interrupted creates that can be resumed; a destroy records them.
    let resume = opts.mode == crate::planner::Mode::Apply;
    for (node, intent) in pending {
        let (entry, message) =
            reconcile_one(l, &ctx, store.state(), &node, &intent, resume).await?;
        tracing::info!(node = %node, op = ?intent.op, %message, "reconciled");
        if let Some(entry) = entry {
            store.append(entry);
        }
        reconciled.push(Note { node, message });
    }
    if store.dirty() {
        store.compact()?;
    }
    if opts.mode == crate::planner::Mode::Apply {
        let (rerun, notes) = converging(l, store.state()).await;
        opts.rerun = rerun;
        reconciled.extend(notes.into_iter().map(|c| Note {
            node: c.node,
            message: c.message,
        }));
    }
    let changes = planner::plan(&l.graph, store.state(), &l.registry, &opts)?;
    // A saved plan is made before reconciliation; it is compared with the state it saw.
    if let Some(why) = saved.and_then(|s| s.stale_reason(&changes)) {
        let notes: Vec<String> = reconciled
            .iter()
            .map(|n| format!("{}: {}", n.node, n.message))
            .collect();
        return Err(EngineError::StalePlan(if notes.is_empty() {
            why
        } else {
            format!("{why}; this run first reconciled {}", notes.join("; "))
        }));
    }
    if opts.mode == crate::planner::Mode::Apply {
        // The cloud's own checks of what is about to be created or changed: an error stops the
        // apply here, before any change.
        let touched: std::collections::BTreeSet<&str> = changes
            .actions
            .iter()
            .filter(|a| {
                matches!(
                    a.action,
                    crate::planner::ActionKind::Create
                        | crate::planner::ActionKind::Replace
                        | crate::planner::ActionKind::Update
                )
            })
            .map(|a| a.node.as_str())
            .collect();
        let errors: Vec<String> = run_checks_of(l, store.state(), &|n| touched.contains(n))
            .await
            .into_iter()
            .filter(|c| c.level == crate::provider::CheckLevel::Error)
            .map(|c| format!("`{}`: {}", c.node, c.message))
            .collect();
        if !errors.is_empty() {
            return Err(EngineError::Usage(format!(
                "apply stopped before any change; the plan asks for what the cloud does not offer:\n  {}\nFix the plan (or the stack's values) and run again.",
                errors.join("\n  ")
            )));
        }
    }
    Ok(Prepared {
        lock,
        store,
        changes,
        reconciled,
        opts,
    })
}

async fn reconcile_one(
    l: &Loaded,
    ctx: &Ctx,
    state: &State,
    node: &str,
    intent: &crate::state::Intent,
    resume: bool,
) -> Result<(Option<Entry>, String), EngineError> {
    let op = format!("{:?}", intent.op).to_lowercase();
    let err = |message: String| EngineError::Reconcile {
        node: node.into(),
        op: op.clone(),
        message,
    };
    let det = l.graph.deterministic_id(node);
    let req = Request {
        node,
        deterministic_id: &det,
        inputs: &intent.inputs,
    };
    let spec = l.graph.node(node);
    let deps: Vec<String> = l
        .graph
        .index_of(node)
        .map(|i| {
            l.graph
                .deps(i)
                .into_iter()
                .map(|d| l.graph.spec.nodes[d].name.clone())
                .collect()
        })
        .or_else(|| state.nodes.get(node).map(|r| r.deps().to_vec()))
        .unwrap_or_default();
    match l.registry.get(&intent.type_name) {
        Some(TypeImpl::Resource(rt)) => {
            let found = rt
                .read(ctx, &req, &intent.id)
                .await
                .map_err(|e| err(e.to_string()))?;
            if let (Op::Create, Some(obs), true) = (intent.op, &found, resume) {
                if rt.create_resumes() && rt.owned(ctx, node, obs) {
                    // The intent stays until the create, run again, records the object.
                    return Ok((
                        None,
                        format!(
                            "the interrupted create had reached the object `{}`: the create resumes (it waits for that object and makes no other)",
                            obs.id
                        ),
                    ));
                }
            }
            let (entry, message) = match (intent.op, found) {
                (Op::Delete, None) => (
                    Entry::Remove { node: node.into() },
                    "the interrupted delete had completed: record removed".into(),
                ),
                (Op::Delete, Some(_)) => (
                    Entry::ClearIntent { node: node.into() },
                    "the interrupted delete had not happened: the object is still recorded".into(),
                ),
                (Op::Create, Some(obs)) if !rt.owned(ctx, node, &obs) => (
                    Entry::ClearIntent { node: node.into() },
                    format!(
                        "an object `{}` exists but was not created by this plan: not adopted (`plan import {} {node} {}` adopts it)",
                        obs.id, l.stack.name, obs.id
                    ),
                ),
                (_, Some(obs)) => {
                    let o = spec.map(|s| s.options.clone()).unwrap_or_default();
                    let mut inputs = intent.inputs.clone();
                    // What the object really has wins over what was asked, except for values the
                    // provider cannot show (secrets).
                    for (k, v) in &obs.inputs {
                        if value::as_secret(inputs.get(k).unwrap_or(&serde_json::Value::Null)).is_none() {
                            inputs.insert(k.clone(), v.clone());
                        }
                    }
                    (
                        Entry::Record {
                            node: node.into(),
                            record: NodeRecord::Resource(ResourceRecord {
                                type_name: intent.type_name.clone(),
                                id: obs.id.clone(),
                                inputs,
                                outputs: obs.outputs,
                                deps,
                                temporary: o.temporary,
                                protect: o.protect,
                                retain_on_delete: o.retain_on_delete,
                                retired: false,
                                drift: vec![],
                                updated_at: now(),
                                // Found where the stack points (a differing recorded location
                                // was refused before reconciling).
                                location: l.registry.location_of(&intent.type_name),
                            }),
                        },
                        format!("the interrupted {op} had reached the object `{}`: recorded it", obs.id),
                    )
                }
                (Op::Create, None) => (
                    Entry::ClearIntent { node: node.into() },
                    "the interrupted create left no object: it will be created".into(),
                ),
                (_, None) => (
                    Entry::Remove { node: node.into() },
                    format!("the object `{}` is gone: record removed", intent.id),
                ),
            };
            Ok((Some(entry), message))
        }
        Some(TypeImpl::Step(_)) if intent.op == Op::Delete => Ok((
            Some(Entry::ClearIntent { node: node.into() }),
            "a destroy's clean-up of this step was interrupted: the step stays recorded, and the next destroy cleans up again".into(),
        )),
        Some(TypeImpl::Step(_)) if intent.op == Op::Rollback => Err(err(format!(
            "a rollback of `{node}` was interrupted; run `plan rollback {}` again (it is safe to repeat)",
            l.stack.name
        ))),
        Some(TypeImpl::Step(st)) => {
            // A probe talks to what the step changed (a database with a password): secrets are
            // revealed for the call; what it returns is recorded, so it never holds them.
            let revealed = value::reveal_attrs(&intent.inputs, &*ctx.secrets).map_err(err)?;
            let req = Request {
                inputs: &revealed,
                ..req
            };
            let probe = st.probe(ctx, &req).await.map_err(|e| err(e.to_string()))?;
            match probe {
                Some(Probe::Done(outputs)) => Ok((
                    Some(Entry::Record {
                        node: node.into(),
                        record: NodeRecord::Step(StepRecord {
                            type_name: intent.type_name.clone(),
                            done_at: now(),
                            triggers: intent.triggers.clone(),
                            outputs,
                            deps,
                        }),
                    }),
                    "the probe found the step's effect in place: recorded done, not run again".into(),
                )),
                Some(Probe::NotDone) => Ok((
                    Some(Entry::ClearIntent { node: node.into() }),
                    "the probe found no effect: the step will run".into(),
                )),
                None if st.rerun_safe() => Ok((
                    Some(Entry::ClearIntent { node: node.into() }),
                    "the step is safe to run again: it will run".into(),
                )),
                None => Err(err(format!(
                    "step type `{}` has no probe and is not safe to run twice, so whether it ran cannot be told; check its effect, then record it with `plan state {} mark-done {node}` or `plan state {} forget-intent {node}`",
                    intent.type_name, l.stack.name, l.stack.name
                ))),
            }
        }
        Some(TypeImpl::Data(_)) => Ok((
            Some(Entry::ClearIntent { node: node.into() }),
            "an interrupted read has no effect".into(),
        )),
        None => Err(err(format!(
            "type `{}` is not offered by this stack's provider; switch back to the provider that started it",
            intent.type_name
        ))),
    }
}

/// Receives executor events with each job's (symbol, node, verb) label.
pub type EventSink = Arc<dyn Fn(&Event, &[(String, String, String)]) + Send + Sync>;

/// What an apply did.
pub struct Applied {
    pub report: Report,
    pub jobs: Vec<JobSpec>,
    pub ops: Vec<OpJob>,
    pub state: State,
}

/// What an apply or destroy did, counted from its outcomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub added: usize,
    pub changed: usize,
    pub destroyed: usize,
    /// Steps run and gates passed.
    pub steps: usize,
    /// Each failure's message.
    pub failed: Vec<String>,
    pub skipped: usize,
    /// Not started (the run was cancelled or a checkpoint failed).
    pub not_started: usize,
    /// The nodes of the jobs not started, in order.
    pub unreached: Vec<String>,
}

impl Tally {
    /// `2 added, 0 changed, 1 destroyed, 3 steps run`.
    pub fn counts(&self) -> String {
        format!(
            "{} added, {} changed, {} destroyed, {} step{} run",
            self.added,
            self.changed,
            self.destroyed,
            self.steps,
            if self.steps == 1 { "" } else { "s" }
        )
    }
}

impl Applied {
    /// The run's outcomes counted by what they did.
    pub fn tally(&self) -> Tally {
        use crate::executor::{work::OpKind, Outcome};
        let mut t = Tally::default();
        for (o, op) in self.report.outcomes.iter().zip(&self.ops) {
            match o {
                Outcome::Done => match op.op {
                    OpKind::Create => t.added += 1,
                    OpKind::Update => t.changed += 1,
                    OpKind::Delete => t.destroyed += 1,
                    OpKind::Run | OpKind::Gate => t.steps += 1,
                    _ => {}
                },
                Outcome::Failed(e) => t.failed.push(e.clone()),
                Outcome::Skipped(_) => t.skipped += 1,
                Outcome::NotStarted => {
                    t.not_started += 1;
                    t.unreached.push(op.node.clone());
                }
                Outcome::Dormant => {}
            }
        }
        t
    }
}

/// The plan's time budgets whose `to` step ran in this apply (`ran`), as report lines: the time
/// used of the limit, and whether it was over. A budget whose timestamps are not both in state
/// (the step did not record one) says so rather than guessing.
pub fn budget_lines(
    spec: &crate::dsl::PlanSpec,
    state: &State,
    ran: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let at = |v: &serde_json::Value| -> Result<(String, std::time::SystemTime), String> {
        let (node, output) = value::as_ref(v).ok_or_else(|| "not a step's output".to_string())?;
        let text = state
            .nodes
            .get(node)
            .and_then(|r| r.outputs().get(output).cloned())
            .and_then(|v| v.as_str().map(String::from))
            .ok_or_else(|| format!("`{node}` recorded no `{output}`"))?;
        let t = humantime::parse_rfc3339_weak(&text)
            .map_err(|_| format!("`{node}`.{output} = {text:?} is not a time"))?;
        Ok((format!("`{node}` {output}"), t))
    };
    let mut out = vec![];
    for b in &spec.budgets {
        let Some((to_node, _)) = value::as_ref(&b.to) else {
            continue;
        };
        if !ran(to_node) {
            continue;
        }
        let (from, to) = match (at(&b.from), at(&b.to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => {
                out.push(format!("Budget `{}`: not measured: {e}", b.name));
                continue;
            }
        };
        let span =
            to.1.duration_since(from.1)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
        let plus: f64 = b.plus.iter().map(|(s, _)| s).sum();
        let used = span + plus;
        let parts: String = b
            .plus
            .iter()
            .map(|(s, why)| format!(", plus {} s ({why})", fmt_s(*s)))
            .collect();
        let verdict = if used <= b.limit_s {
            format!("{} s of {} s", fmt_s(used), fmt_s(b.limit_s))
        } else {
            format!(
                "OVER: {} s of {} s, {} s too many",
                fmt_s(used),
                fmt_s(b.limit_s),
                fmt_s(used - b.limit_s)
            )
        };
        out.push(format!(
            "Budget `{}`: {verdict}: {} s from {} to {}{parts}.",
            b.name,
            fmt_s(span),
            from.0,
            to.0
        ));
    }
    out
}

/// Seconds as people read them: one decimal below a minute, whole seconds above.
fn fmt_s(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}")
    } else {
        format!("{s:.0}")
    }
}

/// Executes a prepared apply; state is compacted at the end.
pub async fn execute(
    l: &Loaded,
    mut p: Prepared,
    cancel: tokio::sync::watch::Receiver<u32>,
    events: EventSink,
    progress: crate::provider::ProgressFn,
) -> Result<Applied, EngineError> {
    for (from, to) in &p.changes.moved {
        p.store.append(Entry::Rename {
            from: from.clone(),
            to: to.clone(),
        });
    }
    let (jobs, ops) = build_jobs(&p.changes, &l.graph, p.store.state(), &|t, inputs| {
        l.registry
            .get(t)
            .map(|t| t.default_timeout(inputs))
            .unwrap_or(crate::provider::DEFAULT_TIMEOUT)
    });
    let mut ctx = l.ctx();
    ctx.progress = progress;
    let mut work = ApplyWork::new(
        Arc::new(ctx),
        l.registry.clone(),
        ops.clone(),
        p.store.state(),
    );
    let lab = labels(&ops);
    let ev = move |e: &Event| events(e, &lab);
    let report = executor::run(&jobs, &l.limits(), &mut work, &mut p.store, cancel, &ev).await;
    p.store.compact()?;
    let state = p.store.state().clone();
    drop(p.lock);
    Ok(Applied {
        report,
        jobs,
        ops,
        state,
    })
}

/// A drift found by refresh.
async fn refresh_entries(
    l: &Loaded,
    state: &State,
    ctx: &Ctx,
) -> Result<Vec<(Entry, Note)>, EngineError> {
    let mut out = Vec::new();
    for (node, rec) in &state.nodes {
        let det = l.graph.deterministic_id(node);
        match rec {
            NodeRecord::Resource(r) if !r.retired => {
                let Some(TypeImpl::Resource(rt)) = l.registry.get(&r.type_name) else {
                    continue;
                };
                let req = Request {
                    node,
                    deterministic_id: &det,
                    inputs: &r.inputs,
                };
                let found = rt
                    .read(ctx, &req, &r.id)
                    .await
                    .map_err(|e| EngineError::Refresh {
                        node: node.clone(),
                        message: e.to_string(),
                    })?;
                match found {
                    None => out.push((
                        Entry::Remove { node: node.clone() },
                        Note {
                            node: node.clone(),
                            message: format!(
                                "object `{}` no longer exists: removed from state",
                                r.id
                            ),
                        },
                    )),
                    Some(obs) => {
                        let mut drift = Vec::new();
                        let mut inputs = r.inputs.clone();
                        for (k, v) in &obs.inputs {
                            if r.inputs.get(k) != Some(v)
                                && value::as_secret(
                                    r.inputs.get(k).unwrap_or(&serde_json::Value::Null),
                                )
                                .is_none()
                            {
                                drift.push(k.clone());
                                inputs.insert(k.clone(), v.clone());
                            }
                        }
                        if drift.is_empty() && obs.outputs == r.outputs {
                            continue;
                        }
                        let mut nr = r.clone();
                        nr.inputs = inputs;
                        nr.outputs = obs.outputs;
                        nr.drift = drift.clone();
                        nr.updated_at = now();
                        let message = if drift.is_empty() {
                            "outputs updated".into()
                        } else {
                            format!("changed outside this tool: {}", drift.join(", "))
                        };
                        out.push((
                            Entry::Record {
                                node: node.clone(),
                                record: NodeRecord::Resource(nr),
                            },
                            Note {
                                node: node.clone(),
                                message,
                            },
                        ));
                    }
                }
            }
            NodeRecord::Data(d) => {
                let Some(TypeImpl::Data(dt)) = l.registry.get(&d.type_name) else {
                    continue;
                };
                let Some(spec) = l.graph.node(node) else {
                    continue;
                };
                let lookup =
                    |n: &str, o: &str| state.nodes.get(n).and_then(|r| r.outputs().get(o).cloned());
                let inputs = value::resolve_attrs(&spec.inputs, &lookup);
                if inputs.values().any(value::has_refs) {
                    continue;
                }
                let req = Request {
                    node,
                    deterministic_id: &det,
                    inputs: &inputs,
                };
                let outputs = dt
                    .read(ctx, &req)
                    .await
                    .map_err(|e| EngineError::Reconcile {
                        node: node.clone(),
                        op: "read".into(),
                        message: e.to_string(),
                    })?;
                if outputs != d.outputs {
                    out.push((
                        Entry::Record {
                            node: node.clone(),
                            record: NodeRecord::Data(DataRecord {
                                outputs,
                                read_at: now(),
                                ..d.clone()
                            }),
                        },
                        Note {
                            node: node.clone(),
                            message: "data changed".into(),
                        },
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Reads every recorded object and records what changed (`plan refresh`).
pub async fn refresh(l: &Loaded, command: &str) -> Result<Vec<Note>, EngineError> {
    let lock = Lock::acquire(&l.state_at, &l.stack.name, command)?;
    let mut store = StateStore::open(&l.state_at, &l.graph.spec.plan, &l.stack.name)?;
    let ctx = l.ctx();
    let found = refresh_entries(l, store.state(), &ctx).await?;
    let mut notes = Vec::new();
    for (e, n) in found {
        store.append(e);
        notes.push(n);
    }
    store.compact()?;
    drop(lock);
    Ok(notes)
}

/// Adopts an existing object as `node` (`plan import`).
pub async fn import(
    l: &Loaded,
    node: &str,
    id: &str,
    command: &str,
) -> Result<String, EngineError> {
    let spec = l.graph.node(node).ok_or_else(|| {
        EngineError::Usage(format!(
            "`{node}` is not a node of plan `{}`; declare it first, then import",
            l.graph.spec.plan
        ))
    })?;
    if spec.kind != NodeKind::Resource {
        return Err(EngineError::Usage(
            format!(
                "`{node}` is a {:?}; only resources can be imported",
                spec.kind
            )
            .to_lowercase(),
        ));
    }
    let Some(TypeImpl::Resource(rt)) = l.graph.type_of(node) else {
        return Err(EngineError::Usage(format!(
            "type `{}` is not offered by this stack's provider",
            spec.type_name
        )));
    };
    // The id first: a malformed one is refused before anything is locked or read.
    crate::provider::plain_id(id)
        .and_then(|()| rt.check_id(id))
        .map_err(|why| {
            EngineError::Usage(format!(
                "import `{node}`: `{id}` is not an id of a {}: {why}. Nothing was changed.",
                spec.type_name
            ))
        })?;
    // Credentials first (and, for the record, where the object is looked for).
    l.registry
        .check_access()
        .await
        .map_err(EngineError::Usage)?;
    let lock = Lock::acquire(&l.state_at, &l.stack.name, command)?;
    let mut store = StateStore::open(&l.state_at, &l.graph.spec.plan, &l.stack.name)?;
    if store.state().nodes.contains_key(node) {
        return Err(EngineError::Usage(format!(
            "`{node}` is already in state; `plan state {s} show {node}` shows it, and `plan state {s} rm {node}` forgets it (its object stays) if it was imported wrongly",
            s = l.stack.name
        )));
    }
    // One object, one node: two nodes owning it would each replace or delete it.
    if let Some((other, _)) = store.state().nodes.iter().find(|(_, r)| match r {
        NodeRecord::Resource(r) => r.type_name == spec.type_name && r.id == id,
        _ => false,
    }) {
        return Err(EngineError::Usage(format!(
            "import `{node}`: {} `{id}` is already in state as `{other}`; one object belongs to one node. `plan state {} mv {other} {node}` moves it, if that is what you meant. Nothing was changed.",
            spec.type_name, l.stack.name
        )));
    }
    let ctx = l.ctx();
    let det = l.graph.deterministic_id(node);
    let lookup = |n: &str, o: &str| {
        store
            .state()
            .nodes
            .get(n)
            .and_then(|r| r.outputs().get(o).cloned())
    };
    let inputs = value::resolve_attrs(&spec.inputs, &lookup);
    let req = Request {
        node,
        deterministic_id: &det,
        inputs: &inputs,
    };
    let obs = rt
        .read(&ctx, &req, id)
        .await
        .map_err(|e| EngineError::Usage(format!("import `{node}`: {e}")))?
        .ok_or_else(|| {
            EngineError::Usage(format!(
                "import `{node}`: no {} with id `{id}` exists; check the id",
                spec.type_name
            ))
        })?;
    // The object must be the one the node declares: an input that cannot change in place and
    // differs would make the next apply replace (delete) what was just adopted.
    for key in rt.force_new() {
        let (Some(want), Some(have)) = (inputs.get(*key), obs.inputs.get(*key)) else {
            continue;
        };
        if value::has_refs(want) || value::as_secret(want).is_some() || want == have {
            continue;
        }
        return Err(EngineError::Usage(format!(
            "import `{node}`: the {} `{id}` has {key} = {}, but the plan declares {key} = {}; adopting it would make the next apply replace it. Import the object the node declares, or change the plan. Nothing was changed.",
            spec.type_name,
            value::display(have),
            value::display(want)
        )));
    }
    let deps = l
        .graph
        .index_of(node)
        .map(|i| {
            l.graph
                .deps(i)
                .into_iter()
                .map(|d| l.graph.spec.nodes[d].name.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut stored: Attrs = obs.inputs.clone();
    for (k, v) in &spec.inputs {
        if value::as_secret(v).is_some() {
            stored.insert(k.clone(), v.clone());
        }
    }
    store.append(Entry::Record {
        node: node.into(),
        record: NodeRecord::Resource(ResourceRecord {
            type_name: spec.type_name.clone(),
            id: obs.id.clone(),
            inputs: stored,
            outputs: obs.outputs,
            deps,
            temporary: spec.options.temporary,
            protect: spec.options.protect,
            retain_on_delete: spec.options.retain_on_delete,
            retired: false,
            drift: vec![],
            updated_at: now(),
            location: l.registry.location_of(&spec.type_name),
        }),
    });
    store.compact()?;
    drop(lock);
    Ok(obs.id)
}

/// Renames a node in state (`plan state mv`).
pub fn state_mv(l: &Loaded, from: &str, to: &str, command: &str) -> Result<(), EngineError> {
    let lock = Lock::acquire(&l.state_at, &l.stack.name, command)?;
    let mut store = StateStore::open(&l.state_at, &l.graph.spec.plan, &l.stack.name)?;
    if !store.state().nodes.contains_key(from) {
        return Err(EngineError::Usage(format!(
            "`{from}` is not in state; `plan state {} list` lists what is",
            l.stack.name
        )));
    }
    if store.state().nodes.contains_key(to) {
        return Err(EngineError::Usage(format!(
            "`{to}` is already in state; move or forget it first"
        )));
    }
    if !crate::graph::valid_name(to) {
        return Err(EngineError::Usage(format!(
            "`{to}` is not a valid node name: a node name begins with a lower-case letter and uses only a-z, 0-9, `-`, `_` and `.` (at most 100 characters)"
        )));
    }
    store.append(Entry::Rename {
        from: from.into(),
        to: to.into(),
    });
    store.compact()?;
    drop(lock);
    Ok(())
}

/// Moves the local state into the stack's remote location (`plan state STACK push`): both locks
/// held, the remote location refused unless empty, the local files then set aside as
/// `pushed-state.json` (a copy nothing reads). Returns the nodes moved and that copy's path.
pub fn state_push(l: &Loaded, command: &str) -> Result<(usize, PathBuf), EngineError> {
    if !l.state_at.is_remote() {
        return Err(EngineError::Usage(format!(
            "{}: stack `{}` names no remote state location: {}",
            l.stack.path.display(),
            l.stack.name,
            match l.registry.remote_state_form() {
                Some(form) => format!("add `{form}` to the stack file, then push"),
                None => format!("provider `{}` keeps no state remotely", l.stack.provider),
            }
        )));
    }
    let local = StateAt::Local(l.state_dir.clone());
    let _local_lock = Lock::acquire(&local, &l.stack.name, command)?;
    let _remote_lock = Lock::acquire(&l.state_at, &l.stack.name, command)?;
    // An occupied remote location first: that is what a second push meets.
    StateStore::refuse_occupied(&l.state_at)?;
    let st = StateStore::read(&local, &l.graph.spec.plan, &l.stack.name)?;
    if st.lineage.is_empty() && st.nodes.is_empty() && st.pending.is_empty() {
        return Err(EngineError::Usage(format!(
            "{} holds no state of stack `{}` to push; nothing was changed",
            l.state_dir.display(),
            l.stack.name
        )));
    }
    StateStore::seed(&l.state_at, &st)?;
    let kept = l.state_dir.join("pushed-state.json");
    let mut text = serde_json::to_vec_pretty(&st).expect("state serialises");
    text.push(b'\n');
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| {
            EngineError::State(StateError::Io {
                why: crate::io_error::explain(&e, "it"),
                path: p,
            })
        }
    };
    crate::atomic::write(&kept, &text, None).map_err(io(&kept))?;
    for f in ["state.json", "journal.log"] {
        let p = l.state_dir.join(f);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(e)),
            _ => {}
        }
    }
    Ok((st.nodes.len(), kept))
}

/// Forgets a node (`plan state rm`): its record and any interrupted intent leave state; its
/// object is not touched. Returns what the record named (its id, or "a step").
pub fn state_rm(l: &Loaded, node: &str, command: &str) -> Result<String, EngineError> {
    let lock = Lock::acquire(&l.state_at, &l.stack.name, command)?;
    let mut store = StateStore::open(&l.state_at, &l.graph.spec.plan, &l.stack.name)?;
    let pending = store.state().pending.contains_key(node);
    let Some(record) = store.state().nodes.get(node).cloned() else {
        if pending {
            return Err(EngineError::Usage(format!(
                "`{node}` is not in state, only its interrupted operation; `plan state {} forget-intent {node}` drops that",
                l.stack.name
            )));
        }
        return Err(EngineError::Usage(format!(
            "`{node}` is not in state; `plan state {} list` lists what is",
            l.stack.name
        )));
    };
    let what = match &record {
        NodeRecord::Resource(r) => format!("{} `{}`", r.type_name, r.id),
        other => format!("a {}", other.kind_name()),
    };
    if pending {
        store.append(Entry::ClearIntent { node: node.into() });
    }
    store.append(Entry::Remove { node: node.into() });
    store.compact()?;
    drop(lock);
    Ok(what)
}

/// Records a step done, or drops an interrupted intent, after a person checked (`plan state
/// mark-done` / `forget-intent`), for step types that cannot probe.
pub fn resolve_intent(
    l: &Loaded,
    node: &str,
    done: bool,
    command: &str,
) -> Result<(), EngineError> {
    let lock = Lock::acquire(&l.state_at, &l.stack.name, command)?;
    let mut store = StateStore::open(&l.state_at, &l.graph.spec.plan, &l.stack.name)?;
    let Some(intent) = store.state().pending.get(node).cloned() else {
        return Err(EngineError::Usage(format!(
            "`{node}` has no interrupted operation"
        )));
    };
    if done {
        store.append(Entry::Record {
            node: node.into(),
            record: NodeRecord::Step(StepRecord {
                type_name: intent.type_name,
                done_at: now(),
                triggers: intent.triggers,
                outputs: Attrs::new(),
                deps: vec![],
            }),
        });
    } else {
        store.append(Entry::ClearIntent { node: node.into() });
    }
    store.compact()?;
    drop(lock);
    Ok(())
}

/// Undoes done steps that can be undone (`plan rollback`), latest first; each is journaled like any
/// operation. Gates the undone steps depended on are closed again, so the next apply stops there.
pub async fn rollback(
    l: &Loaded,
    only: Option<&str>,
    command: &str,
    progress: crate::provider::ProgressFn,
) -> Result<Vec<Note>, EngineError> {
    l.registry
        .check_access()
        .await
        .map_err(EngineError::Usage)?;
    l.fetch_secrets().await?;
    let lock = Lock::acquire(&l.state_at, &l.stack.name, command)?;
    let mut store = StateStore::open(&l.state_at, &l.graph.spec.plan, &l.stack.name)?;
    check_locations(l, store.state())?;
    let mut ctx = l.ctx();
    ctx.progress = progress;
    let mut order = l.graph.topo_order();
    order.reverse();
    let mut targets = Vec::new();
    for i in order {
        let n = &l.graph.spec.nodes[i];
        if only.is_some_and(|o| o != n.name) {
            continue;
        }
        let done = matches!(store.state().nodes.get(&n.name), Some(NodeRecord::Step(_)));
        let pending = store
            .state()
            .pending
            .get(&n.name)
            .is_some_and(|p| p.op == Op::Rollback);
        if let Some(TypeImpl::Step(st)) = l.graph.type_of(&n.name) {
            if st.can_roll_back() && (done || pending) {
                targets.push((i, st.clone()));
            }
        }
    }
    if targets.is_empty() {
        return Err(EngineError::Usage(match only {
            Some(o) => format!("`{o}` is not a done step that can be rolled back"),
            None => "nothing to roll back: no done step of this stack can be undone".into(),
        }));
    }
    // A step that refuses stops the whole rollback before anything is undone: undoing the
    // steps after it (a DNS flip) alone would leave clients on a side that cannot take them.
    for (i, st) in &targets {
        let n = &l.graph.spec.nodes[*i];
        if let Some(why) = st.rollback_refusal(&n.inputs) {
            return Err(EngineError::Usage(format!(
                "`{}` cannot be rolled back: {why}. Nothing was rolled back.",
                n.name
            )));
        }
    }
    let mut notes = Vec::new();
    for (i, st) in targets {
        let n = &l.graph.spec.nodes[i];
        let outputs = match store.state().nodes.get(&n.name) {
            Some(r) => r.outputs().clone(),
            None => Attrs::new(),
        };
        let lookup = |x: &str, o: &str| {
            store
                .state()
                .nodes
                .get(x)
                .and_then(|r| r.outputs().get(o).cloned())
        };
        let inputs = value::resolve_attrs(&n.inputs, &lookup);
        if inputs.values().any(value::has_refs) {
            return Err(EngineError::Usage(format!(
                "`{}`: its inputs are no longer all known from state; cannot roll it back",
                n.name
            )));
        }
        store.append(Entry::Intent {
            node: n.name.clone(),
            intent: crate::state::Intent {
                op: Op::Rollback,
                type_name: n.type_name.clone(),
                id: n.name.clone(),
                inputs: inputs.clone(),
                triggers: Attrs::new(),
                at: now(),
                failed: None,
                location: None,
            },
        });
        store.commit()?;
        let revealed = value::reveal_attrs(&inputs, &*ctx.secrets).map_err(EngineError::Usage)?;
        let det = l.graph.deterministic_id(&n.name);
        let req = Request {
            node: &n.name,
            deterministic_id: &det,
            inputs: &revealed,
        };
        match st.rollback(&ctx, &req, &outputs).await {
            Ok(_) => {
                store.append(Entry::Remove {
                    node: n.name.clone(),
                });
                // Close the gates it stood behind: the next apply stops there again.
                let mut up = vec![i];
                let mut seen = std::collections::BTreeSet::new();
                while let Some(x) = up.pop() {
                    for d in l.graph.deps(x) {
                        if seen.insert(d) {
                            up.push(d);
                            let dn = &l.graph.spec.nodes[d];
                            if dn.kind == NodeKind::Gate
                                && store.state().nodes.contains_key(&dn.name)
                            {
                                store.append(Entry::Remove {
                                    node: dn.name.clone(),
                                });
                                notes.push(Note {
                                    node: dn.name.clone(),
                                    message: "gate closed again".into(),
                                });
                            }
                        }
                    }
                }
                store.commit()?;
                notes.push(Note {
                    node: n.name.clone(),
                    message: "rolled back".into(),
                });
            }
            Err(e) => {
                // A rollback is safe to repeat and its error says what state it left: nothing is
                // left pending (a refused rollback must not block the next apply).
                store.append(Entry::ClearIntent {
                    node: n.name.clone(),
                });
                store.compact()?;
                drop(lock);
                return Err(EngineError::Reconcile {
                    node: n.name.clone(),
                    op: "rollback".into(),
                    message: e.to_string(),
                });
            }
        }
    }
    store.compact()?;
    drop(lock);
    Ok(notes)
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use crate::dsl::{Budget, Plan};
    use crate::state::StepRecord;

    fn step(outputs: &[(&str, &str)]) -> NodeRecord {
        NodeRecord::Step(StepRecord {
            type_name: "t".into(),
            done_at: "t".into(),
            triggers: Attrs::new(),
            outputs: outputs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect(),
            deps: vec![],
        })
    }

    #[test]
    fn a_budget_reports_the_time_used_and_says_when_it_is_over() {
        let p = Plan::named("p", "s", "local");
        p.budget(
            Budget::new(
                "dns",
                15.0,
                value::reference("switch", "fenced_at"),
                value::reference("flip", "accepted_at"),
            )
            .plus(1.0, "the lowered TTL"),
        );
        p.budget(Budget::new(
            "tight",
            2.0,
            value::reference("switch", "fenced_at"),
            value::reference("flip", "accepted_at"),
        ));
        p.budget(Budget::new(
            "unmeasured",
            2.0,
            value::reference("switch", "nowhere"),
            value::reference("flip", "accepted_at"),
        ));
        let spec = p.finish();
        let mut state = State::new("p", "s");
        state.nodes.insert(
            "switch".into(),
            step(&[("fenced_at", "2026-12-02T04:00:00.250Z")]),
        );
        state.nodes.insert(
            "flip".into(),
            step(&[("accepted_at", "2026-12-02T04:00:03.750Z")]),
        );
        let lines = budget_lines(&spec, &state, &|n| n == "flip");
        assert_eq!(
            lines,
            [
                "Budget `dns`: 4.5 s of 15.0 s: 3.5 s from `switch` fenced_at to `flip` accepted_at, plus 1.0 s (the lowered TTL).",
                "Budget `tight`: OVER: 3.5 s of 2.0 s, 1.5 s too many: 3.5 s from `switch` fenced_at to `flip` accepted_at.",
                "Budget `unmeasured`: not measured: `switch` recorded no `nowhere`",
            ]
        );
        // Not reported in an apply where the flip did not run.
        assert!(budget_lines(&spec, &state, &|_| false).is_empty());
    }
}

/// One node of a run, as its run log saw it (milliseconds since the run began).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunNode {
    pub node: String,
    pub type_name: String,
    /// What the job did (`create`, `run`, `delete`, ...).
    pub op: String,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    /// `done`, `failed`, `skipped`, `not started` or `unfinished` (the log ends before it did).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A time budget's span in the run (milliseconds since the run began).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunWindow {
    pub name: String,
    pub from_ms: f64,
    pub to_ms: f64,
    pub limit_s: f64,
    /// The span plus the budget's fixed seconds.
    pub used_s: f64,
}

/// What a run did, from its run log and the state it left: for `plan report`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunReport {
    pub stack: String,
    pub plan: String,
    pub command: String,
    pub started: String,
    pub total_ms: u64,
    pub outcome: String,
    /// In the order they started (then the ones that never did).
    pub nodes: Vec<RunNode>,
    /// The chain of jobs that decided when the run ended, first to last.
    pub critical_path: Vec<String>,
    /// What the steps measured (node, line), from their types.
    pub measured: Vec<(String, String)>,
    /// The plan's time budgets measured in this run.
    pub windows: Vec<RunWindow>,
    /// Lines of the run's summary (retries of the clients).
    pub summary: Vec<String>,
    /// The steps that waited for a condition (a lag, a bake, health, a metric) and how long.
    pub waits: Vec<(String, u64)>,
}

/// The report of the newest run of the stack, or None when it has none.
pub fn run_report(l: &Loaded, state: &State) -> Option<RunReport> {
    use crate::runlog::Line;
    let (_, lines) = crate::runlog::latest(&l.state_dir)?;
    let Some(Line::Run {
        stack,
        plan,
        command,
        started,
    }) = lines.first().cloned()
    else {
        return None;
    };
    let mut nodes: Vec<RunNode> = vec![];
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    let mut summary = vec![];
    let mut total_ms = 0;
    let mut outcome = "unfinished".to_string();
    let mut jobs: Vec<crate::runlog::Job> = vec![];
    let type_of = |n: &str| {
        state
            .nodes
            .get(n)
            .map(|r| r.type_name().to_string())
            .or_else(|| l.graph.node(n).map(|s| s.type_name.clone()))
            .unwrap_or_default()
    };
    for line in &lines {
        match line {
            Line::Run { .. } => {}
            Line::Start { ms, node, op } => {
                at.insert(node.clone(), nodes.len());
                nodes.push(RunNode {
                    node: node.clone(),
                    type_name: type_of(node),
                    op: op.clone(),
                    start_ms: Some(*ms),
                    end_ms: None,
                    outcome: "unfinished".into(),
                    error: None,
                });
                total_ms = total_ms.max(*ms);
            }
            Line::End { ms, node, error } => {
                if let Some(&i) = at.get(node) {
                    nodes[i].end_ms = Some(*ms);
                    nodes[i].outcome = if error.is_some() { "failed" } else { "done" }.into();
                    nodes[i].error = error.clone();
                }
                total_ms = total_ms.max(*ms);
            }
            Line::Skip { node, cause, ms } => {
                at.insert(node.clone(), nodes.len());
                nodes.push(RunNode {
                    node: node.clone(),
                    type_name: type_of(node),
                    op: String::new(),
                    start_ms: None,
                    end_ms: None,
                    outcome: "skipped".into(),
                    error: Some(cause.clone()),
                });
                total_ms = total_ms.max(*ms);
            }
            Line::Message { node, text, ms } => {
                if node.is_empty() {
                    summary.push(text.clone());
                }
                total_ms = total_ms.max(*ms);
            }
            Line::Done {
                ms,
                jobs: j,
                outcome: o,
            } => {
                total_ms = total_ms.max(*ms);
                outcome = o.clone();
                jobs = j.clone();
            }
        }
    }
    // Jobs that did their work without a call (a gate passing, a record kept) have no start
    // line: they are done when the jobs they waited for were.
    for j in &jobs {
        match at.get(&j.node) {
            Some(&i) if nodes[i].outcome == "unfinished" && j.outcome != "done" => {
                nodes[i].outcome = j.outcome.clone();
            }
            Some(_) => {}
            None if j.outcome == "dormant" => {}
            None => {
                at.insert(j.node.clone(), nodes.len());
                nodes.push(RunNode {
                    node: j.node.clone(),
                    type_name: type_of(&j.node),
                    op: j.op.clone(),
                    start_ms: None,
                    end_ms: None,
                    outcome: j.outcome.clone(),
                    error: None,
                });
            }
        }
    }
    // When each job ended, and the chain of jobs that decided the run's end.
    let deps: Vec<Vec<usize>> = jobs.iter().map(|j| j.deps.clone()).collect();
    let own: Vec<Option<u64>> = jobs
        .iter()
        .map(|j| at.get(&j.node).and_then(|&k| nodes[k].end_ms))
        .collect();
    let done: Vec<bool> = jobs.iter().map(|j| j.outcome == "done").collect();
    let critical: Vec<String> = crate::runlog::critical_path(&deps, &own, &done)
        .into_iter()
        .map(|i| jobs[i].node.clone())
        .collect();
    // The steps that wait for a condition (their types check bounds), and how long they did.
    let waits = nodes
        .iter()
        .filter_map(|n| {
            let (s, e) = (n.start_ms?, n.end_ms?);
            let spec = l.graph.node(&n.node)?;
            match l.graph.type_of(&n.node) {
                Some(TypeImpl::Step(st)) if !st.review(&spec.inputs).guards.is_empty() => {
                    Some((n.node.clone(), e.saturating_sub(s)))
                }
                _ => None,
            }
        })
        .collect();
    // What the steps measured, by their types.
    let mut measured = vec![];
    for n in &nodes {
        if n.outcome != "done" {
            continue;
        }
        if let (Some(TypeImpl::Step(st)), Some(r)) =
            (l.graph.type_of(&n.node), state.nodes.get(&n.node))
        {
            for m in st.measured(r.outputs()) {
                measured.push((n.node.clone(), m));
            }
        }
    }
    // The budgets' spans, placed on the run's clock.
    let t0 = humantime::parse_rfc3339_weak(&started).ok();
    let time = |v: &serde_json::Value| -> Option<f64> {
        let (node, output) = value::as_ref(v)?;
        let text = state
            .nodes
            .get(node)?
            .outputs()
            .get(output)?
            .as_str()?
            .to_string();
        let t = humantime::parse_rfc3339_weak(&text).ok()?;
        Some(match t.duration_since(t0?) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            Err(e) => -e.duration().as_secs_f64() * 1000.0,
        })
    };
    let windows = l
        .graph
        .spec
        .budgets
        .iter()
        .filter_map(|b| {
            let (from_ms, to_ms) = (time(&b.from)?, time(&b.to)?);
            // Only a window this run measured (both ends inside it).
            if from_ms < 0.0 || to_ms < from_ms {
                return None;
            }
            let plus: f64 = b.plus.iter().map(|(s, _)| s).sum();
            Some(RunWindow {
                name: b.name.clone(),
                from_ms,
                to_ms,
                limit_s: b.limit_s,
                used_s: (to_ms - from_ms) / 1000.0 + plus,
            })
        })
        .collect();
    Some(RunReport {
        stack,
        plan,
        command,
        started,
        total_ms,
        outcome,
        nodes,
        critical_path: critical,
        measured,
        windows,
        summary,
        waits,
    })
}

/// What an emulated run of a stack measured, committed beside the project as
/// `reports/STACK.json` (written by `plan emulate` after a run that measured a time budget) for
/// the pull-request comment, which CI makes without an emulator.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rehearsal {
    pub stack: String,
    /// When the run started (RFC 3339).
    pub started: String,
    pub outcome: String,
    pub total_s: f64,
    /// (budget, seconds used, limit).
    pub windows: Vec<(String, f64, f64)>,
    /// The stack values the emulation overrode (`--set KEY=VALUE`), which the numbers depend on.
    #[serde(default)]
    pub sets: Vec<String>,
}

impl Rehearsal {
    /// `reports/STACK.json` of the project.
    pub fn path(root: &Path, stack: &str) -> PathBuf {
        root.join("reports").join(format!("{stack}.json"))
    }

    /// The committed rehearsal of `stack`, if any (an unreadable one is ignored: it is a
    /// report, not an input).
    pub fn read(root: &Path, stack: &str) -> Option<Rehearsal> {
        serde_json::from_str(&std::fs::read_to_string(Self::path(root, stack)).ok()?).ok()
    }

    /// The rehearsal of a run that measured at least one budget.
    pub fn of(r: &RunReport) -> Option<Rehearsal> {
        (!r.windows.is_empty()).then(|| Rehearsal {
            stack: r.stack.clone(),
            started: r.started.clone(),
            outcome: r.outcome.clone(),
            total_s: r.total_ms as f64 / 1000.0,
            windows: r
                .windows
                .iter()
                .map(|w| (w.name.clone(), (w.used_s * 10.0).round() / 10.0, w.limit_s))
                .collect(),
            sets: vec![],
        })
    }
}
