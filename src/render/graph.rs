//! The plan's graph as Mermaid (for pull requests and docs) or Graphviz DOT.

use std::fmt::Write;

use crate::dsl::NodeKind;
use crate::graph::Graph;

fn esc(s: &str) -> String {
    s.replace('"', "'")
}

/// A Mermaid flowchart: resources as boxes, data as parallelograms, steps as stadiums, gates as
/// diamonds.
pub fn mermaid(g: &Graph) -> String {
    let mut out = String::from("flowchart TD\n");
    for (i, n) in g.spec.nodes.iter().enumerate() {
        let label = format!("{}<br/><small>{}</small>", esc(&n.name), esc(&n.type_name));
        let shape = match n.kind {
            NodeKind::Resource => format!("[\"{label}\"]"),
            NodeKind::Data => format!("[/\"{label}\"/]"),
            NodeKind::Step => format!("([\"{label}\"])"),
            NodeKind::Gate => format!("{{\"{label}\"}}"),
        };
        let _ = writeln!(out, "  n{i}{shape}");
    }
    for i in 0..g.spec.nodes.len() {
        for d in g.deps(i) {
            let _ = writeln!(out, "  n{d} --> n{i}");
        }
    }
    out
}

/// Graphviz DOT.
pub fn dot(g: &Graph) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=TB;\n", esc(&g.spec.plan));
    for n in &g.spec.nodes {
        let shape = match n.kind {
            NodeKind::Resource => "box",
            NodeKind::Data => "parallelogram",
            NodeKind::Step => "ellipse",
            NodeKind::Gate => "diamond",
        };
        let _ = writeln!(
            out,
            "  \"{}\" [shape={shape}, label=\"{}\\n{}\"];",
            esc(&n.name),
            esc(&n.name),
            esc(&n.type_name)
        );
    }
    for (i, n) in g.spec.nodes.iter().enumerate() {
        for d in g.deps(i) {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\";",
                esc(&g.spec.nodes[d].name),
                esc(&n.name)
            );
        }
    }
    out.push_str("}\n");
    out
}
