//! The initial load of logical replication done in parallel from an exported snapshot, as
//! pgcopydb and DMS do it: each table group's replication slot is created on a replication
//! connection that exports its snapshot; workers copy block ranges of every table (binary `COPY`
//! of `ctid` ranges read under that snapshot) into tables that have no indexes yet; keys and
//! indexes are then built in parallel, and the group's subscription starts streaming at the
//! slot's consistent point, so no change is missed or applied twice.
//!
//! It must never write to the source, and never drop anything there but a slot of its own that an
//! interrupted load left (that slot's snapshot died with the session that exported it, so the
//! load starts over: the group's target tables are emptied first, then the slot is dropped).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::replication::{is_identity, qualified, run_ignoring_duplicates, Setup};
use super::{literal, PgError, Target};

/// A replication slot whose snapshot is exported: valid while the session that made it stays
/// open and idle (`release` ends it).
pub struct Exported {
    pub slot: String,
    /// The slot's consistent point: streaming starts here.
    pub lsn: String,
    /// The snapshot's name for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
    stdin: Option<tokio::process::ChildStdin>,
    child: tokio::process::Child,
}

impl Exported {
    /// Creates the logical slot `slot` (plugin pgoutput) on `source` through `psql` in replication
    /// mode (the driver has no replication protocol). Waits until transactions open on the source
    /// have ended, as every logical slot creation does.
    pub async fn create(source: &Target, slot: &str) -> Result<Exported, PgError> {
        let mut cmd = tokio::process::Command::from(source.libpq_command("psql")?);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "{} replication=database application_name=cutover_load",
                source.conninfo_without_password()
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| PgError::Other(format!("psql: cannot run: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let cmd = format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export');\n");
        let written = stdin.write_all(cmd.as_bytes()).await;
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = match written {
            Ok(()) => lines.next_line().await.ok().flatten(),
            Err(_) => None,
        };
        let fields: Vec<&str> = line.as_deref().unwrap_or("").split('|').collect();
        if fields.len() < 3 || fields[0] != slot {
            drop(stdin);
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), e.read_to_string(&mut err)).await;
            }
            let _ = child.kill().await;
            return Err(PgError::Other(format!(
                "{source}: cannot create replication slot `{slot}` with an exported snapshot: {}; the user needs the REPLICATION attribute (on RDS, the rds_replication role) and pg_hba.conf must allow replication connections from here",
                if err.trim().is_empty() { line.unwrap_or_else(|| "psql ended without an answer".into()) } else { err.trim().to_string() }
            )));
        }
        Ok(Exported {
            slot: slot.to_string(),
            lsn: fields[1].to_string(),
            snapshot: fields[2].to_string(),
            stdin: Some(stdin),
            child,
        })
    }

    /// Ends the exporting session (the slot stays).
    pub async fn release(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One unit of copy work: a block range of a table (or the whole table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// `schema.table`.
    pub table: String,
    /// The quoted column list (generated columns left out); empty for a table without columns.
    pub columns: String,
    /// Blocks `[lo, hi)`; `hi` None is open-ended (it takes rows in blocks added since the size
    /// was read); None is the whole table (small and partitioned tables).
    pub blocks: Option<(u64, Option<u64>)>,
    /// The snapshot to read under (empty: none).
    pub snapshot: String,
    /// Size in blocks, for ordering and progress.
    pub pages: u64,
    /// The rows the planner's statistics expect in it (`reltuples`; 0 when unknown), for the
    /// progress line's estimate.
    pub est_rows: u64,
    /// The table group it belongs to (empty when the load has no groups), for the progress line.
    pub group: String,
    /// A plain table copied whole: emptied and loaded in one transaction with `FREEZE`.
    pub freeze: bool,
}

/// Splits `pages` blocks into ranges of `chunk` blocks, the last one open-ended.
pub fn ranges(pages: u64, chunk: u64) -> Vec<Option<(u64, Option<u64>)>> {
    if pages <= chunk || chunk == 0 {
        return vec![None];
    }
    let n = pages.div_ceil(chunk);
    (0..n)
        .map(|i| {
            let lo = i * chunk;
            Some((lo, if i + 1 == n { None } else { Some(lo + chunk) }))
        })
        .collect()
}

/// The chunks of `tables`, read under `snapshot` (empty: no snapshot, for a source that does not
/// change while it is read, such as a standby whose replay is paused).
pub async fn chunks(
    source: &Target,
    src: &tokio_postgres::Client,
    tables: &[String],
    snapshot: &str,
    chunk_pages: u64,
) -> Result<Vec<Chunk>, PgError> {
    let mut out = Vec::new();
    let v = super::version::Version::of(source, src).await?;
    for t in tables {
        let (schema, name) = t.split_once('.').unwrap_or(("public", t));
        let r = src
            .query_one(
                &format!(
                    "SELECT c.relkind::text,
                        (pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint,
                        greatest(c.reltuples, 0)::bigint,
                        COALESCE((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                                  FROM pg_attribute a
                                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                                    AND {}), '')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2",
                    v.not_generated()
                ),
                &[&schema, &name],
            )
            .await
            .map_err(source.err(&format!("size of {t}")))?;
        let kind: String = r.get(0);
        let pages = r.get::<_, i64>(1).max(0) as u64;
        let est = r.get::<_, i64>(2).max(0) as u64;
        let columns: String = r.get(3);
        let split = if kind == "p" {
            vec![None]
        } else {
            ranges(pages, chunk_pages)
        };
        let per = pages / split.len() as u64;
        let est_per = est / split.len() as u64;
        for blocks in split {
            out.push(Chunk {
                table: t.clone(),
                columns: columns.clone(),
                blocks,
                snapshot: snapshot.to_string(),
                pages: per,
                est_rows: est_per,
                group: String::new(),
                freeze: kind == "r",
            });
        }
    }
    Ok(out)
}

/// What the copies have streamed so far, counted as the bytes pass through this process: bytes
/// of binary `COPY` data, and the rows they began.
#[derive(Debug, Default)]
pub struct Streamed {
    pub bytes: AtomicU64,
    pub rows: AtomicU64,
}

/// Counts the rows of a binary `COPY` stream fed in pieces of any size (the format: an 11-byte
/// signature, flags and a header extension, then per row a 16-bit field count and each field's
/// 32-bit length and bytes, then a count of -1).
#[derive(Debug)]
pub struct RowCounter {
    state: Stage,
    buf: [u8; 19],
    have: usize,
    want: usize,
    skip: u64,
    fields_left: u16,
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Header,
    Count,
    Length,
    End,
}

impl Default for RowCounter {
    fn default() -> Self {
        RowCounter {
            state: Stage::Header,
            buf: [0; 19],
            have: 0,
            want: 19,
            skip: 0,
            fields_left: 0,
            rows: 0,
        }
    }
}

impl RowCounter {
    /// Reads the next piece of the stream; returns the rows it began.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let before = self.rows;
        while !data.is_empty() && self.state != Stage::End {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64) as usize;
                data = &data[n..];
                self.skip -= n as u64;
                continue;
            }
            let take = (self.want - self.have).min(data.len());
            self.buf[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have < self.want {
                break;
            }
            self.have = 0;
            match self.state {
                Stage::Header => {
                    let ext = u32::from_be_bytes([
                        self.buf[15],
                        self.buf[16],
                        self.buf[17],
                        self.buf[18],
                    ]);
                    self.skip = u64::from(ext);
                    self.state = Stage::Count;
                    self.want = 2;
                }
                Stage::Count => {
                    let n = i16::from_be_bytes([self.buf[0], self.buf[1]]);
                    if n < 0 {
                        self.state = Stage::End;
                    } else {
                        self.rows += 1;
                        if n > 0 {
                            self.fields_left = n as u16;
                            self.state = Stage::Length;
                            self.want = 4;
                        }
                    }
                }
                Stage::Length => {
                    let len =
                        i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    self.skip = len.max(0) as u64;
                    self.fields_left -= 1;
                    if self.fields_left == 0 {
                        self.state = Stage::Count;
                        self.want = 2;
                    }
                }
                Stage::End => {}
            }
        }
        self.rows - before
    }
}

/// Moves a chunk's bytes from the reading `psql` to the writing one, counting them and the rows
/// they begin into each of `counters` (the whole load's, the group's). SIGPIPE is blocked on this thread, so a writer that died makes the
/// write fail (and the copy report the writer's error) instead of ending the process.
fn relay(
    mut from: std::io::PipeReader,
    mut to: std::io::PipeWriter,
    counters: &[Arc<Streamed>],
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    // SAFETY: changes only this thread's signal mask, with a set built here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut rows = RowCounter::default();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        let began = rows.feed(&buf[..n]);
        for c in counters {
            c.bytes.fetch_add(n as u64, Ordering::Relaxed);
            c.rows.fetch_add(began, Ordering::Relaxed);
        }
    }
}

/// Copies one chunk: `psql` reading the range under the snapshot on the source, its binary `COPY`
/// relayed through this process (counted into each of `counters` as it passes) into `psql` writing it on
/// the target. Two libpq processes parse and send the rows, faster than relaying every row
/// through the driver; the relay only moves bytes. A whole table is copied in the transaction
/// that empties it, with `FREEZE`, so its rows need no later hint-bit or freeze pass. Returns the
/// rows copied.
pub async fn copy_chunk(
    source: &Target,
    target: &Target,
    c: &Chunk,
    counters: &[Arc<Streamed>],
) -> Result<u64, PgError> {
    use std::process::Stdio;
    let filter = match c.blocks {
        None => String::new(),
        Some((lo, None)) => format!(" WHERE ctid >= '({lo},0)'::tid"),
        Some((lo, Some(hi))) => {
            format!(" WHERE ctid >= '({lo},0)'::tid AND ctid < '({hi},0)'::tid")
        }
    };
    let q = qualified(&c.table);
    let cols = if c.columns.is_empty() {
        String::new()
    } else {
        format!(" ({})", c.columns)
    };
    let pipe_err =
        |e: std::io::Error| PgError::Other(format!("copy {}: cannot make a pipe: {e}", c.table));
    let (read_out, write_out) = std::io::pipe().map_err(pipe_err)?;
    let (read_in, write_in) = std::io::pipe().map_err(pipe_err)?;
    let mut cmd = tokio::process::Command::from(source.libpq_command("psql")?);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!(
            "{} application_name=cutover_load",
            source.conninfo_without_password()
        ))
        .arg("-c")
        .arg("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    if !c.snapshot.is_empty() {
        cmd.arg("-c")
            .arg(format!("SET TRANSACTION SNAPSHOT {}", literal(&c.snapshot)));
    }
    cmd.arg("-c")
        .arg(format!(
            "COPY (SELECT {} FROM {q}{filter}) TO STDOUT (FORMAT binary)",
            c.columns
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_out))
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd
        .spawn()
        .map_err(|e| PgError::Other(format!("psql: cannot run: {e}")))?;
    // The command holds the pipe's writing end: dropped, the reader sees the end of the data.
    drop(cmd);
    let mut cmd = tokio::process::Command::from(target.libpq_command("psql")?);
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!(
            "{} application_name=cutover_load",
            target.conninfo_without_password()
        ))
        .arg("-c")
        .arg("SET synchronous_commit = off");
    let whole = c.blocks.is_none() && c.freeze;
    if whole {
        cmd.args(["-c", "BEGIN", "-c"])
            .arg(format!("TRUNCATE ONLY {q}"));
    }
    cmd.arg("-c").arg(format!(
        "COPY {q}{cols} FROM STDIN (FORMAT binary{})",
        if whole { ", FREEZE" } else { "" }
    ));
    if whole {
        cmd.args(["-c", "COMMIT"]);
    }
    cmd.stdin(Stdio::from(read_in))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let inn = cmd
        .spawn()
        .map_err(|e| PgError::Other(format!("psql: cannot run: {e}")))?;
    drop(cmd);
    let counted = counters.to_vec();
    let relayed = tokio::task::spawn_blocking(move || relay(read_out, write_in, &counted));
    let (o, i, r) = tokio::join!(out.wait_with_output(), inn.wait_with_output(), relayed);
    let o = o.map_err(|e| PgError::Other(format!("psql: {e}")))?;
    let i = i.map_err(|e| PgError::Other(format!("psql: {e}")))?;
    let read_failed = (!o.status.success()).then(|| {
        PgError::Other(format!(
            "{source}: copy {} (read): {}",
            c.table,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    });
    let write_failed = (!i.status.success()).then(|| {
        PgError::Other(format!(
            "{target}: copy {} (write): {}",
            c.table,
            String::from_utf8_lossy(&i.stderr).trim()
        ))
    });
    match r {
        // The bytes moved: a reader that failed cut the writer's data short, so it is the cause.
        Ok(Ok(())) => {
            if let Some(e) = read_failed.or(write_failed) {
                return Err(e);
            }
        }
        // The writer stopped taking bytes: its error is the cause, the reader's a consequence.
        Ok(Err(e)) => {
            return Err(write_failed.or(read_failed).unwrap_or_else(|| {
                PgError::Other(format!(
                    "copy {}: relaying the rows from {source} to {target}: {e}",
                    c.table
                ))
            }))
        }
        Err(e) => {
            return Err(PgError::Other(format!(
                "copy {}: the relay ended: {e}",
                c.table
            )))
        }
    }
    String::from_utf8_lossy(&i.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("COPY ").and_then(|n| n.trim().parse().ok()))
        .ok_or_else(|| {
            PgError::Other(format!(
                "{target}: copy {}: psql did not report the rows copied",
                c.table
            ))
        })
}

/// What a load did, recorded in state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub rows: u64,
    /// The size of the tables copied (from their block counts).
    pub bytes: u64,
    pub chunks: usize,
    pub seconds: f64,
}

/// Tuning of the load.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Parallel copy sessions (a pair of connections each) and index builds.
    pub workers: usize,
    /// Blocks per range of a big table (8 kB each; 131,072 is 1 GiB): smaller tables are copied
    /// whole, with `FREEZE`.
    pub chunk_pages: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 4,
            chunk_pages: 131_072,
        }
    }
}

/// Loads the groups of `setup` whose subscription does not exist yet: exports a slot per group,
/// copies every table in parallel, ends the exporting sessions. The caller then builds the
/// indexes (`build_post`) and creates the subscriptions without copying.
pub async fn load(
    source: &Target,
    target: &Target,
    setup: &Setup,
    opts: Options,
    report: &(dyn Fn(String) + Send + Sync),
) -> Result<Report, PgError> {
    let started = Instant::now();
    let src = source.connect().await?;
    let dst = target.connect().await?;
    let mut todo = Vec::new();
    for g in &setup.groups {
        if super::replication::subscribed(target, &dst, &g.subscription).await? {
            continue;
        }
        let leftover = super::replication::slot_exists(source, &src, &g.slot).await?;
        let list: Vec<String> = g.tables.iter().map(|t| qualified(t)).collect();
        if leftover {
            // An interrupted load: its snapshot is gone, so start this group over.
            report(format!(
                "group {}: an earlier load was interrupted; emptying its {} table(s) on the target and starting over",
                g.name,
                list.len()
            ));
            dst.batch_execute(&format!("TRUNCATE {}", list.join(", ")))
                .await
                .map_err(target.err("empty the tables of an interrupted load"))?;
            src.execute("SELECT pg_drop_replication_slot($1)", &[&g.slot])
                .await
                .map_err(source.err("drop the slot of an interrupted load"))?;
        } else {
            for t in &g.tables {
                if has_rows(target, &dst, t).await? {
                    return Err(PgError::Other(format!(
                        "{target}: table {t} already has rows; the initial load copies into empty tables: empty it (TRUNCATE) or point the step at an empty database"
                    )));
                }
            }
        }
        todo.push(g);
    }
    if todo.is_empty() {
        return Ok(Report::default());
    }
    let mut exported = Vec::new();
    let mut work = Vec::new();
    for g in &todo {
        report(format!(
            "group {}: creating slot {} (waits for transactions open on the source to end)",
            g.name, g.slot
        ));
        let e = Exported::create(source, &g.slot).await?;
        let mut of_group = chunks(source, &src, &g.tables, &e.snapshot, opts.chunk_pages).await?;
        for c in &mut of_group {
            c.group = g.name.clone();
        }
        work.extend(of_group);
        exported.push(e);
    }
    let copied = copy_all(source, target, work, opts, report, started).await;
    for e in exported {
        e.release().await;
    }
    copied
}

/// Copies every table of `tables` from `source` into the empty tables of `target`, in parallel,
/// reading without a snapshot: for a source that does not change while it is read (a standby
/// whose replay is paused; the caller checks that it stayed paused). A table that already has
/// rows is emptied first when `restart` (an interrupted load of the same position), else refused.
pub async fn load_quiet(
    source: &Target,
    target: &Target,
    tables: &[String],
    opts: Options,
    restart: bool,
    report: &(dyn Fn(String) + Send + Sync),
) -> Result<Report, PgError> {
    let started = Instant::now();
    let src = source.connect().await?;
    let dst = target.connect().await?;
    let mut filled = Vec::new();
    for t in tables {
        if has_rows(target, &dst, t).await? {
            filled.push(qualified(t));
        }
    }
    if !filled.is_empty() {
        if !restart {
            return Err(PgError::Other(format!(
                "{target}: table(s) {} already have rows; the load copies into empty tables: empty them (TRUNCATE) or point the step at an empty database",
                filled.join(", ")
            )));
        }
        report(format!(
            "an earlier load was interrupted; emptying its {} table(s) on the target and starting over",
            filled.len()
        ));
        dst.batch_execute(&format!("TRUNCATE {}", filled.join(", ")))
            .await
            .map_err(target.err("empty the tables of an interrupted load"))?;
    }
    let work = chunks(source, &src, tables, "", opts.chunk_pages).await?;
    copy_all(source, target, work, opts, report, started).await
}

/// Whether table `t` of the target has a row.
async fn has_rows(target: &Target, dst: &tokio_postgres::Client, t: &str) -> Result<bool, PgError> {
    Ok(dst
        .query_one(
            &format!("SELECT exists(SELECT 1 FROM {})", qualified(t)),
            &[],
        )
        .await
        .map_err(target.err(&format!("check that {t} is empty")))?
        .get(0))
}

/// How far one part of a load (all of it, or one table group) has streamed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Part {
    /// The group's name (empty for the whole load).
    pub name: String,
    pub done: usize,
    pub total: usize,
    pub rows: u64,
    /// The rows the statistics expect, when they know every table's.
    pub expected: Option<u64>,
    pub bytes: u64,
}

impl Part {
    /// "N rows of about M (P %)", or "N rows" without an estimate.
    fn rows_words(&self) -> String {
        match self.expected.filter(|e| *e > 0) {
            Some(exp) => format!(
                "{} rows of about {exp} ({:.0} %)",
                self.rows,
                (self.rows as f64 / exp as f64).min(1.0) * 100.0
            ),
            None => format!("{} rows", self.rows),
        }
    }

    /// The time left at the rate so far, when the statistics expect a number of rows.
    fn left(&self, secs: f64) -> Option<String> {
        let exp = self.expected.filter(|e| *e > self.rows && self.rows > 0)?;
        Some(time_left(
            (exp - self.rows) as f64 / (self.rows as f64 / secs),
        ))
    }
}

/// The load's progress as it streams: ranges done, rows and bytes streamed so far with the rate,
/// and, when the statistics expect a number of rows, the share done and the time left at the rate
/// so far; then, when the load has several table groups, each group still copying.
pub fn progress_line(all: &Part, groups: &[Part], elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut line = format!(
        "initial load: {} of {} ranges, {}, {:.0} MB streamed ({:.0} MB/s)",
        all.done,
        all.total,
        all.rows_words(),
        all.bytes as f64 / 1e6,
        all.bytes as f64 / 1e6 / secs
    );
    if let Some(left) = all.left(secs) {
        line.push_str(&format!(", about {left} left"));
    }
    if groups.len() > 1 {
        let busy: Vec<String> = groups
            .iter()
            .filter(|g| g.done < g.total)
            .map(|g| format!("{} {}", g.name, g.rows_words()))
            .collect();
        let finished = groups.len() - busy.len();
        if !busy.is_empty() {
            line.push_str(&format!("; copying: {}", busy.join(", ")));
        }
        if finished > 0 {
            line.push_str(&format!("; {finished} of {} groups done", groups.len()));
        }
    }
    line
}

/// A time left as a person reads it: seconds, then minutes, then hours and minutes.
fn time_left(secs: f64) -> String {
    let s = secs.round().max(1.0) as u64;
    if s < 90 {
        format!("{s} s")
    } else if s < 90 * 60 {
        format!("{} min", (s + 30) / 60)
    } else {
        let m = (s + 30) / 60;
        format!("{} h {} min", m / 60, m % 60)
    }
}

/// One table group's counters during a load.
#[derive(Clone)]
struct GroupCount {
    name: String,
    streamed: Arc<Streamed>,
    /// Ranges copied.
    done: Arc<AtomicUsize>,
    /// Ranges in all.
    total: usize,
    expected: Option<u64>,
}

/// Copies `work` with `opts.workers` sessions, biggest chunk first, reporting progress each
/// second; the first failure stops the rest.
async fn copy_all(
    source: &Target,
    target: &Target,
    mut work: Vec<Chunk>,
    opts: Options,
    report: &(dyn Fn(String) + Send + Sync),
    started: Instant,
) -> Result<Report, PgError> {
    work.sort_by_key(|c| std::cmp::Reverse(c.pages));
    let total = work.len();
    // The expected rows of a set of chunks, when the statistics know every one's.
    let expected_of = |cs: &mut dyn Iterator<Item = &Chunk>| {
        let cs: Vec<&Chunk> = cs.collect();
        cs.iter()
            .all(|c| c.est_rows > 0)
            .then(|| cs.iter().map(|c| c.est_rows).sum::<u64>())
    };
    let expected = expected_of(&mut work.iter());
    let mut groups: Vec<GroupCount> = vec![];
    for c in &work {
        if !groups.iter().any(|g| g.name == c.group) {
            let of_group = || work.iter().filter(|x| x.group == c.group);
            groups.push(GroupCount {
                name: c.group.clone(),
                streamed: Arc::default(),
                done: Arc::default(),
                total: of_group().count(),
                expected: expected_of(&mut of_group()),
            });
        }
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let streamed = Arc::new(Streamed::default());
    let copying = Instant::now();
    let queue = Arc::new(Mutex::new(VecDeque::from(work)));
    let (rows, bytes, done) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.workers.max(1).min(total) {
        let (source, target) = (source.clone(), target.clone());
        let (queue, rows, bytes, done) = (queue.clone(), rows.clone(), bytes.clone(), done.clone());
        let (streamed, groups) = (streamed.clone(), groups.clone());
        tasks.spawn(async move {
            loop {
                let Some(c) = queue.lock().expect("queue").pop_front() else {
                    return Ok::<(), PgError>(());
                };
                let group = groups
                    .iter()
                    .find(|g| g.name == c.group)
                    .expect("every chunk's group is counted");
                let counters = [streamed.clone(), group.streamed.clone()];
                let r = copy_chunk(&source, &target, &c, &counters).await?;
                rows.fetch_add(r, Ordering::Relaxed);
                bytes.fetch_add(c.pages * 8192, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
                group.done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut failure = None;
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => { failure.get_or_insert(e); queue.lock().expect("queue").clear(); }
                Some(Err(e)) => { failure.get_or_insert(PgError::Other(format!("a copy worker ended: {e}"))); queue.lock().expect("queue").clear(); }
            },
            _ = tick.tick() => {
                let part = |name: &str, s: &Streamed, done: usize, total: usize, expected: Option<u64>| Part {
                    name: name.to_string(),
                    done,
                    total,
                    rows: s.rows.load(Ordering::Relaxed),
                    expected,
                    bytes: s.bytes.load(Ordering::Relaxed),
                };
                let all = part("", &streamed, done.load(Ordering::Relaxed), total, expected);
                let by_group: Vec<Part> = groups
                    .iter()
                    .map(|g| part(&g.name, &g.streamed, g.done.load(Ordering::Relaxed), g.total, g.expected))
                    .collect();
                report(progress_line(&all, &by_group, copying.elapsed()));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Report {
        rows: rows.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        chunks: total,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs post-data statements on the target: keys and indexes in parallel (`workers` sessions),
/// then the rest (foreign keys, triggers, ...) in order. Statements whose object exists already
/// (an earlier, interrupted run) are skipped.
pub async fn build_post(target: &Target, stmts: &[String], workers: usize) -> Result<(), PgError> {
    let (indexes, rest): (Vec<String>, Vec<String>) = stmts
        .iter()
        .cloned()
        .partition(|s| is_identity(s) || s.to_lowercase().starts_with("create index"));
    let queue = Arc::new(Mutex::new(VecDeque::from(indexes)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (target, queue) = (target.clone(), queue.clone());
        tasks.spawn(async move {
            let dst = target.connect().await?;
            loop {
                let Some(s) = queue.lock().expect("queue").pop_front() else {
                    return Ok::<(), PgError>(());
                };
                run_ignoring_duplicates(&target, &dst, std::slice::from_ref(&s)).await?;
            }
        });
    }
    let mut failure = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(PgError::Other(format!("an index build ended: {e}")));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let dst = target.connect().await?;
    run_ignoring_duplicates(target, &dst, &rest).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of three rows (two fields, one null; no fields; one empty field),
    /// with a header extension to skip and bytes after the trailer.
    fn stream() -> Vec<u8> {
        let mut s = b"PGCOPY\n\xff\r\n\0".to_vec();
        s.extend(0u32.to_be_bytes());
        s.extend(4u32.to_be_bytes());
        s.extend(*b"\0\x02\0\x02");
        s.extend(2i16.to_be_bytes());
        s.extend(3i32.to_be_bytes());
        s.extend(*b"abc");
        s.extend((-1i32).to_be_bytes());
        s.extend(0i16.to_be_bytes());
        s.extend(1i16.to_be_bytes());
        s.extend(0i32.to_be_bytes());
        s.extend((-1i16).to_be_bytes());
        s.extend(*b"\0\x02");
        s
    }

    #[test]
    fn rows_are_counted_in_a_binary_copy_stream_cut_anywhere() {
        let s = stream();
        let mut whole = RowCounter::default();
        assert_eq!(whole.feed(&s), 3);
        for cut in 0..=s.len() {
            let mut c = RowCounter::default();
            let n = c.feed(&s[..cut]) + c.feed(&s[cut..]);
            assert_eq!((n, c.rows), (3, 3), "cut at {cut}");
        }
        let mut bytewise = RowCounter::default();
        let n: u64 = s
            .iter()
            .map(|b| bytewise.feed(std::slice::from_ref(b)))
            .sum();
        assert_eq!(n, 3);
        // A row is counted when it begins: the stream cut inside the first row has one.
        let mut part = RowCounter::default();
        assert_eq!(part.feed(&s[..31]), 1);
    }

    #[test]
    fn the_progress_line_says_rows_bytes_rate_and_time_left() {
        let all = Part {
            done: 2,
            total: 9,
            rows: 1_000_000,
            expected: Some(5_000_000),
            bytes: 120_000_000,
            ..Part::default()
        };
        let line = progress_line(&all, &[], Duration::from_secs(4));
        assert_eq!(
            line,
            "initial load: 2 of 9 ranges, 1000000 rows of about 5000000 (20 %), 120 MB streamed (30 MB/s), about 16 s left"
        );
        let groups = [
            Part {
                name: "a".into(),
                done: 1,
                total: 1,
                rows: 10,
                ..Part::default()
            },
            Part {
                name: "b".into(),
                done: 1,
                total: 6,
                rows: 600_000,
                expected: Some(4_000_000),
                ..Part::default()
            },
            Part {
                name: "c".into(),
                done: 0,
                total: 2,
                rows: 399_990,
                ..Part::default()
            },
        ];
        let line = progress_line(&all, &groups, Duration::from_secs(4));
        assert!(
            line.ends_with("about 16 s left; copying: b 600000 rows of about 4000000 (15 %), c 399990 rows; 1 of 3 groups done"),
            "{line}"
        );
        let line = progress_line(
            &Part {
                total: 1,
                ..Part::default()
            },
            &[],
            Duration::from_secs(1),
        );
        assert_eq!(
            line,
            "initial load: 0 of 1 ranges, 0 rows, 0 MB streamed (0 MB/s)"
        );
        assert_eq!(time_left(5400.0), "1 h 30 min");
        assert_eq!(time_left(600.0), "10 min");
    }

    #[test]
    fn tables_split_into_block_ranges_with_an_open_end() {
        assert_eq!(ranges(10, 4096), vec![None]);
        assert_eq!(ranges(4096, 4096), vec![None]);
        assert_eq!(
            ranges(10_000, 4096),
            vec![
                Some((0, Some(4096))),
                Some((4096, Some(8192))),
                Some((8192, None))
            ]
        );
        assert_eq!(ranges(5, 0), vec![None]);
    }
}
