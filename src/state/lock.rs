//! The per-stack lock: an OS file lock (it ends with the process that holds it) beside a record of
//! who holds it, so a second writer fails at once and names the holder.
//!
//! The lock must never be taken by reading commands (preview, state list/show); only by commands
//! that write state.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StateError;

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub started: String,
    pub command: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {} (`{}`)",
            self.pid, self.host, self.started, self.command
        )
    }
}

/// A held lock; released on drop (and by the OS if the process dies).
pub struct Lock {
    _file: File,
    path: PathBuf,
    info_path: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

impl Lock {
    /// Takes the lock of the state in `dir`, or fails naming the holder.
    pub fn acquire(dir: &Path, stack: &str, command: &str) -> Result<Lock, StateError> {
        std::fs::create_dir_all(dir).map_err(super::io(dir))?;
        let path = dir.join("lock");
        let info_path = dir.join("lock.json");
        // A holder removes the lock file as it lets go: a lock taken on a file that is no longer
        // at `path` is taken again on the file that is.
        let mut tries = 0;
        let file = loop {
            tries += 1;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(super::io(&path))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let holder = Self::holder(dir)
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "another process".into());
                    return Err(StateError::Locked {
                        stack: stack.into(),
                        path,
                        holder,
                    });
                }
                Err(TryLockError::Error(e)) => return Err(super::io(&path)(e)),
            }
            let held = file.metadata().map_err(super::io(&path))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => break file,
                _ if tries < 100 => continue,
                _ => {
                    return Err(StateError::Locked {
                        stack: stack.into(),
                        path,
                        holder: "other processes taking and letting go of it over and over".into(),
                    })
                }
            }
        };
        let info = LockInfo {
            pid: std::process::id(),
            host: hostname(),
            started: super::now(),
            command: command.into(),
        };
        if let Err(e) = std::fs::write(&info_path, serde_json::to_vec_pretty(&info).unwrap()) {
            // A full disk must not leave an empty holder record (or the lock file) behind.
            let _ = std::fs::remove_file(&info_path);
            let _ = std::fs::remove_file(&path);
            return Err(super::io(&info_path)(e));
        }
        Ok(Lock {
            _file: file,
            path,
            info_path,
        })
    }

    /// The recorded holder, if any record exists.
    pub fn holder(dir: &Path) -> Option<LockInfo> {
        let bytes = std::fs::read(dir.join("lock.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Removes a stale holder record. Refuses while a live process holds the OS lock.
    pub fn unlock(dir: &Path, stack: &str) -> Result<Option<LockInfo>, StateError> {
        let stale = Self::holder(dir);
        let lock = Self::acquire(dir, stack, "unlock")?;
        drop(lock);
        Ok(stale)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.info_path);
        // Removed while still held; the next holder makes a new one (see `acquire`).
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let l = Lock::acquire(dir.path(), "demo", "apply demo").unwrap();
        let err = Lock::acquire(dir.path(), "demo", "apply demo")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("stack `demo` is locked by pid"), "{err}");
        assert!(err.contains("`apply demo`"), "{err}");
        drop(l);
        assert!(Lock::acquire(dir.path(), "demo", "apply demo").is_ok());
    }
}
