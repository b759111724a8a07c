//! Live progress of an apply: on a terminal, a spinner per running node with its elapsed time
//! (indicatif); otherwise one plain line per start, end and status change. `--quiet` shows only
//! failures.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::executor::Event;

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Plain,
    Quiet,
}

/// The progress display of one run.
pub struct Progress {
    mode: Mode,
    start: Instant,
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        let multi = MultiProgress::with_draw_target(if mode == Mode::Live {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Progress {
            mode,
            start: Instant::now(),
            multi,
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, s: &str) {
        match self.mode {
            Mode::Live => {
                let _ = self.multi.println(s);
            }
            _ => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "[{:>7}] {s}", secs(self.start.elapsed()));
            }
        }
    }

    /// An executor event; `labels[job]` is (symbol, node, verb).
    pub fn event(&self, e: &Event, labels: &[(String, String, String)]) {
        match e {
            Event::Started { job } => {
                let (sym, node, verb) = &labels[*job];
                match self.mode {
                    Mode::Live => {
                        let pb = self.multi.add(ProgressBar::new_spinner());
                        pb.set_style(
                            ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                                .unwrap(),
                        );
                        pb.set_message(format!("{sym} {node}: {verb}"));
                        pb.enable_steady_tick(Duration::from_millis(120));
                        self.bars.lock().unwrap().insert(node.clone(), pb);
                    }
                    Mode::Plain => self.line(&format!("{sym} {node}: {verb}")),
                    Mode::Quiet => {}
                }
            }
            Event::Finished {
                job,
                elapsed,
                error,
            } => {
                let (sym, node, _) = &labels[*job];
                if let Some(pb) = self.bars.lock().unwrap().remove(node) {
                    pb.finish_and_clear();
                }
                match error {
                    None if self.mode != Mode::Quiet => {
                        self.line(&format!("{sym} {node}: done in {}", secs(*elapsed)))
                    }
                    None => {}
                    Some(err) => self.line(&format!("! {node}: failed: {err}")),
                }
            }
            Event::Skipped { job, cause } => {
                if self.mode != Mode::Quiet {
                    let (_, node, _) = &labels[*job];
                    self.line(&format!("- {node}: skipped ({cause})"));
                }
            }
            Event::Cancelling { running } => self.line(&format!(
                "Interrupted: no new work starts; waiting for {running} running node(s) to finish. Interrupt again to abort them (the next apply reconciles them)."
            )),
        }
    }

    /// A status line from a provider (a long wait).
    pub fn node_message(&self, node: &str, msg: &str) {
        match self.mode {
            Mode::Live => {
                if let Some(pb) = self.bars.lock().unwrap().get(node) {
                    let base = pb.message();
                    let base = base.split(" — ").next().unwrap_or("").to_string();
                    pb.set_message(format!("{base} — {msg}"));
                }
            }
            Mode::Plain => self.line(&format!("  {node}: {msg}")),
            Mode::Quiet => {}
        }
    }

    /// Clears the live display.
    pub fn finish(&self) {
        for (_, pb) in self.bars.lock().unwrap().drain() {
            pb.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}
