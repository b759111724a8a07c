//! A stack's state in S3 (moto), driven through the binary: the crash test with remote state,
//! two applies at once, a killed run's lock broken by `unlock`, push and pull, a throttled S3,
//! and a preview without credentials.

use std::time::{Duration, Instant};

use super::aws::{require_moto, Moto};
use super::crash::kill_at_random_then_resume;
use super::preview::without_aws;
use super::proxy::TestProxy;
use super::Project;

const ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/config"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
];

const BUCKET: &str = "team-state";

struct Remote {
    moto: Moto,
    rt: tokio::runtime::Runtime,
    s3: aws_sdk_s3::Client,
}

impl Remote {
    /// moto with the bucket the stacks name.
    fn start() -> Remote {
        let moto = Moto::start(&require_moto());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&moto.sdk_config(&moto.url()))
                .force_path_style(true)
                .build(),
        );
        rt.block_on(s3.create_bucket().bucket(BUCKET).send())
            .unwrap();
        Remote { moto, rt, s3 }
    }

    /// The `[state]` table of a stack whose state is under `prefix`, reached at `endpoint`.
    fn state_lines(&self, prefix: &str, endpoint: &str, extra: &str) -> String {
        format!("[state]\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n{extra}")
    }

    /// The keys under `prefix/`.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(
                self.s3
                    .list_objects_v2()
                    .bucket(BUCKET)
                    .prefix(format!("{prefix}/"))
                    .send(),
            )
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(String::from))
            .collect()
    }

    fn lock_of(&self, prefix: &str) -> Option<serde_json::Value> {
        let got = self
            .rt
            .block_on(
                self.s3
                    .get_object()
                    .bucket(BUCKET)
                    .key(format!("{prefix}/lock.json"))
                    .send(),
            )
            .ok()?;
        let bytes = self.rt.block_on(got.body.collect()).unwrap().into_bytes();
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until a run holds the lock under `prefix`.
    fn wait_for_lock(&self, prefix: &str) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.lock_of(prefix) {
                return l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no run took the lock"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A small `crash` stack: `length` links of `sleep_ms` each, its state as `state` says.
fn chain_stack(p: &Project, state: &str, length: u32, sleep_ms: u32) {
    p.stack(
        "crash",
        &format!("plan = \"crash\"\nprovider = \"local\"\n{state}[values]\nout_dir = \"out/crash\"\nchains = 1\nlength = {length}\nsleep_ms = {sleep_ms}\n"),
    );
}

/// Each link's line appears once in the log.
fn each_effect_once(p: &Project, length: u32) {
    let log = p.read("out/crash/log.txt");
    for i in 0..length {
        let line = format!("mark 0-{i}");
        assert_eq!(
            log.lines().filter(|l| *l == line).count(),
            1,
            "`{line}`:\n{log}"
        );
    }
    assert_eq!(log.lines().count(), length as usize, "{log}");
}

fn spawn_apply(p: &Project) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(p.root())
        .args(["apply", "crash", "--yes", "--quiet"])
        .envs(ENV.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_at_random_moments_with_state_in_s3_then_resume_gives_every_effect_exactly_once() {
    let r = Remote::start();
    let p = Project::new();
    let state = r.state_lines("crash", &r.moto.url(), "");
    // A killed run leaves its lock: `unlock` breaks it (its process is gone), as a person would.
    kill_at_random_then_resume(&p, &state, ENV, &|p| {
        let (code, out, err) = p.run_env(ENV, &["state", "crash", "unlock"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("Broke the lock of stack `crash`") || out.contains("is not locked"),
            "{out}"
        );
    });
    assert!(
        !p.state_dir("crash").join("state.json").exists(),
        "no local state"
    );
    let keys = r.keys("crash");
    assert!(
        keys.len() == 1 && keys[0].starts_with("crash/snapshots/"),
        "one snapshot is left and no lock: {keys:?}"
    );
}

#[test]
fn a_second_apply_is_refused_at_once_naming_the_first_and_unlock_leaves_a_live_run_alone() {
    let r = Remote::start();
    let p = Project::new();
    chain_stack(&p, &r.state_lines("busy", &r.moto.url(), ""), 8, 300);
    let mut first = spawn_apply(&p);
    let lock = r.wait_for_lock("busy");
    assert_eq!(lock["pid"], first.id(), "{lock}");
    assert!(
        lock["command"].as_str().unwrap().contains("apply crash"),
        "{lock}"
    );
    let t0 = Instant::now();
    let (code, out, err) = p.run_env(ENV, &["apply", "crash", "--yes"]);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "refused at once, not after a wait"
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("stack `crash` is locked by")
            && err.contains(&format!("pid {}", first.id()))
            && err.contains("s3://team-state/busy/lock.json"),
        "{err}"
    );
    let (code, out, err) = p.run_env(ENV, &["state", "crash", "unlock"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("that run is alive, so the lock stays"),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
    assert!(r.lock_of("busy").is_none(), "let go when the run ended");
    each_effect_once(&p, 8);
}

#[test]
fn a_killed_runs_lock_is_refused_until_unlock_breaks_it() {
    let r = Remote::start();
    let p = Project::new();
    chain_stack(&p, &r.state_lines("killed", &r.moto.url(), ""), 6, 200);
    let mut first = spawn_apply(&p);
    r.wait_for_lock("killed");
    let pid = first.id();
    first.kill().unwrap(); // SIGKILL: nothing lets the lock go
    first.wait().unwrap();
    let (code, out, err) = p.run_env(ENV, &["apply", "crash", "--yes"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("`plan state crash unlock`"),
        "{err}"
    );
    let (code, out, err) = p.run_env(ENV, &["state", "crash", "unlock"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("pid {pid}")), "{out}");
    let (code, out, err) = p.run_env(ENV, &["apply", "crash", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    each_effect_once(&p, 6);
}

#[test]
fn push_moves_a_local_state_into_s3_encrypted_and_pull_copies_it_back() {
    let r = Remote::start();
    let p = Project::new();
    chain_stack(&p, "", 3, 1);
    let (code, out, err) = p.run_env(ENV, &["apply", "crash", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    chain_stack(
        &p,
        &r.state_lines("pushed", &r.moto.url(), &format!("kms_key = \"{key}\"\n")),
        3,
        1,
    );
    // Before the push the remote location is empty: the preview shows everything to do.
    let (code, out, _) = p.run_env(ENV, &["preview", "crash", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    let (code, out, err) = p.run_env(ENV, &["state", "crash", "push"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Pushed the state of stack `crash` (")
            && out.contains("to s3://team-state/pushed"),
        "{out}"
    );
    let dir = p.state_dir("crash");
    assert!(!dir.join("state.json").exists() && dir.join("pushed-state.json").exists());
    let (code, out, _) = p.run_env(ENV, &["preview", "crash", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No changes."), "{out}");
    // The snapshot is encrypted with the stack's key.
    let keys = r.keys("pushed");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let head =
        r.rt.block_on(r.s3.head_object().bucket(BUCKET).key(&keys[0]).send())
            .unwrap();
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("aws:kms")
    );
    assert_eq!(head.ssekms_key_id(), Some(key));
    // A second push finds the location occupied and changes nothing.
    let (code, out, err) = p.run_env(ENV, &["state", "crash", "push"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("already holds a state"), "{err}");
    assert_eq!(r.keys("pushed"), keys);
    // Applying from here on writes to S3.
    chain_stack(
        &p,
        &r.state_lines("pushed", &r.moto.url(), &format!("kms_key = \"{key}\"\n")),
        4,
        1,
    );
    let (code, out, err) = p.run_env(ENV, &["apply", "crash", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    each_effect_once(&p, 4);
    let copy_path = p.root().join("copy.json");
    let (code, out, err) = p.run_env(
        ENV,
        &[
            "state",
            "crash",
            "pull",
            "--out",
            copy_path.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let copy: serde_json::Value = serde_json::from_str(&p.read("copy.json")).unwrap();
    let pushed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pushed-state.json")).unwrap())
            .unwrap();
    assert_eq!(
        copy["lineage"], pushed["lineage"],
        "the lineage moved with it"
    );
    assert!(
        copy["nodes"].as_object().unwrap().contains_key("work-0-3"),
        "{copy}"
    );
    assert!(!pushed["nodes"]
        .as_object()
        .unwrap()
        .contains_key("work-0-3"));
}

#[test]
fn a_throttled_s3_converges_and_every_effect_happens_once() {
    let r = Remote::start();
    let proxy = TestProxy::start(r.moto.port);
    proxy.fault_every(4);
    let p = Project::new();
    chain_stack(&p, &r.state_lines("throttled", &proxy.url(), ""), 10, 1);
    let (code, out, err) = p.run_env(ENV, &["apply", "crash", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let injected: usize = proxy.injected().values().sum();
    assert!(injected >= 10, "faults injected: {:?}", proxy.injected());
    // The run's summary says what the state's requests were and what the SDK retried: here,
    // every request is the state's, so every injected fault.
    let line = out
        .lines()
        .find(|l| l.contains("state s3://team-state/throttled: "))
        .unwrap_or_else(|| panic!("no state line in the summary: {out}"));
    let retried: usize = line
        .split("; ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retries in {line}"));
    assert!(
        line.contains("PutObject") && line.contains("retried by the SDK after throttling"),
        "{line}"
    );
    assert_eq!(retried, injected, "{line}");
    each_effect_once(&p, 10);
    let (code, out, _) = p.run_env(ENV, &["preview", "crash", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_preview_without_credentials_says_so_in_one_sentence_and_stops() {
    let r = Remote::start();
    let p = Project::new();
    chain_stack(&p, &r.state_lines("nocreds", &r.moto.url(), ""), 2, 1);
    let (code, stdout, stderr) = without_aws(&p, &["preview", "crash"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "nothing previewed: {stdout}");
    assert!(
        stderr.contains("s3://team-state/nocreds: no AWS credentials were found to read the state of stack `crash` (")
            && stderr.contains("a preview without the state would show everything as new"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_bad_state_table_is_named_at_its_line() {
    let p = Project::new();
    chain_stack(
        &p,
        "[state]\nbucket = \"b\"\nregoin = \"us-east-1\"\n",
        2,
        1,
    );
    let (code, out, err) = p.run_env(ENV, &["preview", "crash"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("stacks/crash.toml:5: [state] has no field `regoin`; it takes url, bucket, prefix, region, kms_key, endpoint_url, profile"),
        "{err}"
    );
}
