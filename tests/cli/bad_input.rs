//! The bad-input suite: one table of broken inputs (stack files, state files, command-line
//! arguments, the environment, AWS configuration, local ports). Each case runs the binary in a
//! copy of a project where `demo` is applied, and asserts the exit code, what the message says
//! (the file, line or key, and the fix) and that every file of the project is byte-identical
//! afterwards, or recovered where recovery is the point. All failures are reported together.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{tree, Project};

/// Kept alive for the command's run (a listener holding a port).
type Guard = Option<Box<dyn Any + Send>>;

enum After {
    /// Every file of the project is byte-identical afterwards.
    Untouched,
    /// The command recovers something: the check says whether it did.
    Recovered(fn(&Path) -> Result<(), String>),
}

struct Case {
    name: &'static str,
    setup: fn(&Path) -> Guard,
    /// `{port}` is replaced by the port the setup wrote to `port.txt`, if any.
    args: &'static [&'static str],
    /// A value of [`UNSET`] removes the variable.
    env: &'static [(&'static str, &'static str)],
    code: i32,
    /// Each must appear in the output (stdout and stderr together).
    says: &'static [&'static str],
    after: After,
}

const UNSET: &str = "\u{0}";

/// AWS settings that make the SDK find no credentials of this machine's.
/// The tenant list of `stacks/tenants-staging.toml`, as the file writes it.
const TENANTS: &str = "tenants = [
  { name = \"acme\", source = \"tenant-acme-staging\", size_gb = 20, large_tables = [\"public.events\"] },
  { name = \"globex\", source = \"tenant-globex-staging\", size_gb = 240, large_tables = [\"public.events\"] },
  { name = \"initech\", source = \"tenant-initech-staging\", size_gb = 8 },
]
";

const NO_AWS: &[(&str, &str)] = &[
    ("AWS_PROFILE", UNSET),
    ("AWS_ACCESS_KEY_ID", UNSET),
    ("AWS_SECRET_ACCESS_KEY", UNSET),
    ("AWS_SESSION_TOKEN", UNSET),
    ("AWS_REGION", UNSET),
    ("AWS_DEFAULT_REGION", UNSET),
    ("AWS_CONFIG_FILE", "/nonexistent/config"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// Keys that let the SDK find credentials (with a region), and nothing of this machine's.
const FAKE_AWS: &[(&str, &str)] = &[
    ("AWS_PROFILE", UNSET),
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", UNSET),
    ("AWS_DEFAULT_REGION", UNSET),
    ("AWS_CONFIG_FILE", "/nonexistent/config"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

fn put(root: &Path, rel: &str, bytes: impl AsRef<[u8]>) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Replaces `from` by `to` in a file (which must hold it).
fn edit(root: &Path, rel: &str, from: &str, to: &str) {
    let p = root.join(rel);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{rel} holds no `{from}`");
    std::fs::write(p, text.replacen(from, to, 1)).unwrap();
}

/// `plan state demo rm NODE` in the project: the node leaves state, its object stays.
fn forget(root: &Path, node: &str) {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("plan"))
        .arg("--root")
        .arg(root)
        .args(["state", "demo", "rm", node])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stack `x` of plan `demo` with `rest` after the plan and provider.
fn demo_x(root: &Path, rest: &str) {
    put(
        root,
        "stacks/x.toml",
        format!("plan = \"demo\"\nprovider = \"local\"\n{rest}"),
    );
}

const DEMO_VALUES: &str =
    "[values]\nout_dir = \"out/x\"\ngreeting = \"hi\"\nreplicas = 1\nsettle_ms = 1\n";

/// A stack `cloud` of the small AWS plan with the given top-level keys.
fn cloud(root: &Path, keys: &str) {
    put(
        root,
        "stacks/cloud.toml",
        format!("plan = \"aws-params\"\nprovider = \"aws\"\n{keys}\n[values]\nfamily = \"postgres15\"\nwork_mem = \"4096\"\n"),
    );
}

/// A TCP port nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stack `x` of the rehearsal plan with the given ports.
fn rehearsal_x(root: &Path, source: u16, target: u16, pooler: u16) {
    put(
        root,
        "stacks/x.toml",
        format!("plan = \"rehearsal\"\nprovider = \"local\"\n[values]\ndata_root = \"pgdata-x\"\nsource_port = {source}\ntarget_port = {target}\npooler_port = {pooler}\naccounts = 10\nevents = 10\n"),
    );
}

const STATE: &str = ".cutover/demo/state.json";
const JOURNAL: &str = ".cutover/demo/journal.log";

/// A pid no process can have (above the kernel's limit of 2^22).
const DEAD_PID: u32 = 4_999_999;

fn none(_: &Path) -> Guard {
    None
}

fn cases() -> Vec<Case> {
    use After::*;
    vec![
        // ---- Stack files ----
        Case {
            name: "an empty stack file says what a stack file holds",
            setup: |r| { put(r, "stacks/x.toml", ""); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml is empty. A stack file names its plan and provider", "plan = \"demo\""],
            after: Untouched,
        },
        Case {
            name: "a stack file of comments only is empty too",
            setup: |r| { put(r, "stacks/x.toml", "# todo\n\n   # later\n"); None },
            args: &["apply", "x", "--yes"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml is empty."],
            after: Untouched,
        },
        Case {
            name: "no plan key",
            setup: |r| { put(r, "stacks/x.toml", "provider = \"local\"\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:1:1: no `plan = \"NAME\"`", "`plan list` shows them"],
            after: Untouched,
        },
        Case {
            name: "no provider key",
            setup: |r| { put(r, "stacks/x.toml", "plan = \"demo\"\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:1:1: no `provider = ...`", "provider = \"local\"", "(this binary offers local, aws)"],
            after: Untouched,
        },
        Case {
            name: "an unknown provider",
            setup: |r| { put(r, "stacks/x.toml", "plan = \"demo\"\nprovider = \"gcp\"\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:2:1: unknown provider `gcp`; use one of: local, aws."],
            after: Untouched,
        },
        Case {
            name: "an unknown plan lists the plans",
            setup: |r| { put(r, "stacks/x.toml", "plan = \"dmeo\"\nprovider = \"local\"\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:1", "dmeo", "demo, "],
            after: Untouched,
        },
        Case {
            name: "a duplicate top-level key names both lines",
            setup: |r| { demo_x(r, "plan = \"demo\"\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:3:1: duplicate key `plan`: line 1 sets it already. Keep one of the two."],
            after: Untouched,
        },
        Case {
            name: "a duplicate value key names both lines",
            setup: |r| { demo_x(r, &format!("{DEMO_VALUES}greeting = \"again\"\n")); None },
            args: &["apply", "x", "--yes"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:8:1: duplicate key `greeting`: line 5 sets it already."],
            after: Untouched,
        },
        Case {
            name: "a duplicate table names both lines",
            setup: |r| { demo_x(r, &format!("{DEMO_VALUES}[values]\n")); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:8:2: duplicate table `values`: line 3 sets it already."],
            after: Untouched,
        },
        Case {
            name: "a Latin-1 byte names its line and column",
            setup: |r| { put(r, "stacks/x.toml", b"plan = \"demo\"\nprovider = \"local\"\n# caf\xe9\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:3:6: byte 0xe9 is not UTF-8 text", "save the file as UTF-8"],
            after: Untouched,
        },
        Case {
            name: "a UTF-16 file is not UTF-8 text",
            setup: |r| { put(r, "stacks/x.toml", b"\xff\xfep\x00l\x00a\x00n\x00"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:1:1: byte 0xff is not UTF-8 text"],
            after: Untouched,
        },
        Case {
            name: "binary bytes that are UTF-8 are a TOML error with a line",
            setup: |r| { put(r, "stacks/x.toml", "plan = \"demo\"\n\u{1}\u{2}\u{3}\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:2:"],
            after: Untouched,
        },
        Case {
            name: "an unclosed string names its line",
            setup: |r| { demo_x(r, "[values]\nout_dir = \"out/x\ngreeting = \"hi\"\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:4:"],
            after: Untouched,
        },
        Case {
            name: "an unclosed table header names its line",
            setup: |r| { demo_x(r, "[values\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:3:"],
            after: Untouched,
        },
        Case {
            name: "an unknown top-level key",
            setup: |r| { demo_x(r, &format!("regoin = \"eu-west-1\"\n{DEMO_VALUES}")); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:3:1: unknown field `regoin`", "values for the plan go under [values]"],
            after: Untouched,
        },
        Case {
            name: "a key of another provider than the stack's",
            setup: |r| { demo_x(r, &format!("apply_immediately = true\n{DEMO_VALUES}")); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:3:1: unknown field `apply_immediately`", "or provider `local`'s `region`, `endpoint_url`, `profile`"],
            after: Untouched,
        },
        Case {
            name: "an unknown value key names the keys the plan reads",
            setup: |r| { demo_x(r, &format!("{DEMO_VALUES}greting = \"x\"\n")); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml: line 8: unknown key `greting`. The plan reads: greeting, out_dir, replicas, settle_ms."],
            after: Untouched,
        },
        Case {
            name: "fifty thousand unknown keys: the first five and a count",
            setup: |r| {
                let mut s = format!("plan = \"demo\"\nprovider = \"local\"\n{DEMO_VALUES}");
                for i in 0..50_000 {
                    s.push_str(&format!("extra{i:05} = {i}\n"));
                }
                put(r, "stacks/x.toml", s);
                None
            },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["line 8: unknown key `extra00000`; line 9", "line 12: unknown key `extra00004`; and 49995 more unknown keys."],
            after: Untouched,
        },
        Case {
            name: "a value of the wrong type",
            setup: |r| { demo_x(r, &DEMO_VALUES.replace("replicas = 1", "replicas = \"three\"")); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:6: key `replicas` has the wrong type", "found a string", "Change the value on that line."],
            after: Untouched,
        },
        Case {
            name: "a missing value",
            setup: |r| { demo_x(r, &DEMO_VALUES.replace("greeting = \"hi\"\n", "")); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml: missing key `greeting` in [values]", "Add `greeting = ...` under [values]."],
            after: Untouched,
        },
        Case {
            name: "a limit of the wrong type",
            setup: |r| { demo_x(r, &format!("[limits]\nglobal = \"many\"\n{DEMO_VALUES}")); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:4:"],
            after: Untouched,
        },
        Case {
            name: "state_dir empty is the project root",
            setup: |r| { demo_x(r, &format!("state_dir = \"\"\n{DEMO_VALUES}")); None },
            args: &["apply", "x", "--yes"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:3: `state_dir = \"\"` is the project root", "e.g. `.cutover/x`"],
            after: Untouched,
        },
        Case {
            name: "state_dir inside stacks/",
            setup: |r| { demo_x(r, &format!("state_dir = \"stacks/state\"\n{DEMO_VALUES}")); None },
            args: &["apply", "x", "--yes"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:3: `state_dir = \"stacks/state\"` is inside stacks/"],
            after: Untouched,
        },
        Case {
            name: "state_dir shared with another stack is refused untouched",
            setup: |r| { demo_x(r, &format!("state_dir = \".cutover/demo\"\n{DEMO_VALUES}")); None },
            args: &["destroy", "x", "--yes"],
            env: &[],
            code: 1,
            says: &["state belongs to stack `demo`, not to stack `x`", "give `x` a `state_dir` of its own"],
            after: Untouched,
        },
        Case {
            name: "state_dir that is a file",
            setup: |r| { put(r, "blocker", "x"); demo_x(r, &format!("state_dir = \"blocker\"\n{DEMO_VALUES}")); None },
            args: &["apply", "x", "--yes"],
            env: &[],
            code: 1,
            says: &["blocker/state.json: a part of the path is a file, where a folder belongs; move that file away"],
            after: Untouched,
        },
        Case {
            name: "a secret written into the file is refused without repeating it",
            setup: |r| { put(r, "stacks/x.toml", "plan = \"secretive\"\nprovider = \"local\"\n[values]\nout_dir = \"out/x\"\n[secrets]\ntoken = \"hunter2\"\n"); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml:6: secret `token`: the value is not a secret reference", "env:NAME"],
            after: Untouched,
        },
        Case {
            name: "a [connect] address without a port",
            setup: |r| { cloud(r, "region = \"us-east-1\"\n[connect]\ntarget = \"127.0.0.1\"\n"); None },
            args: &["preview", "cloud"],
            env: &[],
            code: 1,
            says: &["stacks/cloud.toml:5:1: [connect] `target` = \"127.0.0.1\": no port", "HOST:PORT"],
            after: Untouched,
        },
        Case {
            name: "a stack file that is a directory",
            setup: |r| { std::fs::create_dir_all(r.join("stacks/x.toml")).unwrap(); put(r, "stacks/x.toml/keep", ""); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["stacks/x.toml: cannot read it: a stack file is a directory, where a file belongs"],
            after: Untouched,
        },
        // ---- State files ----
        Case {
            name: "a truncated state is refused untouched",
            setup: |r| {
                let bytes = std::fs::read(r.join(STATE)).unwrap();
                put(r, STATE, &bytes[..bytes.len() / 2]);
                None
            },
            args: &["apply", "demo", "--yes"],
            env: &[],
            code: 1,
            says: &[".cutover/demo/state.json:", "state is damaged", "it was not changed. Restore it"],
            after: Untouched,
        },
        Case {
            name: "a state that is not JSON",
            setup: |r| { put(r, STATE, "hello\n"); None },
            args: &["destroy", "demo", "--yes"],
            env: &[],
            code: 1,
            says: &["state.json:1: state is damaged"],
            after: Untouched,
        },
        Case {
            name: "a state of a newer format",
            setup: |r| { edit(r, STATE, "\"format_version\": 1", "\"format_version\": 99"); None },
            args: &["apply", "demo", "--yes"],
            env: &[],
            code: 1,
            says: &["state format 99 is newer than this build reads (1); it was not changed. Use a newer `plan` binary."],
            after: Untouched,
        },
        Case {
            name: "a state of another plan",
            setup: |r| { edit(r, STATE, "\"plan\": \"demo\"", "\"plan\": \"crash\""); None },
            args: &["apply", "demo", "--yes"],
            env: &[],
            code: 1,
            says: &["state belongs to plan `crash`, but the stack names plan `demo`; it was not changed."],
            after: Untouched,
        },
        Case {
            name: "a state copied from another stack",
            setup: |r| { edit(r, STATE, "\"stack\": \"demo\"", "\"stack\": \"production\""); None },
            args: &["destroy", "demo", "--yes"],
            env: &[],
            code: 1,
            says: &["state belongs to stack `production`, not to stack `demo`; it was not changed."],
            after: Untouched,
        },
        Case {
            name: "a journal damaged before its end",
            setup: |r| { put(r, JOURNAL, "0000 not a record\nanother line\n"); None },
            args: &["apply", "demo", "--yes"],
            env: &[],
            code: 1,
            says: &["journal.log:1: state is damaged (", "it was not changed"],
            after: Untouched,
        },
        Case {
            name: "a journal whose last record is torn is read without it",
            setup: |r| { put(r, JOURNAL, "1234abcd {\"seq\": 9, \"partial"); None },
            args: &["apply", "demo", "--yes"],
            env: &[],
            code: 0,
            says: &["No changes."],
            after: Recovered(|r| {
                let j = std::fs::read(r.join(JOURNAL)).unwrap_or_default();
                if j.is_empty() { Ok(()) } else { Err(format!("the torn record is still there: {:?}", String::from_utf8_lossy(&j))) }
            }),
        },
        Case {
            name: "a state file that is a directory",
            setup: |r| {
                std::fs::remove_file(r.join(STATE)).unwrap();
                put(r, &format!("{STATE}/keep"), "");
                None
            },
            args: &["apply", "demo", "--yes"],
            env: &[],
            code: 1,
            says: &["state.json: it is a directory, where a file belongs; move the directory away"],
            after: Untouched,
        },
        Case {
            name: "a journal that is a pipe is never read",
            setup: |r| {
                std::fs::remove_file(r.join(JOURNAL)).ok();
                let status = std::process::Command::new("mkfifo").arg(r.join(JOURNAL)).status().expect("mkfifo (coreutils) is needed");
                assert!(status.success());
                None
            },
            args: &["preview", "demo"],
            env: &[],
            code: 1,
            says: &["journal.log is not a regular file (a device, a socket or a pipe), so it cannot hold state; it was not read."],
            after: Untouched,
        },
        Case {
            name: "a stale holder record does not block, and goes",
            setup: |r| { put(r, ".cutover/demo/lock.json", format!("{{\"pid\": {DEAD_PID}, \"host\": \"h\", \"started\": \"t\", \"command\": \"plan apply demo\"}}")); None },
            args: &["apply", "demo", "--yes"],
            env: &[],
            code: 0,
            says: &["No changes."],
            after: Recovered(|r| {
                let d = r.join(".cutover/demo");
                match (d.join("lock.json").exists(), d.join("lock").exists()) {
                    (false, false) => Ok(()),
                    left => Err(format!("lock files left behind (lock.json, lock): {left:?}")),
                }
            }),
        },
        Case {
            name: "a snapshot a killed run was writing is removed",
            setup: |r| { put(r, &format!(".cutover/demo/.state.json.tmp-{DEAD_PID}"), "{\"half"); None },
            args: &["apply", "demo", "--yes"],
            env: &[],
            code: 0,
            says: &["No changes."],
            after: Recovered(|r| {
                if r.join(format!(".cutover/demo/.state.json.tmp-{DEAD_PID}")).exists() { Err("the temporary is still there".into()) } else { Ok(()) }
            }),
        },
        Case {
            name: "a file write a killed run left half done is cleaned by the next write",
            setup: |r| { put(r, &format!("out/demo/.replica-1.txt.tmp-{DEAD_PID}"), "hal"); None },
            args: &["apply", "demo", "--yes", "--replace", "replica-1"],
            env: &[],
            code: 0,
            says: &["Apply complete: 1 added, 0 changed, 1 destroyed"],
            after: Recovered(|r| {
                if r.join(format!("out/demo/.replica-1.txt.tmp-{DEAD_PID}")).exists() { Err("the temporary is still there".into()) } else { Ok(()) }
            }),
        },
        Case {
            name: "a temporary of a live writer is not ours to remove",
            setup: |r| { put(r, &format!("out/demo/.replica-1.txt.tmp-{}", std::process::id()), "busy"); None },
            args: &["apply", "demo", "--yes", "--replace", "replica-1"],
            env: &[],
            code: 0,
            says: &["Apply complete"],
            after: Recovered(|r| {
                if r.join(format!("out/demo/.replica-1.txt.tmp-{}", std::process::id())).exists() { Ok(()) } else { Err("a live writer's temporary was removed".into()) }
            }),
        },
        Case {
            name: "a preview with --refresh leaves even a stale temporary alone",
            setup: |r| { put(r, &format!("out/demo/.replica-2.txt.tmp-{DEAD_PID}"), "hal"); None },
            args: &["preview", "demo", "--refresh"],
            env: &[],
            code: 0,
            says: &["No changes."],
            after: Untouched,
        },
        // ---- Command-line arguments ----
        Case {
            name: "a stack name that climbs out of stacks/",
            setup: |r| { put(r, "outside.toml", "plan = \"demo\"\nprovider = \"local\"\n"); None },
            args: &["apply", "../outside", "--yes"],
            env: &[],
            code: 1,
            says: &["`../outside` is not a stack name", "Run `plan list`"],
            after: Untouched,
        },
        Case {
            name: "an absolute stack name",
            setup: none,
            args: &["preview", "/etc/passwd"],
            env: &[],
            code: 1,
            says: &["`/etc/passwd` is not a stack name"],
            after: Untouched,
        },
        Case {
            name: "a stack name with a separator",
            setup: none,
            args: &["destroy", "a/b", "--yes"],
            env: &[],
            code: 1,
            says: &["`a/b` is not a stack name"],
            after: Untouched,
        },
        Case {
            name: "an empty stack name",
            setup: none,
            args: &["state", "", "list"],
            env: &[],
            code: 1,
            says: &["`` is not a stack name"],
            after: Untouched,
        },
        Case {
            name: "an unknown stack lists the stacks",
            setup: none,
            args: &["apply", "dmeo", "--yes"],
            env: &[],
            code: 1,
            says: &["unknown stack `dmeo`: no file stacks/dmeo.toml. Stacks here: demo, "],
            after: Untouched,
        },
        Case {
            name: "--replace of a node the plan lacks",
            setup: none,
            args: &["apply", "demo", "--yes", "--replace", "replica-9"],
            env: &[],
            code: 1,
            says: &["`replica-9` is not a node of this plan"],
            after: Untouched,
        },
        Case {
            name: "--until of a node the plan lacks",
            setup: none,
            args: &["apply", "demo", "--yes", "--until", "nowhere"],
            env: &[],
            code: 1,
            says: &["`nowhere` is not a node of this plan"],
            after: Untouched,
        },
        Case {
            name: "--approve of a gate the plan lacks",
            setup: none,
            args: &["apply", "demo", "--yes", "--approve", "cutvoer"],
            env: &[],
            code: 1,
            says: &["`cutvoer` is not a node of this plan"],
            after: Untouched,
        },
        Case {
            name: "state show of a node not in state",
            setup: none,
            args: &["state", "demo", "show", "nope"],
            env: &[],
            code: 1,
            says: &["`nope` is not in the state of stack `demo`; `plan state demo list` lists what is"],
            after: Untouched,
        },
        Case {
            name: "state mv to a name that is a path",
            setup: none,
            args: &["state", "demo", "mv", "settle", "../settle"],
            env: &[],
            code: 1,
            says: &["`../settle` is not a valid node name: a node name begins with a lower-case letter"],
            after: Untouched,
        },
        Case {
            name: "state mv onto a node in state",
            setup: none,
            args: &["state", "demo", "mv", "replica-1", "replica-2"],
            env: &[],
            code: 1,
            says: &["`replica-2` is already in state"],
            after: Untouched,
        },
        Case {
            name: "state rm of a node not in state",
            setup: none,
            args: &["state", "demo", "rm", "replica-9"],
            env: &[],
            code: 1,
            says: &["`replica-9` is not in state; `plan state demo list` lists what is"],
            after: Untouched,
        },
        Case {
            name: "state rm forgets a node and leaves its object",
            setup: none,
            args: &["state", "demo", "rm", "target-config"],
            env: &[],
            code: 0,
            says: &["Removed `target-config` from state; its object (local_file.file `out/demo/config.txt`) is unchanged"],
            after: Recovered(|r| {
                let state = std::fs::read_to_string(r.join(STATE)).unwrap();
                if state.contains("\"target-config\": {") { return Err("still in state".into()); }
                if !r.join("out/demo/config.txt").exists() { return Err("the object was touched".into()); }
                Ok(())
            }),
        },
        Case {
            name: "import of a node the plan lacks",
            setup: none,
            args: &["import", "demo", "replica-9", "out/demo/replica-9.txt"],
            env: &[],
            code: 1,
            says: &["`replica-9` is not a node of plan `demo`; declare it first, then import"],
            after: Untouched,
        },
        Case {
            name: "import of a step",
            setup: none,
            args: &["import", "demo", "settle", "x"],
            env: &[],
            code: 1,
            says: &["`settle` is a step; only resources can be imported"],
            after: Untouched,
        },
        Case {
            name: "import with an empty id",
            setup: none,
            args: &["import", "demo", "target-config", ""],
            env: &[],
            code: 1,
            says: &["import `target-config`: `` is not an id of a local_file.file: the id is empty. Nothing was changed."],
            after: Untouched,
        },
        Case {
            name: "import with a control character in the id",
            setup: none,
            args: &["import", "demo", "target-config", "out/demo/\u{7}config.txt"],
            env: &[],
            code: 1,
            says: &["the id holds the control character '\\u{7}'"],
            after: Untouched,
        },
        Case {
            name: "import with white space around the id",
            setup: none,
            args: &["import", "demo", "target-config", " out/demo/config.txt"],
            env: &[],
            code: 1,
            says: &["the id begins or ends with white space"],
            after: Untouched,
        },
        Case {
            name: "import of a path outside the project",
            setup: none,
            args: &["import", "demo", "target-config", "../../etc/passwd"],
            env: &[],
            code: 1,
            says: &["`../../etc/passwd` leads outside the project"],
            after: Untouched,
        },
        Case {
            name: "import of a node already in state names the way out",
            setup: none,
            args: &["import", "demo", "target-config", "out/demo/config.txt"],
            env: &[],
            code: 1,
            says: &["`target-config` is already in state", "`plan state demo rm target-config` forgets it"],
            after: Untouched,
        },
        Case {
            name: "import of an object another node owns",
            setup: |r| { forget(r, "target-config"); None },
            args: &["import", "demo", "target-config", "out/demo/replica-1.txt"],
            env: &[],
            code: 1,
            says: &["local_file.file `out/demo/replica-1.txt` is already in state as `"],
            after: Untouched,
        },
        Case {
            name: "import of an object that is not the one the node declares",
            setup: |r| { forget(r, "target-config"); None },
            args: &["import", "demo", "target-config", "out/demo/journal.txt"],
            env: &[],
            code: 1,
            says: &["has path = \"out/demo/journal.txt\", but the plan declares path = \"out/demo/config.txt\"; adopting it would make the next apply replace it"],
            after: Untouched,
        },
        Case {
            name: "import of a directory as a file",
            setup: |r| { forget(r, "target-config"); None },
            args: &["import", "demo", "target-config", "out/demo"],
            env: &[],
            code: 1,
            says: &["import `target-config`: `out/demo` is a directory, and a local_file.file is a file"],
            after: Untouched,
        },
        Case {
            name: "import of an object that does not exist",
            setup: |r| { forget(r, "target-config"); std::fs::remove_file(r.join("out/demo/config.txt")).unwrap(); None },
            args: &["import", "demo", "target-config", "out/demo/config.txt"],
            env: &[],
            code: 1,
            says: &["import `target-config`: no local_file.file with id `out/demo/config.txt` exists; check the id"],
            after: Untouched,
        },
        Case {
            name: "--root that does not exist",
            setup: none,
            args: &["--root", "/nonexistent/project", "list"],
            env: &[],
            code: 1,
            says: &["--root /nonexistent/project: the directory does not exist; check the path. --root names the project directory"],
            after: Untouched,
        },
        Case {
            name: "--root that is a file",
            setup: |r| { put(r, "afile", "x"); None },
            args: &["--root", "{root}/afile", "list"],
            env: &[],
            code: 1,
            says: &["afile is a file; --root names the project directory"],
            after: Untouched,
        },
        Case {
            name: "--out into a folder that does not exist",
            setup: none,
            args: &["preview", "demo", "--out", "{root}/missing/plan.txt"],
            env: &[],
            code: 1,
            says: &["missing/plan.txt: the folder", "missing does not exist; create it (`mkdir -p", "Nothing was written."],
            after: Untouched,
        },
        Case {
            name: "--plan given a text preview",
            setup: |r| { put(r, "preview.txt", "Plan `demo` on stack `demo` (provider local), state serial 3\n\nNo changes.\n"); None },
            args: &["apply", "demo", "--plan", "{root}/preview.txt"],
            env: &[],
            code: 1,
            says: &["preview.txt: it is a preview for people (text or markdown), not a saved plan. Save one with `plan preview STACK --format json --out FILE`"],
            after: Untouched,
        },
        Case {
            name: "--plan given JSON that is not a saved plan",
            setup: |r| { put(r, "other.json", "{\"name\": \"x\"}"); None },
            args: &["apply", "demo", "--plan", "{root}/other.json"],
            env: &[],
            code: 1,
            says: &["other.json: it is JSON but not a saved plan"],
            after: Untouched,
        },
        Case {
            name: "--plan of a file that does not exist",
            setup: none,
            args: &["apply", "demo", "--plan", "{root}/nothing.json"],
            env: &[],
            code: 1,
            says: &["--plan", "nothing.json: cannot read it: the saved plan does not exist; check the path"],
            after: Untouched,
        },
        Case {
            name: "apply without a terminal or --yes",
            setup: none,
            args: &["apply", "demo", "--replace", "settle"],
            env: &[],
            code: 1,
            says: &["apply needs confirmation, and standard input is not a terminal", "`plan apply demo --yes`"],
            after: Untouched,
        },
        Case {
            name: "destroy without a terminal or --yes",
            setup: none,
            args: &["destroy", "demo"],
            env: &[],
            code: 1,
            says: &["destroy needs confirmation"],
            after: Untouched,
        },
        Case {
            name: "rollback without a terminal or --yes",
            setup: none,
            args: &["rollback", "demo"],
            env: &[],
            code: 1,
            says: &["rollback needs confirmation"],
            after: Untouched,
        },
        Case {
            name: "emulate of a stack that is not AWS",
            setup: none,
            args: &["emulate", "demo"],
            env: &[],
            code: 1,
            says: &["stacks/demo.toml: provider `local`: the emulation stands in for AWS"],
            after: Untouched,
        },
        Case {
            name: "emulate --set without a value",
            setup: none,
            args: &["emulate", "staging", "--set", "bake_minutes"],
            env: &[],
            code: 1,
            says: &["--set bake_minutes: write KEY=VALUE"],
            after: Untouched,
        },
        Case {
            name: "an unknown command",
            setup: none,
            args: &["aply", "demo"],
            env: &[],
            code: 2,
            says: &["unrecognized subcommand 'aply'"],
            after: Untouched,
        },
        // ---- Environment ----
        Case {
            name: "a secret's variable that is not set stops apply before anything is recorded",
            setup: |r| { put(r, "stacks/x.toml", "plan = \"secretive\"\nprovider = \"local\"\n[values]\nout_dir = \"out/x\"\n[secrets]\ntoken = \"env:CUTOVER_SUITE_TOKEN\"\n"); None },
            args: &["apply", "x", "--yes"],
            env: &[("CUTOVER_SUITE_TOKEN", UNSET)],
            code: 1,
            says: &["stacks/x.toml:6: secret `token`: environment variable CUTOVER_SUITE_TOKEN is not set; export it before running (nothing was changed)"],
            after: Untouched,
        },
        Case {
            name: "a secret's variable that is empty",
            setup: |r| { put(r, "stacks/x.toml", "plan = \"secretive\"\nprovider = \"local\"\n[values]\nout_dir = \"out/x\"\n[secrets]\ntoken = \"env:CUTOVER_SUITE_TOKEN\"\n"); None },
            args: &["apply", "x", "--yes"],
            env: &[("CUTOVER_SUITE_TOKEN", "")],
            code: 1,
            says: &["environment variable CUTOVER_SUITE_TOKEN is set but empty"],
            after: Untouched,
        },
        Case {
            name: "a secret's variable is not needed to preview",
            setup: |r| { put(r, "stacks/x.toml", "plan = \"secretive\"\nprovider = \"local\"\n[values]\nout_dir = \"out/x\"\n[secrets]\ntoken = \"env:CUTOVER_SUITE_TOKEN\"\n"); None },
            args: &["preview", "x"],
            env: &[("CUTOVER_SUITE_TOKEN", UNSET)],
            code: 0,
            says: &["content = (secret env:CUTOVER_SUITE_TOKEN)"],
            after: Untouched,
        },
        // ---- AWS configuration ----
        Case {
            name: "an endpoint_url that is not a URL",
            setup: |r| { cloud(r, "region = \"us-east-1\"\nendpoint_url = \"localhost 5000\""); None },
            args: &["apply", "cloud", "--yes"],
            env: FAKE_AWS,
            code: 1,
            says: &["stacks/cloud.toml:4:1: `endpoint_url = \"localhost 5000\"`: not an http(s) URL; write the endpoint as http://HOST:PORT"],
            after: Untouched,
        },
        Case {
            name: "an endpoint_url with a port that is not one",
            setup: |r| { cloud(r, "region = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:70000\""); None },
            args: &["preview", "cloud"],
            env: FAKE_AWS,
            code: 1,
            says: &["stacks/cloud.toml:4:1:", "`70000` is not a TCP port"],
            after: Untouched,
        },
        Case {
            name: "a region that is not a region's name",
            setup: |r| { cloud(r, "region = \"\""); None },
            args: &["apply", "cloud", "--yes"],
            env: FAKE_AWS,
            code: 1,
            says: &["stacks/cloud.toml:3:1: `region = \"\"`: not an AWS region's name; write one such as \"eu-west-1\""],
            after: Untouched,
        },
        Case {
            name: "no region anywhere",
            setup: |r| { cloud(r, "endpoint_url = \"http://127.0.0.1:9\""); None },
            args: &["apply", "cloud", "--yes"],
            env: FAKE_AWS,
            code: 1,
            says: &["stacks/cloud.toml: no AWS region: set `region = \"...\"` in the stack file (or AWS_REGION)"],
            after: Untouched,
        },
        Case {
            name: "no credentials anywhere",
            setup: |r| { cloud(r, "region = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\""); None },
            args: &["apply", "cloud", "--yes"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/cloud.toml: no AWS credentials for this stack", "set `profile = \"...\"` in the stack file or AWS_PROFILE", "nothing was changed"],
            after: Untouched,
        },
        Case {
            name: "a profile that does not exist",
            setup: |r| { cloud(r, "region = \"us-east-1\"\nprofile = \"nobody\"\nendpoint_url = \"http://127.0.0.1:9\""); None },
            args: &["destroy", "cloud", "--yes"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/cloud.toml: no AWS credentials for this stack"],
            after: Untouched,
        },
        Case {
            name: "an endpoint that refuses connections is named at once",
            setup: |r| {
                let port = closed_port();
                cloud(r, &format!("region = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{port}\""));
                None
            },
            args: &["apply", "cloud", "--yes"],
            env: FAKE_AWS,
            code: 1,
            says: &["(`endpoint_url` in stacks/cloud.toml) cannot be reached", "nothing was changed"],
            after: Untouched,
        },
        Case {
            name: "a TTL step whose TTL is no TTL",
            setup: |r| { put(r, "stacks/cloud.toml", "plan = \"aws-dns\"\nprovider = \"aws\"\nregion = \"eu-west-1\"\n[values]\nzone = \"example.test\"\ndb_target = \"x.internal\"\napp_from = \"a.internal\"\napp_to = \"b.internal\"\nlower_ttl = 0\n"); None },
            args: &["preview", "cloud"],
            env: FAKE_AWS,
            code: 1,
            says: &["node `lower-ttl` (aws.route53.lower_ttl): input `ttl` must be a TTL in seconds, from 1 to 172800"],
            after: Untouched,
        },
        Case {
            name: "a TTL step whose TTL is no TTL, drawn as a graph",
            setup: |r| { put(r, "stacks/cloud.toml", "plan = \"aws-dns\"\nprovider = \"aws\"\nregion = \"eu-west-1\"\n[values]\nzone = \"example.test\"\ndb_target = \"x.internal\"\napp_from = \"a.internal\"\napp_to = \"b.internal\"\nlower_ttl = 0\n"); None },
            args: &["graph", "cloud"],
            env: FAKE_AWS,
            code: 1,
            says: &["node `lower-ttl` (aws.route53.lower_ttl): input `ttl` must be a TTL in seconds, from 1 to 172800"],
            after: Untouched,
        },
        Case {
            name: "an encryption key given by its alias",
            setup: |r| { edit(r, "stacks/saas-staging.toml", "kms_key_arn = \"arn:aws:kms:us-east-1:333333333333:key/1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d\"", "kms_key_arn = \"alias/rds-data\""); None },
            args: &["preview", "saas-staging"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/saas-staging.toml:17: key `kms_key_arn`: KMS key `alias/rds-data`: give the key's ARN", "aws kms describe-key"],
            after: Untouched,
        },
        Case {
            name: "a DNS cutover whose window the lowered TTL alone fills",
            setup: |r| { edit(r, "stacks/saas-staging.toml", "cutover_ttl = 5 ", "cutover_ttl = 15 "); None },
            args: &["preview", "saas-staging"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/saas-staging.toml:25: key `cutover_ttl`", "leaves no time for the fence"],
            after: Untouched,
        },
        Case {
            name: "a write fence in a default parameter group",
            setup: |r| { edit(r, "stacks/mysql-aurora-staging.toml", "source_parameter_group = \"shop-staging-mysql80\"", "source_parameter_group = \"default.mysql8.0\""); None },
            args: &["preview", "mysql-aurora-staging"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/mysql-aurora-staging.toml:13: key `source_parameter_group`: `default.mysql8.0` is a default parameter group, which nobody can modify", "attach a custom parameter group to the source in advance"],
            after: Untouched,
        },
        Case {
            name: "reader autoscaling whose most is below its least",
            setup: |r| { edit(r, "stacks/mysql-aurora-staging.toml", "readers_max = 3\n", "readers_max = 0\n"); None },
            args: &["preview", "mysql-aurora-staging"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/mysql-aurora-staging.toml:19: key `readers_max`: 0 readers at most: give at least `readers_min` (1, and 1) and at most 15"],
            after: Untouched,
        },
        Case {
            name: "case 1 with no tenant",
            setup: |r| { edit(r, "stacks/tenants-staging.toml", TENANTS, "tenants = []\n"); None },
            args: &["preview", "tenants-staging"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/tenants-staging.toml:32: key `tenants`: the tenant list is empty: list at least one tenant"],
            after: Untouched,
        },
        Case {
            name: "case 1 with two tenants of one name",
            setup: |r| { edit(r, "stacks/tenants-staging.toml", "{ name = \"initech\",", "{ name = \"acme\","); None },
            args: &["preview", "tenants-staging"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/tenants-staging.toml:32: key `tenants`: two tenants are named `acme`: give each tenant its own name"],
            after: Untouched,
        },
        Case {
            name: "case 1 with a tenant without its source",
            setup: |r| { edit(r, "stacks/tenants-staging.toml", "source = \"tenant-initech-staging\", ", ""); None },
            args: &["preview", "tenants-staging"],
            env: NO_AWS,
            code: 1,
            says: &["stacks/tenants-staging.toml:32: key `tenants`: tenant `initech` has no source: set `source` to its RDS instance identifier"],
            after: Untouched,
        },
        // ---- Local ports ----
        Case {
            name: "two clusters on one port",
            setup: |r| {
                let (a, b) = (closed_port(), closed_port());
                rehearsal_x(r, a, a, b);
                None
            },
            args: &["apply", "x", "--yes"],
            env: &[],
            code: 1,
            says: &["stack `x` cannot run here as it stands. Nothing was changed:", "nodes `source` and `target` both use TCP port", "`source_port`", "`target_port`", "give each its own"],
            after: Untouched,
        },
        Case {
            name: "a port another program holds names the program",
            setup: |r| {
                let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = held.local_addr().unwrap().port();
                rehearsal_x(r, port, closed_port(), closed_port());
                Some(Box::new(held))
            },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["node `source` needs TCP port", "(set by stacks/x.toml:5 `source_port`), but pid", "holds it, and that is not a local.postgres this state records; stop that program or give the node another value"],
            after: Untouched,
        },
        Case {
            name: "the system PostgreSQL's port",
            setup: |r| { rehearsal_x(r, 5432, closed_port(), closed_port()); None },
            args: &["preview", "x"],
            env: &[],
            code: 1,
            says: &["input `port` 5432 is the system PostgreSQL's"],
            after: Untouched,
        },
    ]
}

/// The project every case starts from (a copy): the repository's stacks with `demo` applied.
fn template() -> &'static Path {
    static T: OnceLock<Project> = OnceLock::new();
    T.get_or_init(|| {
        let p = Project::new();
        let (code, out, err) = p.run(&["apply", "demo", "--yes"]);
        assert_eq!(code, 0, "{out}{err}");
        p
    })
    .root()
}

fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&src).unwrap();
        if meta.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            std::fs::set_permissions(
                &dst,
                std::fs::Permissions::from_mode(meta.permissions().mode()),
            )
            .unwrap();
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Runs one case; `Err` says what went wrong.
fn run(case: &Case) -> Result<(), String> {
    let p = Project::new();
    let root = p.root().to_path_buf();
    copy_tree(template(), &root);
    let guard = (case.setup)(&root);
    let before = tree(&root);
    let root_s = root.display().to_string();
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| a.replace("{root}", &root_s))
        .collect();
    let mut cmd = assert_cmd::Command::cargo_bin("plan").unwrap();
    if !args.iter().any(|a| a == "--root") {
        cmd.arg("--root").arg(&root);
    }
    cmd.env_remove("RUST_LOG")
        .args(&args)
        .timeout(std::time::Duration::from_secs(60));
    for (k, v) in case.env {
        if *v == UNSET {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().map_err(|e| format!("could not run: {e}"))?;
    drop(guard);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut wrong = Vec::new();
    if out.status.code() != Some(case.code) {
        wrong.push(format!("exit {:?}, not {}", out.status.code(), case.code));
    }
    for s in case.says {
        if !text.contains(s) {
            wrong.push(format!("does not say {s:?}"));
        }
    }
    if text.contains("panicked") || text.contains("DispatchFailure") || text.contains("os error") {
        wrong.push("shows a panic, an SDK dump or an OS error number".into());
    }
    match &case.after {
        After::Untouched => {
            let after = tree(&root);
            let changed: Vec<PathBuf> = before
                .keys()
                .chain(after.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .map(|k| k.strip_prefix(&root).unwrap_or(k).to_path_buf())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if !changed.is_empty() {
                wrong.push(format!("changed files: {changed:?}"));
            }
        }
        After::Recovered(check) => {
            if let Err(e) = check(&root) {
                wrong.push(format!("not recovered: {e}"));
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n    output: {}", wrong.join("; "), text.trim()))
    }
}

#[test]
fn every_bad_input_gets_a_clear_error_and_loses_nothing() {
    let cases = cases();
    assert!(cases.len() >= 60, "the suite has {} cases", cases.len());
    template();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .chunks(cases.len().div_ceil(4))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|c| run(c).err().map(|e| format!("- {}: {e}", c.name)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
