//! Snapshots of the demo plan's previews, and the markdown split.

use super::Project;

#[test]
fn demo_preview_text_markdown_json() {
    let p = Project::new();
    let (code, text, err) = p.run(&["preview", "demo"]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!("demo_text", text);
    let (_, md, _) = p.run(&["preview", "demo", "--format", "markdown"]);
    insta::assert_snapshot!("demo_markdown", md);
    let (_, json, _) = p.run(&["preview", "demo", "--format", "json"]);
    insta::assert_snapshot!("demo_json", json);
    // The JSON is a saved plan the library can read back.
    let cs = cutover::render::json::read(&json).unwrap();
    assert_eq!(cs.summary.add, 6);
    assert!(!p.state_dir("demo").exists(), "preview writes nothing");
}

#[test]
fn detailed_exitcode_says_whether_there_are_changes() {
    let p = Project::new();
    assert_eq!(p.run(&["preview", "demo", "--detailed-exitcode"]).0, 2);
    assert_eq!(
        p.run(&["apply", "demo", "--yes", "--approve", "cutover"]).0,
        0
    );
    let (code, out, _) = p.run(&["preview", "demo", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No changes."), "{out}");
}

#[test]
fn markdown_is_split_below_the_comment_limit() {
    let p = Project::new();
    p.stack(
        "big",
        "plan = \"bench\"\nprovider = \"local\"\n[values]\nnodes = 3000\nshape = \"chain\"\n",
    );
    let out = p.root().join("big.md");
    let (code, _, err) = p.run(&[
        "preview",
        "big",
        "--format",
        "markdown",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let first = std::fs::read_to_string(p.root().join("big.md")).unwrap();
    let second = std::fs::read_to_string(p.root().join("big.md.part2")).unwrap();
    for part in [&first, &second] {
        assert!(
            part.len() < cutover::render::markdown::LIMIT,
            "{}",
            part.len()
        );
        assert!(part.starts_with("### cutover: plan `bench` on stack `big` (part "));
        assert!(part.contains("**Plan: 3000 to add, 0 to change, 0 to destroy, 0 steps to run.**"));
        assert!(part.contains("<details><summary>Full diff (part ") && part.contains("```diff\n"));
    }
    assert!(
        first.contains("\n+   n0 (core.null)  # not in state\n"),
        "{}",
        &first[..400]
    );
}

#[test]
fn graph_renders_mermaid_and_dot() {
    let p = Project::new();
    let (code, m, _) = p.run(&["graph", "demo"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("demo_mermaid", m);
    let (_, d, _) = p.run(&["graph", "demo", "--format", "dot"]);
    assert!(d.starts_with("digraph \"demo\" {"));
    assert!(d.contains("\"cutover\" [shape=diamond"));
    assert!(d.contains("\"record-load\" -> \"cutover\";"));
}

#[test]
fn list_shows_plans_and_stacks_but_not_hidden_plans() {
    let p = Project::new();
    let (code, out, _) = p.run(&["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("demo "));
    assert!(out.contains("plan demo, provider local"));
    for hidden in ["bench", "crash", "cyclic", "failing"] {
        assert!(
            !out.contains(&format!("  {hidden} ")),
            "{hidden} is listed:\n{out}"
        );
    }
}
