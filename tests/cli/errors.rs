//! Bad input gets a clear error naming the file, line and fix, and leaves state untouched.

use super::{tree, Project};

type Files = std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>;

/// The state files of `demo`, without the lock and its holder record (which any writer touches).
fn state_files(p: &Project) -> Files {
    let mut t = tree(&p.state_dir("demo"));
    t.retain(|k, _| !k.ends_with("lock.json") && !k.ends_with("lock"));
    t
}

/// Applies demo once so there is state to protect, then returns its files.
fn with_state(p: &Project) -> Files {
    let (code, out, err) = p.run(&["apply", "demo", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    state_files(p)
}

fn demo_with(values: &str) -> String {
    format!("plan = \"demo\"\nprovider = \"local\"\n\n[values]\n{values}")
}

#[test]
fn unknown_value_key_names_file_line_and_key() {
    let p = Project::new();
    let before = with_state(&p);
    p.stack(
        "demo",
        &demo_with("out_dir = \"out/demo\"\ngreeting = \"hi\"\nreplicas = 3\nreplcias = 4\n"),
    );
    let (code, _, err) = p.run(&["apply", "demo", "--yes"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: stacks/demo.toml: line 8: unknown key `replcias`. The plan reads: greeting, out_dir, replicas, settle_ms. Fix the spelling or remove the line.");
    assert_eq!(state_files(&p), before);
}

#[test]
fn unknown_top_level_key_names_line() {
    let p = Project::new();
    p.stack(
        "demo",
        "plan = \"demo\"\nprovider = \"local\"\nregoin = \"eu-west-1\"\n",
    );
    let (code, _, err) = p.run(&["preview", "demo"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: stacks/demo.toml:3:1: unknown field `regoin`, expected one of"),
        "{err}"
    );
    assert!(err.contains("Remove the key or fix its spelling"), "{err}");
}

#[test]
fn type_error_names_file_line_and_key() {
    let p = Project::new();
    let before = with_state(&p);
    p.stack(
        "demo",
        &demo_with("out_dir = \"out/demo\"\ngreeting = \"hi\"\nreplicas = \"three\"\n"),
    );
    let (code, _, err) = p.run(&["apply", "demo", "--yes"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: stacks/demo.toml:7: key `replicas` has the wrong type: expected u32, found a string"), "{err}");
    assert_eq!(state_files(&p), before);
}

#[test]
fn unknown_stack_lists_the_stacks() {
    let p = Project::new();
    let (code, _, err) = p.run(&["preview", "prod"]);
    assert_eq!(code, 1);
    // Every stack of the repository, by name, sorted.
    let mut stacks: Vec<String> =
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stacks"))
            .unwrap()
            .map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.trim_end_matches(".toml").to_string()
            })
            .collect();
    stacks.sort();
    assert!(stacks.len() >= 4 && stacks.contains(&"staging".to_string()));
    assert_eq!(err.trim(), format!("error: unknown stack `prod`: no file stacks/prod.toml. Stacks here: {}. Create the file or pick one of those.", stacks.join(", ")));
}

#[test]
fn unknown_plan_names_the_line() {
    let p = Project::new();
    p.stack("x", "# a stack\nplan = \"demoo\"\nprovider = \"local\"\n");
    let (code, _, err) = p.run(&["preview", "x"]);
    assert_eq!(code, 1);
    let list = err
        .trim()
        .strip_prefix("error: stacks/x.toml:2: unknown plan `demoo`; plans in this binary: ")
        .and_then(|r| r.strip_suffix(". Fix `plan = ...` or add the plan to plans/mod.rs."))
        .unwrap_or_else(|| panic!("{err}"));
    // The plans `plan list` shows, not the hidden ones of the tests.
    let plans: Vec<&str> = list.split(", ").collect();
    for shown in ["demo", "onprem-rds", "saas", "mysql-aurora", "rehearsal"] {
        assert!(plans.contains(&shown), "{shown}: {err}");
    }
    for hidden in ["bench", "crash", "failing"] {
        assert!(!plans.contains(&hidden), "{hidden}: {err}");
    }
}

#[test]
fn cyclic_plan_names_the_cycle_and_the_edge_to_cut() {
    let p = Project::new();
    p.stack("cyc", "plan = \"cyclic\"\nprovider = \"local\"\n");
    let (code, _, err) = p.run(&["apply", "cyc", "--yes"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: plan `cyclic` is invalid (1 problem):\n  - cycle: a -> b -> c -> a; cut the edge c -> a (remove `a`'s after(`c`))");
    assert!(!p.state_dir("cyc").exists());
}

#[test]
fn locked_stack_fails_at_once_naming_the_holder() {
    let p = Project::new();
    let before = with_state(&p);
    let lock = cutover::state::Lock::acquire(
        &cutover::state::StateAt::Local(p.state_dir("demo")),
        "demo",
        "plan apply demo (test)",
    )
    .unwrap();
    let start = std::time::Instant::now();
    let (code, _, err) = p.run(&["apply", "demo", "--yes"]);
    assert_eq!(code, 1);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    assert!(err.contains("stack `demo` is locked by pid"), "{err}");
    assert!(err.contains("`plan apply demo (test)`"), "{err}");
    let (code, _, err) = p.run(&["state", "demo", "unlock"]);
    assert_eq!(code, 1, "unlock refuses while the holder lives");
    assert!(err.contains("refusing to unlock"), "{err}");
    drop(lock);
    assert_eq!(state_files(&p), before);
}

#[test]
fn corrupt_state_is_refused_and_left_as_it_was() {
    let p = Project::new();
    with_state(&p);
    let snap = p.state_dir("demo").join("state.json");
    let mut text = std::fs::read_to_string(&snap).unwrap();
    text.truncate(text.len() / 2);
    std::fs::write(&snap, &text).unwrap();
    let before = state_files(&p);
    for args in [
        &["apply", "demo", "--yes"][..],
        &["preview", "demo"],
        &["state", "demo", "list"],
    ] {
        let (code, _, err) = p.run(args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(".cutover/demo/state.json:"), "{err}");
        assert!(err.contains("state is damaged"), "{err}");
        assert!(err.contains("it was not changed"), "{err}");
    }
    assert_eq!(state_files(&p), before);
}

#[test]
fn newer_state_format_is_refused() {
    let p = Project::new();
    with_state(&p);
    let snap = p.state_dir("demo").join("state.json");
    let text = std::fs::read_to_string(&snap)
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 7");
    std::fs::write(&snap, &text).unwrap();
    let (code, _, err) = p.run(&["apply", "demo", "--yes"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("state format 7 is newer than this build reads (1)"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&snap).unwrap(), text);
}

#[test]
fn apply_without_a_terminal_or_yes_refuses_and_says_why() {
    let p = Project::new();
    let (code, _, err) = p.run(&["apply", "demo"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("apply needs confirmation, and standard input is not a terminal"),
        "{err}"
    );
    assert!(err.contains("--plan FILE"), "{err}");
    assert!(!p.state_dir("demo").exists());
    let (code, _, err) = p.run(&["destroy", "demo"]);
    assert_eq!(code, 1);
    assert!(err.contains("destroy needs confirmation"), "{err}");
}

#[test]
fn a_state_of_another_stack_is_refused_untouched() {
    let p = Project::new();
    let before = with_state(&p);
    // A second stack pointed at the first one's state directory.
    p.stack(
        "demo-copy",
        "plan = \"demo\"\nprovider = \"local\"\nstate_dir = \".cutover/demo\"\n\n[values]\nout_dir = \"out/copy\"\ngreeting = \"hi\"\nreplicas = 3\nsettle_ms = 1\n",
    );
    for args in [
        &["apply", "demo-copy", "--yes"][..],
        &["destroy", "demo-copy", "--yes"][..],
        &["preview", "demo-copy"][..],
    ] {
        let (code, out, err) = p.run(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("state belongs to stack `demo`, not to stack `demo-copy`")
                && err.contains("give `demo-copy` a `state_dir` of its own"),
            "{args:?}: {err}"
        );
        assert_eq!(state_files(&p), before, "{args:?} left the state as it was");
    }
    assert!(
        p.root().join("out/demo").exists(),
        "demo's files are untouched"
    );
}

#[test]
fn a_stack_name_is_a_plain_name_and_state_dir_is_not_the_project_root() {
    let p = Project::new();
    std::fs::write(
        p.root().join("outside.toml"),
        "plan = \"demo\"\nprovider = \"local\"\n",
    )
    .unwrap();
    for name in ["../outside", "/etc/passwd", "a/b", "..", ""] {
        let (code, _, err) = p.run(&["preview", name]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains("is not a stack name"), "{name}: {err}");
        let (code, _, err) = p.run(&["emulate", name, "down"]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains("is not a stack name"), "{name}: {err}");
    }
    for dir in ["", ".", "./"] {
        p.stack(
            "rooted",
            &format!("plan = \"demo\"\nprovider = \"local\"\nstate_dir = \"{dir}\"\n"),
        );
        let (code, _, err) = p.run(&["apply", "rooted", "--yes"]);
        assert_eq!(code, 1, "{dir}: {err}");
        assert!(
            err.contains("stacks/rooted.toml:3: `state_dir") && err.contains("is the project root"),
            "{dir}: {err}"
        );
        assert!(!p.root().join("state.json").exists());
    }
}

/// An AWS endpoint that refuses connections, or accepts them and never answers, is named at once
/// (one call, no retries) with the stack key that sets it, before anything is recorded.
#[test]
fn an_unreachable_aws_endpoint_is_named_at_once_with_its_stack_key() {
    let p = Project::new();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _keep = std::thread::spawn(move || {
        let mut held = vec![];
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    for (port, says) in [(closed, "cannot be reached"), (silent_port, "")] {
        p.stack(
            "cloud",
            &format!("plan = \"aws-params\"\nprovider = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{port}\"\n[values]\nfamily = \"postgres15\"\nwork_mem = \"4096\"\n"),
        );
        let t0 = std::time::Instant::now();
        let out = p
            .plan()
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .args(["apply", "cloud", "--yes"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "the endpoint http://127.0.0.1:{port} (`endpoint_url` in stacks/cloud.toml)"
            )) && err.contains(says)
                && err.contains("nothing was changed"),
            "{err}"
        );
        assert!(!err.contains("DispatchFailure"), "{err}");
        // One call without retries: not the SDK's retried attempts of tens of seconds.
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(15),
            "{:?}",
            t0.elapsed()
        );
        assert!(!p.state_dir("cloud").exists(), "nothing is recorded");
    }
}

#[test]
fn emulate_refuses_a_stack_that_is_not_aws_and_starts_nothing() {
    let p = Project::new();
    let (code, _, err) = p.run(&["emulate", "demo"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stacks/demo.toml: provider `local`: the emulation stands in for AWS"),
        "{err}"
    );
    assert!(!p.root().join(".cutover/emulate").exists());
}

#[test]
fn reading_commands_end_quietly_when_the_reader_goes_away() {
    use std::os::unix::process::ExitStatusExt;
    let p = Project::new();
    for args in [
        vec!["list"],
        vec!["preview", "production"],
        vec!["graph", "production"],
        vec!["state", "production", "list"],
    ] {
        let out = with_the_reader_gone(&p, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
}

#[test]
fn an_apply_whose_reader_goes_away_finishes_and_saves_its_state() {
    let p = Project::new();
    let out = with_the_reader_gone(&p, &["apply", "demo", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    // It did all of its work: nothing is left to do.
    let (code, out, _) = p.run(&["preview", "demo", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
}

/// Runs `plan ARGS` with its output's reader gone before the first line is written
/// (`plan ARGS | head -0`).
fn with_the_reader_gone(p: &Project, args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(p.root())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// The state directory on a disk that fills up in the middle of an apply (a small tmpfs, in a
/// mount namespace of the test's own, so nothing outlives it): the apply fails saying the disk
/// is full, the state stays readable, no lock file is left behind, and once there is room the
/// next apply converges. The disk made read-only, an apply is refused in one sentence and the
/// state is as it was. Needs `unshare` and `mount` (util-linux) and the right to mount a
/// tmpfs in a namespace of one's own (root, or unprivileged user namespaces).
#[test]
fn a_disk_that_fills_mid_apply_leaves_the_state_readable_and_a_read_only_one_is_named() {
    let p = Project::new();
    let root = p.root();
    let plan = assert_cmd::cargo::cargo_bin("plan");
    let script = r#"
set -u
R=$1; P=$2
mkdir -p "$R/.cutover"
mount -t tmpfs -o size=256k tmpfs "$R/.cutover" || { echo "cannot mount a tmpfs" > "$R/mount.err"; exit 99; }
"$P" --root "$R" apply demo --yes > "$R/first.out" 2>&1; echo $? > "$R/first.rc"
# Fill the disk, then leave two pages: room for the run's journal, not for its snapshot.
dd if=/dev/zero of="$R/.cutover/fill" bs=4k 2>/dev/null
truncate -s -8K "$R/.cutover/fill"
"$P" --root "$R" apply demo --yes --replace replica-1 --replace settle > "$R/full.out" 2>&1; echo $? > "$R/full.rc"
ls -a "$R/.cutover/demo" > "$R/full.ls"
"$P" --root "$R" state demo list > "$R/list.out" 2>&1; echo $? > "$R/list.rc"
rm -f "$R/.cutover/fill"
"$P" --root "$R" apply demo --yes > "$R/again.out" 2>&1; echo $? > "$R/again.rc"
"$P" --root "$R" preview demo --detailed-exitcode > "$R/preview.out" 2>&1; echo $? > "$R/preview.rc"
# The same disk read-only: refused in one sentence, the state as it was.
find "$R/.cutover/demo" -maxdepth 1 -type f | sort | xargs md5sum > "$R/ro.before"
mount -o remount,ro "$R/.cutover"
"$P" --root "$R" apply demo --yes --replace settle > "$R/ro.out" 2>&1; echo $? > "$R/ro.rc"
find "$R/.cutover/demo" -maxdepth 1 -type f | sort | xargs md5sum > "$R/ro.after"
"#;
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = std::process::Command::new("unshare");
    cmd.arg(if as_root { "-m" } else { "-rm" });
    let status = cmd
        .args(["sh", "-c", script, "sh"])
        .arg(root)
        .arg(&plan)
        .status()
        .expect("this test needs `unshare` (util-linux)");
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap_or_default();
    assert!(
        status.success(),
        "the test could not set up a small disk (unshare {status}: {}); it needs the right to mount a tmpfs in a mount namespace",
        read("mount.err")
    );
    assert_eq!(read("first.rc").trim(), "0", "{}", read("first.out"));
    assert_eq!(read("full.rc").trim(), "1", "{}", read("full.out"));
    let full = read("full.out");
    assert!(
        full.contains("the disk holding it is full; free some space and run the command again")
            && !full.contains("os error"),
        "{full}"
    );
    let ls = read("full.ls");
    assert!(
        !ls.lines()
            .any(|l| l == "lock" || l == "lock.json" || l.contains(".tmp-")),
        "files left behind by the failed apply:\n{ls}"
    );
    assert_eq!(read("list.rc").trim(), "0", "{}", read("list.out"));
    assert!(read("list.out").contains("replica-1 resource local_file.file"));
    assert_eq!(read("again.rc").trim(), "0", "{}", read("again.out"));
    assert_eq!(read("preview.rc").trim(), "0", "{}", read("preview.out"));
    assert!(read("preview.out").contains("No changes."));
    assert_eq!(read("ro.rc").trim(), "1", "{}", read("ro.out"));
    let ro = read("ro.out");
    assert!(
        ro.contains("is on a read-only file system; remount it writable")
            && !ro.contains("os error"),
        "{ro}"
    );
    assert_eq!(read("ro.before"), read("ro.after"));
}
