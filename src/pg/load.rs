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
        let columns: String = r.get(2);
        let split = if kind == "p" {
            vec![None]
        } else {
            ranges(pages, chunk_pages)
        };
        let per = pages / split.len() as u64;
        for blocks in split {
            out.push(Chunk {
                table: t.clone(),
                columns: columns.clone(),
                blocks,
                snapshot: snapshot.to_string(),
                pages: per,
                freeze: kind == "r",
            });
        }
    }
    Ok(out)
}

/// Copies one chunk: `psql` reading the range under the snapshot on the source, piped into `psql`
/// writing it on the target (binary `COPY` both ways). Two libpq processes move the bytes faster
/// than relaying every row through this process. A whole table is copied in the transaction that
/// empties it, with `FREEZE`, so its rows need no later hint-bit or freeze pass. Returns the rows
/// copied.
pub async fn copy_chunk(source: &Target, target: &Target, c: &Chunk) -> Result<u64, PgError> {
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
    let mut out = tokio::process::Command::from(source.libpq_command("psql")?);
    out.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!(
            "{} application_name=cutover_load",
            source.conninfo_without_password()
        ))
        .arg("-c")
        .arg("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    if !c.snapshot.is_empty() {
        out.arg("-c")
            .arg(format!("SET TRANSACTION SNAPSHOT {}", literal(&c.snapshot)));
    }
    out.arg("-c")
        .arg(format!(
            "COPY (SELECT {} FROM {q}{filter}) TO STDOUT (FORMAT binary)",
            c.columns
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut out = out
        .spawn()
        .map_err(|e| PgError::Other(format!("psql: cannot run: {e}")))?;
    let pipe: Stdio = out
        .stdout
        .take()
        .expect("piped stdout")
        .try_into()
        .map_err(|e| PgError::Other(format!("psql: cannot pipe: {e}")))?;
    let mut inn = tokio::process::Command::from(target.libpq_command("psql")?);
    inn.args(["-X", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!(
            "{} application_name=cutover_load",
            target.conninfo_without_password()
        ))
        .arg("-c")
        .arg("SET synchronous_commit = off");
    let whole = c.blocks.is_none() && c.freeze;
    if whole {
        inn.args(["-c", "BEGIN", "-c"])
            .arg(format!("TRUNCATE ONLY {q}"));
    }
    inn.arg("-c").arg(format!(
        "COPY {q}{cols} FROM STDIN (FORMAT binary{})",
        if whole { ", FREEZE" } else { "" }
    ));
    if whole {
        inn.args(["-c", "COMMIT"]);
    }
    inn.stdin(pipe)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let inn = inn
        .spawn()
        .map_err(|e| PgError::Other(format!("psql: cannot run: {e}")))?;
    let (o, i) = tokio::join!(out.wait_with_output(), inn.wait_with_output());
    let o = o.map_err(|e| PgError::Other(format!("psql: {e}")))?;
    let i = i.map_err(|e| PgError::Other(format!("psql: {e}")))?;
    if !o.status.success() {
        return Err(PgError::Other(format!(
            "{source}: copy {} (read): {}",
            c.table,
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    if !i.status.success() {
        return Err(PgError::Other(format!(
            "{target}: copy {} (write): {}",
            c.table,
            String::from_utf8_lossy(&i.stderr).trim()
        )));
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
        work.extend(chunks(source, &src, &g.tables, &e.snapshot, opts.chunk_pages).await?);
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
        tasks.spawn(async move {
            loop {
                let Some(c) = queue.lock().expect("queue").pop_front() else {
                    return Ok::<(), PgError>(());
                };
                let r = copy_chunk(&source, &target, &c).await?;
                rows.fetch_add(r, Ordering::Relaxed);
                bytes.fetch_add(c.pages * 8192, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
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
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let b = bytes.load(Ordering::Relaxed);
                report(format!(
                    "initial load: {} of {total} ranges, {} rows, {:.0} MB of tables ({:.0} MB/s)",
                    done.load(Ordering::Relaxed),
                    rows.load(Ordering::Relaxed),
                    b as f64 / 1e6,
                    b as f64 / 1e6 / secs
                ));
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
