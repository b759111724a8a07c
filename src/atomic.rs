//! Atomic file writes (a temporary file beside the target, fsync, rename, directory fsync) and the
//! temporaries they leave when the writer is killed between the write and the rename.
//!
//! A temporary is named `.NAME.tmp-PID`, after the file it becomes and the process that writes
//! it, so it is recognisably ours: it is never mistaken for someone else's file, and one whose
//! writer is gone is removed by the next run. This module must never remove a file that is not
//! such a temporary, nor one whose writer is still alive.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The temporary `full` is first written as by this process.
fn temporary_for(full: &Path) -> PathBuf {
    let dir = full
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(format!(
        ".{}.tmp-{}",
        full.file_name().and_then(|s| s.to_str()).unwrap_or("file"),
        std::process::id()
    ))
}

/// Writes `content` to `full` atomically, with `mode` when given. On failure the temporary is
/// removed and the old file (if any) is unchanged.
pub fn write(full: &Path, content: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let tmp = temporary_for(full);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, full)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable once the directory is.
    match tmp.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The writer's process id when `name` is one of our temporaries (`.NAME.tmp-PID`).
pub fn temporary_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (file, pid) = rest.rsplit_once(".tmp-")?;
    if file.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether the process `pid` is alive (on this machine).
pub(crate) fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether `name` is a temporary of ours whose writer is gone (killed before its rename).
pub fn is_stale_temporary(name: &str) -> bool {
    temporary_writer(name).is_some_and(|pid| !alive(pid))
}

/// Removes the stale temporaries in `dir` (all of them, or only those of the file `of`);
/// returns how many were removed.
pub fn remove_stale(dir: &Path, of: Option<&str>) -> usize {
    let mut removed = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_stale_temporary(name) {
            continue;
        }
        if let Some(of) = of {
            if !name.starts_with(&format!(".{of}.tmp-")) {
                continue;
            }
        }
        if e.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(e.path()).is_ok() {
            tracing::info!(file = %e.path().display(), "removed a temporary left by a killed run");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A pid that cannot be alive (above the kernel's limit of 2^22).
        let dead = 4_999_999;
        let mine = std::process::id();
        for name in [
            format!(".a.txt.tmp-{dead}"),
            format!(".b.txt.tmp-{mine}"),
            "a.txt".to_string(),
            ".a.txt.tmp-".to_string(),
            ".a.txt.tmp-12x".to_string(),
            "notes.tmp-1".to_string(),
        ] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        assert_eq!(temporary_writer(".a.txt.tmp-42"), Some(42));
        assert_eq!(temporary_writer("a.txt.tmp-42"), None);
        assert_eq!(remove_stale(d, Some("other.txt")), 0);
        assert_eq!(remove_stale(d, None), 1);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".a.txt.tmp-".to_string(),
                ".a.txt.tmp-12x".into(),
                format!(".b.txt.tmp-{mine}"),
                "a.txt".into(),
                "notes.tmp-1".into()
            ]
        );
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.txt");
        write(&f, b"one", Some(0o600)).unwrap();
        write(&f, b"two", None).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let e = write(&dir.path().join("missing/x.txt"), b"x", None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
