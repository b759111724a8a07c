//! The run log: what one `apply` or `destroy` did, when. The journal is compacted at the end of a
//! command and keeps no timings, so each run appends its own JSON-lines file to
//! `<state dir>/runs/` (a header, one line per start, end, skip and status message, with the
//! milliseconds since the run began, and a footer with every job's dependencies), and the
//! directory keeps the last [`KEEP`] runs. `plan report` reads it.
//!
//! The run log is a record for people, never state: nothing reads it to decide what to do. A
//! failure to write it is reported once and never stops or fails a run, and it holds no secret
//! (node names, step messages and errors, which never carry secret values).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::executor::{Event, JobSpec, Outcome};

/// How many runs a state directory keeps.
pub const KEEP: usize = 20;

/// One line of a run log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    Run {
        stack: String,
        plan: String,
        command: String,
        /// RFC 3339, milliseconds.
        started: String,
    },
    Start {
        ms: u64,
        node: String,
        op: String,
    },
    End {
        ms: u64,
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Skip {
        ms: u64,
        node: String,
        cause: String,
    },
    Message {
        ms: u64,
        node: String,
        text: String,
    },
    /// The run's jobs and its end.
    Done {
        ms: u64,
        jobs: Vec<Job>,
        outcome: String,
    },
}

/// One job of a run, as its end records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub node: String,
    /// `create`, `update`, `delete`, `forget`, `read`, `run` or `gate`.
    pub op: String,
    /// The jobs it waited for (indexes into the run's jobs).
    pub deps: Vec<usize>,
    /// `done`, `failed`, `skipped`, `not started` or `dormant` (a compensation not needed).
    pub outcome: String,
}

/// The log of the run in progress.
pub struct RunLog {
    path: PathBuf,
    start: Instant,
    file: Mutex<Option<std::fs::File>>,
    warned: std::sync::atomic::AtomicBool,
}

impl RunLog {
    /// Starts the log of a run of `verb` (`apply`, `destroy`) as `command` in `state_dir`,
    /// keeping the last [`KEEP`] runs.
    pub fn start(state_dir: &Path, stack: &str, plan: &str, verb: &str, command: &str) -> RunLog {
        let dir = state_dir.join("runs");
        let now = SystemTime::now();
        let stamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let verb = verb.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        let path = dir.join(format!("{stamp:015}-{verb}.jsonl"));
        let file = std::fs::create_dir_all(&dir)
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            })
            .ok();
        let log = RunLog {
            path,
            start: Instant::now(),
            file: Mutex::new(file),
            warned: Default::default(),
        };
        log.write(&Line::Run {
            stack: stack.into(),
            plan: plan.into(),
            command: command.into(),
            started: humantime::format_rfc3339_millis(now).to_string(),
        });
        prune(&dir);
        log
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn write(&self, line: &Line) {
        let mut f = self.file.lock().unwrap();
        let ok = match f.as_mut() {
            Some(file) => serde_json::to_string(line)
                .ok()
                .is_some_and(|s| writeln!(file, "{s}").is_ok()),
            None => false,
        };
        if !ok && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "the run log {} could not be written; the run goes on without it",
                self.path.display()
            );
        }
    }

    /// An executor event; `labels[job]` is (symbol, node, verb).
    pub fn event(&self, e: &Event, labels: &[(String, String, String)]) {
        let node = |job: usize| labels.get(job).map(|l| l.1.clone()).unwrap_or_default();
        let line = match e {
            Event::Started { job } => Line::Start {
                ms: self.ms(),
                node: node(*job),
                op: labels.get(*job).map(|l| l.2.clone()).unwrap_or_default(),
            },
            Event::Finished { job, error, .. } => Line::End {
                ms: self.ms(),
                node: node(*job),
                error: error.clone(),
            },
            Event::Skipped { job, cause } => Line::Skip {
                ms: self.ms(),
                node: node(*job),
                cause: cause.clone(),
            },
            Event::Cancelling { .. } => return,
        };
        self.write(&line);
    }

    /// A status line of a running node.
    pub fn message(&self, node: &str, text: &str) {
        self.write(&Line::Message {
            ms: self.ms(),
            node: node.into(),
            text: text.into(),
        });
    }

    /// The run's end: its jobs (with each one's operation and outcome) and how it ended.
    pub fn done(&self, jobs: &[JobSpec], ops: &[String], outcomes: &[Outcome], outcome: &str) {
        self.write(&Line::Done {
            ms: self.ms(),
            jobs: jobs
                .iter()
                .zip(ops)
                .zip(outcomes)
                .map(|((j, op), o)| Job {
                    node: j.label.clone(),
                    op: op.clone(),
                    deps: j.deps.clone(),
                    outcome: match o {
                        Outcome::Done => "done",
                        Outcome::Failed(_) => "failed",
                        Outcome::Skipped(_) => "skipped",
                        Outcome::NotStarted => "not started",
                        Outcome::Dormant => "dormant",
                    }
                    .into(),
                })
                .collect(),
            outcome: outcome.into(),
        });
    }
}

/// The critical path of a run: the chain of jobs that decided when it ended, first to last.
/// `deps[i]` are the jobs job `i` waited for, `own_end[i]` when it ended by its own record, and
/// `done[i]` whether it finished; a job done without a call (a gate passing) ended when the last
/// of its dependencies did. From the job that ended last, back through the dependency that ended
/// last each time. Never loops, whatever the dependencies say.
pub fn critical_path(deps: &[Vec<usize>], own_end: &[Option<u64>], done: &[bool]) -> Vec<usize> {
    let n = deps.len();
    let mut ended: Vec<Option<u64>> = own_end.to_vec();
    ended.resize(n, None);
    for _ in 0..n {
        let mut changed = false;
        for i in 0..n {
            if ended[i].is_some() || !done.get(i).copied().unwrap_or(false) {
                continue;
            }
            let from_deps: Option<Vec<u64>> = deps[i]
                .iter()
                .map(|&d| ended.get(d).copied().flatten())
                .collect();
            if let Some(v) = from_deps {
                ended[i] = Some(v.into_iter().max().unwrap_or(0));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut path = vec![];
    let mut cur = (0..n)
        .filter_map(|i| ended[i].map(|e| (e, i)))
        .max()
        .map(|(_, i)| i);
    while let Some(i) = cur {
        if path.len() > n {
            break;
        }
        path.push(i);
        cur = deps[i]
            .iter()
            .filter_map(|&d| ended.get(d).copied().flatten().map(|e| (e, d)))
            .max()
            .map(|(_, d)| d);
    }
    path.reverse();
    path
}

/// Removes all but the newest [`KEEP`] run logs of `dir`.
fn prune(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    logs.sort();
    if logs.len() > KEEP {
        for p in &logs[..logs.len() - KEEP] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The newest run log of `state_dir`, parsed (a torn last line is dropped).
pub fn latest(state_dir: &Path) -> Option<(PathBuf, Vec<Line>)> {
    let dir = state_dir.join("runs");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    logs.sort();
    let path = logs.pop()?;
    let text = std::fs::read_to_string(&path).ok()?;
    let lines = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .collect();
    Some((path, lines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random run: job `i` waits for some jobs before it; each takes a duration, or none (done
    /// without a call); each starts when its dependencies ended.
    fn run() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<Option<u64>>)> {
        (1usize..24).prop_flat_map(|n| {
            (
                (0..n)
                    .map(|i| proptest::collection::btree_set(0..i.max(1), 0..=i.min(3)))
                    .collect::<Vec<_>>(),
                proptest::collection::vec(proptest::option::of(0u64..50), n),
            )
                .prop_map(move |(sets, durs)| {
                    let deps: Vec<Vec<usize>> = sets
                        .into_iter()
                        .enumerate()
                        .map(|(i, s)| s.into_iter().filter(|&d| d < i).collect())
                        .collect();
                    (deps, durs)
                })
        })
    }

    proptest! {
        #[test]
        fn the_critical_path_ends_last_and_follows_the_dependency_that_ended_last((deps, durs) in run()) {
            let n = deps.len();
            let mut end = vec![0u64; n];
            let mut own = vec![None; n];
            for i in 0..n {
                let start = deps[i].iter().map(|&d| end[d]).max().unwrap_or(0);
                end[i] = start + durs[i].unwrap_or(0);
                if durs[i].is_some() {
                    own[i] = Some(end[i]);
                }
            }
            let done = vec![true; n];
            let path = critical_path(&deps, &own, &done);
            prop_assert!(!path.is_empty());
            let last = *path.last().unwrap();
            prop_assert_eq!(end[last], *end.iter().max().unwrap());
            for w in path.windows(2) {
                prop_assert!(deps[w[1]].contains(&w[0]), "{:?} is not a dependency of {:?}", w[0], w[1]);
                let latest = deps[w[1]].iter().map(|&d| end[d]).max().unwrap();
                prop_assert_eq!(end[w[0]], latest);
            }
            prop_assert!(deps[path[0]].is_empty());
        }
    }

    #[test]
    fn a_cycle_in_a_damaged_log_does_not_hang_the_report() {
        let deps = vec![vec![1], vec![0]];
        let path = critical_path(&deps, &[Some(5), Some(5)], &[true, true]);
        assert!(path.len() <= 3, "{path:?}");
    }

    #[test]
    fn a_run_is_logged_line_by_line_and_the_last_runs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(KEEP + 3) {
            let log = RunLog::start(dir.path(), "s", "p", "apply", &format!("plan apply s #{i}"));
            let labels = vec![("+".to_string(), "a".to_string(), "creating".to_string())];
            log.event(&Event::Started { job: 0 }, &labels);
            log.message("a", "waiting");
            log.event(
                &Event::Finished {
                    job: 0,
                    elapsed: std::time::Duration::from_millis(5),
                    error: None,
                },
                &labels,
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let n = std::fs::read_dir(dir.path().join("runs")).unwrap().count();
        assert_eq!(n, KEEP);
        let (_, lines) = latest(dir.path()).unwrap();
        assert!(
            matches!(&lines[0], Line::Run { command, .. } if command.ends_with(&format!("#{}", KEEP + 2)))
        );
        assert!(
            matches!(&lines[1], Line::Start { node, op, .. } if node == "a" && op == "creating")
        );
        assert!(matches!(&lines[2], Line::Message { text, .. } if text == "waiting"));
        assert!(matches!(&lines[3], Line::End { error: None, .. }));
    }
}
