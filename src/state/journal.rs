//! The state store: a snapshot plus an append-only journal. Each journal line is
//! `CRC32 JSON\n`; entries buffered together are written with one `write` and one fsync (a group
//! commit), so a chain of nodes costs one fsync per step, not a rewrite of the whole state.
//!
//! A torn last line (a crash mid-write) is expected and dropped; damage anywhere else is refused.
//! The store must never write a snapshot it has not fully serialised first (temporary file, fsync,
//! rename, directory fsync).
//!
//! Kept remotely, each group commit is one journal object named after its first entry's number
//! and created only if absent, so two writers can never both commit at one position; a snapshot
//! is written before the objects it folds are deleted. Damage anywhere in a remote journal is
//! refused: a remote object is written whole or not at all.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::remote::{journal_name, number_of, snapshot_name, RemoteStore, StateAt};
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

/// Where a writable store puts its commits.
enum Sink {
    Local { dir: PathBuf, journal: File },
    Remote(Arc<dyn RemoteStore>),
}

/// A loaded state, writable while the caller holds the stack's lock.
pub struct StateStore {
    sink: Sink,
    state: State,
    next_seq: u64,
    /// The sequence number of the first entry in `buf`.
    buf_first: u64,
    buf: Vec<u8>,
    /// Entries in `buf`, for tests and metrics.
    pending_entries: usize,
    /// fsyncs (or remote writes) done, for metrics.
    pub fsyncs: u64,
}

struct Loaded {
    state: State,
    good_len: u64,
    last_seq: u64,
}

/// Parses a snapshot, refusing a newer format and another plan's or stack's state.
fn parse_snapshot(bytes: &[u8], snap: &Path, plan: &str, stack: &str) -> Result<State, StateError> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        format_version: u32,
    }
    let corrupt = |e: serde_json::Error| StateError::Corrupt {
        path: snap.to_path_buf(),
        line: e.line(),
        why: e.to_string(),
    };
    // The version first (a newer format may not parse as this one), then the whole.
    let found = serde_json::from_slice::<Version>(bytes)
        .map_err(corrupt)?
        .format_version;
    if found > FORMAT_VERSION {
        return Err(StateError::Newer {
            path: snap.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    let s: State = serde_json::from_slice(bytes).map_err(corrupt)?;
    if s.plan != plan {
        return Err(StateError::WrongPlan {
            path: snap.to_path_buf(),
            found: s.plan,
            wanted: plan.into(),
        });
    }
    if s.stack != stack {
        return Err(StateError::WrongStack {
            path: snap.to_path_buf(),
            found: s.stack,
            wanted: stack.into(),
        });
    }
    Ok(s)
}

/// Replays journal lines onto `state`. `torn_tail` says whether a damaged last line is a write a
/// crash cut short (a local file) or damage (a remote object is written whole or not at all);
/// `contiguous` demands that each entry follows the one before (a missing object is damage).
/// `after` is the last entry already replayed. Returns the length of the good prefix and the last
/// sequence number.
fn replay(
    state: &mut State,
    bytes: &[u8],
    jpath: &Path,
    torn_tail: bool,
    contiguous: bool,
    after: u64,
) -> Result<(u64, u64), StateError> {
    let mut offset = 0usize;
    let mut last_seq = after;
    let mut line_no = 0usize;
    while offset < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[offset..].iter().position(|&b| b == b'\n') else {
            if torn_tail {
                break; // torn: no newline yet
            }
            return Err(StateError::Corrupt {
                path: jpath.to_path_buf(),
                line: line_no,
                why: "an entry without its end".into(),
            });
        };
        let line = &bytes[offset..offset + nl];
        let is_last = offset + nl + 1 >= bytes.len();
        match parse_line(line) {
            Ok(l) => {
                if l.seq <= last_seq && l.seq > state.journal_seq {
                    return Err(StateError::Corrupt {
                        path: jpath.to_path_buf(),
                        line: line_no,
                        why: format!("sequence {} after {}", l.seq, last_seq),
                    });
                }
                if contiguous && l.seq > state.journal_seq && l.seq != last_seq + 1 {
                    return Err(StateError::Corrupt {
                        path: jpath.to_path_buf(),
                        line: line_no,
                        why: format!(
                            "entry {} follows {}: the entries between are missing",
                            l.seq, last_seq
                        ),
                    });
                }
                if l.seq > state.journal_seq {
                    state.apply(&l.entry);
                    last_seq = l.seq;
                }
            }
            Err(_) if is_last && torn_tail => break, // torn last record: dropped
            Err(why) => {
                return Err(StateError::Corrupt {
                    path: jpath.to_path_buf(),
                    line: line_no,
                    why,
                })
            }
        }
        offset += nl + 1;
    }
    Ok((offset as u64, last_seq))
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

fn load_local(dir: &Path, plan: &str, stack: &str) -> Result<Loaded, StateError> {
    let snap = dir.join("state.json");
    let mut state = match read_file(&snap)? {
        Some(bytes) => parse_snapshot(&bytes, &snap, plan, stack)?,
        None => State::new(plan, stack),
    };
    let jpath = dir.join("journal.log");
    let bytes = read_file(&jpath)?.unwrap_or_default();
    let journal_seq = state.journal_seq;
    let (good_len, last_seq) = replay(&mut state, &bytes, &jpath, true, false, journal_seq)?;
    Ok(Loaded {
        state,
        good_len,
        last_seq,
    })
}

/// A remote store's error, with its location.
fn remote_err(r: &dyn RemoteStore) -> impl FnOnce(String) -> StateError + '_ {
    move |why| StateError::Remote {
        location: r.location(),
        why,
    }
}

/// The newest snapshot, then every journal object after it, in order.
fn load_remote(r: &dyn RemoteStore, plan: &str, stack: &str) -> Result<Loaded, StateError> {
    let at = |name: &str| PathBuf::from(format!("{}/{name}", r.location()));
    let snaps = r.list("snapshots/").map_err(remote_err(r))?;
    let newest = snaps.iter().filter(|n| number_of(n).is_some()).max();
    let mut state = match newest {
        Some(name) => {
            let obj = r.get(name).map_err(remote_err(r))?.ok_or_else(|| StateError::Remote {
                location: r.location(),
                why: format!("the snapshot {name} went away while it was read: another run is compacting this stack's state; run again once it ends"),
            })?;
            parse_snapshot(&obj.bytes, &at(name), plan, stack)?
        }
        None => State::new(plan, stack),
    };
    let mut segments: Vec<(u64, String)> = r
        .list("journal/")
        .map_err(remote_err(r))?
        .into_iter()
        .filter_map(|n| number_of(&n).map(|k| (k, n)))
        .filter(|(k, _)| *k > state.journal_seq)
        .collect();
    segments.sort();
    let mut last_seq = state.journal_seq;
    for (_, name) in segments {
        let obj = r.get(&name).map_err(remote_err(r))?.ok_or_else(|| StateError::Remote {
            location: r.location(),
            why: format!("the journal object {name} went away while it was read: another run is compacting this stack's state; run again once it ends"),
        })?;
        let (_, last) = replay(&mut state, &obj.bytes, &at(&name), false, true, last_seq)?;
        last_seq = last;
    }
    Ok(Loaded {
        state,
        good_len: 0,
        last_seq,
    })
}

impl StateStore {
    /// Reads a stack's state without writing anything (preview, state list/show).
    pub fn read(at: &StateAt, plan: &str, stack: &str) -> Result<State, StateError> {
        Ok(match at {
            StateAt::Local(dir) => load_local(dir, plan, stack)?.state,
            StateAt::Remote(r) => load_remote(r.as_ref(), plan, stack)?.state,
        })
    }

    /// Opens for writing; the caller must hold the stack's [`super::Lock`]. A torn last record is
    /// cut off here.
    pub fn open(at: &StateAt, plan: &str, stack: &str) -> Result<StateStore, StateError> {
        let (sink, loaded) = match at {
            StateAt::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                let loaded = load_local(dir, plan, stack)?;
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
                (
                    Sink::Local {
                        dir: dir.to_path_buf(),
                        journal: f,
                    },
                    loaded,
                )
            }
            StateAt::Remote(r) => (
                Sink::Remote(r.clone()),
                load_remote(r.as_ref(), plan, stack)?,
            ),
        };
        let mut store = StateStore {
            sink,
            state: loaded.state,
            next_seq: loaded.last_seq + 1,
            buf_first: loaded.last_seq + 1,
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

    /// Refuses a location that holds any state (the target of `plan state push`).
    pub fn refuse_occupied(at: &StateAt) -> Result<(), StateError> {
        let empty = match at {
            StateAt::Local(dir) => {
                !dir.join("state.json").exists() && !dir.join("journal.log").exists()
            }
            StateAt::Remote(r) => {
                r.list("snapshots/")
                    .map_err(remote_err(r.as_ref()))?
                    .is_empty()
                    && r.list("journal/")
                        .map_err(remote_err(r.as_ref()))?
                        .is_empty()
            }
        };
        if empty {
            Ok(())
        } else {
            Err(StateError::NotEmpty {
                location: at.describe(),
            })
        }
    }

    /// Writes `state` as the whole state of an empty location (`plan state push`): its lineage
    /// kept, so saved plans still apply. Refuses a location that holds any state.
    pub fn seed(at: &StateAt, state: &State) -> Result<(), StateError> {
        StateStore::refuse_occupied(at)?;
        let mut s = state.clone();
        s.journal_seq = 0;
        let mut bytes = serde_json::to_vec_pretty(&s).expect("state serialises");
        bytes.push(b'\n');
        match at {
            StateAt::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                let path = dir.join("state.json");
                crate::atomic::write(&path, &bytes, None).map_err(io(&path))
            }
            StateAt::Remote(r) => create_once(r.as_ref(), &snapshot_name(0), &bytes),
        }
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
        if self.buf.is_empty() {
            self.buf_first = self.next_seq;
        }
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

    /// Writes buffered entries with one write and one fsync (locally) or one conditional object
    /// write (remotely).
    pub fn commit(&mut self) -> Result<(), StateError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Local { dir, journal } => {
                let jpath = dir.join("journal.log");
                journal.write_all(&self.buf).map_err(io(&jpath))?;
                journal.sync_data().map_err(io(&jpath))?;
            }
            Sink::Remote(r) => {
                create_once(r.as_ref(), &journal_name(self.buf_first), &self.buf)?;
            }
        }
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
        match &mut self.sink {
            Sink::Local { dir, journal } => {
                let path = dir.join("state.json");
                crate::atomic::write(&path, &bytes, None).map_err(io(&path))?;
                let jpath = dir.join("journal.log");
                journal.set_len(0).map_err(io(&jpath))?;
                journal.sync_all().map_err(io(&jpath))?;
            }
            Sink::Remote(r) => {
                // The snapshot first; only then do the objects it folds go (a crash between
                // leaves objects the next load skips, never a gap).
                create_once(r.as_ref(), &snapshot_name(snap.journal_seq), &bytes)?;
                let err = remote_err(r.as_ref());
                let mut folded: Vec<String> = r
                    .list("journal/")
                    .map_err(err)?
                    .into_iter()
                    .filter(|n| number_of(n).is_some_and(|k| k <= snap.journal_seq))
                    .collect();
                folded.extend(
                    r.list("snapshots/")
                        .map_err(remote_err(r.as_ref()))?
                        .into_iter()
                        .filter(|n| number_of(n).is_some_and(|k| k < snap.journal_seq)),
                );
                // All of it is folded into the new snapshot, so the order does not matter: a
                // load starts from the newest snapshot and skips what it folds.
                r.delete_all(&folded).map_err(remote_err(r.as_ref()))?;
            }
        }
        self.state.journal_seq = snap.journal_seq;
        tracing::debug!(
            serial = snap.serial,
            seq = snap.journal_seq,
            "state compacted into a snapshot"
        );
        Ok(())
    }
}

/// Creates a journal object or snapshot that no other may have. When one of that name exists,
/// it is this writer's own only if it holds these very bytes (a retried request that had acted);
/// otherwise another run wrote the stack's state at the same position, and nothing is written.
fn create_once(r: &dyn RemoteStore, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let created = match r.create(name, bytes) {
        Ok(c) => c,
        // The answer may be lost after the store acted: what is there decides.
        Err(why) => match r.get(name) {
            Ok(Some(o)) if o.bytes == bytes => return Ok(()),
            _ => return Err(remote_err(r)(why)),
        },
    };
    if created.is_some() {
        return Ok(());
    }
    match r.get(name).map_err(remote_err(r))? {
        Some(o) if o.bytes == bytes => Ok(()),
        _ => Err(StateError::Conflict {
            location: r.location(),
            name: name.into(),
        }),
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
        let mut s = StateStore::open(&StateAt::Local(dir.path().into()), "p", "s").unwrap();
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
        let st = StateStore::read(&StateAt::Local(dir.path().into()), "p", "s").unwrap();
        assert_eq!(st, expected);
        // Reopening cuts it off, and new entries follow.
        let mut s = StateStore::open(&StateAt::Local(dir.path().into()), "p", "s").unwrap();
        s.append(Entry::Remove { node: "a".into() });
        s.commit().unwrap();
        let st = StateStore::read(&StateAt::Local(dir.path().into()), "p", "s").unwrap();
        assert_eq!(st.nodes.keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn damage_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(&StateAt::Local(dir.path().into()), "p", "s").unwrap();
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
        let err = StateStore::read(&StateAt::Local(dir.path().into()), "p", "s")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("journal.log:2: state is damaged (checksum mismatch)"),
            "{err}"
        );
        assert!(StateStore::open(&StateAt::Local(dir.path().into()), "p", "s").is_err());
        assert_eq!(
            std::fs::read_to_string(&jp).unwrap(),
            damaged,
            "left untouched"
        );
    }

    #[test]
    fn compaction_keeps_state_and_serial() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(&StateAt::Local(dir.path().into()), "p", "s").unwrap();
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
        let st = StateStore::read(&StateAt::Local(dir.path().into()), "p", "s").unwrap();
        assert_eq!(st.nodes, mem.nodes);
        assert_eq!(st.serial, mem.serial);
    }

    #[test]
    fn newer_format_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, "{\"format_version\": 99}").unwrap();
        let err = StateStore::open(&StateAt::Local(dir.path().into()), "p", "s")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("state format 99 is newer"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"format_version\": 99}"
        );
    }

    /// A record of each node in `names`, each in a commit of its own.
    fn commit_each(s: &mut StateStore, names: &[&str]) {
        for n in names {
            s.append(Entry::Record {
                node: n.to_string(),
                record: rec(),
            });
            s.commit().unwrap();
        }
    }

    fn remote() -> (Arc<crate::state::remote::memory::Memory>, StateAt) {
        let m = Arc::new(crate::state::remote::memory::Memory::default());
        (m.clone(), StateAt::Remote(m))
    }

    #[test]
    fn a_remote_journal_replays_across_compaction_and_a_second_writer_cannot_commit() {
        let (m, at) = remote();
        let mut a = StateStore::open(&at, "p", "s").unwrap();
        commit_each(&mut a, &["a", "b"]);
        assert_eq!(StateStore::read(&at, "p", "s").unwrap(), *a.state());
        a.compact().unwrap();
        let names: Vec<String> = m.objects.lock().unwrap().keys().cloned().collect();
        assert_eq!(names, vec![snapshot_name(2)], "the folded objects went");
        // Two writers from one state: the second to commit at a position is refused.
        let mut b = StateStore::open(&at, "p", "s").unwrap();
        a.append(Entry::Remove { node: "a".into() });
        a.commit().unwrap();
        b.append(Entry::Remove { node: "b".into() });
        let err = b.commit().unwrap_err().to_string();
        assert!(
            err.contains("another run wrote this stack's state at the same position"),
            "{err}"
        );
        let st = StateStore::read(&at, "p", "s").unwrap();
        assert_eq!(
            st.nodes.keys().collect::<Vec<_>>(),
            vec!["b"],
            "only the first writer's"
        );
        assert_eq!(st, *a.state());
    }

    #[test]
    fn a_remote_write_whose_answer_was_lost_is_its_writers_own() {
        let (m, at) = remote();
        let mut a = StateStore::open(&at, "p", "s").unwrap();
        *m.lose_answers.lock().unwrap() = 1;
        a.append(Entry::Record {
            node: "a".into(),
            record: rec(),
        });
        a.commit().unwrap();
        a.append(Entry::Record {
            node: "b".into(),
            record: rec(),
        });
        a.commit().unwrap();
        assert_eq!(StateStore::read(&at, "p", "s").unwrap(), *a.state());
    }

    #[test]
    fn damage_in_a_remote_journal_is_refused_even_at_its_end() {
        let (m, at) = remote();
        let mut a = StateStore::open(&at, "p", "s").unwrap();
        a.append(Entry::Record {
            node: "a".into(),
            record: rec(),
        });
        a.commit().unwrap();
        {
            let mut o = m.objects.lock().unwrap();
            let (bytes, _) = o.get_mut(&journal_name(1)).unwrap();
            let text = String::from_utf8(bytes.clone())
                .unwrap()
                .replacen("\"a\"", "\"x\"", 1);
            *bytes = text.into_bytes();
        }
        let err = StateStore::read(&at, "p", "s").unwrap_err().to_string();
        assert!(
            err.contains(
                "journal/00000000000000000001.log:1: state is damaged (checksum mismatch)"
            ),
            "{err}"
        );
        // A missing object between two others is damage too.
        let (m, at) = remote();
        let mut a = StateStore::open(&at, "p", "s").unwrap();
        commit_each(&mut a, &["a", "b", "c"]);
        m.objects.lock().unwrap().remove(&journal_name(2));
        let err = StateStore::read(&at, "p", "s").unwrap_err().to_string();
        assert!(
            err.contains("entry 3 follows 1: the entries between are missing"),
            "{err}"
        );
    }

    #[test]
    fn a_seeded_remote_keeps_the_lineage_and_an_occupied_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let local = StateAt::Local(dir.path().into());
        let mut l = StateStore::open(&local, "p", "s").unwrap();
        l.append(Entry::Record {
            node: "a".into(),
            record: rec(),
        });
        l.commit().unwrap();
        let st = StateStore::read(&local, "p", "s").unwrap();
        let (_, at) = remote();
        StateStore::seed(&at, &st).unwrap();
        let got = StateStore::read(&at, "p", "s").unwrap();
        assert_eq!(
            (got.lineage.as_str(), &got.nodes),
            (st.lineage.as_str(), &st.nodes)
        );
        let err = StateStore::seed(&at, &st).unwrap_err().to_string();
        assert!(err.contains("already holds a state"), "{err}");
        // And it is written to from there on.
        let mut r = StateStore::open(&at, "p", "s").unwrap();
        r.append(Entry::Remove { node: "a".into() });
        r.commit().unwrap();
        assert!(StateStore::read(&at, "p", "s").unwrap().nodes.is_empty());
    }
}
