//! Native logical replication from a source to a target: the schema copied in two phases
//! (tables and the keys replication needs before the initial copy; secondary indexes, foreign keys
//! and the rest after it), one publication and one subscription (hence one slot) per table group,
//! the wait for every table's initial copy, and lag in bytes and seconds.
//!
//! Every operation here is idempotent: it checks before it creates, so a step that ran halfway
//! runs again safely. It must never drop anything on the source.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ident, literal, PgError, Target};

/// Tables replicated together (one publication, subscription and slot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    /// `schema.table` names; the group called `rest` (or the only group) takes every table not
    /// named elsewhere.
    #[serde(default)]
    pub tables: Vec<String>,
}

/// What replication set up, recorded in state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    pub groups: Vec<GroupSetup>,
    pub tables: usize,
}

/// One group's objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSetup {
    pub name: String,
    pub publication: String,
    pub subscription: String,
    pub slot: String,
    pub tables: Vec<String>,
}

/// The name of a group's objects (publication, subscription and slot share it).
pub fn object_name(prefix: &str, group: &str) -> String {
    let raw = format!("{prefix}_{group}").to_lowercase();
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

/// The slot (and publication and subscription) a hand-off's table group replicates over
/// (`CaptureSlots`): `cutover_<group>`.
pub fn capture_slot(group: &str) -> String {
    object_name("cutover", group)
}

/// Catch-up tables are named `public.cutover_catchup_<group>`.
const CATCH_UP_PREFIX: &str = "public.cutover_catchup_";

/// The catch-up table of a group: each group's publication carries one of its own, so the
/// cutover writes a row to every group's table after the fence and waits until the target has all
/// of them, which proves every slot (not only one) has applied everything written before it.
pub fn catch_up_table(group: &str) -> String {
    let suffix: String = group
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(63 - (CATCH_UP_PREFIX.len() - "public.".len()))
        .collect();
    format!("{CATCH_UP_PREFIX}{suffix}")
}

/// Whether `table` (`schema.table`) is a catch-up table.
pub fn is_catch_up_table(table: &str) -> bool {
    table.starts_with(CATCH_UP_PREFIX)
}

/// The definition of a group's catch-up table (the same columns as the marker table).
pub fn catch_up_ddl(group: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
        qualified(&catch_up_table(group))
    )
}

/// Creates on the source the catch-up table of every group `groups` makes of its tables (before
/// the schema is copied, so the copy carries them); returns the groups' names.
pub async fn create_catch_up_tables(
    source: &Target,
    c: &tokio_postgres::Client,
    groups: &[Group],
) -> Result<Vec<String>, PgError> {
    let all = tables(source, c).await?;
    let names: Vec<String> = assign(&all, groups)
        .map_err(PgError::Other)?
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    let ddl: Vec<String> = names.iter().map(|g| catch_up_ddl(g)).collect();
    c.batch_execute(&ddl.join(";\n"))
        .await
        .map_err(source.err("create the catch-up tables"))?;
    Ok(names)
}

/// User tables of a database (`schema.table`, persistent, not partitions), sorted.
pub async fn tables(t: &Target, c: &tokio_postgres::Client) -> Result<Vec<String>, PgError> {
    let v = super::version::Version::of(t, c).await?;
    Ok(c.query(
        &format!(
            "SELECT format('%s.%s', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r','p') AND c.relpersistence = 'p' AND {}
               AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'
             ORDER BY 1",
            v.not_partition()
        ),
        &[],
    )
    .await
    .map_err(t.err("list tables"))?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Splits tables into groups: named tables to their groups, the rest to the group `rest` (or to
/// the only group when there is one without tables). A group's catch-up table goes to that group
/// (one no group owns is left out).
pub fn assign(all: &[String], groups: &[Group]) -> Result<Vec<(String, Vec<String>)>, String> {
    let catch_up: BTreeSet<&String> = all.iter().filter(|t| is_catch_up_table(t)).collect();
    let all: Vec<String> = all
        .iter()
        .filter(|t| !is_catch_up_table(t))
        .cloned()
        .collect();
    let mut out = assign_tables(&all, groups)?;
    for (g, ts) in &mut out {
        let own = catch_up_table(g);
        if catch_up.contains(&own) {
            ts.push(own);
            ts.sort();
        }
    }
    Ok(out)
}

fn assign_tables(all: &[String], groups: &[Group]) -> Result<Vec<(String, Vec<String>)>, String> {
    let groups: Vec<Group> = if groups.is_empty() {
        vec![Group {
            name: "main".into(),
            tables: vec![],
        }]
    } else {
        groups.to_vec()
    };
    let known: BTreeSet<&String> = all.iter().collect();
    let mut named = BTreeSet::new();
    let mut out = Vec::new();
    for g in &groups {
        for t in &g.tables {
            if !known.contains(t) {
                return Err(format!("group `{}` names table `{t}`, which the source does not have (tables are `schema.table`)", g.name));
            }
            if !named.insert(t.clone()) {
                return Err(format!("table `{t}` is in two groups"));
            }
        }
    }
    let catch_all = groups
        .iter()
        .position(|g| g.tables.is_empty())
        .or_else(|| groups.iter().position(|g| g.name == "rest"));
    for (i, g) in groups.iter().enumerate() {
        let mut ts = g.tables.clone();
        if Some(i) == catch_all {
            ts.extend(all.iter().filter(|t| !named.contains(*t)).cloned());
        }
        ts.sort();
        if !ts.is_empty() {
            out.push((g.name.clone(), ts));
        }
    }
    if catch_all.is_none() && all.iter().any(|t| !named.contains(t)) {
        let rest: Vec<String> = all
            .iter()
            .filter(|t| !named.contains(*t))
            .cloned()
            .collect();
        out.push(("rest".into(), rest));
    }
    Ok(out)
}

/// `pg_dump --schema-only --section=SECTION` of the source.
pub fn dump_schema(source: &Target, section: &str) -> Result<String, PgError> {
    pg_dump_schema(
        source,
        &["--section".to_string(), section.to_string()],
        section,
    )
}

/// `pg_dump --schema-only` of some tables of the source (with the sequences they own).
fn dump_tables(source: &Target, tables: &[String]) -> Result<String, PgError> {
    let args: Vec<String> = tables
        .iter()
        .flat_map(|t| ["--table".to_string(), qualified(t)])
        .collect();
    pg_dump_schema(source, &args, &tables.join(", "))
}

/// `pg_dump --schema-only ARGS` of the source, without psql's meta-commands; `what` names the
/// dump in an error.
fn pg_dump_schema(source: &Target, args: &[String], what: &str) -> Result<String, PgError> {
    let mut c = source.libpq_command("pg_dump")?;
    c.args(["--schema-only", "--no-owner", "--no-privileges"])
        .args(args)
        .arg("--dbname")
        .arg(source.conninfo_without_password());
    let out = c
        .output()
        .map_err(|e| PgError::Other(format!("pg_dump: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(PgError::Other(format!(
            "pg_dump of {source} ({what}) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Recent pg_dump versions wrap their output in psql meta-commands (`\restrict KEY` ...
    // `\unrestrict KEY`); a schema-only script has no other backslash lines, and the server does
    // not understand them.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Statements of a pg_dump script (post-data has no function bodies, so `;` at a line end ends a
/// statement), without comments and session settings.
pub fn statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in script.lines() {
        if cur.is_empty() && (line.starts_with("--") || line.trim().is_empty()) {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if line.trim_end().ends_with(';') {
            let s = cur.trim().to_string();
            cur.clear();
            let lower = s.to_lowercase();
            if lower.starts_with("set ") || lower.starts_with("select pg_catalog.set_config") {
                continue;
            }
            out.push(s);
        }
    }
    out
}

/// Whether a post-data statement creates what apply needs (a primary key or unique constraint).
pub(super) fn is_identity(stmt: &str) -> bool {
    let l = stmt.to_lowercase();
    l.starts_with("alter table")
        && (l.contains(" primary key") || l.contains(" unique (") || l.contains(" unique using"))
        || l.starts_with("create unique index")
}

pub(super) async fn run_ignoring_duplicates(
    t: &Target,
    c: &tokio_postgres::Client,
    stmts: &[String],
) -> Result<(), PgError> {
    for s in stmts {
        if let Err(e) = c.batch_execute(s).await {
            // Already there (an earlier, interrupted run): fine.
            let dup = e.code().map(|c| {
                let c = c.code();
                c == "42P07" || c == "42710" || c == "42P16"
            });
            if dup != Some(true) {
                return Err(t.err("apply schema")(e));
            }
        }
    }
    Ok(())
}

/// Creates the schema on the target unless it is there: the tables now, with their keys when
/// `keys_now` (native copy needs them to apply changes during the copy); returns the post-data
/// statements still to run after the initial copy.
pub async fn copy_schema_pre(
    source: &Target,
    target: &Target,
    keys_now: bool,
) -> Result<Vec<String>, PgError> {
    let src = source.connect().await?;
    let dst = target.connect().await?;
    // One schema copy at a time on the target, held for this session: a run killed while its
    // CREATE statements ran leaves a server session that finishes them (and then lets go of the
    // lock), so the next run must look at the tables only once that session is done.
    dst.batch_execute("SELECT pg_advisory_lock(hashtext('cutover: schema copy'))")
        .await
        .map_err(target.err("lock the schema copy"))?;
    let st = tables(source, &src).await?;
    let tt: BTreeSet<String> = tables(target, &dst).await?.into_iter().collect();
    let present = st.iter().filter(|t| tt.contains(*t)).count();
    // Both sections at once: each pg_dump spends most of its time starting and reading catalogs.
    let dump = |section: &'static str| {
        let source = source.clone();
        tokio::task::spawn_blocking(move || dump_schema(&source, section))
    };
    let (post, pre) = tokio::join!(dump("post-data"), async {
        match present {
            0 => Some(dump("pre-data").await),
            _ => None,
        }
    });
    let joined = |e: tokio::task::JoinError| PgError::Other(format!("pg_dump: {e}"));
    let post = statements(&post.map_err(joined)??);
    let (identity, rest): (Vec<String>, Vec<String>) =
        post.into_iter().partition(|s| is_identity(s));
    if let Some(pre) = pre {
        let pre = pre.map_err(joined)??;
        dst.batch_execute(&pre)
            .await
            .map_err(target.err("create tables (pre-data)"))?;
    } else if present < st.len() {
        let missing: Vec<&String> = st.iter().filter(|t| !tt.contains(*t)).collect();
        return Err(PgError::Other(format!(
            "the target has some of the source's tables but not {missing:?}: create them, or drop the partial schema, then run again"
        )));
    }
    if !keys_now {
        return Ok(identity.into_iter().chain(rest).collect());
    }
    run_ignoring_duplicates(target, &dst, &identity).await?;
    Ok(rest)
}

/// Applies the post-data rest (indexes, foreign keys, triggers) on the target.
pub async fn copy_schema_post(target: &Target, rest: &[String]) -> Result<(), PgError> {
    let dst = target.connect().await?;
    run_ignoring_duplicates(target, &dst, rest).await
}

/// Creates each group's publication (source) and subscription (target) unless they exist; the
/// subscriptions copy the tables' data themselves (`copy_data`).
pub async fn start(
    source: &Target,
    target: &Target,
    prefix: &str,
    groups: &[Group],
) -> Result<Setup, PgError> {
    let published = publish(source, prefix, groups).await?;
    subscribe(source, target, &published, true).await
}

/// Creates each group's publication on the source unless it exists; returns the setup (no
/// subscription made yet).
pub async fn publish(source: &Target, prefix: &str, groups: &[Group]) -> Result<Setup, PgError> {
    let src = source.connect().await?;
    let all = tables(source, &src).await?;
    let assigned = assign(&all, groups).map_err(PgError::Other)?;
    let mut setup = Setup {
        groups: vec![],
        tables: all.len(),
    };
    for (name, ts) in assigned {
        let obj = object_name(prefix, &name);
        let exists: bool = src
            .query_one(
                "SELECT exists(SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&obj],
            )
            .await
            .map_err(source.err("find publication"))?
            .get(0);
        if !exists {
            let list: Vec<String> = ts.iter().map(|t| qualified(t)).collect();
            src.batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                ident(&obj),
                list.join(", ")
            ))
            .await
            .map_err(source.err("create publication"))?;
        }
        setup.groups.push(GroupSetup {
            name,
            publication: obj.clone(),
            subscription: obj.clone(),
            slot: obj,
            tables: ts,
        });
    }
    Ok(setup)
}

/// `schema.table` quoted.
pub fn qualified(t: &str) -> String {
    let (s, n) = t.split_once('.').unwrap_or(("public", t));
    format!("{}.{}", ident(s), ident(n))
}

/// Whether the subscription `name` exists on the target.
pub async fn subscribed(
    target: &Target,
    dst: &tokio_postgres::Client,
    name: &str,
) -> Result<bool, PgError> {
    Ok(dst
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&name],
        )
        .await
        .map_err(target.err("find subscription"))?
        .get(0))
}

/// Whether the replication slot `slot` exists on the source.
pub async fn slot_exists(
    source: &Target,
    src: &tokio_postgres::Client,
    slot: &str,
) -> Result<bool, PgError> {
    Ok(src
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(source.err("find slot"))?
        .get(0))
}

/// Creates each group's subscription on the target unless it exists. With `copy_data` the
/// subscription copies the tables itself (reusing a slot an interrupted run left); without it the
/// group's slot must exist already (made by the parallel load) and streaming starts at its
/// consistent point.
pub async fn subscribe(
    source: &Target,
    target: &Target,
    setup: &Setup,
    copy_data: bool,
) -> Result<Setup, PgError> {
    let src = source.connect().await?;
    let dst = target.connect().await?;
    for g in &setup.groups {
        let obj = &g.subscription;
        if subscribed(target, &dst, obj).await? {
            continue;
        }
        // A slot left by an interrupted CREATE SUBSCRIPTION would make it fail: reuse it.
        let slot = slot_exists(source, &src, &g.slot).await?;
        if !copy_data && !slot {
            return Err(PgError::Other(format!(
                "{source}: replication slot `{}` is missing: the initial load makes it; run the step again",
                g.slot
            )));
        }
        let sql = format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = {copy_data}, create_slot = {}, slot_name = {})",
            ident(obj),
            literal(&source.conninfo()),
            ident(&g.publication),
            !slot,
            literal(&g.slot),
        );
        dst.batch_execute(&sql)
            .await
            .map_err(target.err("create subscription"))?;
    }
    Ok(setup.clone())
}

/// A group's tables that are in no publication yet: (group, publication, tables), for every group
/// the source's tables make now (a table created after replication started goes to the
/// catch-all group; a group without its catch-up table lists it too, as `catch_up_table`).
pub async fn unpublished(
    source: &Target,
    prefix: &str,
    groups: &[Group],
) -> Result<Vec<(String, String, Vec<String>)>, PgError> {
    let src = source.connect().await?;
    let all = tables(source, &src).await?;
    let published: BTreeSet<(String, String)> = src
        .query(
            "SELECT pubname::text, format('%s.%s', schemaname, tablename) FROM pg_publication_tables",
            &[],
        )
        .await
        .map_err(source.err("read the publications"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out = vec![];
    for (g, ts) in assign(&all, groups).map_err(PgError::Other)? {
        let publication = object_name(prefix, &g);
        let mut missing: Vec<String> = ts
            .into_iter()
            .filter(|t| !published.contains(&(publication.clone(), t.clone())))
            .collect();
        let own = catch_up_table(&g);
        if !all.contains(&own) {
            missing.push(own);
        }
        if !missing.is_empty() {
            out.push((g, publication, missing));
        }
    }
    Ok(out)
}

/// Takes tables created on the source after replication started into it, without starting over:
/// each group's missing catch-up table is created, every table in no publication is created on
/// the target (its schema as the source has it, unless the target has the table) and added to its
/// group's publication, and that group's subscription refreshed to copy it (the subscription must
/// be enabled: PostgreSQL refuses to refresh a disabled one). Returns the tables taken in; the
/// caller waits for their copy.
pub async fn extend(
    source: &Target,
    target: &Target,
    prefix: &str,
    groups: &[Group],
) -> Result<Vec<String>, PgError> {
    let src = source.connect().await?;
    create_catch_up_tables(source, &src, groups).await?;
    let todo = unpublished(source, prefix, groups).await?;
    if todo.is_empty() {
        return Ok(vec![]);
    }
    let dst = target.connect().await?;
    let present: BTreeSet<String> = tables(target, &dst).await?.into_iter().collect();
    let mut added = vec![];
    for (group, publication, missing) in todo {
        let enabled: Option<bool> = dst
            .query_opt(
                "SELECT subenabled FROM pg_subscription WHERE subname = $1",
                &[&publication],
            )
            .await
            .map_err(target.err("find subscription"))?
            .map(|r| r.get(0));
        match enabled {
            None => {
                return Err(PgError::Other(format!(
                    "{target}: group `{group}` has no subscription `{publication}`: a group added to the plan after replication started needs the replicate step run again (`--replace`)"
                )))
            }
            Some(false) => {
                return Err(PgError::Other(format!(
                    "{target}: subscription `{publication}` is disabled (a cutover ran, or someone disabled it), and a disabled subscription cannot take new tables in; enable it, or leave {} out",
                    missing.join(", ")
                )))
            }
            Some(true) => {}
        }
        let create: Vec<String> = missing
            .iter()
            .filter(|t| !present.contains(*t))
            .cloned()
            .collect();
        if !create.is_empty() {
            let script = {
                let source = source.clone();
                let create = create.clone();
                tokio::task::spawn_blocking(move || dump_tables(&source, &create))
                    .await
                    .map_err(|e| PgError::Other(format!("pg_dump: {e}")))??
            };
            dst.batch_execute(&script)
                .await
                .map_err(target.err("create the new tables"))?;
        }
        let list: Vec<String> = missing.iter().map(|t| qualified(t)).collect();
        src.batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            ident(&publication),
            list.join(", ")
        ))
        .await
        .map_err(source.err("add the tables to the publication"))?;
        dst.batch_execute(&format!(
            "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)",
            ident(&publication)
        ))
        .await
        .map_err(target.err("refresh the subscription"))?;
        added.extend(missing);
    }
    Ok(added)
}

/// Tables whose initial copy is done, and all tables, across `subscriptions`; and sync errors.
pub async fn copy_progress(
    target: &Target,
    subscriptions: &[String],
) -> Result<(i64, i64, i64), PgError> {
    let dst = target.connect().await?;
    let r = dst
        .query_one(
            "SELECT count(*) FILTER (WHERE r.srsubstate IN ('r','s')), count(*),
                    COALESCE((SELECT sum(sync_error_count) FROM pg_stat_subscription_stats WHERE subname = ANY($1)), 0)::bigint
             FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = ANY($1)",
            &[&subscriptions],
        )
        .await
        .map_err(target.err("copy progress"))?;
    Ok((r.get(0), r.get(1), r.get(2)))
}

/// Marks subscriptions fully set up (initial copy and schema done): what the probe checks.
pub async fn mark_ready(target: &Target, subscriptions: &[String]) -> Result<(), PgError> {
    let dst = target.connect().await?;
    for s in subscriptions {
        dst.batch_execute(&format!(
            "COMMENT ON SUBSCRIPTION {} IS 'cutover: ready'",
            ident(s)
        ))
        .await
        .map_err(target.err("mark subscription"))?;
    }
    Ok(())
}

/// Whether every subscription exists and is marked ready.
pub async fn is_ready(target: &Target, subscriptions: &[String]) -> Result<bool, PgError> {
    let dst = target.connect().await?;
    let n: i64 = dst
        .query_one(
            "SELECT count(*) FROM pg_subscription s
             WHERE s.subname = ANY($1) AND obj_description(s.oid, 'pg_subscription') = 'cutover: ready'",
            &[&subscriptions],
        )
        .await
        .map_err(target.err("check subscriptions"))?
        .get(0);
    Ok(n as usize == subscriptions.len())
}

/// Replication lag of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// WAL the subscriber has not confirmed: the source's current position minus the slot's
    /// confirmed flush position.
    pub bytes: i64,
    /// The walsender's replay lag (0 when caught up or idle).
    pub seconds: f64,
}

/// The lag of `slot` on the source.
pub async fn lag(source: &Target, slot: &str) -> Result<Lag, PgError> {
    let src = source.connect().await?;
    let v = super::version::Version::of(source, &src).await?;
    // Before 10 the walsender reports no replay lag in time: only the bytes are known.
    let seconds = if v.native_logical_replication() {
        "COALESCE(EXTRACT(epoch FROM r.replay_lag), 0)::float8"
    } else {
        "0::float8"
    };
    let current = v
        .current_lsn()
        .trim_start_matches("SELECT ")
        .trim_end_matches("::text");
    let r = src
        .query_opt(
            &format!(
                "SELECT GREATEST({diff}({current}, s.confirmed_flush_lsn), 0)::bigint, {seconds}
                 FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
                 WHERE s.slot_name = $1",
                diff = v.lsn_diff()
            ),
            &[&slot],
        )
        .await
        .map_err(source.err("lag"))?
        .ok_or_else(|| {
            PgError::Other(format!(
                "{source}: replication slot `{slot}` does not exist"
            ))
        })?;
    Ok(Lag {
        bytes: r.get(0),
        seconds: r.get(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_assigned_to_groups_with_a_catch_all() {
        let all: Vec<String> = ["public.a", "public.b", "public.c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            assign(&all, &[]).unwrap(),
            vec![("main".to_string(), all.clone())]
        );
        let g = vec![Group {
            name: "big".into(),
            tables: vec!["public.b".into()],
        }];
        assert_eq!(
            assign(&all, &g).unwrap(),
            vec![
                ("big".to_string(), vec!["public.b".to_string()]),
                (
                    "rest".to_string(),
                    vec!["public.a".to_string(), "public.c".to_string()]
                )
            ]
        );
        let bad = vec![Group {
            name: "x".into(),
            tables: vec!["public.zz".into()],
        }];
        assert!(assign(&all, &bad).unwrap_err().contains("`public.zz`"));
    }

    #[test]
    fn post_data_is_split_into_keys_and_the_rest() {
        let script = "--\n-- comment\nSET x = 1;\nALTER TABLE ONLY public.a\n    ADD CONSTRAINT a_pkey PRIMARY KEY (id);\n\nCREATE INDEX e ON public.e USING btree (a);\n\nALTER TABLE ONLY public.e\n    ADD CONSTRAINT e_fk FOREIGN KEY (a) REFERENCES public.a(id);\n";
        let st = statements(script);
        assert_eq!(st.len(), 3);
        let (keys, rest): (Vec<_>, Vec<_>) = st.into_iter().partition(|s| is_identity(s));
        assert_eq!(keys.len(), 1);
        assert!(keys[0].contains("PRIMARY KEY"));
        assert_eq!(rest.len(), 2);
    }
}
