//! The state store: a snapshot plus an append-only journal. Each journal line is
//! `CRC32 JSON\n`; entries buffered together are written with one `write` and one fsync (a group
//! commit), so a chain of nodes costs one fsync per step, not a rewrite of the whole state.
//!
//! A torn last line (a crash mid-write) is expected and dropped; damage anywhere else is refused.
//! The store must never write a snapshot it has not fully serialised first (temporary file, fsync,
//! rename, directory fsync).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Entry, State, StateError, FORMAT_VERSION};

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    #[serde(flatten)]
    entry: Entry,
}

use super::io;

/// Reads a state file, refusing one that is not a regular file (a device such as /dev/zero
/// would never end). `None` when there is none.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
        Ok(m) if m.is_dir() => {
            return Err(io(path)(std::io::Error::from(
                std::io::ErrorKind::IsADirectory,
            )))
        }
        Ok(m) if !m.is_file() => {
            return Err(StateError::NotAFile {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    std::fs::read(path).map(Some).map_err(io(path))
}

/// A loaded state, writable while the caller holds the stack's lock.
pub struct StateStore {
    dir: PathBuf,
    state: State,
    journal: Option<File>,
    next_seq: u64,
    buf: Vec<u8>,
    /// Entries in `buf`, for tests and metrics.
    pending_entries: usize,
    /// fsyncs done, for metrics.
    pub fsyncs: u64,
}

struct Loaded {
    state: State,
    good_len: u64,
    last_seq: u64,
}

fn load(dir: &Path, plan: &str, stack: &str) -> Result<Loaded, StateError> {
    let snap = dir.join("state.json");
    let mut state = match read_file(&snap)? {
        Some(bytes) => {
            #[derive(Deserialize)]
            struct Version {
                #[serde(default)]
                format_version: u32,
            }
            let corrupt = |e: serde_json::Error| StateError::Corrupt {
                path: snap.clone(),
                line: e.line(),
                why: e.to_string(),
            };
            // The version first (a newer format may not parse as this one), then the whole.
            let found = serde_json::from_slice::<Version>(&bytes)
                .map_err(corrupt)?
                .format_version;
            if found > FORMAT_VERSION {
                return Err(StateError::Newer {
                    path: snap,
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            let s: State = serde_json::from_slice(&bytes).map_err(corrupt)?;
            if s.plan != plan {
                return Err(StateError::WrongPlan {
                    path: snap,
                    found: s.plan,
                    wanted: plan.into(),
                });
            }
            if s.stack != stack {
                return Err(StateError::WrongStack {
                    path: snap,
                    found: s.stack,
                    wanted: stack.into(),
                });
            }
            s
        }
        None => State::new(plan, stack),
    };
    let jpath = dir.join("journal.log");
    let bytes = read_file(&jpath)?.unwrap_or_default();
    let mut offset = 0usize;
    let mut last_seq = state.journal_seq;
    let mut line_no = 0usize;
    while offset < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[offset..].iter().position(|&b| b == b'\n') else {
            break; // torn: no newline yet
        };
        let line = &bytes[offset..offset + nl];
        let is_last = offset + nl + 1 >= bytes.len();
        match parse_line(line) {
            Ok(l) => {
                if l.seq <= last_seq && l.seq > state.journal_seq {
                    return Err(StateError::Corrupt {
                        path: jpath,
                        line: line_no,
                        why: format!("sequence {} after {}", l.seq, last_seq),
                    });
                }
                if l.seq > state.journal_seq {
                    state.apply(&l.entry);
                    last_seq = l.seq;
                }
            }
            Err(_) if is_last => break, // torn last record: dropped
            Err(why) => {
                return Err(StateError::Corrupt {
                    path: jpath,
                    line: line_no,
                    why,
                })
            }
        }
        offset += nl + 1;
    }
    Ok(Loaded {
        state,
        good_len: offset as u64,
        last_seq,
    })
}

fn parse_line(line: &[u8]) -> Result<Line, String> {
    let s = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let (crc, json) = s.split_once(' ').ok_or("no checksum")?;
    let want = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field".to_string())?;
    if crc32fast::hash(json.as_bytes()) != want {
        return Err("checksum mismatch".into());
    }
    serde_json::from_str(json).map_err(|e| format!("bad record: {e}"))
}

impl StateStore {
    /// Reads a stack's state without writing anything (preview, state list/show).
    pub fn read(dir: &Path, plan: &str, stack: &str) -> Result<State, StateError> {
        Ok(load(dir, plan, stack)?.state)
    }

    /// Opens for writing; the caller must hold the stack's [`super::Lock`]. A torn last record is
    /// cut off here.
    pub fn open(dir: &Path, plan: &str, stack: &str) -> Result<StateStore, StateError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let loaded = load(dir, plan, stack)?;
        // A snapshot a killed run was writing never became the state: its temporary goes.
        crate::atomic::remove_stale(dir, Some("state.json"));
        let jpath = dir.join("journal.log");
        let f = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&jpath)
            .map_err(io(&jpath))?;
        let len = f.metadata().map_err(io(&jpath))?.len();
        if len != loaded.good_len {
            f.set_len(loaded.good_len).map_err(io(&jpath))?;
            f.sync_all().map_err(io(&jpath))?;
        }
        drop(f);
        let f = OpenOptions::new()
            .append(true)
            .open(&jpath)
            .map_err(io(&jpath))?;
        let mut store = StateStore {
            dir: dir.to_path_buf(),
            state: loaded.state,
            journal: Some(f),
            next_seq: loaded.last_seq + 1,
            buf: Vec::new(),
            pending_entries: 0,
            fsyncs: 0,
        };
        if store.state.lineage.is_empty() {
            // First write of this state: fix its lineage in a snapshot.
            store.state.lineage = super::new_lineage();
            store.compact()?;
        }
        Ok(store)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Applies `e` in memory and buffers it; durable after [`StateStore::commit`].
    pub fn append(&mut self, e: Entry) {
        let line = Line {
            seq: self.next_seq,
            entry: e,
        };
        self.next_seq += 1;
        let json = serde_json::to_string(&line).expect("state entries serialise");
        self.buf
            .extend_from_slice(format!("{:08x} ", crc32fast::hash(json.as_bytes())).as_bytes());
        self.buf.extend_from_slice(json.as_bytes());
        self.buf.push(b'\n');
        self.state.apply(&line.entry);
        self.pending_entries += 1;
    }

    /// Whether entries wait for a commit.
    pub fn dirty(&self) -> bool {
        self.pending_entries > 0
    }

    /// Writes buffered entries with one write and one fsync.
    pub fn commit(&mut self) -> Result<(), StateError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let jpath = self.dir.join("journal.log");
        let f = self.journal.as_mut().expect("open for writing");
        f.write_all(&self.buf).map_err(io(&jpath))?;
        f.sync_data().map_err(io(&jpath))?;
        self.fsyncs += 1;
        tracing::debug!(
            entries = self.pending_entries,
            bytes = self.buf.len(),
            "journal commit"
        );
        self.buf.clear();
        self.pending_entries = 0;
        Ok(())
    }

    /// Folds the journal into a new snapshot and empties the journal.
    pub fn compact(&mut self) -> Result<(), StateError> {
        self.commit()?;
        let mut snap = self.state.clone();
        snap.journal_seq = self.next_seq - 1;
        let mut bytes = serde_json::to_vec_pretty(&snap).expect("state serialises");
        bytes.push(b'\n');
        let path = self.dir.join("state.json");
        crate::atomic::write(&path, &bytes, None).map_err(io(&path))?;
        self.state.journal_seq = snap.journal_seq;
        tracing::debug!(
            serial = snap.serial,
            seq = snap.journal_seq,
            "state compacted into a snapshot"
        );
        let jpath = self.dir.join("journal.log");
        let f = self.journal.as_mut().expect("open for writing");
        f.set_len(0).map_err(io(&jpath))?;
        f.sync_all().map_err(io(&jpath))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeRecord, StepRecord};

    fn rec() -> NodeRecord {
        NodeRecord::Step(StepRecord {
            type_name: "wait.sleep".into(),
            done_at: "t".into(),
            triggers: Default::default(),
            outputs: Default::default(),
            deps: vec![],
        })
    }

    #[test]
    fn journal_replays_and_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "p", "s").unwrap();
        s.append(Entry::Record {
            node: "a".into(),
            record: rec(),
        });
        s.append(Entry::Record {
            node: "b".into(),
            record: rec(),
        });
        s.commit().unwrap();
        let expected = s.state().clone();
        drop(s);
        // A torn record at the end.
        let jp = dir.path().join("journal.log");
        let mut f = OpenOptions::new().append(true).open(&jp).unwrap();
        f.write_all(b"0badc0de {\"seq\":3,\"entry\":\"rec").unwrap();
        let st = StateStore::read(dir.path(), "p", "s").unwrap();
        assert_eq!(st, expected);
        // Reopening cuts it off, and new entries follow.
        let mut s = StateStore::open(dir.path(), "p", "s").unwrap();
        s.append(Entry::Remove { node: "a".into() });
        s.commit().unwrap();
        let st = StateStore::read(dir.path(), "p", "s").unwrap();
        assert_eq!(st.nodes.keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn damage_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "p", "s").unwrap();
        for n in ["a", "b", "c"] {
            s.append(Entry::Record {
                node: n.into(),
                record: rec(),
            });
            s.commit().unwrap();
        }
        drop(s);
        let jp = dir.path().join("journal.log");
        let text = std::fs::read_to_string(&jp).unwrap();
        let damaged = text.replacen("\"b\"", "\"x\"", 1);
        std::fs::write(&jp, &damaged).unwrap();
        let err = StateStore::read(dir.path(), "p", "s")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("journal.log:2: state is damaged (checksum mismatch)"),
            "{err}"
        );
        assert!(StateStore::open(dir.path(), "p", "s").is_err());
        assert_eq!(
            std::fs::read_to_string(&jp).unwrap(),
            damaged,
            "left untouched"
        );
    }

    #[test]
    fn compaction_keeps_state_and_serial() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "p", "s").unwrap();
        s.append(Entry::Record {
            node: "a".into(),
            record: rec(),
        });
        s.compact().unwrap();
        s.append(Entry::Record {
            node: "b".into(),
            record: rec(),
        });
        s.commit().unwrap();
        let mem = s.state().clone();
        drop(s);
        let st = StateStore::read(dir.path(), "p", "s").unwrap();
        assert_eq!(st.nodes, mem.nodes);
        assert_eq!(st.serial, mem.serial);
    }

    #[test]
    fn newer_format_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, "{\"format_version\": 99}").unwrap();
        let err = StateStore::open(dir.path(), "p", "s")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("state format 99 is newer"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"format_version\": 99}"
        );
    }
}
