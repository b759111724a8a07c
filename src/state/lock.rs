//! The per-stack lock: an OS file lock (it ends with the process that holds it) beside a record of
//! who holds it, so a second writer fails at once and names the holder.
//!
//! Kept remotely, the lock is an object created only if absent, naming its holder, renewed by a
//! thread while the run lasts and deleted (only while it is still the one this run wrote) when
//! the run ends. A holder that died leaves it: `plan state STACK unlock` breaks it only when its
//! process is gone from this machine or it has not been renewed for [`STALE`].
//!
//! The lock must never be taken by reading commands (preview, state list/show); only by commands
//! that write state. A remote lock is never broken silently.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::remote::{RemoteStore, StateAt, LOCK_NAME};
use super::StateError;

/// How often a run renews a remote lock it holds.
pub const RENEW: Duration = Duration::from_secs(10);
/// How long a remote lock must have gone without renewal before `unlock` breaks it.
pub const STALE: Duration = Duration::from_secs(60);

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub started: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// When a remote lock was last renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed: Option<String>,
    /// Random per run: a retried create that had acted is recognised as this run's own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = if self.user.is_empty() {
            String::new()
        } else {
            format!("{} ", self.user)
        };
        write!(
            f,
            "{who}pid {} on {} since {} (`{}`)",
            self.pid, self.host, self.started, self.command
        )
    }
}

impl LockInfo {
    fn new(command: &str) -> LockInfo {
        LockInfo {
            pid: std::process::id(),
            host: hostname(),
            started: super::now(),
            command: command.into(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_default(),
            renewed: None,
            id: String::new(),
        }
    }

    /// How long ago a remote lock was last renewed (zero when its clock is ahead of ours).
    fn age(&self) -> Duration {
        self.renewed
            .as_deref()
            .or(Some(self.started.as_str()))
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
            .unwrap_or(Duration::MAX)
    }
}

/// A held lock; released on drop (and, locally, by the OS if the process dies).
pub struct Lock {
    inner: Inner,
}

enum Inner {
    Local {
        _file: File,
        path: PathBuf,
        info_path: PathBuf,
    },
    Remote(RemoteLock),
}

/// A remote lock held by this run, with the thread that renews it.
struct RemoteLock {
    store: Arc<dyn RemoteStore>,
    etag: Arc<Mutex<String>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

impl Lock {
    /// Takes the lock of the state at `at`, or fails at once naming the holder.
    pub fn acquire(at: &StateAt, stack: &str, command: &str) -> Result<Lock, StateError> {
        match at {
            StateAt::Local(dir) => Self::acquire_local(dir, stack, command),
            StateAt::Remote(r) => Self::acquire_remote(r.clone(), stack, command, RENEW),
        }
    }

    /// Takes a remote lock, renewed every `renew` while it is held.
    pub(crate) fn acquire_remote(
        store: Arc<dyn RemoteStore>,
        stack: &str,
        command: &str,
        renew: Duration,
    ) -> Result<Lock, StateError> {
        let mut info = LockInfo::new(command);
        info.id = super::new_lineage();
        info.renewed = Some(info.started.clone());
        let bytes = serde_json::to_vec_pretty(&info).expect("lock records serialise");
        let location = format!("{}/{LOCK_NAME}", store.location());
        let remote = |why: String| StateError::Remote {
            location: store.location(),
            why,
        };
        let etag = match store.create(LOCK_NAME, &bytes) {
            Ok(Some(etag)) => etag,
            answered => {
                // Taken by another run, or by this one when a retried request had acted.
                match store.get(LOCK_NAME).map_err(remote)? {
                    Some(o) => {
                        let holder: Option<LockInfo> = serde_json::from_slice(&o.bytes).ok();
                        match holder {
                            Some(h) if h.id == info.id => o.etag,
                            h => {
                                return Err(StateError::RemoteLocked {
                                    stack: stack.into(),
                                    location,
                                    holder: h.map(|h| h.to_string()).unwrap_or_else(|| {
                                        "a record this build cannot read".into()
                                    }),
                                })
                            }
                        }
                    }
                    None => {
                        return Err(remote(match answered {
                            Err(why) => why,
                            // Let go between the create and the read: try again.
                            _ => "the lock was let go while it was being taken; run the command again".into(),
                        }));
                    }
                }
            }
        };
        let etag = Arc::new(Mutex::new(etag));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (s2, e2, stack2) = (store.clone(), etag.clone(), stack.to_string());
        let renewer = std::thread::Builder::new()
            .name("state-lock".into())
            .spawn(move || loop {
                match stopped.recv_timeout(renew) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                info.renewed = Some(super::now());
                let bytes = serde_json::to_vec_pretty(&info).expect("lock records serialise");
                let current = e2.lock().unwrap().clone();
                match s2.replace(LOCK_NAME, &bytes, &current) {
                    Ok(Some(new)) => *e2.lock().unwrap() = new,
                    Ok(None) => {
                        tracing::error!(stack = %stack2, "the lock of this stack was broken or taken by another run while this one held it; its journal's conditional writes still refuse a second writer");
                        return;
                    }
                    Err(why) => tracing::warn!(stack = %stack2, %why, "the lock could not be renewed; trying again"),
                }
            })
            .map_err(|e| remote(format!("the lock's renewing thread could not start: {e}")))?;
        Ok(Lock {
            inner: Inner::Remote(RemoteLock {
                store,
                etag,
                stop: Some(stop),
                renewer: Some(renewer),
            }),
        })
    }

    fn acquire_local(dir: &Path, stack: &str, command: &str) -> Result<Lock, StateError> {
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
        let info = LockInfo::new(command);
        if let Err(e) = std::fs::write(&info_path, serde_json::to_vec_pretty(&info).unwrap()) {
            // A full disk must not leave an empty holder record (or the lock file) behind.
            let _ = std::fs::remove_file(&info_path);
            let _ = std::fs::remove_file(&path);
            return Err(super::io(&info_path)(e));
        }
        Ok(Lock {
            inner: Inner::Local {
                _file: file,
                path,
                info_path,
            },
        })
    }

    /// The recorded holder, if any record exists.
    pub fn holder(dir: &Path) -> Option<LockInfo> {
        let bytes = std::fs::read(dir.join("lock.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Breaks a lock whose holder is gone; returns the holder it broke (`None`: not locked).
    /// Locally it refuses while a live process holds the OS lock; remotely while the holder's
    /// process is alive on this machine, or (elsewhere) it renewed the lock within [`STALE`].
    pub fn unlock(at: &StateAt, stack: &str) -> Result<Option<LockInfo>, StateError> {
        match at {
            StateAt::Local(dir) => {
                let stale = Self::holder(dir);
                let lock = Self::acquire_local(dir, stack, "unlock")?;
                drop(lock);
                Ok(stale)
            }
            StateAt::Remote(r) => {
                let remote = |why: String| StateError::Remote {
                    location: r.location(),
                    why,
                };
                let Some(o) = r.get(LOCK_NAME).map_err(remote)? else {
                    return Ok(None);
                };
                let holder: LockInfo = serde_json::from_slice(&o.bytes).map_err(|e| {
                    remote(format!("the lock object {LOCK_NAME} is not a lock record this build reads ({e}); it was not touched"))
                })?;
                let here = holder.host == hostname();
                let gone = here && !crate::atomic::alive(holder.pid);
                let age = holder.age();
                if !gone && (here || age < STALE) {
                    return Err(StateError::LockAlive {
                        stack: stack.into(),
                        location: format!("{}/{LOCK_NAME}", r.location()),
                        holder: holder.to_string(),
                        age: humantime::format_duration(Duration::from_secs(age.as_secs()))
                            .to_string(),
                        renew: humantime::format_duration(RENEW).to_string(),
                        stale: humantime::format_duration(STALE).to_string(),
                    });
                }
                // Only the lock that was checked: a run that took it since keeps it.
                if !r.delete(LOCK_NAME, Some(&o.etag)).map_err(remote)? {
                    return Err(remote(
                        "the lock changed while it was checked (another run took it); it was not touched".into(),
                    ));
                }
                Ok(Some(holder))
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        match &mut self.inner {
            Inner::Local {
                path, info_path, ..
            } => {
                let _ = std::fs::remove_file(&*info_path);
                // Removed while still held; the next holder makes a new one (see `acquire`).
                let _ = std::fs::remove_file(&*path);
            }
            Inner::Remote(l) => {
                drop(l.stop.take());
                if let Some(t) = l.renewer.take() {
                    let _ = t.join();
                }
                let etag = l.etag.lock().unwrap().clone();
                match l.store.delete(LOCK_NAME, Some(&etag)) {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("the stack's lock was no longer this run's when it ended; it was left as it is"),
                    Err(why) => tracing::error!(%why, "the stack's lock could not be let go: `plan state STACK unlock` breaks it once it is stale"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let at = StateAt::Local(dir.path().into());
        let l = Lock::acquire(&at, "demo", "apply demo").unwrap();
        let err = Lock::acquire(&at, "demo", "apply demo")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("stack `demo` is locked by pid"), "{err}");
        assert!(err.contains("`apply demo`"), "{err}");
        drop(l);
        assert!(Lock::acquire(&at, "demo", "apply demo").is_ok());
    }

    fn record(host: &str, pid: u32, renewed: std::time::SystemTime) -> Vec<u8> {
        let mut i = LockInfo::new("apply elsewhere");
        i.host = host.into();
        i.pid = pid;
        i.id = "someone".into();
        i.renewed = Some(humantime::format_rfc3339_seconds(renewed).to_string());
        serde_json::to_vec(&i).unwrap()
    }

    #[test]
    fn a_remote_lock_is_renewed_refused_to_a_second_run_and_broken_only_when_stale() {
        use crate::state::remote::memory::Memory;
        let m = Arc::new(Memory::default());
        let at = StateAt::Remote(m.clone());
        let l = Lock::acquire_remote(m.clone(), "demo", "apply demo", Duration::from_millis(20))
            .unwrap();
        let first = m.get(LOCK_NAME).unwrap().unwrap().etag;
        std::thread::sleep(Duration::from_millis(120));
        assert_ne!(m.get(LOCK_NAME).unwrap().unwrap().etag, first, "renewed");
        let err = Lock::acquire(&at, "demo", "apply demo")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("stack `demo` is locked by") && err.contains("`apply demo`"),
            "{err}"
        );
        // Held by a live process on this machine: unlock refuses.
        let err = Lock::unlock(&at, "demo").unwrap_err().to_string();
        assert!(err.contains("that run is alive"), "{err}");
        drop(l);
        assert!(m.get(LOCK_NAME).unwrap().is_none(), "let go at the end");
        assert!(Lock::unlock(&at, "demo").unwrap().is_none());
        let now = SystemTime::now();
        // A dead process on this machine: broken at once.
        m.create(LOCK_NAME, &record(&hostname(), 4_999_999, now))
            .unwrap();
        assert_eq!(Lock::unlock(&at, "demo").unwrap().unwrap().pid, 4_999_999);
        // Another machine: only once it has not renewed for STALE.
        m.create(LOCK_NAME, &record("elsewhere", 7, now)).unwrap();
        let err = Lock::unlock(&at, "demo").unwrap_err().to_string();
        assert!(err.contains("renewed it 0s ago"), "{err}");
        assert!(m.get(LOCK_NAME).unwrap().is_some());
        m.delete(LOCK_NAME, None).unwrap();
        m.create(
            LOCK_NAME,
            &record("elsewhere", 7, now - STALE - Duration::from_secs(1)),
        )
        .unwrap();
        assert_eq!(
            Lock::unlock(&at, "demo").unwrap().unwrap().host,
            "elsewhere"
        );
        assert!(Lock::acquire(&at, "demo", "apply demo").is_ok());
    }
}
