//! Validation of a target against its source without pulling rows to the client: per table, row
//! counts and a checksum of whole rows (`hashtext(row::text)` summed) per primary-key range,
//! computed inside each database, on both sides at once, in parallel across tables and ranges. A
//! range that differs is split until it is small; then keys and row hashes of that range are
//! compared to name exactly which keys changed, are missing on the target, or are extra there.
//! While replication is live, differing ranges are checked again once the target has caught up,
//! so changes in flight are not reported as differences.
//!
//! Validation only reads: it must never change either database.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::{ident, PgError, Target};

/// How a validation runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    /// Ranges a table's key space is cut into at first.
    pub ranges: i64,
    /// A differing range of at most this many keys is compared key by key.
    pub leaf: i64,
    /// Differing keys reported per table at most.
    pub max_keys: usize,
    /// Workers (each with one connection to each side).
    pub parallel: usize,
    /// Replication slots to wait on before re-checking differences (live replication).
    pub slots: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        // Measured on 2 million rows (`cargo bench --bench validate`): many first-level ranges
        // keep the re-reading of a differing range small, and a leaf of a few thousand keys ends
        // the splitting early (their keys and hashes are a few hundred kilobytes).
        Options {
            ranges: 64,
            leaf: 8192,
            max_keys: 20,
            parallel: 4,
            slots: vec![],
        }
    }
}

/// One differing key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Diff {
    pub key: String,
    /// `changed`, `missing` (on the target) or `extra` (on the target).
    pub kind: String,
}

/// One table's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableReport {
    pub table: String,
    pub source_rows: i64,
    pub target_rows: i64,
    pub differences: Vec<Diff>,
    /// More differing keys exist than are listed.
    pub truncated: bool,
    /// Why the table was compared as a whole or not at all, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The whole result, recorded in state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub passed: bool,
    pub tables: Vec<TableReport>,
    pub ranges_checked: u64,
    pub elapsed_ms: u64,
}

impl Report {
    /// A short account of the differences, for an error.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for t in &self.tables {
            if t.differences.is_empty() && t.source_rows == t.target_rows {
                continue;
            }
            let keys: Vec<String> = t
                .differences
                .iter()
                .map(|d| format!("{} {}", d.kind, d.key))
                .collect();
            parts.push(format!(
                "{}: {} rows on the source, {} on the target; {}{}",
                t.table,
                t.source_rows,
                t.target_rows,
                keys.join(", "),
                if t.truncated { ", ..." } else { "" }
            ));
        }
        parts.join("; ")
    }
}

/// Sessions compare rows as text: make that text the same on both sides.
const SESSION: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; SET default_transaction_read_only = on";

async fn session(t: &Target) -> Result<Client, PgError> {
    let c = t.connect().await?;
    c.batch_execute(SESSION)
        .await
        .map_err(t.err("session settings"))?;
    Ok(c)
}

#[derive(Debug, Clone)]
struct TableInfo {
    name: String,
    quoted: String,
    pk: Option<String>,
    integer_pk: bool,
}

async fn table_infos(t: &Target, c: &Client, only: &[String]) -> Result<Vec<TableInfo>, PgError> {
    let rows = c
        .query(
            "SELECT format('%s.%s', n.nspname, c.relname), n.nspname::text, c.relname::text,
                    (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_index i
                       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                      WHERE i.indrelid = c.oid AND i.indisprimary),
                    (SELECT array_agg(format_type(a.atttypid, NULL) ORDER BY a.attnum) FROM pg_index i
                       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                      WHERE i.indrelid = c.oid AND i.indisprimary)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r','p') AND c.relpersistence = 'p' AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(t.err("list tables"))?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let (schema, table): (String, String) = (r.get(1), r.get(2));
        let cols: Option<Vec<String>> = r.get(3);
        let types: Option<Vec<String>> = r.get(4);
        let (pk, integer_pk) = match (cols, types) {
            (Some(c), Some(ty)) if c.len() == 1 => (
                Some(ident(&c[0])),
                matches!(ty[0].as_str(), "bigint" | "integer" | "smallint"),
            ),
            (Some(c), _) => (
                Some(format!(
                    "({})",
                    c.iter().map(|x| ident(x)).collect::<Vec<_>>().join(", ")
                )),
                false,
            ),
            _ => (None, false),
        };
        out.push(TableInfo {
            name,
            quoted: format!("{}.{}", ident(&schema), ident(&table)),
            pk,
            integer_pk,
        });
    }
    Ok(out)
}

/// A unit of work: a key range of a table (`lo` inclusive, `hi` exclusive), or a whole table.
#[derive(Debug, Clone)]
struct Task {
    table: usize,
    range: Option<(i64, i64)>,
    /// A first-level range: its row counts add up to the table's.
    top: bool,
}

fn where_clause(info: &TableInfo, range: Option<(i64, i64)>) -> String {
    match (range, &info.pk) {
        (Some((lo, hi)), Some(pk)) => format!("WHERE {pk} >= {lo} AND {pk} < {hi}"),
        _ => String::new(),
    }
}

async fn checksum(
    t: &Target,
    c: &Client,
    info: &TableInfo,
    range: Option<(i64, i64)>,
) -> Result<(i64, i64), PgError> {
    let sql = format!(
        "SELECT count(*), COALESCE(sum(hashtext(t::text)::bigint), 0)::bigint FROM {} t {}",
        info.quoted,
        where_clause(info, range)
    );
    let r = c.query_one(&sql, &[]).await.map_err(t.err("checksum"))?;
    Ok((r.get(0), r.get(1)))
}

async fn keyed_hashes(
    t: &Target,
    c: &Client,
    info: &TableInfo,
    range: Option<(i64, i64)>,
) -> Result<Vec<(String, i32)>, PgError> {
    let pk = info.pk.clone().unwrap_or_else(|| "t::text".into());
    let sql = format!(
        "SELECT ({pk})::text, hashtext(t::text) FROM {} t {} ORDER BY {pk}",
        info.quoted,
        where_clause(info, range)
    );
    Ok(c.query(&sql, &[])
        .await
        .map_err(t.err("key hashes"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

fn merge_diffs(a: &[(String, i32)], b: &[(String, i32)]) -> Vec<Diff> {
    // Compared through maps, to stay independent of each side's collation order.
    let am: std::collections::HashMap<&str, i32> =
        a.iter().map(|(k, h)| (k.as_str(), *h)).collect();
    let bm: std::collections::HashMap<&str, i32> =
        b.iter().map(|(k, h)| (k.as_str(), *h)).collect();
    let mut out = Vec::new();
    for (k, h) in a {
        match bm.get(k.as_str()) {
            None => out.push(Diff {
                key: k.clone(),
                kind: "missing".into(),
            }),
            Some(h2) if h2 != h => out.push(Diff {
                key: k.clone(),
                kind: "changed".into(),
            }),
            _ => {}
        }
    }
    for (k, _) in b {
        if !am.contains_key(k.as_str()) {
            out.push(Diff {
                key: k.clone(),
                kind: "extra".into(),
            });
        }
    }
    out
}

struct Shared {
    queue: VecDeque<Task>,
    in_flight: usize,
    /// Per table: differences found, and differing leaf tasks (for re-checks).
    diffs: Vec<Vec<Diff>>,
    leaves: Vec<Task>,
    /// Per table: rows on each side, from the first-level ranges.
    counts: Vec<(i64, i64)>,
    ranges: u64,
    error: Option<PgError>,
}

/// Compares `target` with `source`.
pub async fn validate(
    source: &Target,
    target: &Target,
    tables: &[String],
    opts: &Options,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Report, PgError> {
    let started = std::time::Instant::now();
    let src = session(source).await?;
    let dst = session(target).await?;
    let infos = table_infos(source, &src, tables).await?;
    let mut reports: Vec<TableReport> = Vec::new();
    let mut tasks = VecDeque::new();
    for (i, info) in infos.iter().enumerate() {
        let mut note = None;
        if info.integer_pk {
            let pk = info.pk.as_ref().unwrap();
            let q = format!(
                "SELECT min({pk})::bigint, max({pk})::bigint FROM {}",
                info.quoted
            );
            let (a, b) = tokio::join!(src.query_one(&q, &[]), dst.query_one(&q, &[]));
            let a = a.map_err(source.err("key bounds"))?;
            let b = b.map_err(target.err("key bounds"))?;
            let lo = [a.get::<_, Option<i64>>(0), b.get::<_, Option<i64>>(0)]
                .into_iter()
                .flatten()
                .min();
            let hi = [a.get::<_, Option<i64>>(1), b.get::<_, Option<i64>>(1)]
                .into_iter()
                .flatten()
                .max();
            if let (Some(lo), Some(hi)) = (lo, hi) {
                let span = (hi - lo + 1).max(1);
                let step = (span + opts.ranges - 1) / opts.ranges.max(1);
                let mut x = lo;
                while x <= hi {
                    tasks.push_back(Task {
                        table: i,
                        range: Some((x, (x + step).min(hi + 1))),
                        top: true,
                    });
                    x += step.max(1);
                }
            }
        } else {
            note = Some(match &info.pk {
                None => {
                    "no primary key: compared as a whole; differing rows are listed by their text"
                        .to_string()
                }
                Some(_) => {
                    "primary key not a single integer column: compared as a whole".to_string()
                }
            });
            tasks.push_back(Task {
                table: i,
                range: None,
                top: true,
            });
        }
        reports.push(TableReport {
            table: info.name.clone(),
            source_rows: 0,
            target_rows: 0,
            differences: vec![],
            truncated: false,
            note,
        });
    }
    progress(format!(
        "comparing {} table(s) in {} range(s)",
        infos.len(),
        tasks.len()
    ));
    let shared = Arc::new(Mutex::new(Shared {
        queue: tasks,
        in_flight: 0,
        diffs: vec![vec![]; infos.len()],
        leaves: vec![],
        counts: vec![(0, 0); infos.len()],
        ranges: 0,
        error: None,
    }));
    let infos = Arc::new(infos);
    let mut workers = Vec::new();
    for _ in 0..opts.parallel.max(1) {
        let (s, t, shared, infos, leaf) = (
            source.clone(),
            target.clone(),
            shared.clone(),
            infos.clone(),
            opts.leaf,
        );
        workers.push(tokio::spawn(async move {
            let conns = async { Ok::<_, PgError>((session(&s).await?, session(&t).await?)) }.await;
            let (sc, tc) = match conns {
                Ok(c) => c,
                Err(e) => {
                    shared.lock().unwrap().error.get_or_insert(e);
                    return;
                }
            };
            loop {
                let task = {
                    let mut g = shared.lock().unwrap();
                    if g.error.is_some() {
                        return;
                    }
                    match g.queue.pop_front() {
                        Some(t) => {
                            g.in_flight += 1;
                            Some(t)
                        }
                        None if g.in_flight == 0 => return,
                        None => None,
                    }
                };
                let Some(task) = task else {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    continue;
                };
                let info = &infos[task.table];
                let result = check_task(&s, &t, &sc, &tc, info, &task, leaf).await;
                let mut g = shared.lock().unwrap();
                g.in_flight -= 1;
                g.ranges += 1;
                match result {
                    Err(e) => {
                        g.error.get_or_insert(e);
                    }
                    Ok((counts, outcome)) => {
                        if task.top {
                            g.counts[task.table].0 += counts.0;
                            g.counts[task.table].1 += counts.1;
                        }
                        match outcome {
                            Outcome::Same => {}
                            Outcome::Split(a, b) => {
                                g.queue.push_back(a);
                                g.queue.push_back(b);
                            }
                            Outcome::Keys(d) => {
                                if !d.is_empty() {
                                    g.diffs[task.table].extend(d);
                                    g.leaves.push(task);
                                }
                            }
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut g = std::mem::replace(
        &mut *shared.lock().unwrap(),
        Shared {
            queue: VecDeque::new(),
            in_flight: 0,
            diffs: vec![],
            leaves: vec![],
            counts: vec![],
            ranges: 0,
            error: None,
        },
    );
    if let Some(e) = g.error.take() {
        return Err(e);
    }
    for (i, (a, b)) in g.counts.iter().enumerate() {
        reports[i].source_rows = *a;
        reports[i].target_rows = *b;
    }
    // Live replication: what differs may be in flight. Wait until the target has what the source
    // had when we looked, then look again at the differing leaves only.
    if !opts.slots.is_empty() && !g.leaves.is_empty() {
        for round in 1..=3 {
            progress(format!("{} range(s) differ; waiting for the target to catch up, then checking again ({round} of 3)", g.leaves.len()));
            wait_caught_up(source, &src, &opts.slots).await?;
            let mut diffs = vec![vec![]; infos.len()];
            let mut leaves = vec![];
            for task in &g.leaves {
                let info = &infos[task.table];
                let (a, b) = tokio::join!(
                    keyed_hashes(source, &src, info, task.range),
                    keyed_hashes(target, &dst, info, task.range)
                );
                let d = merge_diffs(&a?, &b?);
                if !d.is_empty() {
                    diffs[task.table].extend(d);
                    leaves.push(task.clone());
                }
            }
            g.diffs = diffs;
            g.leaves = leaves;
            if g.leaves.is_empty() {
                break;
            }
        }
        for (i, info) in infos.iter().enumerate() {
            let q = format!("SELECT count(*) FROM {}", info.quoted);
            let (a, b) = tokio::join!(src.query_one(&q, &[]), dst.query_one(&q, &[]));
            reports[i].source_rows = a.map_err(source.err("count"))?.get(0);
            reports[i].target_rows = b.map_err(target.err("count"))?.get(0);
        }
    }
    let mut passed = true;
    for (i, r) in reports.iter_mut().enumerate() {
        let mut d = std::mem::take(&mut g.diffs[i]);
        // Keys in their natural order: numerically when they are numbers.
        d.sort_by(|a, b| match (a.key.parse::<i64>(), b.key.parse::<i64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y).then(a.kind.cmp(&b.kind)),
            _ => a.cmp(b),
        });
        d.dedup();
        r.truncated = d.len() > opts.max_keys;
        d.truncate(opts.max_keys);
        r.differences = d;
        if !r.differences.is_empty() || r.source_rows != r.target_rows {
            passed = false;
        }
    }
    Ok(Report {
        passed,
        tables: reports,
        ranges_checked: g.ranges,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

enum Outcome {
    Same,
    Split(Task, Task),
    Keys(Vec<Diff>),
}

async fn check_task(
    s: &Target,
    t: &Target,
    sc: &Client,
    tc: &Client,
    info: &TableInfo,
    task: &Task,
    leaf: i64,
) -> Result<((i64, i64), Outcome), PgError> {
    let (a, b) = tokio::join!(
        checksum(s, sc, info, task.range),
        checksum(t, tc, info, task.range)
    );
    let (a, b) = (a?, b?);
    let counts = (a.0, b.0);
    if a == b {
        return Ok((counts, Outcome::Same));
    }
    let outcome = match task.range {
        Some((lo, hi)) if hi - lo > leaf => {
            let mid = lo + (hi - lo) / 2;
            Outcome::Split(
                Task {
                    table: task.table,
                    range: Some((lo, mid)),
                    top: false,
                },
                Task {
                    table: task.table,
                    range: Some((mid, hi)),
                    top: false,
                },
            )
        }
        range => {
            let (a, b) = tokio::join!(
                keyed_hashes(s, sc, info, range),
                keyed_hashes(t, tc, info, range)
            );
            Outcome::Keys(merge_diffs(&a?, &b?))
        }
    };
    Ok((counts, outcome))
}

/// Waits until every slot has confirmed the source's current WAL position (at most 30 s).
async fn wait_caught_up(source: &Target, c: &Client, slots: &[String]) -> Result<(), PgError> {
    // A write makes sure there is a position to reach even on an idle source.
    let lsn: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(source.err("current WAL position"))?
        .get(0);
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(30) {
        let behind: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY($1) AND (confirmed_flush_lsn IS NULL OR confirmed_flush_lsn < $2::text::pg_lsn)",
                &[&slots, &lsn],
            )
            .await
            .map_err(source.err("slot positions"))?
            .get(0);
        if behind == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_diffs_name_changed_missing_and_extra_keys() {
        let a = vec![
            ("1".to_string(), 10),
            ("2".to_string(), 20),
            ("3".to_string(), 30),
        ];
        let b = vec![
            ("1".to_string(), 10),
            ("2".to_string(), 21),
            ("4".to_string(), 40),
        ];
        let mut d = merge_diffs(&a, &b);
        d.sort();
        assert_eq!(
            d,
            vec![
                Diff {
                    key: "2".into(),
                    kind: "changed".into()
                },
                Diff {
                    key: "3".into(),
                    kind: "missing".into()
                },
                Diff {
                    key: "4".into(),
                    kind: "extra".into()
                },
            ]
        );
    }
}
