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
    let p = Project::new();
    let (chains, length) = (5u32, 40u32);
    p.stack(
        "crash",
        &format!("plan = \"crash\"\nprovider = \"local\"\n[limits]\nglobal = 4\n[values]\nout_dir = \"out/crash\"\nchains = {chains}\nlength = {length}\nsleep_ms = 60\n"),
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
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 20,
        "only {kills} runs were killed: the plan finished too fast to test crashes"
    );
    let (code, out, err) = p.run(&["apply", "crash", "--yes"]);
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
    let (code, out, _) = p.run(&["preview", "crash", "--detailed-exitcode"]);
    assert_eq!(
        code, 0,
        "preview after resume shows changes (seed {seed}):\n{out}"
    );
    assert!(out.contains("No changes."), "{out}");
}
