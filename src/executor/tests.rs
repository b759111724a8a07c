//! The walk against an oracle: random DAGs where a job depends only on lower-numbered jobs, random
//! failures, random service limits.

use super::*;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use crate::state::{Entry, NodeRecord, StepRecord};

/// Records which outcomes are durable.
#[derive(Default, Clone)]
struct Durable {
    appended: Arc<Mutex<Vec<usize>>>,
    durable: Arc<Mutex<BTreeSet<usize>>>,
}

impl Checkpoint for Durable {
    fn append(&mut self, e: Entry) {
        if let Entry::Record { node, .. } = e {
            self.appended.lock().unwrap().push(node.parse().unwrap());
        }
    }
    fn commit(&mut self) -> Result<(), String> {
        let mut a = self.appended.lock().unwrap();
        self.durable.lock().unwrap().extend(a.drain(..));
        Ok(())
    }
}

struct Fake {
    deps: Vec<Vec<usize>>,
    fail: Vec<bool>,
    durable: Arc<Mutex<BTreeSet<usize>>>,
    /// Jobs in the order their futures began, with whether every dependency was durable then.
    ran: Arc<Mutex<Vec<(usize, bool)>>>,
    sleep_ms: u64,
}

fn rec() -> NodeRecord {
    NodeRecord::Step(StepRecord {
        type_name: "t".into(),
        done_at: "t".into(),
        triggers: Default::default(),
        outputs: Default::default(),
        deps: vec![],
    })
}

impl Work for Fake {
    type Output = ();
    fn start(&mut self, job: usize) -> Start<()> {
        let deps = self.deps[job].clone();
        let durable = self.durable.clone();
        let ran = self.ran.clone();
        let fail = self.fail[job];
        let ms = self.sleep_ms;
        Start::Run {
            intent: vec![],
            fut: Box::pin(async move {
                let ok = deps.iter().all(|d| durable.lock().unwrap().contains(d));
                ran.lock().unwrap().push((job, ok));
                if ms > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                if fail {
                    Err("boom".into())
                } else {
                    Ok(())
                }
            }),
        }
    }
    fn waiting_on(&self, job: usize) -> Option<String> {
        Some(format!("job {job}: status `creating` (12 s)"))
    }
    fn finish(&mut self, job: usize, result: Result<(), String>) -> Finish {
        match result {
            Ok(()) => Finish {
                entries: vec![Entry::Record {
                    node: job.to_string(),
                    record: rec(),
                }],
                error: None,
            },
            Err(e) => Finish {
                entries: vec![],
                error: Some(e),
            },
        }
    }
}

fn fake(ck: &Durable, deps: &[Vec<usize>], fail: &[bool], sleep_ms: u64) -> Fake {
    Fake {
        deps: deps.to_vec(),
        fail: fail.to_vec(),
        durable: ck.durable.clone(),
        ran: Arc::new(Mutex::new(vec![])),
        sleep_ms,
    }
}

fn jobs(deps: &[Vec<usize>], services: &[usize], policy: OnFailure) -> Vec<JobSpec> {
    deps.iter()
        .enumerate()
        .map(|(i, d)| JobSpec {
            label: i.to_string(),
            deps: d.clone(),
            service: format!("s{}", services[i]),
            timeout: std::time::Duration::from_secs(10),
            on_failure: policy.clone(),
            dormant: false,
        })
        .collect()
}

fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<bool>, Vec<usize>, usize)> {
    (1usize..40).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| {
                proptest::collection::btree_set(0..i.max(1), 0..=i.min(4))
                    .prop_map(move |s| s.into_iter().filter(|&d| d < i).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>();
        (
            deps,
            proptest::collection::vec(proptest::bool::weighted(0.15), n),
            proptest::collection::vec(0usize..3, n),
            1usize..6,
        )
    })
}

fn walk(
    deps: &[Vec<usize>],
    fail: &[bool],
    services: &[usize],
    global: usize,
    policy: OnFailure,
) -> (Report, Vec<(usize, bool)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ck = Durable::default();
    let mut fake = fake(&ck, deps, fail, 0);
    let limits = Limits {
        global,
        per_service: [("s0".to_string(), 1usize), ("s1".to_string(), 2)].into(),
        default_service: usize::MAX,
    };
    let (_tx, rx) = tokio::sync::watch::channel(0u32);
    let mut ck2 = ck.clone();
    let report = rt.block_on(run(
        &jobs(deps, services, policy),
        &limits,
        &mut fake,
        &mut ck2,
        rx,
        &|_| {},
    ));
    let ran = fake.ran.lock().unwrap().clone();
    (report, ran)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn skip_policy_matches_the_oracle((deps, fail, services, global) in dag()) {
        let (report, ran) = walk(&deps, &fail, &services, global, OnFailure::Skip);
        let n = deps.len();
        let mut seen = BTreeSet::new();
        for (job, deps_durable) in &ran {
            prop_assert!(seen.insert(*job), "job {} ran twice", job);
            prop_assert!(*deps_durable, "job {} started before its dependencies' outcomes were durable", job);
        }
        // Oracle: a job runs iff all its dependencies ran and succeeded.
        let mut ok = vec![false; n];
        for i in 0..n {
            let should_run = deps[i].iter().all(|&d| ok[d]);
            prop_assert_eq!(seen.contains(&i), should_run, "job {}", i);
            ok[i] = should_run && !fail[i];
            match &report.outcomes[i] {
                Outcome::Done => prop_assert!(ok[i]),
                Outcome::Failed(_) => prop_assert!(should_run && fail[i]),
                Outcome::Skipped(_) => prop_assert!(!should_run),
                other => prop_assert!(false, "unexpected outcome {:?}", other),
            }
        }
        prop_assert_eq!(report.ok(), !fail.iter().enumerate().any(|(i, f)| *f && seen.contains(&i)));
    }

    #[test]
    fn halt_policy_never_starts_work_after_a_failure_is_seen((deps, fail, services, _g) in dag()) {
        // Global limit 1: jobs run one at a time, so after the first failure nothing else starts.
        let (report, ran) = walk(&deps, &fail, &services, 1, OnFailure::Halt);
        let first_fail = ran.iter().position(|(j, _)| fail[*j]);
        if let Some(pos) = first_fail {
            prop_assert_eq!(ran.len(), pos + 1);
            prop_assert!(report.halted);
        } else {
            prop_assert!(report.ok());
        }
    }
}

#[test]
fn compensation_runs_only_on_failure() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // 0 fails and names 2 as its compensation; 1 depends on 0; 2 is dormant.
    let deps = vec![vec![], vec![0], vec![]];
    for fail0 in [false, true] {
        let ck = Durable::default();
        let mut fake = fake(&ck, &deps, &[fail0, false, false], 0);
        let mut js = jobs(&deps, &[0, 0, 0], OnFailure::Skip);
        js[0].on_failure = OnFailure::Compensate(vec![2]);
        js[2].dormant = true;
        let (_tx, rx) = tokio::sync::watch::channel(0u32);
        let mut ck2 = ck.clone();
        let report = rt.block_on(run(
            &js,
            &Limits::default(),
            &mut fake,
            &mut ck2,
            rx,
            &|_| {},
        ));
        let ran: Vec<usize> = fake.ran.lock().unwrap().iter().map(|x| x.0).collect();
        if fail0 {
            assert_eq!(ran, vec![0, 2]);
            assert!(report.compensated);
            assert_eq!(report.outcomes[2], Outcome::Done);
        } else {
            assert_eq!(ran, vec![0, 1]);
            assert_eq!(report.outcomes[2], Outcome::Dormant);
            assert!(report.ok());
        }
    }
}

#[test]
fn cancel_stops_scheduling_and_lets_running_jobs_finish() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let deps: Vec<Vec<usize>> = (0..5)
        .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
        .collect();
    let ck = Durable::default();
    let mut fake = fake(&ck, &deps, &[false; 5], 50);
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    let mut ck2 = ck.clone();
    let report = rt.block_on(async {
        let js = jobs(&deps, &[0; 5], OnFailure::Skip);
        let h = async {
            tokio::time::sleep(std::time::Duration::from_millis(75)).await;
            tx.send(1).unwrap();
        };
        let limits = Limits::default();
        let (r, _) = tokio::join!(run(&js, &limits, &mut fake, &mut ck2, rx, &|_| {}), h);
        r
    });
    assert!(report.cancelled);
    assert_eq!(report.outcomes[0], Outcome::Done);
    assert_eq!(
        report.outcomes[1],
        Outcome::Done,
        "the running job finished"
    );
    assert_eq!(report.outcomes[2], Outcome::NotStarted);
    assert!(
        ck.durable.lock().unwrap().contains(&1),
        "its outcome is durable"
    );
}

#[test]
fn a_job_that_outlives_its_timeout_fails_with_a_clear_message() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ck = Durable::default();
    let mut fake = fake(&ck, &[vec![]], &[false], 200);
    let mut js = jobs(&[vec![]], &[0], OnFailure::Skip);
    js[0].timeout = std::time::Duration::from_millis(20);
    let (_tx, rx) = tokio::sync::watch::channel(0u32);
    let mut ck2 = ck.clone();
    let report = rt.block_on(run(
        &js,
        &Limits::default(),
        &mut fake,
        &mut ck2,
        rx,
        &|_| {},
    ));
    match &report.outcomes[0] {
        Outcome::Failed(e) => assert!(
            e.contains("`0` timed out after 20ms (last seen: job 0: status `creating` (12 s)); raise the node's `.timeout(d)`"),
            "{e}"
        ),
        o => panic!("{o:?}"),
    }
}

/// A node without `.timeout(d)` gets its type's default (a copy of terabytes waits days, not
/// the hour every other operation gets); one with it keeps its own.
#[test]
fn a_types_default_timeout_applies_when_the_node_sets_none() {
    use crate::provider::builtin::Sleep;
    let r = crate::provider::registry_for("local");
    let p = crate::dsl::Plan::named("p", "s", "local");
    p.add("own", Sleep::ms(1))
        .timeout(std::time::Duration::from_secs(5));
    p.add("typed", Sleep::ms(1));
    let g = crate::graph::Graph::build(p.finish(), &|t, k| r.resolve(t, k)).unwrap();
    // A node gone from the plan: its forget job gets the type its record names.
    let mut state = crate::state::State::new("p", "s");
    let mut gone = rec();
    if let NodeRecord::Step(s) = &mut gone {
        s.type_name = "wait.sleep".into();
    }
    state.nodes.insert("gone".into(), gone);
    let cs = crate::planner::plan(&g, &state, &r, &crate::planner::Options::default()).unwrap();
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    let (jobs, _) = super::work::build_jobs(&cs, &g, &state, &|t, _| {
        assert_eq!(t, "wait.sleep");
        week
    });
    let of = |n: &str| jobs.iter().find(|j| j.label.contains(n)).unwrap().timeout;
    assert_eq!(of("own"), std::time::Duration::from_secs(5));
    assert_eq!(of("typed"), week);
    assert_eq!(of("gone"), week);
}
