//! Whole flows through the binary: saved plans, failures and resume, drift, import, renames,
//! replacement, `--until`, destroy.

use super::Project;

#[test]
fn a_saved_plan_applies_and_refuses_once_stale() {
    let p = Project::new();
    let saved = p.root().join("demo.plan.json");
    let saved = saved.to_str().unwrap();
    let (code, _, err) = p.run(&["preview", "demo", "--format", "json", "--out", saved]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = p.run(&["apply", "demo", "--plan", saved]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Apply complete: 6 added, 0 changed, 0 destroyed, 2 steps run."),
        "{out}"
    );
    // The same saved plan is now stale: the state moved on.
    let (code, _, err) = p.run(&["apply", "demo", "--plan", saved]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the saved plan is stale: the state changed since (serial 0 -> "),
        "{err}"
    );
    // A fresh plan, then a change to the stack: stale because the plan's values changed.
    p.run(&[
        "preview",
        "demo",
        "--format",
        "json",
        "--out",
        saved,
        "--approve",
        "cutover",
    ]);
    let stack = p
        .read("stacks/demo.toml")
        .replace("hello from cutover", "hello again");
    p.stack("demo", &stack);
    let (code, _, err) = p.run(&["apply", "demo", "--plan", saved, "--approve", "cutover"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the plan's code or stack values changed since"),
        "{err}"
    );
}

#[test]
fn gate_then_approve_then_temporary_teardown() {
    let p = Project::new();
    let (code, out, _) = p.run(&["apply", "demo", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "Held back by gate `cutover`: run `plan apply demo --approve cutover` when ready."
        ),
        "{out}"
    );
    assert!(!p.root().join("out/demo/active.txt").exists());
    assert_eq!(p.read("out/demo/journal.txt"), "load finished\n");
    let (code, out, _) = p.run(&["apply", "demo", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(p.read("out/demo/active.txt"), "target\n");
    assert_eq!(
        p.read("out/demo/journal.txt"),
        "load finished\ncutover done\n"
    );
    let (code, out, _) = p.run(&["destroy", "demo", "--temporary", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "- scratch (local_file.file) `out/demo/scratch.txt` [temporary]  # destroy --temporary"
        ),
        "{out}"
    );
    assert!(!p.root().join("out/demo/scratch.txt").exists());
    // Retired: the next apply does not recreate it, and nothing else changes.
    let (code, out, _) = p.run(&["preview", "demo", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("scratch (local_file.file) `out/demo/scratch.txt` [temporary]  # retired at"),
        "{out}"
    );
    // Steps already done do not run again.
    p.run(&["apply", "demo", "--yes"]);
    assert_eq!(
        p.read("out/demo/journal.txt"),
        "load finished\ncutover done\n"
    );
    // A config change re-triggers the load step (its trigger is the config checksum).
    let stack = p
        .read("stacks/demo.toml")
        .replace("hello from cutover", "hello again");
    p.stack("demo", &stack);
    let (code, out, _) = p.run(&["apply", "demo", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("record-load (local_file.append): will run: trigger `config` changed"),
        "{out}"
    );
    assert!(
        out.contains("~ content = \"greeting = hello from cutover"),
        "{out}"
    );
    // Running again means appending again: the journal records the second load.
    assert_eq!(
        p.read("out/demo/journal.txt"),
        "load finished\ncutover done\nload finished\n"
    );
}

/// A node whose type changes is replaced: its old object is deleted as what it was (a file by
/// the file type), not by the new type, which would not know it; the new one is created.
#[test]
fn a_node_whose_type_changes_deletes_its_old_object_as_what_it_was() {
    let p = Project::new();
    let stack = |as_dir: bool| {
        format!("plan = \"failing\"\nprovider = \"local\"\n[values]\nout_dir = \"out/t\"\nfail = false\nindependent_as_directory = {as_dir}\n")
    };
    p.stack("t", &stack(false));
    let (code, out, _) = p.run(&["apply", "t", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(p.root().join("out/t/independent.txt").is_file());
    p.stack("t", &stack(true));
    let (code, out, _) = p.run(&["preview", "t"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("type changed from `local_file.file`"), "{out}");
    let (code, out, err) = p.run(&["apply", "t", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !p.root().join("out/t/independent.txt").exists(),
        "the old file was deleted: {out}"
    );
    assert!(p.root().join("out/t/independent.d").is_dir(), "{out}");
    let (code, out, _) = p.run(&["preview", "t", "--detailed-exitcode"]);
    assert_eq!(code, 0, "nothing left to do: {out}");
}

#[test]
fn a_failure_skips_dependents_finishes_independent_work_and_resumes() {
    let p = Project::new();
    let stack = |fail: bool, halt: bool| {
        format!("plan = \"failing\"\nprovider = \"local\"\n[values]\nout_dir = \"out/f\"\nfail = {fail}\nhalt = {halt}\n")
    };
    p.stack("f", &stack(true, false));
    let (code, out, _) = p.run(&["apply", "f", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "! check: failed: `check`: assertion failed: the stack asked this step to fail"
        ),
        "{out}"
    );
    assert!(
        out.contains("- after-check: skipped (`check` failed)"),
        "{out}"
    );
    assert!(
        out.contains(
            "Apply failed: 2 added, 0 changed, 0 destroyed, 1 step run; 1 failed, 1 skipped."
        ),
        "{out}"
    );
    assert!(
        p.root().join("out/f/independent.txt").exists(),
        "independent work finished"
    );
    assert!(!p.root().join("out/f/after.txt").exists());
    p.stack("f", &stack(false, false));
    let (code, out, _) = p.run(&["apply", "f", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Apply complete: 1 added, 0 changed, 0 destroyed, 1 step run."),
        "{out}"
    );
    assert!(p.root().join("out/f/after.txt").exists());

    // Compensation is on standby while nothing fails: not a pending change.
    let (code, out, _) = p.run(&["preview", "f", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("? undo (local_file.append): runs only if a node it compensates fails"),
        "{out}"
    );

    // Halt: nothing independent starts after the failure (the slow branch was already running).
    let q = Project::new();
    q.stack("f", &stack(true, true));
    let (code, out, _) = q.run(&["apply", "f", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(!q.root().join("out/f/independent.txt").exists(), "{out}");
    assert!(out.contains("halted after `check` failed"), "{out}");

    // Compensate: halt, then run the rollback node.
    let c = Project::new();
    c.stack("f", &format!("{}compensate = true\n", stack(true, false)));
    let (code, out, _) = c.run(&["apply", "f", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("halted after `check` failed; compensating"),
        "{out}"
    );
    assert!(out.contains("> undo: done in"), "{out}");
    assert!(out.contains("compensation ran"), "{out}");
    assert_eq!(c.read("out/f/journal.txt"), "rolled back\n");
    // A compensation that ran is recorded; a destroy forgets it like any step (it never waits
    // for a rollback-only node to wake), and removes the directory it depended on.
    let (code, out, _) = c.run(&["destroy", "f", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Destroy complete"), "{out}");
    assert!(!c.root().join("out/f").exists(), "{out}");
}

#[test]
fn a_moved_declaration_renames_without_replacing() {
    use cutover::engine::{self, PlanEntry};
    use cutover::prelude::*;
    fn v1(stack: &Stack) -> Result<Plan, PlanError> {
        let p = Plan::new(stack);
        p.add("old-name", File::new("m.txt", "kept\n"));
        Ok(p)
    }
    fn v2(stack: &Stack) -> Result<Plan, PlanError> {
        let p = Plan::new(stack);
        p.add("new-name", File::new("m.txt", "kept\n"));
        p.moved("old-name", "new-name");
        Ok(p)
    }
    let entry = |build| {
        vec![PlanEntry {
            name: "m",
            about: "",
            hidden: true,
            build,
        }]
    };
    let p = Project::new();
    p.stack("m", "plan = \"m\"\nprovider = \"local\"\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let apply = |plans: Vec<PlanEntry>| {
        rt.block_on(async {
            let providers = cutover::provider::standard();
            let catalog = engine::Catalog {
                plans: &plans,
                providers: &providers,
            };
            let l = engine::load(p.root(), &catalog, "m").unwrap();
            let prepared = engine::prepare(&l, Default::default(), "test", None)
                .await
                .unwrap();
            let cs = prepared.changes.clone();
            let (_tx, rx) = tokio::sync::watch::channel(0u32);
            let applied = engine::execute(
                &l,
                prepared,
                rx,
                std::sync::Arc::new(|_, _| {}),
                std::sync::Arc::new(|_, _| {}),
            )
            .await
            .unwrap();
            assert!(applied.report.ok(), "{:?}", applied.report.outcomes);
            (cs, applied.state)
        })
    };
    let (_, st1) = apply(entry(v1));
    let id = |st: &cutover::state::State, n: &str| match st.nodes.get(n) {
        Some(cutover::state::NodeRecord::Resource(r)) => Some((r.id.clone(), r.updated_at.clone())),
        _ => None,
    };
    let before = id(&st1, "old-name").unwrap();
    let mtime = std::fs::metadata(p.root().join("m.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let (cs, st2) = apply(entry(v2));
    assert_eq!(
        cs.moved,
        vec![("old-name".to_string(), "new-name".to_string())]
    );
    assert!(
        cs.actions
            .iter()
            .all(|a| a.action == cutover::planner::ActionKind::NoOp),
        "{:?}",
        cs.actions
    );
    assert_eq!(id(&st2, "new-name"), Some(before));
    assert!(id(&st2, "old-name").is_none());
    assert_eq!(
        std::fs::metadata(p.root().join("m.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
}

#[test]
fn refresh_records_drift_and_preview_shows_the_fix() {
    let p = Project::new();
    p.run(&["apply", "demo", "--yes"]);
    std::fs::write(p.root().join("out/demo/config.txt"), "edited by hand\n").unwrap();
    std::fs::remove_file(p.root().join("out/demo/replica-2.txt")).unwrap();
    // Without --refresh, preview reads only state: it cannot know.
    let (code, _, _) = p.run(&["preview", "demo", "--detailed-exitcode"]);
    assert_eq!(code, 0);
    let (code, out, _) = p.run(&["preview", "demo", "--refresh", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    let (code, out, _) = p.run(&["refresh", "demo"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("~ target-config: changed outside this tool: content"),
        "{out}"
    );
    assert!(
        out.contains(
            "~ replica-2: object `out/demo/replica-2.txt` no longer exists: removed from state"
        ),
        "{out}"
    );
    let (code, out, _) = p.run(&["preview", "demo", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert!(
        out.contains(
            "~ target-config (local_file.file) `out/demo/config.txt`  # drift found by refresh in content"
        ),
        "{out}"
    );
    assert!(out.contains("~ content = \"edited by hand\\n\" -> \"greeting = hello from cutover\\nreplicas = 3\\n\""), "{out}");
    assert!(
        out.contains("+ replica-2 (local_file.file) `out/demo/replica-2.txt`  # not in state"),
        "{out}"
    );
    p.run(&["apply", "demo", "--yes"]);
    assert_eq!(
        p.read("out/demo/config.txt"),
        "greeting = hello from cutover\nreplicas = 3\n"
    );
    assert_eq!(p.run(&["preview", "demo", "--detailed-exitcode"]).0, 0);
}

#[test]
fn import_adopts_an_existing_object_and_state_mv_renames() {
    let p = Project::new();
    std::fs::create_dir_all(p.root().join("out/demo")).unwrap();
    let (code, out, err) = p.run(&["import", "demo", "target-dir", "out/demo"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = p.run(&["preview", "demo"]);
    assert!(
        !out.contains("+ target-dir"),
        "imported, not created:\n{out}"
    );
    let (code, _, err) = p.run(&["import", "demo", "target-config", "out/demo/none.txt"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no local_file.file with id `out/demo/none.txt` exists"),
        "{err}"
    );
    let (code, _, err) = p.run(&["import", "demo", "nope", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("`nope` is not a node of plan `demo`"), "{err}");

    let (code, _, err) = p.run(&["state", "demo", "mv", "target-dir", "old-dir"]);
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = p.run(&["state", "demo", "list"]);
    assert!(
        list.starts_with("old-dir resource local_file.directory id=out/demo"),
        "{list}"
    );
    let (_, show, _) = p.run(&["state", "demo", "show", "old-dir"]);
    assert!(show.starts_with("{\n  \"resource\": {"), "{show}");
    // Now the plan sees `target-dir` as new and `old-dir` as gone: a preview says so.
    let (_, out, _) = p.run(&["preview", "demo"]);
    assert!(
        out.contains("- old-dir (local_file.directory) `out/demo`  # no longer in the plan"),
        "{out}"
    );
    p.run(&["state", "demo", "mv", "old-dir", "target-dir"]);
    let (_, out, _) = p.run(&["preview", "demo"]);
    assert!(!out.contains("old-dir"), "{out}");
}

#[test]
fn replace_until_and_destroy() {
    let p = Project::new();
    let (code, out, _) = p.run(&["apply", "demo", "--yes", "--until", "settle"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("> settle: running"), "{out}");
    assert!(out.contains("Held back by --until settle"), "{out}");
    assert!(!p.root().join("out/demo/journal.txt").exists());
    p.run(&["apply", "demo", "--yes", "--approve", "cutover"]);
    let before = std::fs::metadata(p.root().join("out/demo/replica-1.txt")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, out, _) = p.run(&["apply", "demo", "--yes", "--replace", "replica-1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "-/+ replica-1 (local_file.file) `out/demo/replica-1.txt`  # requested with --replace"
        ),
        "{out}"
    );
    assert!(
        out.contains("Apply complete: 1 added, 0 changed, 1 destroyed, 0 steps run."),
        "{out}"
    );
    let after = std::fs::metadata(p.root().join("out/demo/replica-1.txt")).unwrap();
    assert_ne!(before.modified().unwrap(), after.modified().unwrap());
    // The journal's lines were appended by steps: a destroy takes them out again. A line of
    // someone else's keeps the file, and a file no node manages keeps the directory.
    let journal = p.root().join("out/demo/journal.txt");
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        "load finished\ncutover done\n"
    );
    std::fs::write(&journal, "load finished\na line of mine\ncutover done\n").unwrap();
    let (code, out, _) = p.run(&["destroy", "demo", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("x settle (wait.sleep): destroy: forgetting its record"),
        "{out}"
    );
    assert!(
        out.contains(
            "out/demo is not empty; it holds files this plan does not manage (journal.txt)"
        ),
        "{out}"
    );
    assert!(
        out.contains("Destroy failed: 0 added, 0 changed, 6 destroyed, 0 steps run; 1 failed"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        "a line of mine\n"
    );
    std::fs::remove_file(p.root().join("out/demo/journal.txt")).unwrap();
    let (code, out, _) = p.run(&["destroy", "demo", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Destroy complete: 0 added, 0 changed, 1 destroyed, 0 steps run."),
        "{out}"
    );
    assert!(
        !p.root().join("out/demo").exists(),
        "the directory went last, after its files"
    );
    let (_, list, _) = p.run(&["state", "demo", "list"]);
    assert_eq!(list, "");
}

#[test]
fn a_secret_reaches_the_object_but_never_state_previews_or_output() {
    let p = Project::new();
    p.stack(
        "s",
        "plan = \"secretive\"\nprovider = \"local\"\n[values]\nout_dir = \"out/s\"\n[secrets]\ntoken = \"env:CUTOVER_TEST_TOKEN\"\n",
    );
    let secret = "s3cr3t-value-4f9a";
    let run = |args: &[&str]| {
        let out = p
            .plan()
            .args(args)
            .env("CUTOVER_TEST_TOKEN", secret)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap(), text)
    };
    let (code, preview) = run(&["preview", "s"]);
    assert_eq!(code, 0, "{preview}");
    assert!(
        preview.contains("+ content = (secret env:CUTOVER_TEST_TOKEN)"),
        "{preview}"
    );
    let (code, out) = run(&["apply", "s", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        p.read("out/s/secret.txt"),
        secret,
        "the object got the value"
    );
    // Refresh reads the file back (its content is the secret): state must keep the reference.
    let (code, out) = run(&["refresh", "s"]);
    assert_eq!(code, 0, "{out}");
    let (_, json) = run(&["preview", "s", "--format", "json", "--refresh"]);
    let (_, shown) = run(&["state", "s", "show", "secret-file"]);
    for (what, text) in [
        ("preview", &preview),
        ("apply output", &out),
        ("json", &json),
        ("state show", &shown),
    ] {
        assert!(
            !text.contains(secret),
            "the secret leaked into the {what}:\n{text}"
        );
    }
    for (path, bytes) in super::tree(&p.state_dir("s")) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "the secret leaked into {}",
            path.display()
        );
    }
    assert!(
        shown.contains("\"$secret\": \"env:CUTOVER_TEST_TOKEN\""),
        "{shown}"
    );
    // Without the variable, apply fails before it records anything, naming the stack file's
    // line and the variable, not a value.
    std::fs::remove_file(p.root().join("out/s/secret.txt")).unwrap();
    p.run(&["refresh", "s"]);
    let before = super::tree(&p.state_dir("s"));
    let (code, out, err) = p.run(&["apply", "s", "--yes"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "stacks/s.toml:6: secret `token`: environment variable CUTOVER_TEST_TOKEN is not set; export it before running"
        ),
        "{out}{err}"
    );
    assert_eq!(super::tree(&p.state_dir("s")), before, "state changed");
    let (_, list, _) = p.run(&["state", "s", "list"]);
    assert!(!list.contains("secret-file"), "{list}");
}

#[test]
fn a_temporary_retires_in_the_apply_where_its_gate_passes_and_not_before() {
    let p = Project::new();
    p.stack(
        "r",
        "plan = \"retire\"\nprovider = \"local\"\n[values]\nout_dir = \"out/r\"\n",
    );
    let (code, out, _) = p.run(&["apply", "r", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(p.read("out/r/scratch.txt"), "temporary");
    // destroy --temporary honours the same gate: refused, nothing touched.
    let (code, out, err) = p.run(&["destroy", "r", "--temporary", "--yes"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        format!("{out}{err}").contains("`scratch` retires after `bake`, which has not passed: wait for it (apply retires it then), or add --force"),
        "{out}{err}"
    );
    assert!(p.root().join("out/r/scratch.txt").exists());
    // The gate opens, the bake step runs, and the temporary goes in the same apply, after it.
    let (code, out, _) = p.run(&["apply", "r", "--yes", "--approve", "done"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "- scratch (local_file.file) `out/r/scratch.txt` [temporary]  # retires once `bake` passes in this run"
        ),
        "{out}"
    );
    let bake_done = out.find("> bake: done").expect("bake ran");
    let deleted = out.find("- scratch: done").expect("scratch deleted");
    assert!(bake_done < deleted, "retired only after the bake: {out}");
    assert!(!p.root().join("out/r/scratch.txt").exists());
    assert_eq!(p.read("out/r/keep.txt"), "stays");
    // Retired: not recreated, nothing to do.
    let (code, out, _) = p.run(&["preview", "r", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("scratch (local_file.file) `out/r/scratch.txt` [temporary]  # retired at"),
        "{out}"
    );

    // Created in the apply where its gate passes, a temporary retires in that apply too.
    let r = Project::new();
    r.stack(
        "r",
        "plan = \"retire\"\nprovider = \"local\"\n[values]\nout_dir = \"out/r\"\n",
    );
    let (code, out, _) = r.run(&["apply", "r", "--yes", "--approve", "done"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("+ scratch (local_file.file) `out/r/scratch.txt` [temporary]  # not in state; retires once `bake` passes in this run"),
        "{out}"
    );
    let made = out.find("+ scratch: done").expect("scratch made");
    let bake_done = out.find("> bake: done").expect("bake ran");
    let deleted = out.find("- scratch: done").expect("scratch retired");
    assert!(made < deleted && bake_done < deleted, "{out}");
    assert!(!r.root().join("out/r/scratch.txt").exists());
    let (code, out, _) = r.run(&["preview", "r", "--detailed-exitcode"]);
    assert_eq!(code, 0, "nothing left to do: {out}");
    assert!(out.contains("# retired at"), "{out}");

    // Forced, destroy --temporary does not wait for the gate.
    let q = Project::new();
    q.stack(
        "r",
        "plan = \"retire\"\nprovider = \"local\"\n[values]\nout_dir = \"out/r\"\n",
    );
    assert_eq!(q.run(&["apply", "r", "--yes"]).0, 0);
    let (code, out, _) = q.run(&["destroy", "r", "--temporary", "--force", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(!q.root().join("out/r/scratch.txt").exists());
    assert_eq!(q.read("out/r/keep.txt"), "stays");
}

/// Every apply logs its run; `plan report` shows it as markdown (each node's start, time and
/// outcome, the critical path) and as an SVG timeline with a bar for every node; the same report
/// is written beside the state. A stack that never ran has nothing to report, and says so.
#[test]
fn the_run_report_shows_each_node_the_critical_path_and_a_timeline() {
    let p = Project::new();
    let (code, _, err) = p.run(&["report", "demo"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("stack `demo` has no run to report yet"),
        "{err}"
    );
    let (code, out, _) = p.run(&["apply", "demo", "--yes", "--approve", "cutover"]);
    assert_eq!(code, 0, "{out}");
    let (code, md, err) = p.run(&["report", "demo"]);
    assert_eq!(code, 0, "{err}");
    // Parallel jobs start and end in any order: the report is checked line by line.
    assert!(
        md.starts_with("### Run of `demo` on stack `demo`\n"),
        "{md}"
    );
    assert!(
        md.contains("apply demo --yes --approve cutover`, started "),
        "{md}"
    );
    assert!(md.contains(": **complete** in "), "{md}");
    let path = md
        .lines()
        .find_map(|l| l.strip_prefix("**Critical path**: "))
        .unwrap_or_else(|| panic!("{md}"));
    // The sleep decides the run's length: the path goes through it and the gate behind it.
    assert!(path.starts_with("`target-dir` → "), "{path}");
    assert!(
        path.ends_with(
            "`settle` → `record-load` → `cutover` → `active-pointer` → `record-cutover`"
        ),
        "{path}"
    );
    for (node, kind, did) in [
        ("target-dir", "local_file.directory", "creating"),
        ("settle", "wait.sleep", "running"),
        ("record-cutover", "local_file.append", "running"),
    ] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| `{node}` |")))
            .unwrap_or_else(|| panic!("{node}: {md}"));
        assert!(
            row.contains(&format!("| {kind} | {did} |")) && row.ends_with("| done |"),
            "{row}"
        );
    }
    assert!(
        md.contains("| `cutover` | core.gate | gate | - | - | done |"),
        "{md}"
    );
    let (code, svg, _) = p.run(&["report", "demo", "--format", "svg"]);
    assert_eq!(code, 0);
    let bars = super::svg_bars(&svg);
    for node in [
        "target-dir",
        "settle",
        "record-load",
        "cutover",
        "active-pointer",
        "record-cutover",
    ] {
        assert!(bars.iter().any(|b| b == node), "{node}: {bars:?}");
    }
    assert_eq!(p.read(".cutover/demo/report.md"), md);
    assert_eq!(p.read(".cutover/demo/report.svg"), svg);
    // A second run is its own log; the report is of the newest.
    let (code, _, _) = p.run(&["destroy", "demo", "--yes"]);
    assert_eq!(code, 0);
    let runs = std::fs::read_dir(p.root().join(".cutover/demo/runs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        runs == 2 || !p.root().join(".cutover/demo").exists(),
        "{runs}"
    );
}
