//! Operating-system errors in a person's words: what went wrong with a file or directory and
//! what to do about it, in one sentence, for every place that reads or writes the project's files
//! (stack files, state, saved plans, previews written with `--out`).
//!
//! This module only words errors; it must never retry, create or remove anything.

use std::io::{Error, ErrorKind};

/// One sentence on why `e` happened to `what` (e.g. "the state file") and the fix, without the
/// OS's error number.
pub fn explain(e: &Error, what: &str) -> String {
    match e.kind() {
        ErrorKind::NotFound => format!("{what} does not exist; check the path"),
        ErrorKind::PermissionDenied => format!("permission denied: this user may not use {what}; fix its owner or mode, or run as the user that owns it"),
        ErrorKind::IsADirectory => format!("{what} is a directory, where a file belongs; move the directory away"),
        ErrorKind::NotADirectory => "a part of the path is a file, where a folder belongs; move that file away or fix the path".to_string(),
        ErrorKind::ReadOnlyFilesystem => format!("{what} is on a read-only file system; remount it writable or point the path at a writable disk"),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => format!("the disk holding {what} is full; free some space and run the command again (what was saved before stays readable)"),
        ErrorKind::FileTooLarge => format!("{what} is larger than this system lets a file grow (ulimit -f); raise the limit"),
        ErrorKind::AlreadyExists => format!("something is in the way of {what} (a file where a folder belongs?); move it away"),
        ErrorKind::InvalidData => format!("{what} is not text this program reads"),
        _ => strip_code(e),
    }
}

/// The OS's message without its ` (os error N)` tail.
fn strip_code(e: &Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_says_what_to_do_without_the_error_number() {
        for (code, says) in [
            (libc::ENOENT, "does not exist"),
            (libc::EACCES, "permission denied"),
            (libc::EISDIR, "is a directory"),
            (libc::ENOTDIR, "is a file, where a folder belongs"),
            (libc::EROFS, "read-only file system"),
            (libc::ENOSPC, "is full; free some space"),
            (libc::EDQUOT, "is full"),
            (libc::EIO, "Input/output error"),
        ] {
            let m = explain(&Error::from_raw_os_error(code), "the state file");
            assert!(m.contains(says), "{code}: {m}");
            assert!(!m.contains("os error"), "{m}");
        }
    }
}
