//! Where a stack's state is kept: its local directory, or a remote object store that a provider
//! gives (S3). The journal, the snapshot and the lock are built on the few operations such a store
//! offers with a condition attached: create-if-absent and replace-if-unchanged.
//!
//! This module names no provider. A remote store must never report a conditional write as done
//! when the condition failed, nor a write as failed when the store acted: callers read the object
//! back after an ambiguous answer.

use std::path::PathBuf;
use std::sync::Arc;

/// An object read back, with the tag that a conditional replace or delete names.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: String,
}

/// A remote object store under one prefix. Names are relative to the prefix (`journal/…`).
/// Errors are sentences for a person (the store, the object, the cause and the fix).
pub trait RemoteStore: Send + Sync {
    /// For messages: `s3://BUCKET/PREFIX`.
    fn location(&self) -> String;
    /// The names under `dir` (e.g. `journal/`), sorted.
    fn list(&self, dir: &str) -> Result<Vec<String>, String>;
    /// The object, or `None` when there is none.
    fn get(&self, name: &str) -> Result<Option<Object>, String>;
    /// Creates `name` only if no object has that name: `Some(etag)` when created, `None` when one
    /// exists (another writer's, or this writer's own when a retried request had acted).
    fn create(&self, name: &str, bytes: &[u8]) -> Result<Option<String>, String>;
    /// Replaces `name` only while its tag is still `etag`: the new tag, or `None` when it changed
    /// or is gone.
    fn replace(&self, name: &str, bytes: &[u8], etag: &str) -> Result<Option<String>, String>;
    /// Deletes `name` (only while its tag is `etag`, when given); `false` when the tag differed.
    fn delete(&self, name: &str, etag: Option<&str>) -> Result<bool, String>;
    /// Deletes every one of `names` (unconditionally; already gone is fine). Stores that can
    /// delete many objects in one request do so.
    fn delete_all(&self, names: &[String]) -> Result<(), String> {
        for n in names {
            self.delete(n, None)?;
        }
        Ok(())
    }
    /// One line for the run's summary (the requests made, what was retried), or `None`.
    fn summary(&self) -> Option<String> {
        None
    }
}

/// Where one stack's state lives.
#[derive(Clone)]
pub enum StateAt {
    /// `state.json`, `journal.log` and the lock files in this directory.
    Local(PathBuf),
    /// Numbered journal objects, snapshots and a lock object in a remote store.
    Remote(Arc<dyn RemoteStore>),
}

impl StateAt {
    /// For messages: the directory or the remote location.
    pub fn describe(&self) -> String {
        match self {
            StateAt::Local(d) => d.display().to_string(),
            StateAt::Remote(r) => r.location(),
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, StateAt::Remote(_))
    }

    /// The remote store's line for the run's summary; `None` for a local state.
    pub fn summary(&self) -> Option<String> {
        match self {
            StateAt::Local(_) => None,
            StateAt::Remote(r) => r.summary(),
        }
    }
}

/// The journal object holding the entries from `first_seq` on.
pub(crate) fn journal_name(first_seq: u64) -> String {
    format!("journal/{first_seq:020}.log")
}

/// The snapshot that folds the journal up to `journal_seq`.
pub(crate) fn snapshot_name(journal_seq: u64) -> String {
    format!("snapshots/{journal_seq:020}.json")
}

/// The number in a journal or snapshot object's name.
pub(crate) fn number_of(name: &str) -> Option<u64> {
    let file = name.rsplit('/').next()?;
    let digits = file.split('.').next()?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub(crate) const LOCK_NAME: &str = "lock.json";

/// An in-memory store for the engine's unit tests (never for an integration test).
#[cfg(test)]
pub(crate) mod memory {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Memory {
        pub objects: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
        next: Mutex<u64>,
        /// Creates that act and then answer with an error (a lost answer).
        pub lose_answers: Mutex<usize>,
    }

    impl Memory {
        fn tag(&self) -> u64 {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            *n
        }
    }

    impl RemoteStore for Memory {
        fn location(&self) -> String {
            "mem://state".into()
        }
        fn list(&self, dir: &str) -> Result<Vec<String>, String> {
            Ok(self
                .objects
                .lock()
                .unwrap()
                .keys()
                .filter(|k| k.starts_with(dir))
                .cloned()
                .collect())
        }
        fn get(&self, name: &str) -> Result<Option<Object>, String> {
            Ok(self.objects.lock().unwrap().get(name).map(|(b, t)| Object {
                bytes: b.clone(),
                etag: t.to_string(),
            }))
        }
        fn create(&self, name: &str, bytes: &[u8]) -> Result<Option<String>, String> {
            let tag = self.tag();
            let mut o = self.objects.lock().unwrap();
            if o.contains_key(name) {
                return Ok(None);
            }
            o.insert(name.into(), (bytes.to_vec(), tag));
            let mut lose = self.lose_answers.lock().unwrap();
            if *lose > 0 {
                *lose -= 1;
                return Err("the answer was lost".into());
            }
            Ok(Some(tag.to_string()))
        }
        fn replace(&self, name: &str, bytes: &[u8], etag: &str) -> Result<Option<String>, String> {
            let tag = self.tag();
            let mut o = self.objects.lock().unwrap();
            match o.get(name) {
                Some((_, t)) if t.to_string() == etag => {
                    o.insert(name.into(), (bytes.to_vec(), tag));
                    Ok(Some(tag.to_string()))
                }
                _ => Ok(None),
            }
        }
        fn delete(&self, name: &str, etag: Option<&str>) -> Result<bool, String> {
            let mut o = self.objects.lock().unwrap();
            if let (Some(want), Some((_, t))) = (etag, o.get(name)) {
                if t.to_string() != want {
                    return Ok(false);
                }
            }
            o.remove(name);
            Ok(true)
        }
    }
}
