//! The run report (`plan report STACK`): what the newest run did, as markdown (for a pull
//! request or a runbook) and as a self-contained SVG timeline (a Gantt of the nodes, the critical
//! path drawn darker, the plan's time budgets as shaded bands). Rendering only: the report is
//! assembled by `engine::run_report` from the run log and the state; nothing here reads a file.

use std::fmt::Write;

use crate::engine::RunReport;

fn secs(ms: f64) -> String {
    let s = ms / 1000.0;
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    }
}

/// The report as markdown.
pub fn markdown(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### Run of `{}` on stack `{}`\n", r.plan, r.stack);
    let _ = writeln!(
        out,
        "`{}`, started {}: **{}** in {}.\n",
        r.command,
        r.started,
        r.outcome,
        secs(r.total_ms as f64)
    );
    if !r.windows.is_empty() {
        out.push_str("**Time budgets**\n\n");
        for w in &r.windows {
            let _ = writeln!(
                out,
                "- `{}`: {:.1} s of {:.1} s{}",
                w.name,
                w.used_s,
                w.limit_s,
                if w.used_s > w.limit_s { " (OVER)" } else { "" }
            );
        }
        out.push('\n');
    }
    if !r.measured.is_empty() {
        out.push_str("**What the steps measured**\n\n");
        for (node, m) in &r.measured {
            let _ = writeln!(out, "- `{node}`: {m}");
        }
        out.push('\n');
    }
    if !r.waits.is_empty() {
        let _ = writeln!(
            out,
            "**Waited on**: {}\n",
            r.waits
                .iter()
                .map(|(n, ms)| format!("`{n}` {}", secs(*ms as f64)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !r.critical_path.is_empty() {
        let _ = writeln!(
            out,
            "**Critical path**: {}\n",
            r.critical_path
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(" → ")
        );
    }
    out.push_str("| node | type | did | start | took | outcome |\n|---|---|---|---|---|---|\n");
    for n in &r.nodes {
        let (start, took) = match (n.start_ms, n.end_ms) {
            (Some(s), Some(e)) => (secs(s as f64), secs(e.saturating_sub(s) as f64)),
            (Some(s), None) => (secs(s as f64), "-".into()),
            _ => ("-".into(), "-".into()),
        };
        let outcome = match &n.error {
            Some(e) if n.outcome == "failed" => format!("failed: {}", e.replace('|', "\\|")),
            Some(c) if n.outcome == "skipped" => format!("skipped ({})", c.replace('|', "\\|")),
            _ => n.outcome.clone(),
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {start} | {took} | {outcome} |",
            n.node, n.type_name, n.op
        );
    }
    if !r.summary.is_empty() {
        out.push('\n');
        for s in &r.summary {
            let _ = writeln!(out, "{s}");
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as a self-contained SVG: one bar per node that ran (a thin mark for the others),
/// the critical path darker, the budgets' spans as bands with their names.
pub fn svg(r: &RunReport) -> String {
    const LEFT: f64 = 220.0;
    const WIDTH: f64 = 760.0;
    const ROW: f64 = 20.0;
    const TOP: f64 = 48.0;
    let total = (r.total_ms.max(1)) as f64;
    let x = |ms: f64| LEFT + WIDTH * (ms / total).clamp(0.0, 1.0);
    let height = TOP + ROW * r.nodes.len() as f64 + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" viewBox="0 0 {} {height}" font-family="sans-serif" font-size="12">"#,
        LEFT + WIDTH + 20.0,
        LEFT + WIDTH + 20.0
    );
    let _ = writeln!(
        out,
        r#"<title>Run of {} on stack {}: {} in {}</title>"#,
        esc(&r.plan),
        esc(&r.stack),
        esc(&r.outcome),
        esc(&secs(total))
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="18" font-weight="bold">{} on {}: {} in {}</text>"#,
        esc(&r.plan),
        esc(&r.stack),
        esc(&r.outcome),
        esc(&secs(total))
    );
    for w in &r.windows {
        let (a, b) = (x(w.from_ms), x(w.to_ms));
        let _ = writeln!(
            out,
            r##"<rect class="window" x="{a:.1}" y="{}" width="{:.1}" height="{}" fill="#f5c26b" fill-opacity="0.35"><title>{}: {:.1} s of {:.1} s</title></rect>"##,
            TOP - 14.0,
            (b - a).max(1.0),
            ROW * r.nodes.len() as f64 + 14.0,
            esc(&w.name),
            w.used_s,
            w.limit_s
        );
        let _ = writeln!(
            out,
            r#"<text x="{a:.1}" y="{}" font-size="10">{}</text>"#,
            TOP - 18.0,
            esc(&w.name)
        );
    }
    for (i, n) in r.nodes.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let critical = r.critical_path.contains(&n.node);
        let _ = writeln!(
            out,
            r#"<text x="10" y="{:.1}">{}</text>"#,
            y + 13.0,
            esc(&n.node)
        );
        let fill = match n.outcome.as_str() {
            "done" if critical => "#1f5f99",
            "done" => "#6fa8dc",
            "failed" => "#cc3333",
            "unfinished" => "#e69138",
            _ => "#bbbbbb",
        };
        let (a, b) = match (n.start_ms, n.end_ms) {
            (Some(s), Some(e)) => (x(s as f64), x(e as f64)),
            (Some(s), None) => (x(s as f64), x(total)),
            _ => (LEFT, LEFT),
        };
        let _ = writeln!(
            out,
            r#"<rect class="bar" data-node="{}" x="{a:.1}" y="{:.1}" width="{:.1}" height="{}" fill="{fill}"><title>{}: {}{}</title></rect>"#,
            esc(&n.node),
            y + 3.0,
            (b - a).max(2.0),
            ROW - 6.0,
            esc(&n.node),
            esc(&n.outcome),
            match (n.start_ms, n.end_ms) {
                (Some(s), Some(e)) => format!(", {}", esc(&secs(e.saturating_sub(s) as f64))),
                _ => String::new(),
            }
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" font-size="10">0 s</text><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"#,
        height - 10.0,
        LEFT + WIDTH,
        height - 10.0,
        esc(&secs(total))
    );
    out.push_str("</svg>\n");
    out
}
