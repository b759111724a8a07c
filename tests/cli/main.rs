//! End-to-end tests of the `plan` binary: each test gets its own project directory (stacks/ and
//! state under a temporary directory) and drives the real binary.

mod architecture;
mod aws;
mod bad_input;
mod crash;
mod emulate;
mod errors;
mod flows;
mod pg;
mod preview;
mod proxy;
mod remote_state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A temporary project with the repository's stacks/ copied in.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL runs as the `postgres` user when tests run as root: it must reach its data.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("stacks")).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for e in std::fs::read_dir(repo.join("stacks")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join("stacks").join(e.file_name())).unwrap();
        }
        Project { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn stack(&self, name: &str, text: &str) {
        std::fs::write(
            self.root().join("stacks").join(format!("{name}.toml")),
            text,
        )
        .unwrap();
    }

    pub fn plan(&self) -> Command {
        let mut c = Command::cargo_bin("plan").unwrap();
        c.arg("--root").arg(self.root());
        c.env_remove("RUST_LOG");
        c
    }

    /// Runs `plan ARGS`, returning (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.plan().args(args).output().unwrap();
        if !out.status.success() {
            // Shown with the test's output when it fails: most assertions print only stdout.
            eprintln!(
                "plan {} exited with {:?}; its standard error:\n{}",
                args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `plan ARGS` with `env` added: (exit code, stdout, stderr).
    pub fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
        outcome(
            self.plan()
                .envs(env.iter().copied())
                .args(args)
                .output()
                .unwrap(),
        )
    }

    pub fn state_dir(&self, stack: &str) -> PathBuf {
        self.root().join(".cutover").join(stack)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root().join(rel)).unwrap_or_default()
    }
}

/// A finished command's (exit code, stdout, stderr).
pub fn outcome(out: std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under `dir` with its bytes (to show that a command left it untouched).
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                m.insert(p.clone(), std::fs::read(&p).unwrap());
            } else {
                // A pipe or a socket is never read (that could block): only its presence counts.
                m.insert(p.clone(), b"(not a regular file)".to_vec());
            }
        }
    }
    m
}

/// The nodes an SVG run timeline draws a bar for, in order (it must parse as XML).
pub fn svg_bars(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).expect("the timeline is SVG");
    doc.descendants()
        .filter(|n| n.attribute("class") == Some("bar"))
        .filter_map(|n| n.attribute("data-node").map(String::from))
        .collect()
}
