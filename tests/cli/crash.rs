//! Kill `plan apply` with SIGKILL at random moments, many times, then apply to the end: every
//! node's effect is present exactly once and a preview shows no changes.

use std::time::{Duration, Instant};

use super::Project;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn sigkill_at_random_moments_then_resume_gives_every_effect_exactly_once() {
    kill_at_random_then_resume(&Project::new(), "", &[], &|_| {});
}

/// The crash test of the stack `crash`, its state where `state` (stack-file lines) says, each
/// command run with `env`, and `after_kill` called after every killed run.
pub(super) fn kill_at_random_then_resume(
    p: &Project,
    state: &str,
    env: &[(&str, &str)],
    after_kill: &dyn Fn(&Project),
) {
    let (chains, length) = (5u32, 40u32);
    p.stack(
        "crash",
        &format!("plan = \"crash\"\nprovider = \"local\"\n{state}[limits]\nglobal = 4\n[values]\nout_dir = \"out/crash\"\nchains = {chains}\nlength = {length}\nsleep_ms = 60\n"),
    );
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (set CRASH_SEED to repeat)");
    let mut rng = Lcg(seed);
    let mut kills = 0;
    for _ in 0..25 {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
            .args(["--root"])
            .arg(p.root())
            .args(["apply", "crash", "--yes", "--quiet"])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(5 + rng.next(150));
        let t0 = Instant::now();
        let mut finished = false;
        while t0.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !finished {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
            child.wait().unwrap();
            after_kill(p);
        } else {
            child.wait().unwrap();
        }
    }
    assert!(
        kills >= 20,
        "only {kills} runs were killed: the plan finished too fast to test crashes"
    );
    let (code, out, err) = p.run_env(env, &["apply", "crash", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let log = p.read("out/crash/log.txt");
    for c in 0..chains {
        for i in 0..length {
            let line = format!("mark {c}-{i}");
            let n = log.lines().filter(|l| *l == line).count();
            assert_eq!(n, 1, "`{line}` appears {n} times (seed {seed})\n{log}");
            assert_eq!(
                p.read(&format!("out/crash/file-{c}-{i}.txt")),
                format!("{c}-{i}\n")
            );
        }
    }
    assert_eq!(
        log.lines().count(),
        (chains * length) as usize,
        "(seed {seed})"
    );
    let (code, out, _) = p.run_env(env, &["preview", "crash", "--detailed-exitcode"]);
    assert_eq!(
        code, 0,
        "preview after resume shows changes (seed {seed}):\n{out}"
    );
    assert!(out.contains("No changes."), "{out}");
    // A kill between an atomic write's temporary and its rename leaves `.NAME.tmp-PID`: ours,
    // so a destroy removes it (one is planted, from a writer that cannot be alive, in case no
    // kill landed there), and the lines the steps appended go with them; a file of someone
    // else's stops it, named.
    std::fs::write(p.root().join("out/crash/.file-0-0.txt.tmp-4999999"), "x").unwrap();
    std::fs::write(p.root().join("out/crash/notes.txt"), "mine").unwrap();
    let (code, out, err) = p.run_env(env, &["destroy", "crash", "--yes"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("does not manage (notes.txt)") && !out.contains(".tmp-"),
        "{out}"
    );
    std::fs::remove_file(p.root().join("out/crash/notes.txt")).unwrap();
    assert!(!p.root().join("out/crash/log.txt").exists(), "{out}");
    let (code, out, err) = p.run_env(env, &["destroy", "crash", "--yes"]);
    assert_eq!(code, 0, "(seed {seed}) {out}{err}");
    assert!(!p.root().join("out/crash").exists(), "{out}");
}

#[test]
fn ctrl_c_lets_running_nodes_finish_saves_state_and_exits_130() {
    interrupted_by("-INT", 130);
}

#[test]
fn sigterm_is_handled_like_ctrl_c_and_exits_143() {
    interrupted_by("-TERM", 143);
}

/// `plan apply` stopped by `signal` mid-run: running nodes finish, state is saved, the exit code
/// is `code`, and the next apply gives every effect exactly once.
fn interrupted_by(signal: &str, code: i32) {
    let p = Project::new();
    p.stack(
        "crash",
        "plan = \"crash\"\nprovider = \"local\"\n[values]\nout_dir = \"out/int\"\nchains = 2\nlength = 20\nsleep_ms = 50\n",
    );
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(p.root())
        .args(["apply", "crash", "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(code), "{stdout}");
    assert!(
        stdout.contains("Interrupted: no new work starts; waiting for"),
        "{stdout}"
    );
    assert!(
        stdout.contains("State is saved: run `plan apply crash` to resume."),
        "{stdout}"
    );
    // Nothing was left pending: running nodes finished and were recorded.
    let (_, list, _) = p.run(&["state", "crash", "list"]);
    assert!(!list.contains("interrupted"), "{list}");
    assert!(!list.is_empty());
    let (code, out, _) = p.run(&["apply", "crash", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let log = p.read("out/int/log.txt");
    assert_eq!(log.lines().count(), 40);
    let unique: std::collections::BTreeSet<&str> = log.lines().collect();
    assert_eq!(unique.len(), 40, "{log}");
}
