//! Engine benchmark: preview and apply plans of 1,000 and 10,000 no-op nodes in three shapes (wide,
//! chain, 10 layers) through the real `plan` binary, and Terraform on the equivalent graph of
//! `terraform_data` resources in the same run when `terraform` is on the PATH.
//!
//! Run: `cargo bench --bench engine`. Environment: `BENCH_SIZES=1000,10000` (node counts),
//! `BENCH_TF_TIMEOUT=240` (seconds per Terraform command; hitting it reports "> N s"),
//! `BENCH_TF=0` to skip Terraform, `BENCH_TF_MAX=1000` (largest graph given to Terraform),
//! `BENCH_TF_DESTROY=1` to time Terraform's destroy too (minutes more).
//!
//! Then the same chain with its state in S3 (moto, the emulator the tests use, found as
//! `CUTOVER_MOTO_SERVER` or `target/test-venv/bin/moto_server`), beside the local state in the same
//! run: times, the ratio, the requests per node from the run's summary, and one conditional
//! PutObject's median latency to the emulator (the floor each commit pays). `BENCH_REMOTE_SIZES=1000`
//! (node counts; empty to skip).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHAPES: [&str; 3] = ["wide", "chain", "layers"];

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Runs a command with a time limit; `None` when it hit the limit.
fn timed(mut cmd: Command, limit: Duration) -> Option<Duration> {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let took = t0.elapsed();
            if !status.success() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("{cmd:?} failed: {err}");
            }
            return Some(took);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn plan_cmd(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_plan"));
    c.arg("--root").arg(root).args(args);
    c
}

/// The Terraform configuration of the same graph.
fn terraform_config(shape: &str, n: usize) -> String {
    let layer = (n / 10).max(1);
    let mut s = String::new();
    for i in 0..n {
        let input = match shape {
            "chain" if i > 0 => format!("terraform_data.n{}.id", i - 1),
            "layers" if i >= layer => {
                let l = i / layer;
                let start = (l - 1) * layer;
                let deps: Vec<String> = (0..10.min(layer))
                    .map(|k| format!("terraform_data.n{}.id", start + (i + k) % layer))
                    .collect();
                format!("[{}]", deps.join(", "))
            }
            _ => format!("{i}"),
        };
        let _ = writeln!(
            s,
            "resource \"terraform_data\" \"n{i}\" {{\n  input = {input}\n}}"
        );
    }
    s
}

fn fmt(d: Option<Duration>, limit: Duration) -> String {
    match d {
        Some(d) if d.as_secs_f64() < 10.0 => format!("{:.3} s", d.as_secs_f64()),
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => format!("> {} s", limit.as_secs()),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let tf_limit = Duration::from_secs(env_or("BENCH_TF_TIMEOUT", 240));
    let tf_max: usize = env_or("BENCH_TF_MAX", 1000);
    let tf_on = env_or("BENCH_TF", 1) == 1
        && Command::new("terraform")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    let no_limit = Duration::from_secs(3600);
    println!(
        "engine benchmark: `plan` (release build) vs Terraform {}",
        if tf_on { "(on PATH)" } else { "(not run)" }
    );
    let tf_destroy = env_or("BENCH_TF_DESTROY", 0) == 1;
    println!(
        "{:<7} {:>6} | {:>9} {:>9} {:>10} {:>9} {:>8} | {:>9} {:>9} {:>9} {:>8}",
        "shape",
        "nodes",
        "preview",
        "apply",
        "no-op prev",
        "destroy",
        "ms/node",
        "tf apply",
        "tf no-op",
        "tf destr",
        "speedup"
    );
    for &n in &sizes {
        for shape in SHAPES {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("stacks")).unwrap();
            std::fs::write(
                dir.path().join("stacks/b.toml"),
                format!("plan = \"bench\"\nprovider = \"local\"\n[limits]\nglobal = 10\n[values]\nnodes = {n}\nshape = \"{shape}\"\n"),
            )
            .unwrap();
            let run = |args: &[&str]| timed(plan_cmd(dir.path(), args), no_limit);
            let preview = run(&["preview", "b"]);
            let apply = run(&["apply", "b", "--yes", "--quiet"]);
            let noop = run(&["preview", "b", "--detailed-exitcode"]);
            let destroy = run(&["destroy", "b", "--yes", "--quiet"]);
            let per_node = apply
                .map(|a| a.as_secs_f64() * 1000.0 / n as f64)
                .unwrap_or(0.0);
            let (mut tf_apply, mut tf_noop, mut tf_destr) = (None, None, None);
            if tf_on && n <= tf_max {
                let tdir = tempfile::tempdir().unwrap();
                std::fs::write(tdir.path().join("main.tf"), terraform_config(shape, n)).unwrap();
                let tf = |args: &[&str]| {
                    let mut c = Command::new("terraform");
                    c.current_dir(tdir.path())
                        .args(args)
                        .env("TF_IN_AUTOMATION", "1")
                        .env("CHECKPOINT_DISABLE", "1");
                    timed(c, tf_limit)
                };
                tf(&["init", "-input=false", "-no-color"]).expect("terraform init");
                let a = tf(&["apply", "-input=false", "-auto-approve", "-no-color"]);
                tf_apply = Some(a);
                if a.is_some() {
                    tf_noop = Some(tf(&[
                        "plan",
                        "-input=false",
                        "-no-color",
                        "-detailed-exitcode",
                    ]));
                    if tf_destroy {
                        tf_destr = Some(tf(&[
                            "destroy",
                            "-input=false",
                            "-auto-approve",
                            "-no-color",
                        ]));
                    }
                }
            }
            let show = |x: &Option<Option<Duration>>| match x {
                None => "-".to_string(),
                Some(d) => fmt(*d, tf_limit),
            };
            let speedup = match (&tf_apply, apply) {
                (Some(Some(t)), Some(a)) => format!("{:.0}x", t.as_secs_f64() / a.as_secs_f64()),
                (Some(None), Some(a)) => {
                    format!("> {:.0}x", tf_limit.as_secs_f64() / a.as_secs_f64())
                }
                _ => "-".into(),
            };
            println!(
                "{:<7} {:>6} | {:>9} {:>9} {:>10} {:>9} {:>8.3} | {:>9} {:>9} {:>9} {:>8}",
                shape,
                n,
                fmt(preview, no_limit),
                fmt(apply, no_limit),
                fmt(noop, no_limit),
                fmt(destroy, no_limit),
                per_node,
                show(&tf_apply),
                show(&tf_noop),
                show(&tf_destr),
                speedup
            );
        }
    }
    println!("(preview: new stack, whole change set printed; no-op prev: after apply; speedup: Terraform apply / plan apply, same graph, same run)");
    remote_state();
}

/// Runs a command to its end; its time and standard output (panics when it fails).
fn timed_output(mut cmd: Command) -> (Duration, String) {
    let t0 = Instant::now();
    let out = cmd.output().expect("spawn");
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The request count of the run summary's remote-state line (`state s3://…: N requests (…)`).
fn state_requests(stdout: &str) -> Option<u64> {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("state s3://"))?;
    let n = line.split(": ").nth(1)?.split(' ').next()?;
    n.parse().ok()
}

/// The moto server the tests use, if this machine has it.
fn moto_server() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("CUTOVER_MOTO_SERVER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/moto_server")
        });
    p.is_file().then_some(p)
}

struct Emulator(std::process::Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A chain with its state in S3 beside the same chain with a local state, in the same run.
fn remote_state() {
    let sizes: Vec<usize> = std::env::var("BENCH_REMOTE_SIZES")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if sizes.is_empty() {
        return;
    }
    let Some(bin) = moto_server() else {
        println!("\nremote state: not run: moto_server was not found (run `scripts/prereqs all`, or set CUTOVER_MOTO_SERVER)");
        return;
    };
    let port = cutover::pg::cluster::free_port();
    let _moto = Emulator(
        Command::new(&bin)
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(&url)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "bench",
        ))
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(conf);
    rt.block_on(s3.create_bucket().bucket("bench-state").send())
        .expect("the bucket is created");
    // The floor of one commit: a conditional create of a small object, median of 200.
    let mut puts: Vec<Duration> = (0..200)
        .map(|i| {
            let t = Instant::now();
            rt.block_on(
                s3.put_object()
                    .bucket("bench-state")
                    .key(format!("latency/{i}"))
                    .if_none_match("*")
                    .body(aws_sdk_s3::primitives::ByteStream::from(vec![b'x'; 300]))
                    .send(),
            )
            .expect("put");
            t.elapsed()
        })
        .collect();
    puts.sort();
    let put_ms = puts[puts.len() / 2].as_secs_f64() * 1000.0;
    println!(
        "\nremote state: the chain with its state in S3 (moto on loopback) beside a local state, same run; one conditional PutObject: {put_ms:.2} ms (median of 200)"
    );
    println!(
        "{:<7} {:>6} {:<6} | {:>9} {:>10} {:>9} | {:>8} {:>11} {:>10}",
        "shape",
        "nodes",
        "state",
        "apply",
        "no-op prev",
        "destroy",
        "vs local",
        "req/node",
        "PUT floor"
    );
    for &n in &sizes {
        let mut local_apply = None;
        for remote in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("stacks")).unwrap();
            let state = if remote {
                format!("[state]\nbucket = \"bench-state\"\nprefix = \"chain-{n}\"\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\n")
            } else {
                String::new()
            };
            std::fs::write(
                dir.path().join("stacks/b.toml"),
                format!("plan = \"bench\"\nprovider = \"local\"\n[limits]\nglobal = 10\n[values]\nnodes = {n}\nshape = \"chain\"\n{state}"),
            )
            .unwrap();
            let run = |args: &[&str]| {
                let mut c = plan_cmd(dir.path(), args);
                c.env("AWS_ACCESS_KEY_ID", "testing")
                    .env("AWS_SECRET_ACCESS_KEY", "testing")
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env("AWS_CONFIG_FILE", "/nonexistent/config")
                    .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials");
                timed_output(c)
            };
            let (apply, out) = run(&["apply", "b", "--yes"]);
            let (noop, _) = run(&["preview", "b"]);
            let (destroy, _) = run(&["destroy", "b", "--yes"]);
            let requests = state_requests(&out);
            assert_eq!(
                requests.is_some(),
                remote,
                "the run summary names the remote state's requests exactly when the state is remote:\n{out}"
            );
            let ratio = match local_apply {
                Some(l) if remote => format!("{:.1}x", apply.as_secs_f64() / l),
                _ => "1.0x".into(),
            };
            if !remote {
                local_apply = Some(apply.as_secs_f64());
            }
            let (per_node, floor) = match requests {
                Some(r) => (
                    format!("{:.2}", r as f64 / n as f64),
                    format!("{:.1} s", r as f64 * put_ms / 1000.0),
                ),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:<7} {:>6} {:<6} | {:>9} {:>10} {:>9} | {:>8} {:>11} {:>10}",
                "chain",
                n,
                if remote { "s3" } else { "local" },
                fmt(Some(apply), no_limit()),
                fmt(Some(noop), no_limit()),
                fmt(Some(destroy), no_limit()),
                ratio,
                per_node,
                floor
            );
        }
    }
    println!("(vs local: apply time over the local state's apply; req/node: S3 requests of the apply per node; PUT floor: those requests at one PutObject's median latency)");
}

fn no_limit() -> Duration {
    Duration::from_secs(3600)
}
