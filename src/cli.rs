//! The `plan` command line: parses arguments, runs the engine's pipelines, renders, asks for
//! confirmation, and maps outcomes to exit codes (0 success or no changes, 1 error, 2 changes
//! present with `--detailed-exitcode`, 130 interrupted).
//!
//! This is the only place that reads the terminal. It must never apply or destroy without a `yes`
//! typed at a terminal, `--yes`, or a reviewed saved plan (`--plan FILE`).

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::engine::{self, Catalog, Loaded};
use crate::executor::Outcome;
use crate::planner::{ActionKind, Mode, Options};
use crate::render;
use crate::render::progress::{self, Progress};
use crate::stack::Stack;
use crate::state::Lock;

/// Prints a line to stdout. A reader that went away (`plan apply | head`) loses the line, not
/// the run: the command goes on and its state is saved as always.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// [`say!`] without the newline.
macro_rules! say_part {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Parser, Debug)]
#[command(
    name = "plan",
    version,
    about = "Database migrations to AWS, written as code: preview, apply, resume."
)]
struct Cli {
    /// The project directory holding stacks/ (and, by default, .cutover/ state).
    #[arg(long, global = true, default_value = ".")]
    root: PathBuf,
    /// Show only failures and the final summary.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PreviewFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Markdown,
    Svg,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(clap::Args, Debug, Default, Clone)]
struct RunArgs {
    /// Force replacement of this resource, or run this done step again (repeatable).
    #[arg(long, value_name = "NODE")]
    replace: Vec<String>,
    /// Let this gate open (repeatable).
    #[arg(long, value_name = "GATE")]
    approve: Vec<String>,
    /// Stop before this node and everything that depends on it.
    #[arg(long, value_name = "NODE")]
    until: Option<String>,
}

impl RunArgs {
    fn options(&self, mode: Mode) -> Options {
        Options {
            mode,
            replace: self.replace.iter().cloned().collect(),
            approve: self.approve.iter().cloned().collect(),
            until: self.until.clone(),
            force: false,
            rerun: Default::default(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List plans and stacks, one line each.
    List,
    /// Show what apply would do. Reads only the plan and the state file unless --refresh.
    Preview {
        stack: String,
        #[arg(long, value_enum, default_value = "text")]
        format: PreviewFormat,
        /// Write the preview here (with --format json: a saved plan for `apply --plan`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Read the real objects first (needs the provider's credentials).
        #[arg(long)]
        refresh: bool,
        /// Exit 2 when there are changes, 0 when none, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Make the objects match the plan, run pending steps, and record everything in state.
    Apply {
        stack: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Apply a saved plan (from `preview --format json --out FILE`); refuses if anything changed since.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Print the plan's graph.
    Graph {
        stack: String,
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
    },
    /// Inspect or edit a stack's state.
    State {
        stack: String,
        #[command(subcommand)]
        action: StateCmd,
    },
    /// Read the real objects and record what changed outside this tool.
    Refresh { stack: String },
    /// Delete what the stack created (only temporary resources with --temporary).
    Destroy {
        stack: String,
        #[arg(long)]
        temporary: bool,
        /// With --temporary: also temporaries whose retire_after gate has not passed.
        #[arg(long, requires = "temporary")]
        force: bool,
        #[arg(long)]
        yes: bool,
    },
    /// What the newest apply or destroy of the stack did: each node's start, time and outcome,
    /// the critical path, what the steps measured and the time budgets (markdown), or the same as
    /// a timeline (svg). Also written to the state directory after every apply.
    Report {
        stack: String,
        #[arg(long, value_enum, default_value = "markdown")]
        format: ReportFormat,
        /// Write the report here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Adopt an existing object into state as NODE.
    Import {
        stack: String,
        node: String,
        id: String,
    },
    /// Rehearse a stack's own plan on this machine: the AWS emulator (moto) with real PostgreSQL
    /// standing in for the databases, in a state of its own. COMMAND is what to run there:
    /// apply (the default), preview, rollback, state, report, destroy (then everything is stopped and
    /// removed), or down (stop and remove without destroying).
    Emulate {
        stack: String,
        /// Override a [values] key for the emulation (KEY=VALUE, the value in TOML); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Rows per table the source's stand-in is seeded with.
        #[arg(long, default_value_t = 1000)]
        rows: u64,
        /// The command and its arguments (e.g. `apply --yes --approve cutover`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The emulation's proxy in front of moto (started by `plan emulate`).
    #[command(hide = true)]
    EmulateProxy {
        #[arg(long)]
        upstream: u16,
        #[arg(long)]
        port: u16,
    },
    /// Undo done steps that can be undone (the cutover, through its reverse replication).
    Rollback {
        stack: String,
        /// Only this step.
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        yes: bool,
    },
}

impl Command {
    /// Whether the command only reads (prints what is there): it may end at once when the reader
    /// of its output goes away.
    fn reads_only(&self) -> bool {
        matches!(
            self,
            Command::List
                | Command::Preview { .. }
                | Command::Report { .. }
                | Command::Graph { .. }
                | Command::State {
                    action: StateCmd::List | StateCmd::Show { .. } | StateCmd::Pull { .. },
                    ..
                }
        )
    }
}

#[derive(Subcommand, Debug)]
enum StateCmd {
    /// One line per node in state.
    List,
    /// A node's record as JSON.
    Show { node: String },
    /// Break the lock of a run that died (refuses while its holder is alive: a live process
    /// here, or a remote lock renewed within the last minute).
    Unlock,
    /// Move the local state into the remote location the stack's `state` key names (refused
    /// when that location already holds a state).
    Push,
    /// Write a copy of the state, journal folded in, to a local file for inspection.
    Pull {
        /// The file to write (default: pulled-state.json in the stack's state directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Rename a node in state without touching its object.
    Mv { old: String, new: String },
    /// Forget a node (a wrong import): its record leaves state, its object is not touched.
    Rm { node: String },
    /// After checking by hand: record an interrupted step as done.
    MarkDone { node: String },
    /// After checking by hand: drop an interrupted step's intent so it runs again.
    ForgetIntent { node: String },
}

/// Exit codes.
pub const EXIT_CHANGES: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM (128 + 15), state saved.
pub const EXIT_TERMINATED: u8 = 143;

/// Runs the CLI with the plans compiled into the binary; returns the process exit code.
pub fn main(catalog: &Catalog<'_>) -> ExitCode {
    let cli = Cli::parse();
    if cli.command.reads_only() {
        // Rust ignores SIGPIPE, so printing to a reader that went away (`plan list | head`)
        // would panic. A command that only reads ends quietly instead, as Unix tools do; one that
        // changes things keeps running (what it prints then is lost, its state is not).
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The AWS SDK's own warnings (each credential source it tried) repeat, as a debug dump,
        // what our errors already say; RUST_LOG shows them.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws_config=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli, catalog)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

/// `plan emulate`: brings the emulation up, runs the command in it while keeping the emulated
/// alarms quiet, and says what was emulated.
async fn emulate(
    root: &Path,
    catalog: &Catalog<'_>,
    stack: &str,
    set: &[String],
    rows: u64,
    command: &[String],
    quiet: bool,
) -> Result<u8> {
    if !crate::stack::plain_name(stack) {
        return Err(crate::stack::StackError::BadName { name: stack.into() }.into());
    }
    let e = crate::emulate::Emulation::new(root, stack);
    let say = |m: &str| eprintln!("{m}");
    let (verb, rest) = match command.split_first() {
        Some((v, r)) => (v.as_str(), r),
        None => ("apply", &[][..]),
    };
    if verb == "down" {
        e.down(&say).map_err(|m| anyhow::anyhow!(m))?;
        return Ok(0);
    }
    if ![
        "apply", "preview", "rollback", "state", "destroy", "refresh", "graph", "report",
    ]
    .contains(&verb)
    {
        anyhow::bail!("`plan emulate {stack} {verb}`: run apply, preview, rollback, state, refresh, graph, report, destroy or down in the emulation");
    }
    let mut sets = Vec::new();
    for s in set {
        let (k, v) = s.split_once('=').with_context(|| {
            format!("--set {s}: write KEY=VALUE (the value in TOML, e.g. bake_minutes=0)")
        })?;
        sets.push((k.trim().to_string(), v.trim().to_string()));
    }
    eprintln!("EMULATED: stack `{stack}` against the AWS emulator with stand-in databases; nothing in AWS is touched");
    e.up(catalog, &sets, rows, &say)
        .await
        .map_err(|m| anyhow::anyhow!("emulation of `{stack}`: {m}"))?;
    let exe = std::env::current_exe().context("this program's path")?;
    let mut std_cmd = std::process::Command::new(exe);
    // A kill of `plan emulate` ends the command it runs, as it would end an apply of its own.
    crate::pg::die_with_parent(&mut std_cmd);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.arg("--root").arg(e.root());
    if quiet {
        cmd.arg("--quiet");
    }
    cmd.arg(verb).arg(stack).args(rest);
    cmd.envs(e.child_env())
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL");
    let mut child = cmd.spawn().context("start the emulated command")?;
    let region = e.region();
    // Ctrl-C and SIGTERM go to the command, which stops as it would on its own; this waits.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    let forward = |child: &tokio::process::Child, sig: i32| {
        if let Some(pid) = child.id() {
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    };
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.context("wait for the emulated command")?,
            _ = tokio::signal::ctrl_c() => forward(&child, libc::SIGINT),
            _ = term.recv() => forward(&child, libc::SIGTERM),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                if let Err(m) = e.quiet_alarms(&region, &say).await {
                    tracing::debug!("emulated alarms: {m}");
                }
            }
        }
    };
    let code = status.code().unwrap_or(1) as u8;
    // A run that measured a time budget (the cutover) is the stack's rehearsal: committed as
    // `reports/STACK.json`, the pull-request comment quotes it.
    if verb == "apply" {
        if let Ok(el) = engine::load(&e.root(), catalog, stack) {
            let rehearsal = el
                .read_state()
                .ok()
                .and_then(|st| engine::run_report(&el, &st))
                .and_then(|r| engine::Rehearsal::of(&r));
            if let Some(mut r) = rehearsal {
                r.sets = set.to_vec();
                let path = engine::Rehearsal::path(root, stack);
                let written =
                    std::fs::create_dir_all(path.parent().unwrap_or(root)).and_then(|_| {
                        crate::atomic::write(
                            &path,
                            (serde_json::to_string_pretty(&r)? + "\n").as_bytes(),
                            None,
                        )
                    });
                match written {
                    Ok(()) => eprintln!(
                        "emulated: the run's measurements are in {} (commit it: the pull-request comment quotes it)",
                        path.display()
                    ),
                    Err(err) => eprintln!("emulated: {} could not be written: {err}", path.display()),
                }
            }
        }
    }
    // A whole destroy ends the emulation; `destroy --temporary` keeps it.
    if verb == "destroy" && code == 0 && !rest.iter().any(|a| a == "--temporary") {
        e.down(&say).map_err(|m| anyhow::anyhow!(m))?;
    }
    eprintln!(
        "EMULATED: `plan {verb} {stack}` ran against the emulator; its state is in {}",
        e.root().display()
    );
    Ok(code)
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let mut v = vec!["plan".to_string()];
    v.extend(args.into_iter().skip(1));
    v.join(" ")
}

fn load(root: &Path, catalog: &Catalog<'_>, stack: &str) -> Result<Loaded> {
    Ok(engine::load(root, catalog, stack)?)
}

async fn run(cli: Cli, catalog: &Catalog<'_>) -> Result<u8> {
    // Absolute, so that paths handed to daemons (pgbouncer) and providers stay valid.
    let root = cli.root.canonicalize().map_err(|e| {
        anyhow!(
            "--root {}: {}. --root names the project directory (the one holding stacks/).",
            cli.root.display(),
            crate::io_error::explain(&e, "the directory")
        )
    })?;
    if !root.is_dir() {
        bail!(
            "--root {} is a file; --root names the project directory (the one holding stacks/).",
            cli.root.display()
        );
    }
    match cli.command {
        Command::EmulateProxy { upstream, port } => {
            crate::emulate::serve_proxy(upstream, port).map_err(|e| anyhow::anyhow!(e))?;
            Ok(0)
        }
        Command::Emulate {
            stack,
            set,
            rows,
            command,
        } => emulate(&root, catalog, &stack, &set, rows, &command, cli.quiet).await,
        Command::List => {
            say!("Plans:");
            for p in catalog.plans.iter().filter(|p| !p.hidden) {
                say!("  {:<16} {}", p.name, p.about);
            }
            say!("Stacks:");
            for s in Stack::list(&root) {
                match engine::read_stack(&root, catalog, &s) {
                    Ok(st) => say!(
                        "  {:<16} plan {}, provider {}{}",
                        s,
                        st.plan,
                        st.provider,
                        st.setting::<String>("region")
                            .ok()
                            .flatten()
                            .map(|r| format!(", region {r}"))
                            .unwrap_or_default()
                    ),
                    Err(e) => say!("  {s:<16} (invalid: {e})"),
                }
            }
            Ok(0)
        }
        Command::Preview {
            stack,
            format,
            out,
            refresh,
            detailed_exitcode,
            run,
        } => {
            let l = load(&root, catalog, &stack)?;
            let cs = engine::preview(&l, &run.options(Mode::Apply), refresh).await?;
            let rehearsal = engine::Rehearsal::read(&root, &stack);
            let parts: Vec<String> = match format {
                PreviewFormat::Text => vec![render::text::preview(&cs)],
                PreviewFormat::Markdown => {
                    render::markdown::preview_with(&cs, rehearsal.as_ref(), render::markdown::LIMIT)
                }
                PreviewFormat::Json => vec![render::json::preview(&cs)],
            };
            write_parts(out.as_deref(), &parts, cli.quiet)?;
            Ok(if detailed_exitcode && cs.has_changes() {
                EXIT_CHANGES
            } else {
                0
            })
        }
        Command::Apply {
            stack,
            yes,
            plan,
            run,
        } => {
            apply(
                &root,
                catalog,
                &stack,
                run.options(Mode::Apply),
                yes,
                plan,
                cli.quiet,
            )
            .await
        }
        Command::Destroy {
            stack,
            temporary,
            force,
            yes,
        } => {
            let mode = if temporary {
                Mode::DestroyTemporary
            } else {
                Mode::DestroyAll
            };
            let mut options = RunArgs::default().options(mode);
            options.force = force;
            apply(&root, catalog, &stack, options, yes, None, cli.quiet).await
        }
        Command::Graph { stack, format } => {
            // The load validates the inputs too: what a preview refuses is refused here.
            let l = load(&root, catalog, &stack)?;
            say_part!(
                "{}",
                match format {
                    GraphFormat::Mermaid => render::graph::mermaid(&l.graph),
                    GraphFormat::Dot => render::graph::dot(&l.graph),
                }
            );
            Ok(0)
        }
        Command::Refresh { stack } => {
            let l = load(&root, catalog, &stack)?;
            let notes = engine::refresh(&l, &command_line()).await?;
            if notes.is_empty() {
                say!("No drift: every recorded object matches its record.");
            }
            for n in notes {
                say!("~ {}: {}", n.node, n.message);
            }
            Ok(0)
        }
        Command::Report { stack, format, out } => {
            let l = load(&root, catalog, &stack)?;
            let state = l.read_state()?;
            let Some(r) = engine::run_report(&l, &state) else {
                bail!("stack `{stack}` has no run to report yet: its runs are logged by `plan apply {stack}` (and destroy) in {}", l.state_dir.join("runs").display());
            };
            let text = match format {
                ReportFormat::Markdown => render::report::markdown(&r),
                ReportFormat::Svg => render::report::svg(&r),
                ReportFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
            };
            write_parts(out.as_deref(), &[text], cli.quiet)?;
            Ok(0)
        }
        Command::Import { stack, node, id } => {
            let l = load(&root, catalog, &stack)?;
            let id = engine::import(&l, &node, &id, &command_line()).await?;
            say!("Imported `{id}` as `{node}`. Run `plan preview {stack}` to see any difference from the plan.");
            Ok(0)
        }
        Command::State { stack, action } => state_cmd(&root, catalog, &stack, action),
        Command::Rollback { stack, node, yes } => {
            let l = load(&root, catalog, &stack)?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("rollback needs confirmation, and standard input is not a terminal: run `plan rollback {stack} --yes`");
                }
                if !confirm(&format!(
                    "Roll back the cutover of stack `{stack}`? Clients move back to the source."
                ))? {
                    say!("Rollback cancelled.");
                    return Ok(1);
                }
            }
            let progress: crate::provider::ProgressFn =
                Arc::new(|node: &str, m: &str| say!("  {node}: {m}"));
            let notes = engine::rollback(&l, node.as_deref(), &command_line(), progress).await?;
            for n in &notes {
                say!("{}: {}", n.node, n.message);
            }
            say!("Rollback complete. Forward replication stays stopped: rebuild the target before another cutover.");
            Ok(0)
        }
    }
}

fn state_cmd(root: &Path, catalog: &Catalog<'_>, stack: &str, action: StateCmd) -> Result<u8> {
    let l = load(root, catalog, stack)?;
    match action {
        StateCmd::List => {
            let st = l.read_state()?;
            for (name, r) in &st.nodes {
                let extra = match r {
                    crate::state::NodeRecord::Resource(x) => {
                        let mut e = format!(" id={}", x.id);
                        if x.temporary {
                            e.push_str(" temporary");
                        }
                        if x.retired {
                            e.push_str(" retired");
                        }
                        e
                    }
                    crate::state::NodeRecord::Step(s) | crate::state::NodeRecord::Gate(s) => {
                        format!(" done_at={}", s.done_at)
                    }
                    crate::state::NodeRecord::Data(d) => format!(" read_at={}", d.read_at),
                };
                say!("{name} {} {}{extra}", r.kind_name(), r.type_name());
            }
            for (name, i) in &st.pending {
                say!("{name} interrupted {:?}{}", i.op, i.failed.as_ref().map(|f| format!(" (failed: {f})")).unwrap_or_default());
            }
            Ok(0)
        }
        StateCmd::Show { node } => {
            let st = l.read_state()?;
            let r = st
                .nodes
                .get(&node)
                .ok_or_else(|| anyhow!("`{node}` is not in the state of stack `{stack}`; `plan state {stack} list` lists what is"))?;
            say!("{}", serde_json::to_string_pretty(r)?);
            Ok(0)
        }
        StateCmd::Unlock => match Lock::unlock(&l.state_at, stack) {
            Ok(Some(info)) if l.state_at.is_remote() => {
                say!("Broke the lock of stack `{stack}` in {}: it was held by {info}, which no longer runs or renews it.", l.state_at.describe());
                Ok(0)
            }
            Ok(Some(info)) => {
                say!("Removed a stale lock record ({info}); no process held the lock.");
                Ok(0)
            }
            Ok(None) => {
                say!("Stack `{stack}` is not locked.");
                Ok(0)
            }
            Err(e) if l.state_at.is_remote() => Err(anyhow!(e)),
            Err(e) => Err(anyhow!(e).context(
                "refusing to unlock: a live process holds the lock; it is released when that process ends",
            )),
        },
        StateCmd::Push => {
            let (n, kept) = engine::state_push(&l, &command_line())?;
            say!("Pushed the state of stack `{stack}` ({n} nodes) to {}. The local copy is kept for reference as {} and is no longer read.", l.state_at.describe(), kept.display());
            Ok(0)
        }
        StateCmd::Pull { out } => {
            let st = l.read_state()?;
            let out = out.unwrap_or_else(|| l.state_dir.join("pulled-state.json"));
            if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("creating {}", d.display()))?;
            }
            let mut text = serde_json::to_string_pretty(&st)?;
            text.push('\n');
            crate::atomic::write(&out, text.as_bytes(), None)
                .with_context(|| format!("writing {}", out.display()))?;
            say!("Wrote the state of stack `{stack}` from {} ({} nodes, serial {}) to {}; it is a copy: nothing reads it.", l.state_at.describe(), st.nodes.len(), st.serial, out.display());
            Ok(0)
        }
        StateCmd::Mv { old, new } => {
            engine::state_mv(&l, &old, &new, &command_line())?;
            say!("Moved `{old}` to `{new}` in state; its object is unchanged.");
            Ok(0)
        }
        StateCmd::Rm { node } => {
            let id = engine::state_rm(&l, &node, &command_line())?;
            say!("Removed `{node}` from state; its object ({id}) is unchanged and no longer managed by this stack. The next apply creates the node anew unless you import the right object (`plan import {stack} {node} ID`).");
            Ok(0)
        }
        StateCmd::MarkDone { node } => {
            engine::resolve_intent(&l, &node, true, &command_line())?;
            say!("Recorded `{node}` as done.");
            Ok(0)
        }
        StateCmd::ForgetIntent { node } => {
            engine::resolve_intent(&l, &node, false, &command_line())?;
            say!("Dropped the interrupted intent of `{node}`; it runs on the next apply.");
            Ok(0)
        }
    }
}

/// Writes `parts` to `out` (`F`, `F.part2`, ...) or to standard output, refusing a folder that
/// does not exist.
fn write_parts(out: Option<&Path>, parts: &[String], quiet: bool) -> Result<()> {
    match out {
        Some(path) => {
            let path = path.to_path_buf();
            for (i, part) in parts.iter().enumerate() {
                let p = if i == 0 {
                    path.clone()
                } else {
                    let mut s = path.clone().into_os_string();
                    s.push(format!(".part{}", i + 1));
                    PathBuf::from(s)
                };
                if let Some(dir) = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty() && !d.exists())
                {
                    bail!(
                        "--out {}: the folder {} does not exist; create it (`mkdir -p {}`) or write elsewhere. Nothing was written.",
                        p.display(),
                        dir.display(),
                        dir.display()
                    );
                }
                std::fs::write(&p, part).map_err(|e| {
                    anyhow!(
                        "--out {}: cannot write it: {}",
                        p.display(),
                        crate::io_error::explain(&e, "the file")
                    )
                })?;
                if !quiet {
                    eprintln!("Wrote {}", p.display());
                }
            }
        }
        None => {
            let mut o = std::io::stdout().lock();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    writeln!(o, "\n<!-- cutover: part {} of {} -->\n", i + 1, parts.len())?;
                }
                write!(o, "{part}")?;
            }
        }
    }
    Ok(())
}

fn confirm(question: &str) -> Result<bool> {
    say_part!("{question}\n  Only 'yes' will be accepted: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

async fn apply(
    root: &Path,
    catalog: &Catalog<'_>,
    stack: &str,
    opts: Options,
    yes: bool,
    saved: Option<PathBuf>,
    quiet: bool,
) -> Result<u8> {
    let destroying = opts.mode != Mode::Apply;
    let verb = if destroying { "destroy" } else { "apply" };
    let l = load(root, catalog, stack)?;
    let saved = match &saved {
        Some(p) => Some(
            render::json::read(&std::fs::read_to_string(p).map_err(|e| {
                anyhow!(
                    "--plan {}: cannot read it: {}",
                    p.display(),
                    crate::io_error::explain(&e, "the saved plan")
                )
            })?)
            .map_err(|e| anyhow!("--plan {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let interactive = std::io::stdin().is_terminal();
    if !yes && saved.is_none() && !interactive {
        bail!(
            "{verb} needs confirmation, and standard input is not a terminal. Review `plan preview {stack}`, then run `plan {verb} {stack} --yes`{}.",
            if destroying { "" } else { ", or save the preview with `--format json --out FILE` and apply it with `--plan FILE`" }
        );
    }
    let prepared = engine::prepare(&l, opts.clone(), &command_line(), saved.as_ref()).await?;
    for n in &prepared.reconciled {
        say!("reconciled {}: {}", n.node, n.message);
    }
    let cs = &prepared.changes;
    if !quiet || !yes {
        say_part!("{}", render::text::preview(cs));
    }
    if !cs.has_changes() {
        return Ok(0);
    }
    if destroying {
        let protected: Vec<&str> = cs
            .actions
            .iter()
            .filter(|a| a.action == ActionKind::Delete)
            .map(|a| a.node.as_str())
            .collect();
        if !yes && !protected.is_empty() {
            let ok = confirm(&format!(
                "\nDestroy {} object(s) of stack `{stack}`? This cannot be undone.",
                protected.len()
            ))?;
            if !ok {
                say!("Destroy cancelled.");
                return Ok(1);
            }
        }
    } else if !yes && saved.is_none() && !confirm("\nDo you want to perform these actions?")? {
        say!("Apply cancelled.");
        return Ok(1);
    }
    let held: BTreeSet<crate::planner::Hold> = cs
        .actions
        .iter()
        .filter_map(|a| a.held_by.clone())
        .collect();
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    // Ctrl-C, and SIGTERM (what CI runners, systemd and Kubernetes send), stop the run the same
    // way: the first lets running calls finish and saves, the second aborts.
    let terminated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let term_flag = terminated.clone();
    let signals = tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let by_term = tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    if r.is_err() {
                        break;
                    }
                    false
                }
                Some(()) = async {
                    match term.as_mut() {
                        Some(t) => t.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if by_term {
                term_flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let n = *tx.borrow() + 1;
            if tx.send(n).is_err() {
                break;
            }
        }
    });
    let mode = if quiet {
        progress::Mode::Quiet
    } else if std::io::stderr().is_terminal() {
        progress::Mode::Live
    } else {
        progress::Mode::Plain
    };
    let prog = Arc::new(Progress::new(mode));
    let log = Arc::new(crate::runlog::RunLog::start(
        &l.state_dir,
        stack,
        &l.graph.spec.plan,
        verb,
        &command_line(),
    ));
    let (p1, p2, l1, l2) = (prog.clone(), prog.clone(), log.clone(), log.clone());
    let applied = engine::execute(
        &l,
        prepared,
        rx,
        Arc::new(move |e, labels| {
            l1.event(e, labels);
            p1.event(e, labels)
        }),
        Arc::new(move |node, msg| {
            l2.message(node, msg);
            p2.node_message(node, msg)
        }),
    )
    .await?;
    prog.finish();
    signals.abort();
    {
        let r = &applied.report;
        let outcome = if r.cancelled {
            "interrupted"
        } else if r.checkpoint_error.is_some()
            || r.outcomes.iter().any(|o| matches!(o, Outcome::Failed(_)))
        {
            "failed"
        } else {
            "complete"
        };
        let ops: Vec<String> = applied
            .ops
            .iter()
            .map(|o| format!("{:?}", o.op).to_lowercase())
            .collect();
        for line in l.summaries() {
            log.message("", &line);
        }
        log.done(&applied.jobs, &ops, &r.outcomes, outcome);
        // The report of this run beside its state, for whoever looks later.
        if let Some(report) = engine::run_report(&l, &applied.state) {
            if l.state_dir.is_dir() {
                for (name, text) in [
                    ("report.md", render::report::markdown(&report)),
                    ("report.svg", render::report::svg(&report)),
                ] {
                    if let Err(e) =
                        crate::atomic::write(&l.state_dir.join(name), text.as_bytes(), None)
                    {
                        tracing::warn!("the run report {name} could not be written: {e}");
                    }
                }
            }
        }
    }
    for line in l.summaries() {
        say!("{line}");
    }
    let ran: BTreeSet<&str> = applied
        .report
        .outcomes
        .iter()
        .zip(&applied.ops)
        .filter(|(o, op)| matches!(o, Outcome::Done) && op.op == crate::executor::work::OpKind::Run)
        .map(|(_, op)| op.node.as_str())
        .collect();
    for line in engine::budget_lines(&l.graph.spec, &applied.state, &|n| ran.contains(n)) {
        say!("{line}");
    }
    let r = &applied.report;
    let t = applied.tally();
    let (failed, skipped, not_started, unreached) =
        (&t.failed, t.skipped, t.not_started, &t.unreached);
    let counts = t.counts();
    if r.cancelled {
        say!("\nInterrupted: {counts}; {not_started} not started. State is saved: run `plan apply {stack}` to resume.");
        return Ok(if terminated.load(std::sync::atomic::Ordering::Relaxed) {
            EXIT_TERMINATED
        } else {
            EXIT_INTERRUPTED
        });
    }
    if let Some(e) = &r.checkpoint_error {
        bail!("state could not be written ({e}); stopped before starting more work. Nothing unrecorded was started: fix the disk problem and run `plan apply {stack}` again to resume.");
    }
    if !failed.is_empty() {
        say!(
            "\n{} failed: {counts}; {} failed, {skipped} skipped{}. State is saved: fix the cause and run `plan {verb} {stack}` again to resume.",
            if destroying { "Destroy" } else { "Apply" },
            failed.len(),
            if r.compensated { "; compensation ran" } else { "" }
        );
        for f in failed {
            say!("  ! {f}");
        }
        return Ok(1);
    }
    if !unreached.is_empty() {
        // Work that could never start (it waits for a node that never ran): never "complete".
        say!(
            "\n{} incomplete: {counts}; {} not started, waiting for work that did not run: {}. State is saved: run `plan {verb} {stack}` again, and report this if it repeats.",
            if destroying { "Destroy" } else { "Apply" },
            unreached.len(),
            unreached.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        );
        return Ok(1);
    }
    say!(
        "\n{} complete: {counts}.",
        if destroying { "Destroy" } else { "Apply" }
    );
    for h in held {
        match h {
            crate::planner::Hold::Gate(g) => {
                say!("Held back by gate `{g}`: run `plan apply {stack} --approve {g}` when ready.")
            }
            until => say!("Held back by {until}: run `plan apply {stack}` without it to go on."),
        }
    }
    Ok(0)
}
