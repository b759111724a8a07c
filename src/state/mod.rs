//! What is known to exist: one state per stack, a snapshot (`state.json`) plus an append-only
//! journal (`journal.log`) of intents and outcomes, and the lock that serialises writers.
//!
//! State types are the only serialised types of the engine. This module must never overwrite a
//! state it could not read (corrupt or newer format): it refuses and says why. Secrets never
//! reach it: inputs are stored with secret references, not values.

mod journal;
mod lock;
mod remote;

pub use journal::StateStore;
pub use lock::{Lock, LockInfo};
pub use remote::{Object, RemoteStore, StateAt};

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::value::Attrs;

/// The state format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// A problem with a stack's state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("{path} is not a regular file (a device, a socket or a pipe), so it cannot hold state; it was not read. Move it away and point `state_dir` at a directory of the stack's own.")]
    NotAFile { path: PathBuf },
    #[error("{path}:{line}: state is damaged ({why}); it was not changed. Restore it from version control or a backup; `plan refresh` can rebuild outputs once it reads again.")]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{path}: state format {found} is newer than this build reads ({supported}); it was not changed. Use a newer `plan` binary.")]
    Newer {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: state belongs to plan `{found}`, but the stack names plan `{wanted}`; it was not changed. Point `state_dir` elsewhere or restore the stack's `plan`.")]
    WrongPlan {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("{path}: state belongs to stack `{found}`, not to stack `{wanted}`; it was not changed. Two stacks never share a state directory: give `{wanted}` a `state_dir` of its own (or remove the key: the default is .cutover/{wanted}).")]
    WrongStack {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("{location}: {why}")]
    Remote { location: String, why: String },
    #[error("{location}: another run wrote this stack's state at the same position ({name}) while this run held what it thought was the lock; nothing more was written. Was the lock broken with `plan state ... unlock` while a run was alive? Run the command again: it reads the state as it now is and reconciles what this run did.")]
    Conflict { location: String, name: String },
    #[error("{location} already holds a state; it was not changed. `plan state STACK push` only fills an empty location: `plan state STACK pull` shows what is there.")]
    NotEmpty { location: String },
    #[error("stack `{stack}` is locked by {holder} (the lock object {location}); wait for that run to finish. If it died (a lost machine or a killed runner), `plan state {stack} unlock` checks that it no longer renews the lock and breaks it.")]
    RemoteLocked {
        stack: String,
        location: String,
        holder: String,
    },
    #[error("{location}: the lock of stack `{stack}` is held by {holder}, which renewed it {age} ago: that run is alive, so the lock stays. It renews the lock every {renew} while it runs; `unlock` breaks a lock that has not been renewed for {stale}.")]
    LockAlive {
        stack: String,
        location: String,
        holder: String,
        age: String,
        renew: String,
        stale: String,
    },
    #[error("stack `{stack}` is locked by {holder}; wait for it to finish, or stop that process. (The lock is an OS file lock on {path}: it ends with its process.)")]
    Locked {
        stack: String,
        path: PathBuf,
        holder: String,
    },
}

/// Wraps an OS error on `path` (a state file or its directory) in a person's words.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |e| StateError::Io {
        path: path.to_path_buf(),
        why: crate::io_error::explain(&e, "it"),
    }
}

/// What the engine was about to do to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    Delete,
    Run,
    Read,
    /// Undoing a done step (`plan rollback`).
    Rollback,
}

/// A recorded intent: written and made durable before the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub op: Op,
    pub type_name: String,
    /// The identifier the object has or will have (deterministic), for reconciling.
    pub id: String,
    pub inputs: Attrs,
    /// For steps: the trigger values it runs with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub triggers: Attrs,
    pub at: String,
    /// Set when the call failed: the object may still have changed, so it is reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Where the call went (the provider's words: `account=…, region=…`), so that reconciling
    /// it where the stack no longer points is refused instead of finding nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// A resource the plan owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceRecord {
    pub type_name: String,
    pub id: String,
    pub inputs: Attrs,
    pub outputs: Attrs,
    pub deps: Vec<String>,
    #[serde(default)]
    pub temporary: bool,
    #[serde(default)]
    pub protect: bool,
    #[serde(default)]
    pub retain_on_delete: bool,
    /// Deleted on purpose (a temporary retired): not recreated while the plan still declares it.
    #[serde(default)]
    pub retired: bool,
    /// Attributes found changed outside the tool by the last refresh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    pub updated_at: String,
    /// Where the object lives, in its provider's words (`account=…, region=…, endpoint=…`):
    /// an apply or destroy of a stack that now points elsewhere is refused. `None` in records
    /// written before locations were kept, and for types whose provider gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// A step or gate that has been done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub type_name: String,
    pub done_at: String,
    /// Trigger values it ran with: a change runs it again.
    pub triggers: Attrs,
    pub outputs: Attrs,
    pub deps: Vec<String>,
}

/// A data node's last read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub type_name: String,
    pub outputs: Attrs,
    pub read_at: String,
    pub deps: Vec<String>,
}

/// One node's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// Externally tagged (`{"resource": {...}}`) so that large states parse without buffering.
#[serde(rename_all = "lowercase")]
pub enum NodeRecord {
    Resource(ResourceRecord),
    Data(DataRecord),
    Step(StepRecord),
    Gate(StepRecord),
}

impl NodeRecord {
    pub fn outputs(&self) -> &Attrs {
        match self {
            NodeRecord::Resource(r) => &r.outputs,
            NodeRecord::Data(d) => &d.outputs,
            NodeRecord::Step(s) | NodeRecord::Gate(s) => &s.outputs,
        }
    }
    pub fn deps(&self) -> &[String] {
        match self {
            NodeRecord::Resource(r) => &r.deps,
            NodeRecord::Data(d) => &d.deps,
            NodeRecord::Step(s) | NodeRecord::Gate(s) => &s.deps,
        }
    }
    pub fn type_name(&self) -> &str {
        match self {
            NodeRecord::Resource(r) => &r.type_name,
            NodeRecord::Data(d) => &d.type_name,
            NodeRecord::Step(s) | NodeRecord::Gate(s) => &s.type_name,
        }
    }
    pub fn kind_name(&self) -> &'static str {
        match self {
            NodeRecord::Resource(_) => "resource",
            NodeRecord::Data(_) => "data",
            NodeRecord::Step(_) => "step",
            NodeRecord::Gate(_) => "gate",
        }
    }
}

/// One journal entry. Replaying entries in order onto a snapshot gives the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum Entry {
    Intent {
        node: String,
        intent: Intent,
    },
    /// The operation succeeded: the node's record is this.
    Record {
        node: String,
        record: NodeRecord,
    },
    /// The object is gone (deleted, or found absent): forget the node.
    Remove {
        node: String,
    },
    /// The intent turned out to have had no effect (reconciled): forget the intent only.
    ClearIntent {
        node: String,
    },
    /// The call failed: keep the intent, marked, so the next run reconciles it.
    Failed {
        node: String,
        error: String,
    },
    /// A node renamed (`state mv` or a `moved` declaration).
    Rename {
        from: String,
        to: String,
    },
}

/// The state of one stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    /// Random at creation: a saved plan applies only to the state it was made from.
    pub lineage: String,
    /// Grows with every change.
    pub serial: u64,
    pub plan: String,
    pub stack: String,
    /// The last journal entry folded into this snapshot.
    pub journal_seq: u64,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Intents with no outcome yet: reconciled on the next run.
    #[serde(default)]
    pub pending: BTreeMap<String, Intent>,
}

/// A new lineage: random enough to tell two states apart.
pub fn new_lineage() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:016x}{:08x}", nanos as u64, std::process::id())
}

/// The current time, RFC 3339, seconds.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl State {
    /// An empty state that does not exist on disk yet (its lineage is empty until first written).
    pub fn new(plan: &str, stack: &str) -> State {
        State {
            format_version: FORMAT_VERSION,
            lineage: String::new(),
            serial: 0,
            plan: plan.into(),
            stack: stack.into(),
            journal_seq: 0,
            nodes: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Applies one entry.
    pub fn apply(&mut self, e: &Entry) {
        self.serial += 1;
        match e {
            Entry::Intent { node, intent } => {
                self.pending.insert(node.clone(), intent.clone());
            }
            Entry::Record { node, record } => {
                self.pending.remove(node);
                self.nodes.insert(node.clone(), record.clone());
            }
            Entry::Remove { node } => {
                self.pending.remove(node);
                self.nodes.remove(node);
            }
            Entry::ClearIntent { node } => {
                self.pending.remove(node);
            }
            Entry::Failed { node, error } => {
                if let Some(i) = self.pending.get_mut(node) {
                    i.failed = Some(error.clone());
                }
            }
            Entry::Rename { from, to } => {
                if let Some(r) = self.nodes.remove(from) {
                    self.nodes.insert(to.clone(), r);
                }
                if let Some(i) = self.pending.remove(from) {
                    self.pending.insert(to.clone(), i);
                }
                for r in self.nodes.values_mut() {
                    let deps = match r {
                        NodeRecord::Resource(x) => &mut x.deps,
                        NodeRecord::Data(x) => &mut x.deps,
                        NodeRecord::Step(x) | NodeRecord::Gate(x) => &mut x.deps,
                    };
                    for d in deps.iter_mut() {
                        if d == from {
                            *d = to.clone();
                        }
                    }
                }
            }
        }
    }
}
