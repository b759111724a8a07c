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
        first.contains("\n+   n0 (core.null) `bench-big-n0`  # not in state\n"),
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
    // A stack the load would refuse is listed as invalid, with the load's words.
    p.stack("noprov", "plan = \"demo\"\n");
    p.stack("elsewhere", "plan = \"demo\"\nprovider = \"gcp\"\n");
    let (code, out, _) = p.run(&["list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("noprov") && out.contains("(this binary offers local, aws)"),
        "{out}"
    );
    assert!(
        out.contains("unknown provider `gcp`; use one of: local, aws."),
        "{out}"
    );
}

/// `plan` with no AWS configuration at all: no credentials, no profile, no instance role (the
/// instance metadata service is not asked).
pub(super) fn without_aws(p: &Project, args: &[&str]) -> (i32, String, String) {
    super::outcome(
        p.plan()
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", p.root())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(args)
            .output()
            .unwrap(),
    )
}

/// Snapshots the text and markdown previews of `stacks` (without credentials) as `CASE_SUFFIX_*`.
fn previews(case: &str, stacks: &[(&str, &str)]) {
    let p = Project::new();
    for (stack, suffix) in stacks {
        let (code, text, err) = without_aws(&p, &["preview", stack]);
        assert_eq!(code, 0, "{err}");
        insta::assert_snapshot!(format!("{case}_{suffix}_text"), text);
        let (code, md, err) = without_aws(&p, &["preview", stack, "--format", "markdown"]);
        assert_eq!(code, 0, "{err}");
        insta::assert_snapshot!(format!("{case}_{suffix}_markdown"), md);
        assert!(!p.state_dir(stack).exists(), "preview writes nothing");
    }
}

#[test]
fn case1_staging_and_production_preview_without_credentials() {
    previews(
        "case1",
        &[
            ("tenants-staging", "staging"),
            ("tenants-production", "production"),
        ],
    );
}

#[test]
fn case2_staging_and_production_preview_without_credentials() {
    previews(
        "case2",
        &[
            ("ec2-rds-staging", "staging"),
            ("ec2-rds-production", "production"),
        ],
    );
}

#[test]
fn case3_staging_and_production_preview_without_credentials() {
    previews(
        "case3",
        &[("staging", "staging"), ("production", "production")],
    );
}

#[test]
fn case4_staging_and_production_preview_without_credentials() {
    previews(
        "case4",
        &[
            ("saas-staging", "staging"),
            ("saas-production", "production"),
        ],
    );
}

#[test]
fn case5_staging_and_production_preview_without_credentials() {
    previews(
        "case5",
        &[
            ("mysql-aurora-staging", "staging"),
            ("mysql-aurora-production", "production"),
        ],
    );
}

#[test]
fn list_says_which_migration_each_plan_is() {
    let p = Project::new();
    let (code, out, _) = p.run(&["list"]);
    assert_eq!(code, 0);
    for (plan, case) in [
        ("tenants", "case 1:"),
        ("ec2-rds", "case 2:"),
        ("onprem-rds", "case 3:"),
        ("saas", "case 4:"),
        ("mysql-aurora", "case 5:"),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{plan} ")))
            .unwrap_or_else(|| panic!("{plan} is listed:\n{out}"));
        assert!(line.contains(case), "{line}");
    }
    assert!(
        out.contains("saas-staging") && out.contains("plan saas, provider aws"),
        "{out}"
    );
}

#[test]
fn case3_apply_without_credentials_changes_nothing_and_says_what_to_set() {
    let p = Project::new();
    let (code, _, err) = without_aws(&p, &["apply", "staging", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stacks/staging.toml: no AWS credentials for this stack")
            && err.contains("AWS_PROFILE")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(
        !err.contains("DispatchFailure") && !err.contains("ProviderError {"),
        "{err}"
    );
    assert!(
        !p.state_dir("staging").exists(),
        "nothing is recorded, not even a lock"
    );
}

#[test]
fn case3_with_dms_as_the_data_path_previews_its_temporaries_and_cutover() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.root().join("stacks/production.toml"))
        .unwrap()
        .replace("data_path = \"native\"", "data_path = \"dms\"");
    p.stack("production", &text);
    let (code, out, err) = without_aws(&p, &["preview", "production"]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!("case3_production_dms_text", out);
    // The DMS objects are temporaries; the tasks stop before the reverse replication starts.
    for line in [
        "+ dms (aws.dms.instance) `onprem-rds-production-dms` [temporary]",
        "+ task-events (aws.dms.task) `onprem-rds-production-task-events` [temporary]",
        "? resume-events (aws.dms.start): runs only if a node it compensates fails",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let pos = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s}: {out}"));
    assert!(pos(" stop-events (") < pos(" enable-reverse ("));
    assert!(pos("enable-reverse (pg.enable_reverse)") < pos("flip (aws.route53.flip)"));
}
