//! The preview as text, in Terraform's conventions: `+` create, `~` update, `-/+` replace (with
//! `# forces replacement`), `-` destroy, `<=` read; then the steps in execution order, and a
//! summary line.

use std::fmt::Write;

use crate::dsl::NodeKind;
use crate::planner::{Action, ActionKind, ChangeSet, Summary};

/// The summary line, e.g. `Plan: 3 to add, 1 to change, 0 to destroy, 4 steps to run.`
pub fn summary_line(s: &Summary) -> String {
    let mut line = format!(
        "{} to add, {} to change, {} to destroy, {} step{} to run",
        s.add,
        s.change,
        s.destroy,
        s.steps_to_run,
        if s.steps_to_run == 1 { "" } else { "s" }
    );
    if s.held > 0 {
        let _ = write!(line, ", {} held back", s.held);
    }
    line
}

/// A duration as a reviewer reads it: `45 s`, `10 min`, `24 h`, `7 d`.
pub fn duration_words(secs: u64) -> String {
    if secs >= 2 * 86400 && secs.is_multiple_of(86400) {
        format!("{} d", secs / 86400)
    } else if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// How long the node's operation may take, where it is not the usual hour: for a step that will
/// run (or waits on a gate) and for a resource that is created or changed.
pub fn limit(a: &Action) -> Option<String> {
    let s = a
        .limit_s
        .filter(|s| *s != crate::provider::DEFAULT_TIMEOUT.as_secs())?;
    let shown = match a.kind {
        NodeKind::Step => !matches!(
            a.action,
            ActionKind::Done | ActionKind::Standby | ActionKind::Forget
        ),
        NodeKind::Resource => matches!(
            a.action,
            ActionKind::Create | ActionKind::Update | ActionKind::Replace
        ),
        _ => false,
    };
    shown.then(|| format!("gives up after {}", duration_words(s)))
}

fn resource_lines(out: &mut String, a: &Action) {
    let sym = a.action.symbol();
    let temp = if a.temporary { " [temporary]" } else { "" };
    // The object's identifier, where it is not the node's own name.
    let id = match &a.object_id {
        Some(id) if id != &a.node => format!(" `{id}`"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "  {sym} {} ({}){id}{temp}  # {}",
        a.node, a.type_name, a.reason
    );
    if let Some(why) = &a.why {
        let _ = writeln!(out, "      # why: {why}");
    }
    if let Some(l) = limit(a) {
        let _ = writeln!(out, "      # {l}");
    }
    for c in &a.changes {
        if json_lines(out, c) {
            continue;
        }
        let (csym, val) = match (&c.before_text(), &c.after_text()) {
            (None, Some(after)) => ("+", after.clone()),
            (Some(before), None) => ("-", before.clone()),
            (Some(before), Some(after)) => ("~", format!("{before} -> {after}")),
            (None, None) => ("~", String::new()),
        };
        let forces = if c.forces_replacement {
            "  # forces replacement"
        } else {
            ""
        };
        let _ = writeln!(out, "      {csym} {} = {val}{forces}", c.attribute);
    }
}

/// A string attribute that holds a JSON document (DMS table mappings and task settings), shown
/// one key a line, and for a change as a diff of those lines. False when it is not one.
fn json_lines(out: &mut String, c: &crate::planner::AttrChange) -> bool {
    let doc = |v: &Option<serde_json::Value>| -> Option<Vec<String>> {
        let text = v.as_ref()?.as_str()?;
        if !text.trim_start().starts_with(['{', '[']) {
            return None;
        }
        let parsed: serde_json::Value = serde_json::from_str(text).ok()?;
        if !(parsed.is_object() || parsed.is_array()) {
            return None;
        }
        Some(
            serde_json::to_string_pretty(&parsed)
                .ok()?
                .lines()
                .map(String::from)
                .collect(),
        )
    };
    let (before, after) = (doc(&c.before), if c.unknown { None } else { doc(&c.after) });
    let lines: Vec<(char, String)> = match (before, after) {
        (None, Some(a)) if c.before.is_none() => a.into_iter().map(|l| ('+', l)).collect(),
        (Some(b), None) if c.after.is_none() => b.into_iter().map(|l| ('-', l)).collect(),
        (Some(b), Some(a)) => line_diff(&b, &a),
        _ => return false,
    };
    let sym = match (c.before.is_some(), c.after.is_some()) {
        (false, _) => "+",
        (_, false) => "-",
        _ => "~",
    };
    let forces = if c.forces_replacement {
        "  # forces replacement"
    } else {
        ""
    };
    let _ = writeln!(out, "      {sym} {} = (JSON){forces}", c.attribute);
    for (mark, l) in lines {
        let _ = writeln!(out, "          {mark} {l}");
    }
    true
}

/// The lines of `a` against `b`: kept (` `), removed (`-`) and added (`+`), by their longest
/// common subsequence.
fn line_diff(b: &[String], a: &[String]) -> Vec<(char, String)> {
    let (n, m) = (b.len(), a.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if b[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, vec![]);
    while i < n || j < m {
        if i < n && j < m && b[i] == a[j] {
            out.push((' ', b[i].clone()));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(('-', b[i].clone()));
            i += 1;
        } else {
            out.push(('+', a[j].clone()));
            j += 1;
        }
    }
    out
}

/// A time budget as the previews say it.
pub fn budget_line(b: &crate::planner::BudgetNote) -> String {
    let plus: String = b
        .plus
        .iter()
        .map(|(s, why)| format!(", plus {s} s ({why})"))
        .collect();
    format!(
        "{}: at most {} s from `{}` {} to `{}` {}{plus}",
        b.name, b.limit_s, b.from.0, b.from.1, b.to.0, b.to.1
    )
}

/// The diff body (resources, then steps), without header or summary: shared with markdown.
pub fn diff_body(cs: &ChangeSet) -> String {
    let mut out = String::new();
    if !cs.pending.is_empty() {
        out.push_str("Interrupted operations (reconciled first on apply):\n");
        for p in &cs.pending {
            let _ = write!(out, "  ! {}: {}", p.node, p.op);
            if let Some(f) = &p.failed {
                let _ = write!(out, " (failed: {f})");
            }
            out.push('\n');
        }
        out.push('\n');
    }
    if !cs.moved.is_empty() {
        out.push_str("Moved in state:\n");
        for (a, b) in &cs.moved {
            let _ = writeln!(out, "  {a} -> {b}");
        }
        out.push('\n');
    }
    let resources: Vec<&Action> = cs
        .actions
        .iter()
        .filter(|a| {
            matches!(a.kind, NodeKind::Resource | NodeKind::Data)
                && !matches!(a.action, ActionKind::NoOp)
                && a.held_by.is_none()
        })
        .collect();
    if !resources.is_empty() {
        out.push_str("Resources:\n");
        for a in resources {
            resource_lines(&mut out, a);
        }
        out.push('\n');
    }
    let steps: Vec<&Action> = cs
        .actions
        .iter()
        .filter(|a| matches!(a.kind, NodeKind::Step | NodeKind::Gate))
        .collect();
    if !steps.is_empty() {
        out.push_str("Steps, in execution order:\n");
        for (i, a) in steps.iter().enumerate() {
            let kind = if a.kind == NodeKind::Gate {
                "gate".to_string()
            } else {
                a.type_name.clone()
            };
            let state = match (a.action, &a.held_by) {
                (_, Some(h)) if a.kind == NodeKind::Gate && h.gate().is_some() => {
                    format!("held: {}", a.reason)
                }
                (_, Some(h)) => format!("held by {h}"),
                (ActionKind::Done, _) | (ActionKind::Standby, _) => a.reason.clone(),
                (ActionKind::Forget, _) => a.reason.clone(),
                _ => format!("will run: {}", a.reason),
            };
            let sym = if a.held_by.is_some() {
                "|"
            } else {
                a.action.symbol()
            };
            let _ = writeln!(out, "  {:>2}. {sym} {} ({kind}): {state}", i + 1, a.node);
            if !a.review.guards.is_empty() && a.action != ActionKind::Done {
                let _ = writeln!(out, "        checks: {}", a.review.guards.join("; "));
            }
            if let Some(l) = limit(a) {
                let _ = writeln!(out, "        {l}");
            }
            if let Some(c) = &a.review.caveat {
                let _ = writeln!(out, "        note: {c}");
            }
            for c in &a.changes {
                let _ = writeln!(
                    out,
                    "        ~ {} = {} -> {}",
                    c.attribute,
                    c.before_text().as_deref().unwrap_or("(none)"),
                    c.after_text().as_deref().unwrap_or("(none)")
                );
            }
        }
        out.push('\n');
    }
    if !cs.budgets.is_empty() {
        out.push_str("Time budgets (measured and reported when the apply reaches their end):\n");
        for b in &cs.budgets {
            let _ = writeln!(out, "  {}", budget_line(b));
        }
        out.push('\n');
    }
    if !cs.checks.is_empty() {
        out.push_str("Checks (read with --refresh):\n");
        for c in &cs.checks {
            use crate::provider::CheckLevel;
            let sym = match c.level {
                CheckLevel::Error => "!",
                CheckLevel::Warning | CheckLevel::Unavailable => "?",
                CheckLevel::Note => " ",
            };
            let _ = writeln!(out, "  {sym} {} {}: {}", c.node, c.level, c.message);
        }
        out.push('\n');
    }
    let held: Vec<&Action> = cs
        .actions
        .iter()
        .filter(|a| a.held_by.is_some() && matches!(a.kind, NodeKind::Resource | NodeKind::Data))
        .collect();
    if !held.is_empty() {
        out.push_str("Held back in this apply:\n");
        for a in held {
            let _ = writeln!(
                out,
                "  | {} ({}): would {}, held by {}",
                a.node,
                a.type_name,
                format!("{:?}", a.action).to_lowercase(),
                a.held_by
                    .as_ref()
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            );
        }
        out.push('\n');
    }
    out
}

/// The whole preview.
pub fn preview(cs: &ChangeSet) -> String {
    let mut out = format!(
        "Plan `{}` on stack `{}` (provider {}), state serial {}\n\n",
        cs.plan, cs.stack, cs.provider, cs.serial
    );
    out.push_str(&diff_body(cs));
    if cs.has_changes() {
        let _ = writeln!(out, "Plan: {}.", summary_line(&cs.summary));
    } else {
        let _ = writeln!(
            out,
            "No changes. The objects match the plan{}.",
            if cs.summary.steps_done > 0 {
                format!("; {} steps done", cs.summary.steps_done)
            } else {
                String::new()
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_the_largest_whole_unit() {
        assert_eq!(duration_words(45), "45 s");
        assert_eq!(duration_words(90), "90 s");
        assert_eq!(duration_words(600), "10 min");
        assert_eq!(duration_words(3600), "1 h");
        assert_eq!(duration_words(86400), "24 h");
        assert_eq!(duration_words(7 * 86400), "7 d");
    }
    use crate::planner::AttrChange;

    #[test]
    fn a_json_attribute_is_shown_one_key_a_line_and_diffed_by_line() {
        let before = serde_json::json!(r#"{"rules":[{"rule-id":"1","rule-action":"include"}]}"#);
        let after = serde_json::json!(r#"{"rules":[{"rule-id":"1","rule-action":"exclude"}]}"#);
        let c = AttrChange {
            attribute: "table_mappings".into(),
            before: Some(before),
            after: Some(after),
            unknown: false,
            forces_replacement: false,
        };
        let mut out = String::new();
        assert!(json_lines(&mut out, &c));
        assert!(
            out.starts_with("      ~ table_mappings = (JSON)\n"),
            "{out}"
        );
        let removed = out
            .find("          -       \"rule-action\": \"include\"\n")
            .unwrap_or_else(|| panic!("{out}"));
        let added = out
            .find("          +       \"rule-action\": \"exclude\"\n")
            .unwrap_or_else(|| panic!("{out}"));
        assert!(removed < added, "{out}");
        assert!(out.contains("            \"rules\": [\n"), "{out}");
        // A plain string is not a document.
        let plain = AttrChange {
            after: Some(serde_json::json!("{not json")),
            before: None,
            ..c
        };
        assert!(!json_lines(&mut String::new(), &plain));
    }
}
