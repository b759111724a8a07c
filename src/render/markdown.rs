//! The preview for a pull request comment: the verdict first (counts, gates held), then a warning
//! block for what a reviewer must not miss (data that would be destroyed or replaced, a protected
//! resource changed, traffic re-pointed, writers fenced), the steps as a timeline grouped by the
//! gate that holds them, each with the guards it checks and whether it can be rolled back, the
//! temporaries grouped by what retires them, the time budgets and the rollback line; then the full diff in a `<details>` block inside a `diff`
//! fence (GitHub colours `+` and `-` lines), split into parts below GitHub's 65,536-character
//! limit. What a node means comes from its type (`provider::Review`), never from guessing here.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::text::{diff_body, summary_line};
use crate::dsl::NodeKind;
use crate::planner::{Action, ActionKind, ChangeSet, Hold};

/// GitHub colours a diff line by its first character: the action's symbol moves to column 0
/// (`~` and `-/+` become `!`, which GitHub shows in orange, as Atlantis does).
fn diff_line(l: &str) -> String {
    let t = l.trim_start();
    let indent = l.len() - t.len();
    for (sym, mapped) in [("-/+ ", "!"), ("+ ", "+"), ("- ", "-"), ("~ ", "!")] {
        if let Some(rest) = t.strip_prefix(sym) {
            return format!("{mapped}{}{rest}", " ".repeat(indent + sym.len() - 1));
        }
    }
    l.to_string()
}

/// GitHub's limit on a comment body.
pub const LIMIT: usize = 65_536;

/// The comment body or bodies. Each part is complete markdown on its own.
pub fn preview(cs: &ChangeSet) -> Vec<String> {
    preview_with(cs, None, LIMIT)
}

/// As [`preview`], with a smaller limit (tests).
pub fn preview_with_limit(cs: &ChangeSet, limit: usize) -> Vec<String> {
    preview_with(cs, None, limit)
}

/// As [`preview`], with what an emulated run of the stack measured in the verdict.
pub fn preview_with(
    cs: &ChangeSet,
    rehearsal: Option<&crate::engine::Rehearsal>,
    limit: usize,
) -> Vec<String> {
    let title = format!("### cutover: plan `{}` on stack `{}`", cs.plan, cs.stack);
    let mut summary = if cs.has_changes() {
        format!("**Plan: {}.**", summary_line(&cs.summary))
    } else {
        "**No changes.**".to_string()
    };
    let gates: Vec<String> = cs
        .actions
        .iter()
        .filter(|a| {
            a.kind == NodeKind::Gate && a.held_by.as_ref().is_some_and(|h| h.gate().is_some())
        })
        .map(|a| format!("`{}`", a.node))
        .collect();
    if !gates.is_empty() {
        let _ = write!(summary, " Gates held: {}.", gates.join(", "));
    }
    for (kind, label) in [
        (ActionKind::Replace, "Replaces"),
        (ActionKind::Delete, "Destroys"),
    ] {
        let names: Vec<String> = cs
            .actions
            .iter()
            .filter(|a| a.action == kind)
            .map(|a| format!("`{}`", a.node))
            .collect();
        if !names.is_empty() {
            let _ = write!(summary, " {label}: {}.", names.join(", "));
        }
    }
    if let Some(r) = rehearsal {
        let windows: Vec<String> = r
            .windows
            .iter()
            .map(|(name, used, limit)| format!("`{name}` {used:.1} s of {limit:.1} s"))
            .collect();
        let _ = write!(
            summary,
            "\n\nMeasured in an emulated run on {} ({}{}): {}; the run took {:.0} s.",
            r.started.get(..10).unwrap_or(&r.started),
            r.outcome,
            if r.sets.is_empty() {
                String::new()
            } else {
                format!(", with {}", r.sets.join(", "))
            },
            windows.join(", "),
            r.total_s
        );
    }
    let review = review_sections(cs);
    let summary = if review.is_empty() {
        summary
    } else {
        format!("{summary}\n\n{review}")
    };
    let body: Vec<String> = diff_body(cs).lines().map(diff_line).collect();
    let overhead = title.len() + summary.len() + 200;
    let budget = limit.saturating_sub(overhead).max(1000);
    let mut chunks: Vec<String> = vec![String::new()];
    for line in body {
        let line = if line.len() > budget {
            format!("{}...", &line[..budget - 3])
        } else {
            line
        };
        if chunks.last().unwrap().len() + line.len() + 1 > budget {
            chunks.push(String::new());
        }
        let c = chunks.last_mut().unwrap();
        c.push_str(&line);
        c.push('\n');
    }
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let part = if n > 1 {
                format!(" (part {} of {n})", i + 1)
            } else {
                String::new()
            };
            format!(
                "{title}{part}\n\n{summary}\n\n<details><summary>Full diff{part}</summary>\n\n```diff\n{chunk}```\n\n</details>\n"
            )
        })
        .collect()
}

/// When a held step runs: the gate that holds it, or this apply.
fn when(a: &Action) -> String {
    match &a.held_by {
        Some(Hold::Gate(g)) => format!("after `--approve {g}`"),
        Some(h @ Hold::Until(_)) => format!("after {h}"),
        None => "on apply".to_string(),
    }
}

/// Whether an action does (or will do, once its gate opens) work in this apply.
fn pending(a: &Action) -> bool {
    a.action.is_work() && a.action != ActionKind::Read
}

/// The warning block, the steps' timeline, the budgets and the rollback line.
fn review_sections(cs: &ChangeSet) -> String {
    let mut out = String::new();
    // A step after which `plan rollback` refuses (a cutover without reverse replication): no
    // other step is then presented as undoable, and nothing as ending a rollback.
    let refusing = cs.actions.iter().find_map(|a| {
        a.review
            .refuses_rollback
            .as_deref()
            .map(|why| (a.node.as_str(), why))
    });
    // Warnings: data, protection, traffic, fences.
    let mut warn: Vec<String> = vec![];
    for a in &cs.actions {
        let what = format!("`{}` ({})", a.node, a.type_name);
        match a.action {
            ActionKind::Delete | ActionKind::Replace if a.review.holds_data => warn.push(format!(
                "{what} will be {}: it holds data{}",
                if a.action == ActionKind::Delete {
                    "destroyed"
                } else {
                    "replaced (destroyed, then created empty)"
                },
                if a.held_by.is_some() {
                    format!(" ({})", when(a))
                } else {
                    String::new()
                }
            )),
            ActionKind::Update if a.protected => {
                warn.push(format!("{what} is protected and will be changed in place"))
            }
            _ => {}
        }
        if a.kind == NodeKind::Step && pending(a) {
            if a.review.fences_writes {
                warn.push(format!(
                    "{what} stops writes to the old database, {}{}",
                    when(a),
                    if a.review.refuses_rollback.is_some() {
                        ": no `plan rollback` once it ran (no reverse replication)"
                    } else {
                        ""
                    }
                ));
            }
            if let Some(t) = &a.review.moves_traffic {
                warn.push(format!("{what} re-points traffic: {t}, {}", when(a)));
            }
            if a.review.ends_rollback && refusing.is_none() {
                warn.push(format!(
                    "{what} ends what a rollback needs, {}: after it, `plan rollback` cannot go back",
                    when(a)
                ));
            }
        }
    }
    if !warn.is_empty() {
        out.push_str("> [!WARNING]\n");
        for w in &warn {
            let _ = writeln!(out, "> - {w}");
        }
        out.push('\n');
    }
    // The timeline: steps in execution order, grouped by when they run.
    let steps: Vec<&Action> = cs
        .actions
        .iter()
        .filter(|a| a.kind == NodeKind::Step && a.action != ActionKind::Forget)
        .collect();
    if !steps.is_empty() {
        out.push_str("#### Steps\n");
        let mut group = String::new();
        // Compensations last: they run only when a step they compensate fails.
        let (standby, ordered): (Vec<&Action>, Vec<&Action>) = steps
            .iter()
            .copied()
            .partition(|a| a.action == ActionKind::Standby);
        for (i, a) in ordered.iter().chain(standby.iter()).enumerate() {
            let g = match a.action {
                ActionKind::Done => "done".to_string(),
                ActionKind::Standby => "only if a step they compensate fails".to_string(),
                _ => when(a),
            };
            if g != group {
                let _ = writeln!(out, "\n**{}**\n", capitalized(&g));
                group = g;
            }
            let mut parts = vec![];
            if a.review.fences_writes {
                parts.push("fences writes".to_string());
            }
            if let Some(t) = &a.review.moves_traffic {
                parts.push(format!("re-points {t}"));
            }
            if !a.review.guards.is_empty() {
                parts.push(format!("checks: {}", a.review.guards.join("; ")));
            }
            if let Some(l) = super::text::limit(a) {
                parts.push(l);
            }
            if a.review.refuses_rollback.is_some() {
                parts.push("no `plan rollback` once it ran".to_string());
            } else if a.review.can_roll_back && refusing.is_none() {
                parts.push("`plan rollback` undoes it".to_string());
            }
            if a.review.ends_rollback && refusing.is_none() {
                parts.push("ends rollback".to_string());
            }
            let detail = if parts.is_empty() {
                String::new()
            } else {
                format!(": {}", parts.join("; "))
            };
            let _ = writeln!(out, "{}. `{}` ({}){detail}", i + 1, a.node, a.type_name);
            if let Some(c) = &a.review.caveat {
                let _ = writeln!(out, "   - note: {c}");
            }
        }
        out.push('\n');
    }
    // The temporaries: what each is, and what retires it.
    let temporaries: Vec<&Action> = cs
        .actions
        .iter()
        .filter(|a| {
            a.kind == NodeKind::Resource
                && a.temporary
                && matches!(
                    a.action,
                    ActionKind::Create
                        | ActionKind::Update
                        | ActionKind::Replace
                        | ActionKind::NoOp
                )
        })
        .collect();
    if !temporaries.is_empty() {
        out.push_str("#### Temporaries\n\n");
        // Grouped by what retires them, in order of appearance: each one billed by the hour by
        // name, the rest counted by type.
        let mut groups: Vec<(String, Vec<String>, BTreeMap<&str, usize>)> = vec![];
        for a in &temporaries {
            let retired = match &a.retired_after {
                Some(after) => format!("Retired by the apply after `{after}` has passed"),
                None => format!("Kept until `plan destroy {} --temporary`", cs.stack),
            };
            let i = match groups.iter().position(|g| g.0 == retired) {
                Some(i) => i,
                None => {
                    groups.push((retired, vec![], BTreeMap::new()));
                    groups.len() - 1
                }
            };
            match &a.review.billed_as {
                Some(b) => groups[i].1.push(format!(
                    "`{}` ({}, billed hourly as {b})",
                    a.node, a.type_name
                )),
                None => *groups[i].2.entry(a.type_name.as_str()).or_default() += 1,
            }
        }
        for (retired, billed, rest) in &groups {
            let mut parts = billed.clone();
            let counted: Vec<String> = rest.iter().map(|(t, n)| format!("{n} {t}")).collect();
            if !counted.is_empty() {
                parts.push(counted.join(", "));
            }
            let _ = writeln!(out, "- {retired}: {}", parts.join("; "));
        }
        if temporaries.iter().any(|a| a.review.billed_as.is_some()) {
            out.push_str("\nNo cost estimate: the repository has no dated price table yet.\n");
        }
        out.push('\n');
    }
    if !cs.budgets.is_empty() {
        out.push_str("#### Time budgets\n\n");
        for b in &cs.budgets {
            let _ = writeln!(out, "- {}", super::text::budget_line(b));
        }
        out.push('\n');
    }
    // Rollback: which steps it undoes, and what ends it.
    let undoable: Vec<String> = steps
        .iter()
        .filter(|a| a.review.can_roll_back)
        .map(|a| format!("`{}`", a.node))
        .collect();
    if let Some((node, why)) = refusing {
        let _ = writeln!(
            out,
            "**Rollback:** `plan rollback {}` refuses once `{node}` ran: {why}.",
            cs.stack
        );
    } else if !undoable.is_empty() {
        let end = steps
            .iter()
            .find(|a| a.review.ends_rollback)
            .map(|a| {
                format!(
                    "until `{}` runs{}",
                    a.node,
                    match a.action {
                        ActionKind::Done => " (it has: rollback is over)".to_string(),
                        _ => format!(" ({})", when(a)),
                    }
                )
            })
            .unwrap_or_else(|| "while the state records them".to_string());
        let _ = writeln!(
            out,
            "**Rollback:** `plan rollback {}` undoes {} once {} ran, {end}.",
            cs.stack,
            undoable.join(", "),
            if undoable.len() == 1 { "it" } else { "they" }
        );
    }
    out.trim_end().to_string()
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::Summary;
    use crate::provider::Review;

    fn action(node: &str, kind: NodeKind, type_name: &str, action: ActionKind) -> Action {
        Action {
            node: node.into(),
            kind,
            type_name: type_name.into(),
            action,
            reason: String::new(),
            changes: vec![],
            held_by: None,
            temporary: false,
            retire: false,
            retired_after: None,
            review: Review::default(),
            protected: false,
            object_id: None,
            why: None,
            limit_s: None,
            service: String::new(),
        }
    }

    fn change_set(actions: Vec<Action>) -> ChangeSet {
        ChangeSet {
            plan: "p".into(),
            stack: "s".into(),
            provider: "aws".into(),
            lineage: "l".into(),
            serial: 1,
            actions,
            moved: vec![],
            pending: vec![],
            checks: vec![],
            budgets: vec![],
            summary: Summary {
                replace: 1,
                change: 1,
                destroy: 1,
                ..Summary::default()
            },
        }
    }

    #[test]
    fn data_that_would_be_lost_and_a_protected_change_are_warned_before_anything_else() {
        let data = Review {
            holds_data: true,
            ..Review::default()
        };
        let mut replaced = action(
            "db",
            NodeKind::Resource,
            "aws.rds.instance",
            ActionKind::Replace,
        );
        replaced.review = data.clone();
        let mut deleted = action(
            "snap",
            NodeKind::Resource,
            "aws.rds.db_snapshot",
            ActionKind::Delete,
        );
        deleted.review = data;
        let mut protected = action(
            "params",
            NodeKind::Resource,
            "aws.rds.parameter_group",
            ActionKind::Update,
        );
        protected.protected = true;
        let replica = action(
            "replica",
            NodeKind::Resource,
            "aws.rds.instance",
            ActionKind::Delete,
        );
        let md = &preview(&change_set(vec![replaced, deleted, protected, replica]))[0];
        let warning = md.find("> [!WARNING]").expect("a warning block");
        assert!(warning < md.find("<details>").unwrap(), "{md}");
        assert!(
            md.contains(" Replaces: `db`. Destroys: `snap`, `replica`."),
            "{md}"
        );
        for want in [
            "> - `db` (aws.rds.instance) will be replaced (destroyed, then created empty): it holds data",
            "> - `snap` (aws.rds.db_snapshot) will be destroyed: it holds data",
            "> - `params` (aws.rds.parameter_group) is protected and will be changed in place",
        ] {
            assert!(md.contains(want), "{want}\n{md}");
        }
        // A replica holds no data of its own: its delete is in the diff, not a warning.
        assert!(!md.contains("`replica` (aws.rds.instance) will"), "{md}");
    }

    #[test]
    fn a_plan_without_steps_or_risks_has_no_review_sections() {
        let md = &preview(&change_set(vec![action(
            "f",
            NodeKind::Resource,
            "local_file.file",
            ActionKind::Create,
        )]))[0];
        assert!(
            !md.contains("[!WARNING]") && !md.contains("#### Steps"),
            "{md}"
        );
    }
}
