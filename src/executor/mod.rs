//! The DAG walk. One coordinator owns the queue, the journal and the work; it receives completions
//! from tasks and decides everything. Ready jobs start at once up to a global and a per-service
//! limit, the longest chain of dependents first. Before a job starts, its intent is durable;
//! a job's dependents start only after its outcome is durable (outcomes and the next intents are
//! committed together with one fsync).
//!
//! On a failure: skip what depends on it and finish what is independent, or halt, or halt and run
//! compensation jobs, per the job's policy. On cancel (Ctrl-C): stop scheduling, let running jobs
//! finish or time out; a second cancel aborts them (their intents stay, and the next run reconciles
//! them). The coordinator must never use `?` inside its loop: every error becomes a job outcome.

pub mod queue;
pub mod work;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::state::{Entry, StateStore};
use queue::{DepQueue, JobState};

/// Where outcomes go: a journal, or nowhere (tests of the walk itself).
pub trait Checkpoint {
    fn append(&mut self, e: Entry);
    /// Makes everything appended durable.
    fn commit(&mut self) -> Result<(), String>;
}

impl Checkpoint for StateStore {
    fn append(&mut self, e: Entry) {
        StateStore::append(self, e)
    }
    fn commit(&mut self) -> Result<(), String> {
        StateStore::commit(self).map_err(|e| e.to_string())
    }
}

/// A checkpoint that keeps nothing.
#[derive(Default)]
pub struct NoCheckpoint {
    pub commits: usize,
}

impl Checkpoint for NoCheckpoint {
    fn append(&mut self, _e: Entry) {}
    fn commit(&mut self) -> Result<(), String> {
        self.commits += 1;
        Ok(())
    }
}

/// What a failure of a job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    Skip,
    Halt,
    /// Halt, then run these (dormant) jobs.
    Compensate(Vec<usize>),
}

/// One job of the walk.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub label: String,
    pub deps: Vec<usize>,
    pub service: String,
    pub timeout: Duration,
    pub on_failure: OnFailure,
    /// Runs only when activated by a compensation.
    pub dormant: bool,
}

/// A job's future.
pub type JobFuture<O> = Pin<Box<dyn Future<Output = Result<O, String>> + Send + 'static>>;

/// How a job starts.
pub enum Start<O> {
    /// Nothing to call: record these entries and succeed.
    Skip(Vec<Entry>),
    /// Record the intent, make it durable, then run.
    Run {
        intent: Vec<Entry>,
        fut: JobFuture<O>,
    },
    /// Cannot start (for example an input that never resolved).
    Fail { entries: Vec<Entry>, error: String },
}

/// How a job ended, as the work reports it.
pub struct Finish {
    pub entries: Vec<Entry>,
    pub error: Option<String>,
}

/// What a job does: the coordinator asks, the work answers. It runs on the coordinator's task.
pub trait Work {
    type Output: Send + 'static;
    fn start(&mut self, job: usize) -> Start<Self::Output>;
    fn finish(&mut self, job: usize, result: Result<Self::Output, String>) -> Finish;
    /// What a job that ran out of time was last seen waiting for (its last progress message),
    /// for the timeout's error.
    fn waiting_on(&self, _job: usize) -> Option<String> {
        None
    }
}

/// Progress events for people.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        job: usize,
    },
    Finished {
        job: usize,
        elapsed: Duration,
        error: Option<String>,
    },
    Skipped {
        job: usize,
        cause: String,
    },
    Cancelling {
        running: usize,
    },
}

/// One job's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(String),
    Skipped(String),
    /// Not started because the run was cancelled or a checkpoint failed.
    NotStarted,
    /// A compensation job that was not needed.
    Dormant,
}

/// The walk's result.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    pub cancelled: bool,
    pub halted: bool,
    pub compensated: bool,
    /// A checkpoint that could not be written stops the run.
    pub checkpoint_error: Option<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        !self.cancelled
            && self.checkpoint_error.is_none()
            && self
                .outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Done | Outcome::Dormant))
    }
}

/// Limits of a walk.
#[derive(Debug, Clone)]
pub struct Limits {
    pub global: usize,
    pub per_service: HashMap<String, usize>,
    /// For services not listed.
    pub default_service: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            global: 32,
            per_service: HashMap::new(),
            default_service: usize::MAX,
        }
    }
}

/// Runs the jobs. `cancel` counts interrupts (1: stop scheduling, 2: abort running jobs).
pub async fn run<W: Work, C: Checkpoint>(
    jobs: &[JobSpec],
    limits: &Limits,
    work: &mut W,
    ckpt: &mut C,
    mut cancel: tokio::sync::watch::Receiver<u32>,
    events: &(dyn Fn(&Event) + Send + Sync),
) -> Report {
    let start = Instant::now();
    let mut services: Vec<String> = Vec::new();
    let mut service_ix: HashMap<&str, usize> = HashMap::new();
    let service: Vec<usize> = jobs
        .iter()
        .map(|j| {
            *service_ix.entry(j.service.as_str()).or_insert_with(|| {
                services.push(j.service.clone());
                services.len() - 1
            })
        })
        .collect();
    let service_limits: Vec<usize> = services
        .iter()
        .map(|s| {
            limits
                .per_service
                .get(s)
                .copied()
                .unwrap_or(limits.default_service)
        })
        .collect();
    let dormant: Vec<bool> = jobs.iter().map(|j| j.dormant).collect();
    let mut q = DepQueue::new(
        jobs.iter().map(|j| j.deps.clone()).collect(),
        service,
        service_limits,
        limits.global,
        &dormant,
    );
    let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];
    // A task's answer, or the time it ran out after.
    let mut set: JoinSet<Result<Result<W::Output, String>, Duration>> = JoinSet::new();
    let mut task_job: HashMap<tokio::task::Id, (usize, Instant)> = HashMap::new();
    let mut halted = false;
    let mut compensated = false;
    let mut cancelled = false;
    let mut checkpoint_error = None;

    macro_rules! fail_job {
        ($job:expr, $err:expr) => {{
            let job: usize = $job;
            let err: String = $err;
            outcomes[job] = Some(Outcome::Failed(err.clone()));
            for s in q.fail(job) {
                let cause = format!("`{}` failed", jobs[job].label);
                events(&Event::Skipped {
                    job: s,
                    cause: cause.clone(),
                });
                outcomes[s] = Some(Outcome::Skipped(cause));
            }
            match &jobs[job].on_failure {
                OnFailure::Skip => {}
                OnFailure::Halt => {
                    halted = true;
                    for s in q.skip_all_waiting() {
                        let cause = format!("halted after `{}` failed", jobs[job].label);
                        events(&Event::Skipped {
                            job: s,
                            cause: cause.clone(),
                        });
                        outcomes[s] = Some(Outcome::Skipped(cause));
                    }
                }
                OnFailure::Compensate(comp) => {
                    halted = true;
                    for s in q.skip_all_waiting() {
                        let cause =
                            format!("halted after `{}` failed; compensating", jobs[job].label);
                        events(&Event::Skipped {
                            job: s,
                            cause: cause.clone(),
                        });
                        outcomes[s] = Some(Outcome::Skipped(cause));
                    }
                    if !compensated {
                        compensated = true;
                        q.activate(comp);
                    }
                }
            }
        }};
    }

    loop {
        // Schedule everything that may start, recording intents.
        let mut batch: Vec<(usize, JobFuture<W::Output>)> = Vec::new();
        if !cancelled && checkpoint_error.is_none() {
            while let Some(job) = q.pop_ready() {
                match work.start(job) {
                    Start::Skip(entries) => {
                        entries.into_iter().for_each(|e| ckpt.append(e));
                        outcomes[job] = Some(Outcome::Done);
                        q.succeed(job);
                    }
                    Start::Run { intent, fut } => {
                        intent.into_iter().for_each(|e| ckpt.append(e));
                        batch.push((job, fut));
                    }
                    Start::Fail { entries, error } => {
                        entries.into_iter().for_each(|e| ckpt.append(e));
                        events(&Event::Finished {
                            job,
                            elapsed: Duration::ZERO,
                            error: Some(error.clone()),
                        });
                        fail_job!(job, error);
                    }
                }
            }
        }
        // One fsync for the outcomes received and the intents just recorded.
        if let Err(e) = ckpt.commit() {
            checkpoint_error = Some(e);
            // Nothing in this batch may start: its intents are not durable.
            for (job, _) in batch.drain(..) {
                outcomes[job] = Some(Outcome::NotStarted);
            }
        }
        for (job, fut) in batch {
            let timeout = jobs[job].timeout;
            tracing::debug!(job, label = %jobs[job].label, service = %jobs[job].service, "start");
            events(&Event::Started { job });
            let h = set.spawn(async move {
                tokio::time::timeout(timeout, fut)
                    .await
                    .map_err(|_| timeout)
            });
            task_job.insert(h.id(), (job, Instant::now()));
        }
        if set.is_empty() {
            break;
        }
        // Wait for a completion (or an interrupt), then take every completion already there.
        let mut done = Vec::new();
        tokio::select! {
            r = set.join_next_with_id() => { if let Some(r) = r { done.push(r); } }
            changed = cancel.changed(), if !cancelled || *cancel.borrow() < 2 => {
                if changed.is_ok() {
                    let n = *cancel.borrow();
                    if n >= 1 && !cancelled {
                        cancelled = true;
                        events(&Event::Cancelling { running: set.len() });
                    }
                    if n >= 2 {
                        set.abort_all();
                    }
                }
            }
        }
        while let Some(r) = set.try_join_next_with_id() {
            done.push(r);
        }
        for r in done {
            let (id, result) = match r {
                Ok((id, Ok(res))) => (id, res),
                Ok((id, Err(after))) => {
                    let job = task_job.get(&id).map(|(j, _)| *j);
                    let seen = job
                        .and_then(|j| work.waiting_on(j))
                        .map(|m| format!(" (last seen: {m})"))
                        .unwrap_or_default();
                    let label = job.map(|j| jobs[j].label.as_str()).unwrap_or("a job");
                    (
                        id,
                        Err(format!(
                            "`{label}` timed out after {}{seen}; raise the node's `.timeout(d)` if it needs longer",
                            humantime::format_duration(after)
                        )),
                    )
                }
                Err(e) => {
                    let msg = if e.is_panic() {
                        "panicked (a bug: please report it)".to_string()
                    } else {
                        "aborted by a second interrupt; the next run reconciles it".to_string()
                    };
                    (e.id(), Err(msg))
                }
            };
            let Some((job, t0)) = task_job.remove(&id) else {
                continue;
            };
            let fin = work.finish(job, result);
            tracing::debug!(job, label = %jobs[job].label, error = ?fin.error, elapsed = ?t0.elapsed(), "finish");
            fin.entries.into_iter().for_each(|e| ckpt.append(e));
            events(&Event::Finished {
                job,
                elapsed: t0.elapsed(),
                error: fin.error.clone(),
            });
            match fin.error {
                None => {
                    outcomes[job] = Some(Outcome::Done);
                    q.succeed(job);
                }
                Some(e) => fail_job!(job, e),
            }
        }
    }
    // The final outcomes must be durable before we report.
    if let Err(e) = ckpt.commit() {
        checkpoint_error.get_or_insert(e);
    }
    let outcomes = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            o.unwrap_or(match q.state(i) {
                JobState::Dormant => Outcome::Dormant,
                _ => Outcome::NotStarted,
            })
        })
        .collect();
    Report {
        outcomes,
        cancelled,
        halted,
        compensated,
        checkpoint_error,
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests;
