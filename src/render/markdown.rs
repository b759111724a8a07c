//! The preview for a pull request comment: the summary first, the full diff in a `<details>`
//! block inside a `diff` fence (GitHub colours `+` and `-` lines), split into parts below GitHub's
//! 65,536-character limit.

use super::text::{diff_body, summary_line};
use crate::planner::ChangeSet;

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
    preview_with_limit(cs, LIMIT)
}

/// As [`preview`], with a smaller limit (tests).
pub fn preview_with_limit(cs: &ChangeSet, limit: usize) -> Vec<String> {
    let title = format!("### cutover: plan `{}` on stack `{}`", cs.plan, cs.stack);
    let summary = if cs.has_changes() {
        format!("**Plan: {}.**", summary_line(&cs.summary))
    } else {
        "**No changes.**".to_string()
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
