//! Engine benchmark: preview and apply plans of 1,000 and 10,000 no-op nodes in three shapes (wide,
//! chain, 10 layers) through the real `plan` binary, and Terraform on the equivalent graph of
//! `terraform_data` resources in the same run when `terraform` is on the PATH.
//!
//! Run: `cargo bench --bench engine`. Environment: `BENCH_SIZES=1000,10000` (node counts),
//! `BENCH_TF_TIMEOUT=240` (seconds per Terraform command; hitting it reports "> N s"),
//! `BENCH_TF=0` to skip Terraform, `BENCH_TF_MAX=1000` (largest graph given to Terraform),
//! `BENCH_TF_DESTROY=1` to time Terraform's destroy too (minutes more).

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
}
