//! The plan as a petgraph DAG, holding what every later stage asks of a node: its dependencies,
//! its type's implementation and its deterministic id; and its validation. Every problem is
//! reported at once: duplicate names, invalid identifiers, references to undeclared nodes, unknown
//! types, each cycle with its nodes in order and an edge to cut, and (once those are clear) the
//! inputs each type refuses offline.
//!
//! Building a graph must never reach a cloud or a database: the caller resolves type names (a
//! function), and of a type only its offline checks (`validate`, `validate_refs`, `id_for`) run.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::dsl::{FailurePolicy, NodeKind, NodeSpec, PlanSpec};
use crate::provider::{Request, TypeImpl};
use crate::value::{self, Attrs};

/// Why one node depends on another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edge {
    /// An input (or trigger) refers to the other node's output.
    Input(String),
    /// An explicit `after`.
    After,
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    Duplicate {
        name: String,
        count: usize,
    },
    InvalidName {
        name: String,
    },
    Dangling {
        node: String,
        missing: String,
        via: String,
    },
    UnknownType {
        node: String,
        type_name: String,
        why: String,
    },
    Cycle {
        path: Vec<String>,
        cut: (String, String),
        cut_via: String,
    },
    Moved {
        old: String,
        new: String,
        why: String,
    },
    /// A node option that cannot work (`retire_after`, `reopens`).
    Option {
        node: String,
        why: String,
    },
    /// An input the node's type refuses (checked offline).
    Input {
        node: String,
        type_name: String,
        why: String,
    },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::Duplicate { name, count } => write!(
                f,
                "node `{name}` is declared {count} times; give each a unique name (in a loop, include the loop key in the name)"
            ),
            GraphError::InvalidName { name } => write!(
                f,
                "node name `{name}` is not a valid identifier; use 1 to 100 characters: a lowercase letter first, then lowercase letters, digits, `-`, `_` or `.`"
            ),
            GraphError::Dangling { node, missing, via } => write!(
                f,
                "node `{node}` refers to `{missing}` ({via}), which is not declared; declare it, or fix the name"
            ),
            GraphError::UnknownType { node, type_name, why } => {
                write!(f, "node `{node}` has type `{type_name}`: {why}")
            }
            GraphError::Cycle { path, cut, cut_via } => write!(
                f,
                "cycle: {}; cut the edge {} -> {} ({cut_via})",
                path.join(" -> "),
                cut.0,
                cut.1
            ),
            GraphError::Moved { old, new, why } => {
                write!(f, "moved `{old}` -> `{new}`: {why}")
            }
            GraphError::Option { node, why } => write!(f, "node `{node}`: {why}"),
            GraphError::Input {
                node,
                type_name,
                why,
            } => write!(f, "node `{node}` ({type_name}): {why}"),
        }
    }
}

/// All problems found in a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct GraphErrors {
    pub plan: String,
    pub errors: Vec<GraphError>,
}

impl fmt::Display for GraphErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "plan `{}` is invalid ({n} problem{}):",
            self.plan,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// Whether a node name is a valid identifier.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 100
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
}

/// A validated plan graph. Edges point from a dependency to its dependent.
#[derive(Debug)]
pub struct Graph {
    pub spec: PlanSpec,
    pub dag: DiGraph<usize, Edge>,
    index: HashMap<String, NodeIndex>,
    /// Each node's deterministic id (what its object is named after), made once.
    ids: HashMap<String, String>,
    /// Each node's type implementation, by node index (`None` for a gate, or when the caller
    /// resolved none).
    types: Vec<Option<TypeImpl>>,
}

/// What a graph's builder is told of a type name with a kind: its implementation (`None` when
/// there is none to hold, as for a gate), or why it cannot be used.
pub type ResolveType<'a> = dyn Fn(&str, NodeKind) -> Result<Option<TypeImpl>, String> + 'a;

impl Graph {
    /// Builds and validates. `resolve` gives a type of that kind (and if there is none, why and
    /// what to use instead); the inputs are checked by their types once the graph itself is
    /// sound.
    pub fn build(spec: PlanSpec, resolve: &ResolveType<'_>) -> Result<Graph, GraphErrors> {
        let mut errors = Vec::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &spec.nodes {
            *counts.entry(&n.name).or_default() += 1;
        }
        let mut seen_invalid = BTreeSet::new();
        for n in &spec.nodes {
            if !valid_name(&n.name) && seen_invalid.insert(n.name.clone()) {
                errors.push(GraphError::InvalidName {
                    name: n.name.clone(),
                });
            }
        }
        for (name, count) in &counts {
            if *count > 1 {
                errors.push(GraphError::Duplicate {
                    name: name.to_string(),
                    count: *count,
                });
            }
        }
        let mut types = Vec::with_capacity(spec.nodes.len());
        for n in &spec.nodes {
            if n.kind == NodeKind::Gate {
                types.push(None);
                continue;
            }
            match resolve(&n.type_name, n.kind) {
                Ok(t) => types.push(t),
                Err(why) => {
                    types.push(None);
                    errors.push(GraphError::UnknownType {
                        node: n.name.clone(),
                        type_name: n.type_name.clone(),
                        why,
                    });
                }
            }
        }
        let mut dag = DiGraph::with_capacity(spec.nodes.len(), spec.nodes.len());
        let mut index = HashMap::with_capacity(spec.nodes.len());
        for (i, n) in spec.nodes.iter().enumerate() {
            let ix = dag.add_node(i);
            index.entry(n.name.clone()).or_insert(ix);
        }
        for (i, n) in spec.nodes.iter().enumerate() {
            let me = NodeIndex::new(i);
            let mut deps: BTreeMap<String, Edge> = BTreeMap::new();
            for (attr, v) in n.inputs.iter().chain(n.triggers.iter()) {
                let mut refs = BTreeSet::new();
                value::collect_refs(v, &mut refs);
                for r in refs {
                    deps.entry(r).or_insert_with(|| Edge::Input(attr.clone()));
                }
            }
            for a in &n.after {
                deps.insert(a.clone(), Edge::After);
            }
            for (dep, edge) in deps {
                match index.get(&dep) {
                    Some(&d) => {
                        dag.add_edge(d, me, edge);
                    }
                    None => errors.push(GraphError::Dangling {
                        node: n.name.clone(),
                        missing: dep,
                        via: match edge {
                            Edge::Input(a) => format!("input `{a}`"),
                            Edge::After => "after".into(),
                        },
                    }),
                }
            }
            if let Some(g) = &n.options.retire_after {
                let why = match spec.nodes.iter().find(|x| &x.name == g) {
                    _ if n.kind != NodeKind::Resource => {
                        Some(format!(
                            "only resources retire; `{}` is a {}",
                            n.name,
                            format!("{:?}", n.kind).to_lowercase()
                        ))
                    }
                    None => Some(format!("retire_after names `{g}`, which is not declared")),
                    Some(x) if !matches!(x.kind, NodeKind::Step | NodeKind::Gate) => Some(format!(
                        "retire_after names `{g}`, a resource; name the step or gate after which it retires"
                    )),
                    Some(_) => None,
                };
                if let Some(why) = why {
                    errors.push(GraphError::Option {
                        node: n.name.clone(),
                        why,
                    });
                }
            }
            for r in &n.options.reopens {
                let why = match spec.nodes.iter().find(|x| &x.name == r) {
                    _ if n.kind != NodeKind::Step => Some(format!(
                        "only steps reopen other steps; `{}` is a {}",
                        n.name,
                        format!("{:?}", n.kind).to_lowercase()
                    )),
                    None => Some(format!("reopens `{r}`, which is not declared")),
                    Some(x) if x.kind != NodeKind::Step => Some(format!(
                        "reopens `{r}`, which is not a step; only a done step can be reopened"
                    )),
                    Some(_) => None,
                };
                if let Some(why) = why {
                    errors.push(GraphError::Option {
                        node: n.name.clone(),
                        why,
                    });
                }
            }
            if let FailurePolicy::Compensate(names) = &n.options.on_failure {
                for c in names {
                    if !index.contains_key(c) {
                        errors.push(GraphError::Dangling {
                            node: n.name.clone(),
                            missing: c.clone(),
                            via: "compensation".into(),
                        });
                    }
                }
            }
        }
        for (old, new) in &spec.moved {
            if !index.contains_key(new) {
                errors.push(GraphError::Moved {
                    old: old.clone(),
                    new: new.clone(),
                    why: format!("`{new}` is not declared; moved declarations name the new node"),
                });
            } else if index.contains_key(old) {
                errors.push(GraphError::Moved {
                    old: old.clone(),
                    new: new.clone(),
                    why: format!("`{old}` is still declared; remove it or the moved declaration"),
                });
            }
        }
        for scc in tarjan_scc(&dag) {
            let self_loop = scc.len() == 1 && dag.contains_edge(scc[0], scc[0]);
            if scc.len() > 1 || self_loop {
                errors.push(describe_cycle(&spec, &dag, &scc));
            }
        }
        errors.sort_by_key(error_order);
        if !errors.is_empty() {
            return Err(GraphErrors {
                plan: spec.plan.clone(),
                errors,
            });
        }
        let ids = spec
            .nodes
            .iter()
            .map(|n| {
                let id = crate::provider::deterministic_id(&spec.plan, &spec.stack, &n.name);
                (n.name.clone(), id)
            })
            .collect();
        let graph = Graph {
            spec,
            dag,
            index,
            ids,
            types,
        };
        let errors = graph.input_problems();
        if errors.is_empty() {
            Ok(graph)
        } else {
            Err(GraphErrors {
                plan: graph.spec.plan.clone(),
                errors,
            })
        }
    }

    /// The offline checks of every node's inputs by its type (`validate`, and `validate_refs`
    /// against the nodes its inputs name, by reference or by a literal equal to a node's
    /// identifier).
    fn input_problems(&self) -> Vec<GraphError> {
        let mut problems = Vec::new();
        for (i, n) in self.spec.nodes.iter().enumerate() {
            let Some(t) = &self.types[i] else { continue };
            let refused = |why: String| GraphError::Input {
                node: n.name.clone(),
                type_name: n.type_name.clone(),
                why,
            };
            problems.extend(t.validate(&n.inputs).into_iter().map(refused));
            if let TypeImpl::Resource(rt) = t {
                // `input` may be a path into an object (`dimensions.DBInstanceIdentifier`). A
                // reference names its node; a literal names the resource whose identifier it is.
                let referenced = |input: &str| -> Option<(String, Attrs)> {
                    let mut parts = input.split('.');
                    let first = n.inputs.get(parts.next()?)?;
                    let v = parts.try_fold(first, |v, k| v.get(k))?;
                    let other = match value::as_ref(v) {
                        Some((node, _)) => self.node(node)?,
                        None => {
                            let literal = v.as_str()?;
                            self.spec.nodes.iter().find(|o| {
                                o.name != n.name
                                    && self.identifier_of(o).is_some_and(|id| id == literal)
                            })?
                        }
                    };
                    Some((other.type_name.clone(), other.inputs.clone()))
                };
                problems.extend(
                    rt.validate_refs(&n.inputs, &referenced)
                        .into_iter()
                        .map(refused),
                );
            }
        }
        problems
    }

    /// The type implementation of the node called `name` (`None` for a gate or an unknown name).
    pub fn type_of(&self, name: &str) -> Option<&TypeImpl> {
        self.types.get(self.index_of(name)?)?.as_ref()
    }

    /// The identifier a resource node's object will have, from its type (`None` for others).
    pub fn identifier_of(&self, n: &NodeSpec) -> Option<String> {
        let Some(TypeImpl::Resource(t)) = self.type_of(&n.name) else {
            return None;
        };
        Some(t.id_for(&Request {
            node: &n.name,
            deterministic_id: &self.deterministic_id(&n.name),
            inputs: &n.inputs,
        }))
    }

    /// The deterministic id of the node called `name` (derived from plan, stack and node), also
    /// for a node gone from the plan that state still records.
    pub fn deterministic_id(&self, name: &str) -> String {
        match self.ids.get(name) {
            Some(id) => id.clone(),
            None => crate::provider::deterministic_id(&self.spec.plan, &self.spec.stack, name),
        }
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.index.get(name).map(|ix| &self.spec.nodes[ix.index()])
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).map(|ix| ix.index())
    }

    /// Names of the nodes `name` depends on, in declaration order.
    pub fn deps(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .dag
            .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
            .map(|x| x.index())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The nodes that depend on `i`.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .dag
            .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
            .map(|x| x.index())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A topological order that keeps declaration order wherever the edges allow.
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.spec.nodes.len();
        let mut indeg: Vec<usize> = (0..n)
            .map(|i| {
                self.dag
                    .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
            .filter(|&i| indeg[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut out = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            out.push(i);
            for e in self
                .dag
                .edges_directed(NodeIndex::new(i), Direction::Outgoing)
            {
                let t = e.target().index();
                indeg[t] -= 1;
                if indeg[t] == 0 {
                    ready.push(std::cmp::Reverse(t));
                }
            }
        }
        out
    }

    /// Every node that depends on any of `roots`, directly or not (roots excluded).
    pub fn downstream(&self, roots: &[usize]) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut q: VecDeque<usize> = roots.iter().copied().collect();
        while let Some(i) = q.pop_front() {
            for d in self.dependents(i) {
                if seen.insert(d) {
                    q.push_back(d);
                }
            }
        }
        for r in roots {
            seen.remove(r);
        }
        seen
    }
}

fn error_order(e: &GraphError) -> (u8, String) {
    match e {
        GraphError::InvalidName { name } => (0, name.clone()),
        GraphError::Duplicate { name, .. } => (1, name.clone()),
        GraphError::UnknownType { node, .. } => (2, node.clone()),
        GraphError::Dangling { node, missing, .. } => (3, format!("{node}/{missing}")),
        GraphError::Moved { old, .. } => (4, old.clone()),
        GraphError::Cycle { path, .. } => (5, path.join(",")),
        GraphError::Option { node, .. } => (6, node.clone()),
        GraphError::Input { node, .. } => (7, node.clone()),
    }
}

fn describe_cycle(spec: &PlanSpec, dag: &DiGraph<usize, Edge>, scc: &[NodeIndex]) -> GraphError {
    let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
    let start = *members.iter().min_by_key(|ix| ix.index()).unwrap();
    // Shortest path from start back to start inside the component.
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut q = VecDeque::from([start]);
    let mut closing = None;
    'bfs: while let Some(x) = q.pop_front() {
        let mut next: Vec<NodeIndex> = dag
            .neighbors_directed(x, Direction::Outgoing)
            .filter(|y| members.contains(y))
            .collect();
        next.sort_by_key(|y| y.index());
        for y in next {
            if y == start {
                closing = Some(x);
                break 'bfs;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(y) {
                e.insert(x);
                q.push_back(y);
            }
        }
    }
    let last = closing.unwrap_or(start);
    let mut path = vec![last];
    let mut cur = last;
    while cur != start {
        cur = prev[&cur];
        path.push(cur);
    }
    path.reverse();
    let name = |ix: NodeIndex| spec.nodes[dag[ix]].name.clone();
    let mut names: Vec<String> = path.iter().map(|&ix| name(ix)).collect();
    names.push(name(start));
    // Prefer cutting an explicit `after` edge; otherwise the edge that closes the cycle.
    let pairs: Vec<(NodeIndex, NodeIndex)> = path
        .iter()
        .copied()
        .zip(path.iter().copied().skip(1).chain(std::iter::once(start)))
        .collect();
    let edge_of = |a: NodeIndex, b: NodeIndex| dag.find_edge(a, b).map(|e| dag[e].clone());
    let (a, b) = pairs
        .iter()
        .copied()
        .find(|&(a, b)| edge_of(a, b) == Some(Edge::After))
        .unwrap_or(*pairs.last().unwrap());
    let via = match edge_of(a, b) {
        Some(Edge::After) => format!("remove `{}`'s after(`{}`)", name(b), name(a)),
        Some(Edge::Input(attr)) => {
            format!("`{}`'s input `{attr}` refers to `{}`", name(b), name(a))
        }
        None => "edge".into(),
    };
    GraphError::Cycle {
        path: names,
        cut: (name(a), name(b)),
        cut_via: via,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl::Plan;
    use crate::value::{reference, Attrs};

    fn any_type(_: &str, _: NodeKind) -> Result<Option<TypeImpl>, String> {
        Ok(None)
    }

    fn inputs(refs: &[(&str, &str)]) -> Attrs {
        refs.iter()
            .map(|(k, node)| (k.to_string(), reference(node, "id")))
            .collect()
    }

    #[test]
    fn topo_order_respects_edges_and_declaration_order() {
        let p = Plan::named("p", "s", "local");
        p.add_raw("c", NodeKind::Resource, "core.null", inputs(&[("x", "b")]));
        p.add_raw("b", NodeKind::Resource, "core.null", Attrs::new());
        p.add_raw("a", NodeKind::Resource, "core.null", Attrs::new());
        let g = Graph::build(p.finish(), &any_type).unwrap();
        let names: Vec<&str> = g
            .topo_order()
            .into_iter()
            .map(|i| g.spec.nodes[i].name.as_str())
            .collect();
        assert_eq!(names, vec!["b", "c", "a"]);
    }

    #[test]
    fn reopens_must_name_a_step_and_sit_on_a_step() {
        let p = Plan::named("p", "s", "local");
        let res = p.add_raw("res", NodeKind::Resource, "core.null", Attrs::new());
        let step = p.add_raw("step", NodeKind::Step, "wait.sleep", Attrs::new());
        p.add_raw("undo", NodeKind::Step, "wait.sleep", Attrs::new())
            .reopens(&[&step]);
        p.add_raw("undo-res", NodeKind::Step, "wait.sleep", Attrs::new())
            .reopens(&[&res]);
        p.add_raw("a-resource", NodeKind::Resource, "core.null", Attrs::new())
            .reopens(&[&step]);
        let errs: Vec<String> = Graph::build(p.finish(), &any_type)
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            vec![
                "node `a-resource`: only steps reopen other steps; `a-resource` is a resource".to_string(),
                "node `undo-res`: reopens `res`, which is not a step; only a done step can be reopened".to_string(),
            ]
        );
    }

    #[test]
    fn retire_after_must_name_a_step_or_gate_and_sit_on_a_resource() {
        let p = Plan::named("p", "s", "local");
        let res = p.add_raw("res", NodeKind::Resource, "core.null", Attrs::new());
        let step = p.add_raw("step", NodeKind::Step, "wait.sleep", Attrs::new());
        let gate = p.gate("gate");
        p.add_raw("ok", NodeKind::Resource, "core.null", Attrs::new())
            .retire_after(&gate);
        p.add_raw("on-resource", NodeKind::Resource, "core.null", Attrs::new())
            .retire_after(&res);
        p.add_raw("a-step", NodeKind::Step, "wait.sleep", Attrs::new())
            .retire_after(&step);
        p.add_raw("unknown", NodeKind::Resource, "core.null", Attrs::new())
            .retire_after_name_for_tests("nowhere");
        let errs: Vec<String> = Graph::build(p.finish(), &any_type)
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            vec![
                "node `a-step`: only resources retire; `a-step` is a step".to_string(),
                "node `on-resource`: retire_after names `res`, a resource; name the step or gate after which it retires".to_string(),
                "node `unknown`: retire_after names `nowhere`, which is not declared".to_string(),
            ]
        );
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let p = Plan::named("broken", "s", "local");
        p.add_raw("a", NodeKind::Resource, "core.null", inputs(&[("x", "c")]));
        p.add_raw("b", NodeKind::Resource, "core.null", inputs(&[("x", "a")]));
        p.add_raw("c", NodeKind::Resource, "core.null", Attrs::new())
            .after_name("b");
        p.add_raw("dup", NodeKind::Resource, "core.null", Attrs::new());
        p.add_raw("dup", NodeKind::Resource, "core.null", Attrs::new());
        p.add_raw("Bad Name", NodeKind::Resource, "core.null", Attrs::new());
        p.add_raw(
            "d",
            NodeKind::Resource,
            "nope.thing",
            inputs(&[("y", "ghost")]),
        );
        let check = |t: &str, _: NodeKind| {
            if t == "core.null" {
                Ok(None)
            } else {
                Err("unknown type; known types: core.null".to_string())
            }
        };
        let err = Graph::build(p.finish(), &check).unwrap_err();
        insta::assert_snapshot!(err.to_string());
    }
}
