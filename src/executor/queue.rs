//! A dependency queue: jobs become ready when all their dependencies succeeded; among ready jobs
//! the one with the longest chain of dependents goes first; each service has its own limit.
//!
//! It knows nothing of nodes, providers or state. It must never hand out a job twice, nor a job
//! whose dependency failed or was skipped.

use std::collections::BinaryHeap;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Not part of this run unless activated (a compensation job).
    Dormant,
    Waiting,
    Ready,
    Running,
    Done,
    Failed,
    /// Not run because a dependency failed (or the run halted).
    Skipped,
}

/// A queue over jobs `0..n`.
#[derive(Debug)]
pub struct DepQueue {
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    left: Vec<usize>,
    priority: Vec<u64>,
    service: Vec<usize>,
    state: Vec<JobState>,
    /// Per service: ready jobs by (priority, lowest index first).
    ready: Vec<BinaryHeap<(u64, std::cmp::Reverse<usize>)>>,
    running_per_service: Vec<usize>,
    limit_per_service: Vec<usize>,
    running: usize,
    global_limit: usize,
}

impl DepQueue {
    /// `deps[i]` lists the jobs `i` waits for; `service[i]` indexes `limits` (per service).
    /// `dormant[i]` jobs stay out until [`DepQueue::activate`].
    pub fn new(
        deps: Vec<Vec<usize>>,
        service: Vec<usize>,
        limits: Vec<usize>,
        global_limit: usize,
        dormant: &[bool],
    ) -> DepQueue {
        let n = deps.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        // Critical path: 1 + the longest chain below. Jobs are not necessarily in topological
        // order, so compute with an explicit order (Kahn on the reversed graph).
        let mut priority = vec![1u64; n];
        let mut out_left: Vec<usize> = dependents.iter().map(|d| d.len()).collect();
        let mut stack: Vec<usize> = (0..n).filter(|&i| out_left[i] == 0).collect();
        while let Some(i) = stack.pop() {
            for &d in &deps[i] {
                priority[d] = priority[d].max(priority[i] + 1);
                out_left[d] -= 1;
                if out_left[d] == 0 {
                    stack.push(d);
                }
            }
        }
        let services = limits.len();
        let mut q = DepQueue {
            left: deps.iter().map(|d| d.len()).collect(),
            deps,
            dependents,
            priority,
            service,
            state: vec![JobState::Waiting; n],
            ready: vec![BinaryHeap::new(); services],
            running_per_service: vec![0; services],
            limit_per_service: limits.into_iter().map(|l| l.max(1)).collect(),
            running: 0,
            global_limit: global_limit.max(1),
        };
        for i in 0..n {
            if dormant.get(i).copied().unwrap_or(false) {
                q.state[i] = JobState::Dormant;
            }
        }
        for i in 0..n {
            if q.state[i] == JobState::Waiting && q.left[i] == 0 {
                q.make_ready(i);
            }
        }
        q
    }

    fn make_ready(&mut self, i: usize) {
        self.state[i] = JobState::Ready;
        self.ready[self.service[i]].push((self.priority[i], std::cmp::Reverse(i)));
    }

    /// The priority (critical path length) of a job.
    pub fn priority(&self, i: usize) -> u64 {
        self.priority[i]
    }

    pub fn state(&self, i: usize) -> JobState {
        self.state[i]
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// The best ready job that fits the limits, marked running.
    pub fn pop_ready(&mut self) -> Option<usize> {
        if self.running >= self.global_limit {
            return None;
        }
        let mut best: Option<(u64, usize, usize)> = None;
        for s in 0..self.ready.len() {
            if self.running_per_service[s] >= self.limit_per_service[s] {
                continue;
            }
            // Drop entries skipped since they became ready.
            while let Some(&(_, std::cmp::Reverse(i))) = self.ready[s].peek() {
                if self.state[i] == JobState::Ready {
                    break;
                }
                self.ready[s].pop();
            }
            if let Some(&(p, std::cmp::Reverse(i))) = self.ready[s].peek() {
                let better = match best {
                    None => true,
                    Some((bp, bi, _)) => p > bp || (p == bp && i < bi),
                };
                if better {
                    best = Some((p, i, s));
                }
            }
        }
        let (_, i, s) = best?;
        self.ready[s].pop();
        self.state[i] = JobState::Running;
        self.running += 1;
        self.running_per_service[s] += 1;
        Some(i)
    }

    fn release(&mut self, i: usize) {
        if self.state[i] == JobState::Running {
            self.running -= 1;
            self.running_per_service[self.service[i]] -= 1;
        }
    }

    /// Marks a running (or ready) job done; returns how many jobs became ready.
    pub fn succeed(&mut self, i: usize) -> usize {
        self.release(i);
        self.state[i] = JobState::Done;
        let mut n = 0;
        for k in 0..self.dependents[i].len() {
            let d = self.dependents[i][k];
            self.left[d] -= 1;
            if self.left[d] == 0 && self.state[d] == JobState::Waiting {
                self.make_ready(d);
                n += 1;
            }
        }
        n
    }

    /// Marks a job failed and skips everything downstream; returns the skipped jobs.
    pub fn fail(&mut self, i: usize) -> Vec<usize> {
        self.release(i);
        self.state[i] = JobState::Failed;
        let mut skipped = Vec::new();
        let mut stack = self.dependents[i].clone();
        while let Some(d) = stack.pop() {
            if matches!(self.state[d], JobState::Waiting | JobState::Ready) {
                self.state[d] = JobState::Skipped;
                skipped.push(d);
                stack.extend(self.dependents[d].iter().copied());
            }
        }
        skipped
    }

    /// Skips every job not yet started (a halt). Running jobs are left to finish.
    pub fn skip_all_waiting(&mut self) -> Vec<usize> {
        let mut v = Vec::new();
        for i in 0..self.state.len() {
            if matches!(self.state[i], JobState::Waiting | JobState::Ready) {
                self.state[i] = JobState::Skipped;
                v.push(i);
            }
        }
        v
    }

    /// Brings dormant jobs into the run; their dependencies on other activated jobs count,
    /// dependencies on anything else are ignored.
    pub fn activate(&mut self, jobs: &[usize]) {
        for &i in jobs {
            if self.state[i] == JobState::Dormant {
                self.state[i] = JobState::Waiting;
            }
        }
        for &i in jobs {
            if self.state[i] != JobState::Waiting {
                continue;
            }
            self.left[i] = self.deps[i]
                .iter()
                .filter(|&&d| {
                    matches!(
                        self.state[d],
                        JobState::Waiting | JobState::Ready | JobState::Running
                    ) && jobs.contains(&d)
                })
                .count();
            if self.left[i] == 0 {
                self.make_ready(i);
            }
        }
    }

    /// Whether nothing can run any more.
    pub fn idle(&self) -> bool {
        self.running == 0
            && self.ready.iter().all(|h| {
                h.iter()
                    .all(|(_, std::cmp::Reverse(i))| self.state[*i] != JobState::Ready)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_path_goes_first() {
        // 0 -> 1 -> 2 (a chain), 3 alone: 0 has the longest chain.
        let mut q = DepQueue::new(
            vec![vec![], vec![0], vec![1], vec![]],
            vec![0; 4],
            vec![8],
            1,
            &[],
        );
        assert_eq!(q.priority(0), 3);
        assert_eq!(q.pop_ready(), Some(0));
        assert_eq!(q.pop_ready(), None, "global limit 1");
        q.succeed(0);
        assert_eq!(q.pop_ready(), Some(1));
    }

    #[test]
    fn service_limits_hold() {
        let mut q = DepQueue::new(vec![vec![]; 4], vec![0, 0, 0, 1], vec![1, 1], 8, &[]);
        let a = q.pop_ready().unwrap();
        let b = q.pop_ready().unwrap();
        assert_eq!(q.pop_ready(), None);
        assert_ne!(q.service[a], q.service[b]);
    }

    #[test]
    fn failure_skips_downstream_only() {
        let mut q = DepQueue::new(
            vec![vec![], vec![0], vec![1], vec![]],
            vec![0; 4],
            vec![8],
            8,
            &[],
        );
        let mut started = vec![];
        while let Some(i) = q.pop_ready() {
            started.push(i);
        }
        assert_eq!(started, vec![0, 3]);
        assert_eq!(q.fail(0), vec![1, 2]);
        q.succeed(3);
        assert!(q.idle());
        assert_eq!(q.state(2), JobState::Skipped);
    }
}
