//! Preflight of a source and a target before anything is created or replicated: `wal_level`,
//! free replication slots and WAL senders, the settings that bound logical decoding and apply
//! against the plan's table groups (`logical_decoding_work_mem`, `wal_sender_timeout`, the target's
//! replication workers, sync workers, worker processes and origins, and its `wal_level` for the
//! reverse replication), versions, tables without a primary key or replica
//! identity, unlogged tables, large objects, sequences, extensions on one side only, tables missing
//! on the target, and the source's client sessions (those that bypass the application's pooler).
//! Each finding is an error (blocks), a warning or a note, with the fix.
//!
//! Preflight only reads: it must never change either database.

use serde::{Deserialize, Serialize};

use super::version::Version;
use super::{PgError, Target};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Note,
    Warning,
    Error,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub level: Level,
    pub check: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} [{}] {}", self.level, self.check, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " Fix: {fix}")?;
        }
        Ok(())
    }
}

fn finding(level: Level, check: &str, message: String, fix: Option<&str>) -> Finding {
    Finding {
        level,
        check: check.into(),
        message,
        fix: fix.map(String::from),
    }
}

/// The source's client sessions (not the tool's), watched for `window`: with the console of the
/// pooler the application uses, those that bypass it (a warning when one wrote: the pooler
/// cutover's guard refuses it); without one, every session (the read-only fence ends them all).
pub async fn direct_sessions(
    source: &Target,
    console: Option<&Target>,
    window: std::time::Duration,
) -> Result<Vec<Finding>, PgError> {
    let sessions = super::cutover::direct_sessions_of(source, console, window)
        .await
        .map_err(PgError::Other)?;
    let mut out = vec![];
    if console.is_none() {
        if !sessions.is_empty() {
            let names: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
            out.push(finding(
                Level::Note,
                "sessions",
                format!(
                    "{} client session(s) on the source: {}; a read-only fence ends them at the cutover",
                    sessions.len(),
                    list(&names, 5)
                ),
                None,
            ));
        }
        return Ok(out);
    }
    for s in &sessions {
        out.push(if s.wrote {
            finding(
                Level::Warning,
                "direct writers",
                format!("session {s} wrote to the source without the pooler: the cutover's guard will refuse it"),
                Some("send it through the pooler, or stop it before the cutover, or accept it (`Cutover::end_direct_writers()`: the fence ends it)"),
            )
        } else {
            finding(
                Level::Note,
                "direct sessions",
                format!("session {s} reaches the source without the pooler; the fence will end it"),
                None,
            )
        });
    }
    Ok(out)
}

/// The condition on `pg_class c` and `pg_namespace n` that selects user tables on a server of
/// version `v`.
fn user_tables(v: Version) -> String {
    format!("c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND {}", v.not_partition())
}

/// How changes will leave the source: native logical replication, or AWS DMS decoding them with
/// an output plugin (`pglogical`, or `test_decoding`), with the tables whose tasks batch apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    /// Some(plugin) when DMS captures the changes; None for native logical replication.
    pub dms_plugin: Option<String>,
    /// Tables (`schema.name`) whose DMS task applies in batches.
    pub batch_apply: Vec<String>,
}

fn list(names: &[String], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s.push_str(&format!(" and {} more", names.len() - max));
    }
    s
}

/// A setting as a number (`pg_settings.setting`, in the setting's own unit), `None` when this
/// server has no such setting.
async fn setting(
    t: &Target,
    c: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<i64>, PgError> {
    Ok(c.query_opt(
        "SELECT setting::bigint FROM pg_settings WHERE name = $1",
        &[&name],
    )
    .await
    .map_err(t.err(name))?
    .map(|r| r.get(0)))
}

/// The settings that bound logical decoding on the source and apply on the target, against the
/// plan's `groups` (one slot, one WAL sender and one subscription each): what a write-heavy
/// source needs before its replication queue grows, with the fix. `free_slots` and
/// `free_senders` are the source's, already counted.
pub async fn replication_capacity(
    source: &Target,
    src: &tokio_postgres::Client,
    target: &Target,
    dst: &tokio_postgres::Client,
    groups: i64,
    free_slots: i64,
    free_senders: i64,
) -> Result<Vec<Finding>, PgError> {
    let mut out = Vec::new();
    let groups = groups.max(1);
    if let Some(kb) = setting(source, src, "logical_decoding_work_mem").await? {
        let mb = kb / 1024;
        let message = format!(
            "source logical_decoding_work_mem is {mb} MB, per slot ({groups} slot(s): up to {} MB): a transaction that changes more than that spills to disk while it is decoded, and heavily updated large tables then build a replication queue",
            mb * groups
        );
        let fix = "raise logical_decoding_work_mem on the source for a write-heavy database (e.g. 256MB; a reload, no restart; RDS: its parameter group), within the memory the source can spare per slot";
        out.push(if kb < 64 * 1024 {
            finding(Level::Warning, "decoding_memory", message, Some(fix))
        } else {
            finding(Level::Note, "decoding_memory", message, Some(fix))
        });
    }
    if let Some(ms) = setting(source, src, "wal_sender_timeout").await? {
        if ms == 0 {
            out.push(finding(
                Level::Warning,
                "wal_sender_timeout",
                "source wal_sender_timeout is 0 (never): a subscriber that stops answering keeps its WAL sender and its slot, and the source keeps its WAL".into(),
                Some("set wal_sender_timeout to 60s or more on the source (a reload)"),
            ));
        } else if ms < 60_000 {
            out.push(finding(
                Level::Warning,
                "wal_sender_timeout",
                format!("source wal_sender_timeout is {} s: a subscriber busy applying a large transaction can be cut off and start over", ms / 1000),
                Some("set wal_sender_timeout to 60s or more on the source (a reload)"),
            ));
        }
    }
    let workers = setting(target, dst, "max_logical_replication_workers").await?;
    let sync = setting(target, dst, "max_sync_workers_per_subscription").await?;
    let processes = setting(target, dst, "max_worker_processes").await?;
    let origins = setting(target, dst, "max_replication_slots").await?;
    if let (Some(workers), Some(sync)) = (workers, sync) {
        let copying = groups * (1 + sync);
        if workers < groups {
            out.push(finding(
                Level::Error,
                "apply_workers",
                format!("target max_logical_replication_workers is {workers}: each of the plan's {groups} subscription(s) needs an apply worker of its own"),
                Some("raise max_logical_replication_workers on the target to at least the number of table groups plus their sync workers (a restart; RDS: its parameter group)"),
            ));
        } else if workers < copying {
            out.push(finding(
                Level::Warning,
                "apply_workers",
                format!("target max_logical_replication_workers is {workers}: while the subscriptions copy the data themselves (the native load), {groups} apply worker(s) and up to {sync} table sync(s) per group want {copying}, so fewer tables copy at once"),
                Some("raise max_logical_replication_workers on the target (a restart), or use the parallel load"),
            ));
        }
        out.push(finding(
            Level::Note,
            "sync_workers",
            format!("target max_sync_workers_per_subscription is {sync}: in the native load up to {sync} table(s) of a group copy at once, each on a slot and a WAL sender of the source's"),
            None,
        ));
        if free_slots.min(free_senders) < copying && free_slots.min(free_senders) >= groups {
            out.push(finding(
                Level::Warning,
                "copy_slots",
                format!("the source has {} free slot(s) and WAL sender(s): enough for the {groups} group(s), not for their table syncs during a native load ({copying} at once)", free_slots.min(free_senders)),
                Some("raise max_replication_slots and max_wal_senders on the source (a restart), or use the parallel load, which needs one of each per group"),
            ));
        }
        if let Some(p) = processes {
            if p < workers + 1 {
                out.push(finding(
                    Level::Warning,
                    "worker_processes",
                    format!("target max_worker_processes is {p}: the logical replication launcher and its {workers} worker(s) come out of it, with parallel queries and other background workers"),
                    Some("raise max_worker_processes on the target above max_logical_replication_workers (a restart)"),
                ));
            }
        }
    }
    if let Some(o) = origins {
        if o < groups {
            out.push(finding(
                Level::Error,
                "origins",
                format!("target max_replication_slots is {o}: the target tracks each subscription's progress in a replication origin, and it allows {o} for {groups} subscription(s)"),
                Some("raise max_replication_slots on the target to at least the number of table groups, plus one per group for the reverse replication's slots (a restart)"),
            ));
        }
    }
    let twal = dst
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(target.err("wal_level"))?
        .get::<_, String>(0);
    if twal != "logical" {
        out.push(finding(
            Level::Warning,
            "reverse_replication",
            format!("target wal_level is `{twal}`: the reverse replication that a rollback needs publishes from the target, and cannot"),
            Some("set wal_level = logical on the target before the cutover (RDS: rds.logical_replication = 1 in its parameter group, then reboot)"),
        ));
    }
    Ok(out)
}

/// What DMS needs of a source it decodes with `plugin`: the plugin itself, no batch apply on a
/// table with a primary key and another unique constraint (DMS groups its changes and can lose
/// rows of such a table), and a key on every table with large values (DMS replicates LOB columns
/// only of tables with a primary or unique key).
async fn dms_checks(
    source: &Target,
    src: &tokio_postgres::Client,
    v: Version,
    plugin: &str,
    batch_apply: &[String],
) -> Result<Vec<Finding>, PgError> {
    let mut out = Vec::new();
    if !v.logical_decoding() {
        out.push(finding(
            Level::Error,
            "version",
            format!("source {v} cannot decode its WAL logically (9.4 and later can), so DMS cannot capture its changes"),
            Some("upgrade the source to 9.4 or later first, or move it with a dump and a downtime window"),
        ));
    }
    if plugin == "pglogical" {
        let r = src
            .query_one(
                "SELECT exists(SELECT 1 FROM pg_available_extensions WHERE name = 'pglogical'),
                        current_setting('shared_preload_libraries') LIKE '%pglogical%'",
                &[],
            )
            .await
            .map_err(source.err("the pglogical plugin"))?;
        let (available, loaded): (bool, bool) = (r.get(0), r.get(1));
        if !available || !loaded {
            out.push(finding(
                Level::Error,
                "plugin",
                format!(
                    "the source {}: DMS decodes each table group's slot with pglogical, so that each task reads only its own tables",
                    if available { "has pglogical installed but not in shared_preload_libraries" } else { "has no pglogical extension" }
                ),
                Some("install pglogical on the source (its package for this version), add it to shared_preload_libraries, restart, and CREATE EXTENSION pglogical; or give the plan plugin = \"test_decoding\" (every task then decodes every table)"),
            ));
        }
    }
    let nsp =
        "n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'";
    if !batch_apply.is_empty() {
        let risky: Vec<String> = src
            .query(
                &format!(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.relkind = 'r' AND {nsp}
                       AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
                       AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND NOT i.indisprimary)
                       AND format('%s.%s', n.nspname, c.relname) = ANY($1)
                     ORDER BY 1"
                ),
                &[&batch_apply],
            )
            .await
            .map_err(source.err("unique constraints"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !risky.is_empty() {
            out.push(finding(
                Level::Error,
                "batch_apply",
                format!(
                    "batch apply is on for {} table(s) with a primary key and another unique constraint: DMS's batch apply groups their changes and can lose rows: {}",
                    risky.len(),
                    list(&risky, 20)
                ),
                Some("move these tables to a table group without batch apply (batch_apply = false in the stack's table_groups)"),
            ));
        }
    }
    let keyless_lobs: Vec<String> = src
        .query(
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind = 'r' AND {nsp}
                   AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                               AND a.atttypid IN ('text'::regtype, 'bytea'::regtype, 'json'::regtype, 'jsonb'::regtype, 'xml'::regtype))
                   AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisunique))
                 ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(source.err("tables with large values"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !keyless_lobs.is_empty() {
        out.push(finding(
            Level::Error,
            "lob_keys",
            format!(
                "{} table(s) have large-value columns (text, bytea, json, jsonb, xml) and no primary or unique key: DMS replicates LOB columns only of tables with one, so their values would arrive empty: {}",
                keyless_lobs.len(),
                list(&keyless_lobs, 20)
            ),
            Some("add a primary key (or a unique key) to each before the load"),
        ));
    }
    Ok(out)
}

/// Runs every check; `slots_needed` is the number of replication slots the plan will create.
pub async fn check(
    source: &Target,
    target: &Target,
    slots_needed: i64,
) -> Result<Vec<Finding>, PgError> {
    check_for(source, target, slots_needed, &Capture::default()).await
}

/// [`check`] for the way changes will leave the source.
pub async fn check_for(
    source: &Target,
    target: &Target,
    slots_needed: i64,
    capture: &Capture,
) -> Result<Vec<Finding>, PgError> {
    let src = source.connect().await?;
    let dst = target.connect().await?;
    let mut out = Vec::new();
    let one = |rows: Vec<tokio_postgres::Row>| -> String {
        rows.first()
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default()
    };

    let sv = Version::of(source, &src).await?;
    let wal = one(src
        .query("SHOW wal_level", &[])
        .await
        .map_err(source.err("wal_level"))?);
    if wal != "logical" {
        out.push(finding(
            Level::Error,
            "wal_level",
            format!("source wal_level is `{wal}`; logical replication needs `logical`"),
            Some("set wal_level = logical on the source and restart it (RDS: rds.logical_replication = 1 in its parameter group, then reboot)"),
        ));
    }
    let row = src
        .query_one(
            "SELECT current_setting('max_replication_slots')::bigint - (SELECT count(*) FROM pg_replication_slots),
                    current_setting('max_wal_senders')::bigint - (SELECT count(*) FROM pg_stat_replication)",
            &[],
        )
        .await
        .map_err(source.err("replication capacity"))?;
    let (slots, senders): (i64, i64) = (row.get(0), row.get(1));
    if slots < slots_needed {
        out.push(finding(
            Level::Error,
            "replication_slots",
            format!("source has {slots} free replication slot(s); the plan needs {slots_needed}"),
            Some("raise max_replication_slots on the source (restart needed) or drop unused slots"),
        ));
    }
    if senders < slots_needed {
        out.push(finding(
            Level::Error,
            "wal_senders",
            format!("source has {senders} free WAL sender(s); the plan needs {slots_needed}"),
            Some("raise max_wal_senders on the source (restart needed)"),
        ));
    }
    let capacity =
        replication_capacity(source, &src, target, &dst, slots_needed, slots, senders).await?;
    // With DMS the target applies nothing itself: its subscription workers are not asked for.
    out.extend(capacity.into_iter().filter(|f| {
        capture.dms_plugin.is_none()
            || !matches!(
                f.check.as_str(),
                "apply_workers" | "sync_workers" | "copy_slots" | "worker_processes" | "origins"
            )
    }));
    if let Some(plugin) = &capture.dms_plugin {
        out.extend(dms_checks(source, &src, sv, plugin, &capture.batch_apply).await?);
    }
    let sv = sv.0 as i64;
    let tv: i64 = one(dst
        .query("SHOW server_version_num", &[])
        .await
        .map_err(target.err("version"))?)
    .parse()
    .unwrap_or(0);
    if tv / 10000 < sv / 10000 {
        out.push(finding(
            Level::Error,
            "version",
            format!(
                "target PostgreSQL {} is older than the source's {}",
                tv / 10000,
                sv / 10000
            ),
            Some("use a target of the same or a newer major version"),
        ));
    } else if sv < 100000 && capture.dms_plugin.is_some() {
        out.push(finding(
            Level::Note,
            "version",
            format!(
                "source PostgreSQL {}.{} has no native logical replication: DMS decodes its changes through the slots; target {}",
                sv / 10000,
                sv / 100 % 100,
                tv / 10000
            ),
            None,
        ));
    } else if sv < 100000 {
        out.push(finding(
            Level::Error,
            "version",
            format!(
                "source PostgreSQL {} has no native logical replication",
                sv / 10000
            ),
            Some("use pglogical or AWS DMS for sources older than 10"),
        ));
    } else {
        out.push(finding(
            Level::Note,
            "version",
            format!("source {}, target {}", sv / 10000, tv / 10000),
            None,
        ));
    }

    let no_identity: Vec<String> = src
        .query(
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE {ut} AND c.relpersistence = 'p'
                   AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS
                        (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
                 ORDER BY 1",
                ut = user_tables(Version(sv as i32))
            ),
            &[],
        )
        .await
        .map_err(source.err("replica identity"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !no_identity.is_empty() {
        out.push(finding(
            Level::Error,
            "replica_identity",
            format!("{} table(s) have no primary key or replica identity: once published, UPDATE and DELETE on them fail on the source, and they cannot replicate: {}", no_identity.len(), list(&no_identity, 20)),
            Some("add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL (slower apply) for each"),
        ));
    }
    let unlogged: Vec<String> = src
        .query(&format!("SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {ut} AND c.relpersistence = 'u' ORDER BY 1", ut = user_tables(Version(sv as i32))), &[])
        .await
        .map_err(source.err("unlogged tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !unlogged.is_empty() {
        out.push(finding(
            Level::Warning,
            "unlogged",
            format!(
                "{} unlogged table(s) are not replicated: {}",
                unlogged.len(),
                list(&unlogged, 20)
            ),
            Some("ALTER TABLE ... SET LOGGED, or copy them at cutover"),
        ));
    }
    let lobs: i64 = src
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(source.err("large objects"))?
        .get(0);
    if lobs > 0 {
        out.push(finding(
            Level::Warning,
            "large_objects",
            format!("{lobs} large object(s) are not replicated by logical replication"),
            Some("copy them at cutover (pg_dump --large-objects) or move them into bytea columns"),
        ));
    }
    let seqs = src
        .query(super::version::Version(sv as i32).sequences(), &[])
        .await
        .map_err(source.err("sequences"))?
        .len();
    if seqs > 0 {
        out.push(finding(Level::Note, "sequences", format!("{seqs} sequence(s): logical replication does not carry their values; the cutover syncs them"), None));
    }
    let exts = |rows: Vec<tokio_postgres::Row>| -> std::collections::BTreeSet<String> {
        rows.iter().map(|r| r.get(0)).collect()
    };
    let se = exts(
        src.query("SELECT extname::text FROM pg_extension", &[])
            .await
            .map_err(source.err("extensions"))?,
    );
    let te = exts(
        dst.query("SELECT extname::text FROM pg_extension", &[])
            .await
            .map_err(target.err("extensions"))?,
    );
    let only_src: Vec<String> = se.difference(&te).cloned().collect();
    if !only_src.is_empty() {
        out.push(finding(
            Level::Warning,
            "extensions",
            format!("extension(s) on the source only: {}", list(&only_src, 20)),
            Some("CREATE EXTENSION them on the target before copying the schema"),
        ));
    }
    let only_dst: Vec<String> = te.difference(&se).cloned().collect();
    if !only_dst.is_empty() {
        out.push(finding(
            Level::Note,
            "extensions",
            format!("extension(s) on the target only: {}", list(&only_dst, 20)),
            None,
        ));
    }
    let tables_q = |v: i64| {
        format!("SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {ut} AND c.relpersistence = 'p' ORDER BY 1", ut = user_tables(Version(v as i32)))
    };
    let st: std::collections::BTreeSet<String> = src
        .query(&tables_q(sv), &[])
        .await
        .map_err(source.err("tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tt: std::collections::BTreeSet<String> = dst
        .query(&tables_q(tv), &[])
        .await
        .map_err(target.err("tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<String> = st.difference(&tt).cloned().collect();
    if !missing.is_empty() {
        out.push(finding(Level::Note, "schema", format!("{} table(s) are not on the target yet: {}", missing.len(), list(&missing, 10)), Some("the replication step copies the schema first (or create it with pg_dump --schema-only)")));
    }
    out.sort_by(|a, b| b.level.cmp(&a.level).then(a.check.cmp(&b.check)));
    Ok(out)
}
