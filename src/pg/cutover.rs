//! The cutover, one composite step with timed phases: guard (schema drift, every source table
//! replicated, lag, long transactions, validation age) -> fence -> catch-up (a marker row written
//! after the fence to every replication stream's catch-up table on the source in one transaction,
//! all seen on the target: one marker would prove only its own stream) -> sequences (target at least the source's last value plus a margin) -> optional
//! reverse replication (forward subscriptions disabled first; PostgreSQL 15 has no
//! `origin = none`) -> flip -> post-check (a write and a read reach the target).
//!
//! Two fences. With a pooler: pgbouncer PAUSE (waits for in-flight transactions; clients wait, and
//! see no error), then the source itself is fenced for the sessions that bypass the pooler
//! (read-only for new sessions, the direct sessions ended; the guard refused beforehand if one of
//! them wrote, unless the plan accepted them), verified alongside the catch-up; the flip re-points
//! the pooler (RELOAD, RESUME) and the source stays read-only. Without one: the source database is made
//! read-only for new sessions, in-flight transactions get a grace period, then every client
//! session of the database is ended (clients reconnect and find it read-only); the flip rewrites
//! the file the application reads its connection from (or is left to a later step, such as a
//! DNS flip), and the source stays read-only so a client with a stale configuration cannot write
//! to it.
//!
//! Any failure before the flip unfences and leaves the source as it was. The probe used after a
//! crash finishes a flip whose file was written, or unfences: it must never leave the pooler
//! paused or the source read-only without a flip.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::pooler::{self, LocalBouncer, Route};
use super::{ident, literal, replication, PgError, Target};

/// The marker table replication carries for the catch-up check.
pub const MARKER_TABLE: &str = "public.cutover_marker";
/// Its definition (created on the source before the schema is copied).
pub const MARKER_DDL: &str =
    "CREATE TABLE IF NOT EXISTS public.cutover_marker (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())";
/// The reverse replication's publication (target) and subscription (source).
pub const REVERSE: &str = "cutover_reverse";

/// How writes are stopped on the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fence {
    /// pgbouncer PAUSE, then the pooler re-pointed.
    #[default]
    Pooler,
    /// The database read-only for new sessions and its client sessions ended; the flip rewrites
    /// `flip_file` (if any).
    ReadOnly,
}

/// What the pooler fence does with sessions that reach the source directly, not through the
/// pooler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectWriters {
    /// The guard refuses when one of them wrote during its observation window.
    #[default]
    Refuse,
    /// Accepted: the fence ends them (as it ends every direct session).
    End,
}

fn default_observe_ms() -> u64 {
    1000
}

/// What the cutover needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub source: Target,
    pub target: Target,
    #[serde(default)]
    pub fence: Fence,
    /// The local pgbouncer: its directory and port, and the database clients use (pooler fence).
    pub pooler_dir: PathBuf,
    pub pooler_port: u16,
    pub database: String,
    /// Read-only fence: the file holding the connection string the application uses, rewritten
    /// by the flip (None: a later step re-points the clients).
    #[serde(default)]
    pub flip_file: Option<PathBuf>,
    /// Forward replication: slots on the source, subscriptions on the target.
    pub slots: Vec<String>,
    pub subscriptions: Vec<String>,
    pub max_lag_bytes: i64,
    /// The replication lag in time the guard allows, if bounded: a probe written to every
    /// stream's catch-up table must reach the target within it.
    #[serde(default)]
    pub max_lag_seconds: Option<f64>,
    pub max_xact_seconds: f64,
    /// When validation last passed (RFC 3339) and how old it may be.
    pub validated_at: Option<String>,
    pub max_validation_age_seconds: u64,
    pub sequence_margin: i64,
    pub reverse: bool,
    /// The reverse subscription is created disabled, and enabled by a later step
    /// ([`enable_reverse`]) once the forward replication, run by another tool (a DMS task), has
    /// stopped: until then what it applied on the source would travel forward again.
    #[serde(default)]
    pub reverse_later: bool,
    pub fence_timeout_ms: u64,
    pub catchup_timeout_ms: u64,
    /// The catch-up tables, one per forward replication stream, for a data path the tool cannot
    /// see into (a DMS task per group). Empty: each forward subscription's own, found on the
    /// target.
    #[serde(default)]
    pub catch_up: Vec<String>,
    /// Pooler fence: direct sessions that wrote refuse the cutover, or are ended.
    #[serde(default)]
    pub direct_writers: DirectWriters,
    /// How long the guard watches the direct sessions.
    #[serde(default = "default_observe_ms")]
    pub observe_ms: u64,
    /// The source's schema digest as replication started (`schema::digest`).
    #[serde(default)]
    pub schema_at_start: Option<std::collections::BTreeMap<String, String>>,
}

/// A timed phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub ms: f64,
}

/// What the cutover did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub phases: Vec<Phase>,
    /// What the guard measured just before the fence: the largest slot lag in bytes, and how
    /// long the lag probe took to arrive through every stream (when the plan bounds the lag in
    /// time).
    pub lag_at_guard: Option<(i64, Option<f64>)>,
    /// From PAUSE issued to RESUME done: the longest time a client could wait.
    pub fenced_ms: f64,
    pub sequences: usize,
    pub reverse: bool,
    pub marker: String,
}

/// A cutover that stopped, and what state it left.
#[derive(Debug, thiserror::Error)]
#[error("cutover stopped in phase `{phase}`: {message}. {state}")]
pub struct CutoverError {
    pub phase: String,
    pub message: String,
    pub state: String,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn bouncer(spec: &Spec) -> LocalBouncer {
    LocalBouncer::new(&spec.pooler_dir, spec.pooler_port)
}

/// A session that may write even where the database is fenced read-only.
async fn writer(t: &Target) -> Result<tokio_postgres::Client, String> {
    let c = t.connect().await.map_err(|e| e.to_string())?;
    c.batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| t.err("session settings")(e).to_string())?;
    Ok(c)
}

/// Read-only fence of `t`'s database: read-only for new sessions; in-flight transactions get up
/// to `grace` to finish; then every other client session of the database is ended.
pub async fn fence_read_only(t: &Target, grace: Duration) -> Result<(), String> {
    let c = writer(t).await?;
    c.batch_execute(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        ident(&t.dbname)
    ))
    .await
    .map_err(|e| t.err("make the database read-only")(e).to_string())?;
    let v = super::version::Version::of(t, &c)
        .await
        .map_err(|e| e.to_string())?;
    let others = format!("FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND {}", v.client_backends());
    let others = others.as_str();
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        let busy: i64 = c
            .query_one(
                &format!("SELECT count(*) {others} AND xact_start IS NOT NULL"),
                &[],
            )
            .await
            .map_err(|e| t.err("in-flight transactions")(e).to_string())?
            .get(0);
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Sessions that started before the ALTER may still write; those are ended. A client that
    // reconnects gets a read-only session, so only the ended pids are waited for.
    end_sessions(t, &c, others, &[], "client").await
}

/// Ends the sessions `from` selects (a `FROM pg_stat_activity WHERE ...` clause with `params`),
/// and waits until they are gone (termination is asynchronous), for at most 10 s.
async fn end_sessions(
    t: &Target,
    c: &tokio_postgres::Client,
    from: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<(), String> {
    let ended: Vec<i32> = c
        .query(
            &format!(
                "SELECT pid FROM (SELECT pid, pg_terminate_backend(pid) AS t {from}) s WHERE t"
            ),
            params,
        )
        .await
        .map_err(|e| t.err(&format!("end the {what} sessions"))(e).to_string())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ended.is_empty() {
        return Ok(());
    }
    let t0 = Instant::now();
    loop {
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&ended],
            )
            .await
            .map_err(|e| t.err(&format!("{what} sessions"))(e).to_string())?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "{left} {what} session(s) of {t} did not end within 10 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A client session of the source's database that does not come through the pooler (nor is the
/// tool's own), as the guard saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectSession {
    pub pid: i32,
    pub user: String,
    pub application: String,
    pub client: String,
    /// Its last statement (shortened).
    pub last: String,
    /// It held a transaction id or ran DML, DDL or COPY FROM while watched.
    pub wrote: bool,
}

impl std::fmt::Display for DirectSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} (user `{}`, application `{}`, from {}; last statement `{}`)",
            self.pid,
            self.user,
            if self.application.is_empty() {
                "-"
            } else {
                &self.application
            },
            if self.client.is_empty() {
                "a local socket"
            } else {
                &self.client
            },
            self.last
        )
    }
}

/// Whether a statement writes (DML, DDL, COPY FROM, a writing CTE), by its text.
pub fn is_write(sql: &str) -> bool {
    let l = sql.trim_start().to_lowercase();
    let first = l
        .split(|c: char| !c.is_ascii_alphabetic())
        .find(|w| !w.is_empty())
        .unwrap_or("");
    match first {
        "insert" | "update" | "delete" | "merge" | "truncate" | "create" | "alter" | "drop"
        | "grant" | "revoke" | "comment" | "refresh" => true,
        "copy" => l.contains(" from "),
        "with" => ["insert ", "update ", "delete ", "merge "]
            .iter()
            .any(|k| l.contains(k)),
        "select" => l.contains("nextval(") || l.contains("setval("),
        _ => false,
    }
}

/// The backends of the pooler's server connections (pgbouncer's `SHOW SERVERS`, `remote_pid`).
async fn pooler_pids(admin: &tokio_postgres::Client) -> Result<Vec<i32>, String> {
    let rows = admin
        .simple_query("SHOW SERVERS")
        .await
        .map_err(|e| format!("the pooler's SHOW SERVERS: {}", super::describe(&e)))?;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get("remote_pid").and_then(|p| p.parse().ok())
            }
            _ => None,
        })
        .filter(|p: &i32| *p > 0)
        .collect())
}

/// Client backends of the current database other than this session, the tool's own
/// (`application_name` `cutover...`) and the pids in `$1` (the pooler's), on a server of version
/// `v`.
fn direct(v: super::version::Version) -> String {
    format!(
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
         AND {} AND coalesce(application_name, '') NOT LIKE 'cutover%'
         AND NOT (pid = ANY($1))",
        v.client_backends()
    )
}

/// Watches the source's direct sessions for `window`, sampling them.
pub async fn direct_sessions(spec: &Spec, window: Duration) -> Result<Vec<DirectSession>, String> {
    direct_sessions_of(&spec.source, Some(&bouncer(spec).admin()), window).await
}

/// Watches `source`'s client sessions for `window`, sampling them: all but the tool's own and,
/// with a pooler's console, the pooler's server connections.
pub async fn direct_sessions_of(
    source: &Target,
    console: Option<&Target>,
    window: Duration,
) -> Result<Vec<DirectSession>, String> {
    let c = source.connect().await.map_err(|e| e.to_string())?;
    let v = super::version::Version::of(source, &c)
        .await
        .map_err(|e| e.to_string())?;
    let q = c
        .prepare(&format!(
            "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(client_addr::text, ''),
                    coalesce(left(query, 120), ''), backend_xid IS NOT NULL {}",
            direct(v)
        ))
        .await
        .map_err(|e| source.err("watch the direct sessions")(e).to_string())?;
    let admin = match console {
        Some(t) => Some(t.connect().await.map_err(|e| e.to_string())?),
        None => None,
    };
    let mut seen: std::collections::BTreeMap<i32, DirectSession> = Default::default();
    let t0 = Instant::now();
    loop {
        let pids = match &admin {
            Some(a) => pooler_pids(a).await?,
            None => vec![],
        };
        for r in c
            .query(&q, &[&pids])
            .await
            .map_err(|e| source.err("watch the direct sessions")(e).to_string())?
        {
            let pid: i32 = r.get(0);
            let last: String = r.get(4);
            let wrote = r.get::<_, bool>(5) || is_write(&last);
            let e = seen.entry(pid).or_insert_with(|| DirectSession {
                pid,
                user: r.get(1),
                application: r.get(2),
                client: r.get(3),
                last: String::new(),
                wrote: false,
            });
            e.last = last.split_whitespace().collect::<Vec<_>>().join(" ");
            e.wrote |= wrote;
        }
        if t0.elapsed() >= window {
            return Ok(seen.into_values().collect());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the pooler fence's own work on the source needs and lacks: reading other roles'
/// sessions, ending them, and `ALTER DATABASE` (its owner). Empty when all is there.
pub async fn fence_privileges(t: &Target) -> Result<Vec<String>, String> {
    let c = t.connect().await.map_err(|e| e.to_string())?;
    let r = c
        .query_one(
            "SELECT r.rolsuper,
                    pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
                    pg_has_role(current_user, 'pg_signal_backend', 'USAGE'),
                    pg_has_role(current_user, d.datdba, 'USAGE'),
                    pg_get_userbyid(d.datdba)::text
             FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| t.err("read the privileges")(e).to_string())?;
    if r.get::<_, bool>(0) {
        return Ok(vec![]);
    }
    let mut missing = vec![];
    if !r.get::<_, bool>(1) {
        missing.push("membership in pg_read_all_stats (to see other roles' sessions)".to_string());
    }
    if !r.get::<_, bool>(2) {
        missing.push("membership in pg_signal_backend (to end other roles' sessions)".to_string());
    }
    if !r.get::<_, bool>(3) {
        missing.push(format!(
            "ownership of the database (membership in its owner `{}`, for ALTER DATABASE)",
            r.get::<_, String>(4)
        ));
    }
    Ok(missing)
}

/// Role settings that would override the database's read-only setting for some role.
async fn read_only_overrides(t: &Target) -> Result<Vec<String>, String> {
    let c = t.connect().await.map_err(|e| e.to_string())?;
    overrides_on(t, &c).await
}

async fn overrides_on(t: &Target, c: &tokio_postgres::Client) -> Result<Vec<String>, String> {
    Ok(c
        .query(
            "SELECT format('%s%s', pg_get_userbyid(s.setrole), CASE WHEN s.setdatabase = 0 THEN '' ELSE ' in this database' END)
             FROM pg_db_role_setting s
             WHERE s.setrole <> 0 AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
               AND EXISTS (SELECT 1 FROM unnest(s.setconfig) c WHERE c LIKE 'default\\_transaction\\_read\\_only=%' OR c LIKE 'transaction\\_read\\_only=%')",
            &[],
        )
        .await
        .map_err(|e| t.err("read the role settings")(e).to_string())?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The sessions the pooler fence uses inside the fence, opened before it (a connection costs
/// milliseconds the clients would wait): the pooler's console, a writer and a reader on the
/// source.
struct Sessions {
    admin: tokio_postgres::Client,
    writer: tokio_postgres::Client,
    reader: tokio_postgres::Client,
    /// The source's version (read before the fence).
    version: super::version::Version,
}

async fn open_sessions(spec: &Spec) -> Result<Sessions, String> {
    let console = bouncer(spec).admin();
    let (admin, writer, reader) = tokio::join!(
        console.connect(),
        writer(&spec.source),
        spec.source.connect()
    );
    let reader = reader.map_err(|e| e.to_string())?;
    let version = super::version::Version::of(&spec.source, &reader)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Sessions {
        admin: admin.map_err(|e| e.to_string())?,
        writer: writer?,
        reader,
        version,
    })
}

/// The pooler fence's fence of the source itself, once the pooler is paused: new sessions of
/// every role get read-only transactions, in-flight direct transactions get `grace`, then every
/// direct session is ended (the pooler's server connections are left alone: they are paused).
async fn fence_source(spec: &Spec, sessions: &Sessions, grace: Duration) -> Result<(), String> {
    let t = &spec.source;
    let c = &sessions.writer;
    // Its commit need not wait for the disk: the marker's commit, which follows and is
    // synchronous, flushes it too; new sessions see it at once either way.
    let sql = format!(
        "BEGIN; SET LOCAL synchronous_commit = off; ALTER DATABASE {} SET default_transaction_read_only = on; COMMIT",
        ident(&t.dbname)
    );
    let alter = c.batch_execute(&sql);
    let (altered, pids) = tokio::join!(alter, pooler_pids(&sessions.admin));
    altered.map_err(|e| t.err("make the database read-only")(e).to_string())?;
    let pids = pids?;
    let t0 = Instant::now();
    loop {
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE backend_xid IS NOT NULL) {}",
                    direct(sessions.version)
                ),
                &[&pids],
            )
            .await
            .map_err(|e| t.err("in-flight transactions")(e).to_string())?;
        let (direct, busy): (i64, i64) = (r.get(0), r.get(1));
        if direct == 0 {
            return Ok(());
        }
        if busy == 0 || t0.elapsed() >= grace {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    end_sessions(t, c, &direct(sessions.version), &[&pids], "direct").await
}

/// Proves the source's fence holds (alongside the catch-up; the flip waits for both): no client
/// backend but the pooler's and the tool's, no role setting overriding the read-only default,
/// and a new session's write refused.
async fn verify_source_fence(spec: &Spec, sessions: &Sessions) -> Result<(), String> {
    let t = &spec.source;
    let c = &sessions.reader;
    let pids = pooler_pids(&sessions.admin).await?;
    let left: Vec<String> = c
        .query(
            &format!(
                "SELECT format('pid %s (user %s)', pid, usename) {}",
                direct(sessions.version)
            ),
            &[&pids],
        )
        .await
        .map_err(|e| t.err("direct sessions")(e).to_string())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !left.is_empty() {
        return Err(format!(
            "direct session(s) {} reached the source during the fence",
            left.join(", ")
        ));
    }
    let overrides = overrides_on(t, c).await?;
    if !overrides.is_empty() {
        return Err(format!(
            "role setting(s) override the read-only fence: {}",
            overrides.join(", ")
        ));
    }
    // A session opened now, after the database was made read-only.
    let fresh = t.connect().await.map_err(|e| e.to_string())?;
    refuses_writes(&fresh, "fence-must-fail").await
}

/// Whether a session (of the source) is refused a write: a marker row `id` must fail read-only.
async fn refuses_writes(c: &tokio_postgres::Client, id: &str) -> Result<(), String> {
    match c
        .execute(
            &format!("INSERT INTO {MARKER_TABLE} (id) VALUES ($1)"),
            &[&id],
        )
        .await
    {
        Err(e) if e.code().map(|c| c.code()) == Some("25006") => Ok(()),
        Err(e) => Err(format!(
            "the source's refusal of writes could not be checked: {}",
            super::describe(&e)
        )),
        Ok(_) => {
            Err("a new session on the source could still write: the fence did not hold".into())
        }
    }
}

/// Lifts a read-only fence of `t`'s database (new sessions may write again).
pub async fn unfence_read_only(t: &Target) -> Result<(), String> {
    let c = writer(t).await?;
    c.batch_execute(&format!(
        "ALTER DATABASE {} RESET default_transaction_read_only",
        ident(&t.dbname)
    ))
    .await
    .map_err(|e| t.err("lift the read-only fence")(e).to_string())
}

/// Whether `t`'s database is fenced read-only.
pub async fn is_read_only(t: &Target) -> Result<bool, String> {
    let c = t.connect().await.map_err(|e| e.to_string())?;
    let r: bool = c
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
             WHERE d.datname = current_database() AND s.setrole = 0
               AND 'default_transaction_read_only=on' = ANY(s.setconfig))",
            &[],
        )
        .await
        .map_err(|e| t.err("read-only fence")(e).to_string())?
        .get(0);
    Ok(r)
}

/// The line the flip file holds for `t`: a libpq connection string without the password.
pub fn flip_line(t: &Target) -> String {
    format!("{}\n", t.app_conninfo())
}

/// Rewrites the flip file atomically (see [`crate::atomic`]).
fn write_flip_file(path: &std::path::Path, t: &Target) -> Result<(), String> {
    crate::atomic::write(path, flip_line(t).as_bytes(), None)
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// Whether the flip file names `t`.
fn flip_file_names(path: &std::path::Path, t: &Target) -> bool {
    std::fs::read_to_string(path)
        .map(|s| s == flip_line(t))
        .unwrap_or(false)
}

/// The tables the catch-up marker is written to, one per forward replication stream: given
/// ([`Spec::catch_up`]), or each forward subscription's catch-up table, found on the target. A
/// subscription without one refuses: the cutover could not prove it applied every write made
/// before the fence. Without either, the marker table alone (a replication that carries it).
async fn catch_up_tables(spec: &Spec) -> Result<Vec<String>, String> {
    if !spec.catch_up.is_empty() {
        return Ok(spec.catch_up.clone());
    }
    if spec.subscriptions.is_empty() {
        return Ok(vec![MARKER_TABLE.to_string()]);
    }
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    let rows = dst
        .query(
            "SELECT s.subname::text, format('%s.%s', n.nspname, c.relname)
             FROM pg_subscription s JOIN pg_subscription_rel r ON r.srsubid = s.oid
             JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE s.subname = ANY($1) AND r.srsubstate IN ('r','s') AND n.nspname = 'public'
               AND c.relname LIKE 'cutover\\_catchup\\_%'
             ORDER BY 1, 2",
            &[&spec.subscriptions],
        )
        .await
        .map_err(|e| spec.target.err("find the catch-up tables")(e).to_string())?;
    let found: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let missing: Vec<&String> = spec
        .subscriptions
        .iter()
        .filter(|s| !found.iter().any(|(f, _)| f == *s))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "forward subscription(s) {} carry no catch-up table, so the cutover could not prove they applied every write made before the fence; add one to each group (a pg.extend_replication step does) and run again",
            missing.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    let mut tables: Vec<String> = found.into_iter().map(|(_, t)| t).collect();
    tables.dedup();
    Ok(tables)
}

/// Enabled subscriptions of `names` without a running apply worker, with their apply error
/// count: missing in three looks over half a second, or in one of them with apply errors on
/// record (one that keeps failing is restarted every few seconds and may be caught running).
pub async fn stalled_subscriptions(
    target: &Target,
    names: &[String],
) -> Result<Vec<String>, String> {
    let c = target.connect().await.map_err(|e| e.to_string())?;
    // Every enabled subscription of ours: whether its apply worker runs now, its errors so far.
    let q = "SELECT s.subname::text, coalesce(st.apply_error_count, 0),
                    EXISTS (SELECT 1 FROM pg_stat_subscription w WHERE w.subid = s.oid AND w.relid IS NULL AND w.pid IS NOT NULL)
             FROM pg_subscription s LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid
             WHERE s.subname = ANY($1) AND s.subenabled
             ORDER BY 1";
    let sample = || async {
        c.query(q, &[&names])
            .await
            .map_err(|e| target.err("subscription workers")(e).to_string())
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r.get::<_, String>(0),
                            r.get::<_, i64>(1),
                            r.get::<_, bool>(2),
                        )
                    })
                    .collect::<Vec<_>>()
            })
    };
    // Three looks over half a second. A worker that keeps failing is restarted now and then
    // and may be caught running in one look: stalled is absent in every look, or absent in one
    // with apply errors on record. A healthy worker is present in every look.
    let mut looks = vec![sample().await?];
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        looks.push(sample().await?);
    }
    let last = looks.last().cloned().unwrap_or_default();
    Ok(last
        .into_iter()
        .filter(|(n, errors, _)| {
            let seen: Vec<bool> = looks
                .iter()
                .map(|l| l.iter().any(|(m, _, running)| m == n && *running))
                .collect();
            seen.iter().all(|r| !r) || (seen.iter().any(|r| !r) && *errors > 0)
        })
        .map(|(n, errors, _)| format!("`{n}` ({errors} apply error(s) so far)"))
        .collect())
}

/// Source tables no forward subscription has copied and keeps in step (created after
/// replication started, or added to a publication and not yet copied).
pub async fn unreplicated(
    source: &Target,
    target: &Target,
    subscriptions: &[String],
) -> Result<Vec<String>, String> {
    let src = source.connect().await.map_err(|e| e.to_string())?;
    let all = replication::tables(source, &src)
        .await
        .map_err(|e| e.to_string())?;
    let dst = target.connect().await.map_err(|e| e.to_string())?;
    let ready: std::collections::BTreeSet<String> = dst
        .query(
            "SELECT format('%s.%s', n.nspname, c.relname)
             FROM pg_subscription s JOIN pg_subscription_rel r ON r.srsubid = s.oid
             JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE s.subname = ANY($1) AND r.srsubstate IN ('r','s')",
            &[&subscriptions],
        )
        .await
        .map_err(|e| target.err("replicated tables")(e).to_string())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(all.into_iter().filter(|t| !ready.contains(t)).collect())
}

/// What the guard found, for the run.
struct Guarded {
    catch_up: Vec<String>,
    warnings: Vec<String>,
    /// The largest slot lag in bytes, and the probe's time through every stream (ms).
    lag_bytes: i64,
    probe_ms: Option<f64>,
}

async fn guard(spec: &Spec) -> Result<Guarded, String> {
    let drift = super::schema::drift(&spec.source, &spec.target, spec.schema_at_start.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    if !drift.errors.is_empty() {
        return Err(drift.refusal());
    }
    if !spec.subscriptions.is_empty() {
        let stalled = stalled_subscriptions(&spec.target, &spec.subscriptions).await?;
        if !stalled.is_empty() {
            return Err(format!(
                "forward subscription(s) {} have no running apply worker: their writes are not reaching the target; see the target's log for why (a conflict, a missing column, a permission), fix it, and run again",
                stalled.join(", ")
            ));
        }
        let missing = unreplicated(&spec.source, &spec.target, &spec.subscriptions).await?;
        if !missing.is_empty() {
            return Err(format!(
                "table(s) {} of the source are not replicated (created after replication started, or still copying): their writes would not reach the target; take them into replication (a pg.extend_replication step) or wait for their copy, and run again",
                missing.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let catch_up = catch_up_tables(spec).await?;
    let mut lag_bytes = 0i64;
    for slot in &spec.slots {
        let l = replication::lag(&spec.source, slot)
            .await
            .map_err(|e| e.to_string())?;
        lag_bytes = lag_bytes.max(l.bytes);
        if l.bytes > spec.max_lag_bytes {
            return Err(format!("replication lag on `{slot}` is {} bytes, above the bound of {}; wait until it is lower", l.bytes, spec.max_lag_bytes));
        }
    }
    // The lag in time, measured rather than estimated: a probe written now to every stream's
    // catch-up table must reach the target within the bound.
    let mut probe_ms = None;
    if let Some(max) = spec.max_lag_seconds {
        let probe = unique_marker("lag-probe");
        let within = Duration::from_secs_f64(max.max(0.0));
        let sent = std::time::Instant::now();
        if wait_marker_within(spec, &catch_up, &probe, within)
            .await
            .is_err()
        {
            return Err(format!("replication is more than {max:.1} s behind: a probe written to every stream had not reached the target after {max:.1} s, above the bound of {max:.1} s; wait until it is lower (a write-heavy source: see the preflight's decoding_memory)"));
        }
        probe_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let c = spec.source.connect().await.map_err(|e| e.to_string())?;
    let v = super::version::Version::of(&spec.source, &c)
        .await
        .map_err(|e| e.to_string())?;
    let oldest: f64 = c
        .query_one(
            &format!(
                "SELECT COALESCE(max(EXTRACT(epoch FROM now() - xact_start)), 0)::float8 FROM pg_stat_activity
                 WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND {}",
                v.client_backends()
            ),
            &[],
        )
        .await
        .map_err(|e| spec.source.err("oldest transaction")(e).to_string())?
        .get(0);
    if oldest > spec.max_xact_seconds {
        return Err(format!(
            "a transaction on the source has been open for {oldest:.1} s, above the bound of {:.1} s: the fence would wait for it; end it or wait",
            spec.max_xact_seconds
        ));
    }
    match &spec.validated_at {
        None => return Err("validation has not passed: run the validation step first".into()),
        Some(at) => {
            let t =
                humantime::parse_rfc3339(at).map_err(|e| format!("validated_at `{at}`: {e}"))?;
            let age = std::time::SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_secs();
            if age > spec.max_validation_age_seconds {
                return Err(format!(
                    "validation passed {age} s ago, longer than the bound of {} s: validate again (`--replace` the validation step)",
                    spec.max_validation_age_seconds
                ));
            }
        }
    }
    let mut warnings = drift.warnings;
    if spec.fence == Fence::Pooler {
        warnings.extend(guard_direct(spec).await?);
    }
    Ok(Guarded {
        catch_up,
        warnings,
        lag_bytes,
        probe_ms,
    })
}

/// The pooler fence's guard of the writers that bypass the pooler: the privileges its fence of
/// the source needs, no role setting that would override it, and no direct session that wrote
/// while watched (unless accepted: the fence ends them). Returns what to report.
async fn guard_direct(spec: &Spec) -> Result<Vec<String>, String> {
    let missing = fence_privileges(&spec.source).await?;
    if !missing.is_empty() {
        return Err(format!(
            "the source user `{}` lacks what the fence needs to stop writers that bypass the pooler: {}; grant them (on RDS the master user has them) and run again",
            spec.source.user,
            missing.join("; ")
        ));
    }
    let overrides = read_only_overrides(&spec.source).await?;
    if !overrides.is_empty() {
        return Err(format!(
            "role setting(s) of {} set the transaction read-only default, which would let their sessions write through the fence; remove them (`ALTER ROLE name [IN DATABASE db] RESET default_transaction_read_only`) and run again",
            overrides.join(", ")
        ));
    }
    let sessions = direct_sessions(spec, Duration::from_millis(spec.observe_ms)).await?;
    let writers: Vec<&DirectSession> = sessions.iter().filter(|s| s.wrote).collect();
    if !writers.is_empty() && spec.direct_writers == DirectWriters::Refuse {
        return Err(format!(
            "{} session(s) wrote to the source without the pooler in {} ms: {}; the pooler's fence would not stop them, and their writes after the flip would be lost. Send them through the pooler or stop them; or accept them (`Cutover::end_direct_writers()`), and the fence ends them and leaves the source read-only",
            writers.len(),
            spec.observe_ms,
            writers.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(sessions
        .iter()
        .map(|s| {
            format!(
                "direct session {s}{}: the fence ends it",
                if s.wrote { ", which wrote" } else { "" }
            )
        })
        .collect())
}

/// A marker no earlier run wrote: `prefix-` and the time in nanoseconds.
fn unique_marker(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Writes `marker` to every table of `tables` on the source in one transaction and waits until
/// the target has all of them: every stream has applied what was committed before.
async fn wait_marker(spec: &Spec, tables: &[String], marker: &str) -> Result<(), String> {
    wait_marker_within(
        spec,
        tables,
        marker,
        Duration::from_millis(spec.catchup_timeout_ms),
    )
    .await
}

/// [`wait_marker`], waiting at most `within`.
async fn wait_marker_within(
    spec: &Spec,
    tables: &[String],
    marker: &str,
    within: Duration,
) -> Result<(), String> {
    let src = writer(&spec.source).await?;
    let inserts: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "INSERT INTO {} (id) VALUES ({})",
                replication::qualified(t),
                literal(marker)
            )
        })
        .collect();
    src.batch_execute(&format!("BEGIN; {}; COMMIT", inserts.join("; ")))
        .await
        .map_err(|e| spec.source.err("write the marker")(e).to_string())?;
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    let seen: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "(SELECT count(*) FROM {} WHERE id = $1)",
                replication::qualified(t)
            )
        })
        .collect();
    let q = dst
        .prepare(&format!("SELECT ({})::bigint", seen.join(" + ")))
        .await
        .map_err(|e| spec.target.err("prepare")(e).to_string())?;
    let t0 = Instant::now();
    loop {
        let seen: i64 = dst
            .query_one(&q, &[&marker])
            .await
            .map_err(|e| spec.target.err("read the marker")(e).to_string())?
            .get(0);
        if seen as usize == tables.len() {
            return Ok(());
        }
        if t0.elapsed() > within {
            return Err(format!(
                "the target did not apply the source's writes within {} ms",
                within.as_millis()
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sets every target sequence to at least the source's last value plus `margin`; returns how many.
pub async fn sync_sequences(
    source: &Target,
    target: &Target,
    margin: i64,
) -> Result<usize, PgError> {
    let src = source.connect().await?;
    let v = super::version::Version::of(source, &src).await?;
    let mut rows = src
        .query(v.sequences(), &[])
        .await
        .map_err(source.err("read sequences"))?;
    // Before 10 there is no pg_sequences: each sequence is read itself.
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if let Some(q) = v.sequence_values(&names) {
        rows = src
            .query(q.as_str(), &[])
            .await
            .map_err(source.err("read sequences"))?;
    }
    let values: Vec<(String, i64)> = rows
        .iter()
        .filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, Option<i64>>(1)?)))
        .collect();
    let mut sql = String::new();
    for (name, last) in &values {
        let (name, last) = (name.as_str(), *last);
        // Never lower a sequence the target may already have advanced.
        sql.push_str(&format!(
            "SELECT setval({lit}::regclass, GREATEST({v}, (SELECT last_value FROM {name})), true);\n",
            lit = literal(name),
            v = last.saturating_add(margin),
        ));
    }
    if !sql.is_empty() {
        let dst = target.connect().await?;
        // On its own: a multi-statement query is one transaction, read-only from its start.
        dst.batch_execute("SET default_transaction_read_only = off")
            .await
            .map_err(target.err("session settings"))?;
        dst.batch_execute(&sql)
            .await
            .map_err(target.err("set sequences"))?;
    }
    Ok(values.len())
}

/// Disables the forward subscriptions (after the catch-up, inside the fence).
async fn disable_forward(spec: &Spec) -> Result<(), String> {
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    for s in &spec.subscriptions {
        dst.batch_execute(&format!("ALTER SUBSCRIPTION {} DISABLE", ident(s)))
            .await
            .map_err(|e| spec.target.err("disable forward subscription")(e).to_string())?;
    }
    Ok(())
}

async fn setup_reverse(spec: &Spec) -> Result<(), String> {
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    let src = writer(&spec.source).await?;
    disable_forward(spec).await?;
    let tables = replication::tables(&spec.target, &dst)
        .await
        .map_err(|e| e.to_string())?;
    let list: Vec<String> = tables
        .iter()
        .map(|t| {
            let (s, n) = t.split_once('.').unwrap_or(("public", t));
            format!("{}.{}", ident(s), ident(n))
        })
        .collect();
    let exists: bool = dst
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&REVERSE],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        dst.batch_execute(&format!(
            "CREATE PUBLICATION {REVERSE} FOR TABLE {}",
            list.join(", ")
        ))
        .await
        .map_err(|e| spec.target.err("create reverse publication")(e).to_string())?;
    }
    let exists: bool = src
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&REVERSE],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        src.batch_execute(&format!(
            "CREATE SUBSCRIPTION {REVERSE} CONNECTION {} PUBLICATION {REVERSE} WITH (copy_data = false, enabled = {})",
            literal(&spec.target.conninfo()),
            !spec.reverse_later
        ))
        .await
        .map_err(|e| spec.source.err("create reverse subscription")(e).to_string())?;
    }
    Ok(())
}

/// Enables the reverse subscription a cutover created disabled (`reverse_later`).
pub async fn enable_reverse(source: &Target) -> Result<(), String> {
    writer(source)
        .await?
        .batch_execute(&format!("ALTER SUBSCRIPTION {REVERSE} ENABLE"))
        .await
        .map_err(|e| source.err("enable the reverse subscription")(e).to_string())
}

/// Whether the reverse subscription exists and is enabled.
pub async fn reverse_enabled(source: &Target) -> Result<bool, String> {
    let c = source.connect().await.map_err(|e| e.to_string())?;
    Ok(c.query_one(
        "SELECT coalesce((SELECT subenabled FROM pg_subscription WHERE subname = $1), false)",
        &[&REVERSE],
    )
    .await
    .map_err(|e| source.err("read the reverse subscription")(e).to_string())?
    .get(0))
}

/// Undoes a read-only cutover whose flip (a later step) failed, so nothing but the cutover's own
/// post-check reached the target: drops the reverse replication, removes the post-check marker
/// from the target (the reverse replication carried it to the source, whose forward slot brings
/// it back: a duplicate key would stop the apply worker), re-enables forward replication, and
/// lets the source take writes again.
pub async fn undo_before_flip(spec: &Spec) -> Result<(), String> {
    // Gone from the target before forward replication resumes: the copy it brings back applies.
    writer(&spec.target)
        .await?
        .batch_execute(&format!(
            "DELETE FROM {MARKER_TABLE} WHERE id LIKE '%-post-check'"
        ))
        .await
        .map_err(|e| spec.target.err("remove the post-check marker")(e).to_string())?;
    undo_reverse(spec).await?;
    unfence_read_only(&spec.source).await
}

/// Removes reverse replication and re-enables forward subscriptions (undo before a flip).
pub async fn undo_reverse(spec: &Spec) -> Result<(), String> {
    let src = writer(&spec.source).await?;
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    // A source older than 10 has no subscriptions at all (and no reverse replication).
    let native = super::version::Version::of(&spec.source, &src)
        .await
        .map_err(|e| e.to_string())?
        .native_logical_replication();
    let has: bool = native
        && src
            .query_one(
                "SELECT exists(SELECT 1 FROM pg_subscription WHERE subname = $1)",
                &[&REVERSE],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
    if has {
        src.batch_execute(&format!("DROP SUBSCRIPTION {REVERSE}"))
            .await
            .map_err(|e| spec.source.err("drop reverse subscription")(e).to_string())?;
    }
    dst.batch_execute(&format!("DROP PUBLICATION IF EXISTS {REVERSE}"))
        .await
        .map_err(|e| e.to_string())?;
    for s in &spec.subscriptions {
        dst.batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", ident(s)))
            .await
            .map_err(|e| spec.target.err("enable forward subscription")(e).to_string())?;
    }
    Ok(())
}

fn target_route(spec: &Spec) -> Route {
    Route {
        name: spec.database.clone(),
        host: spec.target.host.clone(),
        port: spec.target.port,
        dbname: spec.target.dbname.clone(),
    }
}

async fn resume(spec: &Spec) -> Result<(), String> {
    let console = bouncer(spec).admin();
    match pooler::pool_state(&console, &spec.database)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(s) if s.paused => pooler::admin(&console, &format!("RESUME {}", spec.database))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

/// Stops writes on the source: pgbouncer PAUSE (bounded by the fence timeout), or the read-only
/// fence with the fence timeout as the grace period of in-flight transactions.
async fn fence(spec: &Spec, sessions: Option<&Sessions>) -> Result<(), String> {
    match (spec.fence, sessions) {
        (Fence::Pooler, Some(sessions)) => {
            match tokio::time::timeout(
                Duration::from_millis(spec.fence_timeout_ms),
                sessions
                    .admin
                    .simple_query(&format!("PAUSE {}", spec.database)),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("PAUSE: {}", super::describe(&e))),
                Err(_) => {
                    return Err(format!(
                        "in-flight transactions did not finish within {} ms",
                        spec.fence_timeout_ms
                    ))
                }
            }
            fence_source(spec, sessions, Duration::from_millis(spec.fence_timeout_ms)).await
        }
        (Fence::Pooler, None) => Err("the pooler fence's sessions were not opened".into()),
        (Fence::ReadOnly, _) => {
            fence_read_only(&spec.source, Duration::from_millis(spec.fence_timeout_ms)).await
        }
    }
}

/// Lets the source take writes again (the pooler fence lifts the source's own fence before it
/// resumes, so the resumed clients find it writable).
async fn unfence(spec: &Spec) -> Result<(), String> {
    match spec.fence {
        Fence::Pooler => {
            let lifted = unfence_read_only(&spec.source).await;
            let resumed = resume(spec).await;
            lifted.and(resumed)
        }
        Fence::ReadOnly => unfence_read_only(&spec.source).await,
    }
}

/// Read-only fence's post-check: a write and a read on the target, and a new session on the
/// source is refused a write.
async fn post_check_direct(spec: &Spec, marker: &str) -> Result<(), String> {
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    let post = format!("{marker}-post-check");
    dst.execute(
        &format!("INSERT INTO {MARKER_TABLE} (id) VALUES ($1)"),
        &[&post],
    )
    .await
    .map_err(|e| spec.target.err("post-check write")(e).to_string())?;
    let src = spec.source.connect().await.map_err(|e| e.to_string())?;
    refuses_writes(&src, &format!("{marker}-must-fail")).await
}

/// Runs the cutover. `progress` gets a line per phase.
pub async fn run(
    spec: &Spec,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Outcome, CutoverError> {
    let mut phases = Vec::new();
    let fail = |phase: &str, message: String, state: &str| CutoverError {
        phase: phase.into(),
        message,
        state: state.into(),
    };
    let t = Instant::now();
    let guarded = guard(spec).await.map_err(|m| {
        fail(
            "guard",
            m,
            "Nothing was changed; the source takes writes as before.",
        )
    })?;
    phases.push(Phase {
        name: "guard".into(),
        ms: ms(t.elapsed()),
    });
    for w in &guarded.warnings {
        progress(format!("warning: {w}"));
    }
    progress(format!(
        "guard passed: schemas agree, every table replicated, lag, open transactions and validation within bounds; {} catch-up table(s)",
        guarded.catch_up.len()
    ));

    let fenced = Instant::now();
    let unfence = |phase: &'static str, message: String| async move {
        let undo = if spec.reverse {
            undo_reverse(spec).await.err()
        } else {
            None
        };
        let resumed = unfence(spec).await;
        let state = match (undo, resumed) {
            (None, Ok(())) => "Unfenced: the source takes writes as before.".to_string(),
            (u, r) => format!(
                "Unfencing was incomplete ({}{}): {} and run apply again",
                u.unwrap_or_default(),
                r.err().unwrap_or_default(),
                match spec.fence {
                    Fence::Pooler => "check the pooler (SHOW DATABASES)",
                    Fence::ReadOnly => "check the source database's settings (\\drds in psql)",
                }
            ),
        };
        CutoverError {
            phase: phase.into(),
            message,
            state,
        }
    };
    let sessions = match spec.fence {
        Fence::Pooler => Some(open_sessions(spec).await.map_err(|m| {
            fail(
                "fence",
                m,
                "Nothing was changed; the source takes writes as before.",
            )
        })?),
        Fence::ReadOnly => None,
    };
    if let Err(m) = fence(spec, sessions.as_ref()).await {
        return Err(unfence("fence", m).await);
    }
    phases.push(Phase {
        name: "fence".into(),
        ms: ms(fenced.elapsed()),
    });

    let marker = unique_marker("cutover");
    let t = Instant::now();
    let verify = async {
        match spec.fence {
            Fence::Pooler => match &sessions {
                Some(s) => verify_source_fence(spec, s).await,
                None => Ok(()),
            },
            Fence::ReadOnly => Ok(()),
        }
    };
    let (caught_up, verified) = tokio::join!(wait_marker(spec, &guarded.catch_up, &marker), verify);
    if let Err(m) = verified {
        return Err(unfence("fence", m).await);
    }
    if let Err(m) = caught_up {
        return Err(unfence("catch-up", m).await);
    }
    phases.push(Phase {
        name: "catch-up".into(),
        ms: ms(t.elapsed()),
    });

    let t = Instant::now();
    let sequences = match sync_sequences(&spec.source, &spec.target, spec.sequence_margin).await {
        Ok(n) => n,
        Err(e) => return Err(unfence("sequences", e.to_string()).await),
    };
    phases.push(Phase {
        name: "sequences".into(),
        ms: ms(t.elapsed()),
    });

    if spec.reverse {
        let t = Instant::now();
        if let Err(m) = setup_reverse(spec).await {
            return Err(unfence("reverse", m).await);
        }
        phases.push(Phase {
            name: "reverse".into(),
            ms: ms(t.elapsed()),
        });
    } else if !spec.subscriptions.is_empty() {
        // Caught up and fenced: the forward subscriptions stop here (the reverse replication's
        // set-up does it otherwise); an unfence enables them again.
        let t = Instant::now();
        if let Err(m) = disable_forward(spec).await {
            return Err(unfence("forward", m).await);
        }
        phases.push(Phase {
            name: "forward".into(),
            ms: ms(t.elapsed()),
        });
    }

    let t = Instant::now();
    if spec.fence == Fence::ReadOnly {
        if let Some(path) = &spec.flip_file {
            if let Err(m) = write_flip_file(path, &spec.target) {
                return Err(unfence("flip", m).await);
            }
        }
        let fenced_ms = ms(fenced.elapsed());
        phases.push(Phase {
            name: "flip".into(),
            ms: ms(t.elapsed()),
        });
        progress(match &spec.flip_file {
            Some(p) => format!(
                "flipped: {} names the target; the source refuses writes (writes were refused for {fenced_ms} ms)",
                p.display()
            ),
            None => format!(
                "the target is ready and the source refuses writes (for {fenced_ms} ms so far): re-point the clients (the next step)"
            ),
        });
        let t = Instant::now();
        if let Err(m) = post_check_direct(spec, &marker).await {
            return Err(fail("post-check", m, "The flip is done; writes may have reached the target. Investigate before any rollback."));
        }
        phases.push(Phase {
            name: "post-check".into(),
            ms: ms(t.elapsed()),
        });
        return Ok(Outcome {
            phases,
            lag_at_guard: Some((guarded.lag_bytes, guarded.probe_ms)),
            fenced_ms,
            sequences,
            reverse: spec.reverse,
            marker,
        });
    }
    let console = bouncer(spec).admin();
    let b = bouncer(spec);
    if let Err(m) = b.set_route(&target_route(spec)) {
        return Err(unfence("flip", m).await);
    }
    // From here the flip is decided: the file names the target.
    if let Err(e) = pooler::admin(&console, "RELOAD").await {
        return Err(fail("flip", e.to_string(), "The pooler's file names the target but RELOAD failed; run apply again: it finishes the flip."));
    }
    if let Err(m) = resume(spec).await {
        return Err(fail(
            "flip",
            m,
            "The pooler points at the target but is paused; run apply again: it resumes it.",
        ));
    }
    let fenced_ms = ms(fenced.elapsed());
    phases.push(Phase {
        name: "flip".into(),
        ms: ms(t.elapsed()),
    });
    progress(format!("flipped: clients waited at most {fenced_ms} ms"));

    let t = Instant::now();
    let through = Target {
        host: "127.0.0.1".into(),
        port: spec.pooler_port,
        user: spec.target.user.clone(),
        dbname: spec.database.clone(),
        password: spec.target.password.clone(),
        // The local pgbouncer serves no TLS.
        ..Default::default()
    };
    let check = async {
        let c = through.connect().await.map_err(|e| e.to_string())?;
        let post = format!("{marker}-post-check");
        let msgs = c
            .simple_query(&format!(
                "INSERT INTO {MARKER_TABLE} (id) VALUES ({}); SELECT inet_server_port()::text",
                literal(&post)
            ))
            .await
            .map_err(|e| through.err("post-check")(e).to_string())?;
        let port = msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        });
        if port.as_deref() != Some(spec.target.port.to_string().as_str()) {
            return Err(format!(
                "a write through the pooler reached port {port:?}, not the target's {}",
                spec.target.port
            ));
        }
        Ok::<(), String>(())
    };
    if let Err(m) = check.await {
        return Err(fail("post-check", m, "The pooler points at the target; writes may have reached it. Investigate before any rollback."));
    }
    phases.push(Phase {
        name: "post-check".into(),
        ms: ms(t.elapsed()),
    });
    Ok(Outcome {
        phases,
        lag_at_guard: Some((guarded.lag_bytes, guarded.probe_ms)),
        fenced_ms,
        sequences,
        reverse: spec.reverse,
        marker,
    })
}

/// After a crash: where did the cutover stop? Finishes a decided flip (RELOAD, RESUME) and returns
/// true; otherwise undoes reverse replication, unfences and returns false (the cutover runs again).
pub async fn recover(spec: &Spec) -> Result<bool, String> {
    if spec.fence == Fence::ReadOnly {
        // Without a flip file the flip is a later step: the cutover itself never ends flipped.
        let flipped = spec
            .flip_file
            .as_deref()
            .map(|p| flip_file_names(p, &spec.target))
            .unwrap_or(false);
        if flipped {
            return Ok(true);
        }
        if spec.reverse {
            undo_reverse(spec).await?;
        }
        unfence_read_only(&spec.source).await?;
        return Ok(false);
    }
    let b = bouncer(spec);
    let routes = b.routes()?;
    let flipped = routes.iter().any(|r| {
        r.name == spec.database && r.port == spec.target.port && r.host == spec.target.host
    });
    let console = b.admin();
    if flipped {
        pooler::admin(&console, "RELOAD")
            .await
            .map_err(|e| e.to_string())?;
        resume(spec).await?;
        Ok(true)
    } else {
        if spec.reverse {
            undo_reverse(spec).await?;
        }
        unfence(spec).await?;
        Ok(false)
    }
}

fn source_route(spec: &Spec) -> Route {
    Route {
        name: spec.database.clone(),
        host: spec.source.host.clone(),
        port: spec.source.port,
        dbname: spec.source.dbname.clone(),
    }
}

/// Rolls a flipped cutover back through its reverse replication: fence the target (PAUSE, or
/// read-only with its sessions ended), wait until the source has every write made on the target
/// (a marker), sync sequences back, point the clients at the source (the pooler, or the flip
/// file; lifting the source's read-only fence), and remove the reverse replication. Safe to
/// repeat. Without reverse replication it refuses: the target's writes since the flip would be
/// lost.
pub async fn rollback(
    spec: &Spec,
    flipped_at: Option<&str>,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Outcome, CutoverError> {
    let fail = |phase: &str, message: String, state: &str| CutoverError {
        phase: phase.into(),
        message,
        state: state.into(),
    };
    if !spec.reverse {
        return Err(fail(
            "refused",
            format!(
                "the cutover ran without reverse replication, and the target has taken writes since the flip{}; pointing clients back at the source would lose them",
                flipped_at.map(|t| format!(" at {t}")).unwrap_or_default()
            ),
            "Nothing was changed. To go back, copy the target's changes to the source first (or rebuild the source from the target).",
        ));
    }
    let pooled = spec.fence == Fence::Pooler;
    let b = bouncer(spec);
    let console = b.admin();
    let on_source = if pooled {
        b.routes()
            .map_err(|m| fail("inspect", m, "Nothing was changed."))?
            .iter()
            .any(|r| {
                r.name == spec.database && r.port == spec.source.port && r.host == spec.source.host
            })
    } else {
        !is_read_only(&spec.source)
            .await
            .map_err(|m| fail("inspect", m, "Nothing was changed."))?
    };
    let src = writer(&spec.source)
        .await
        .map_err(|m| fail("inspect", m, "Nothing was changed."))?;
    let has_reverse: bool = src
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&REVERSE],
        )
        .await
        .map_err(|e| fail("inspect", e.to_string(), "Nothing was changed."))?
        .get(0);
    let unfence_target = || async {
        if pooled {
            resume(spec).await
        } else {
            unfence_read_only(&spec.target).await
        }
    };
    if on_source && !has_reverse {
        // Done before (an interrupted rollback that had finished its work).
        if pooled {
            unfence_read_only(&spec.source)
                .await
                .map_err(|m| fail("flip", m, "Run rollback again."))?;
            let _ = pooler::admin(&console, "RELOAD").await;
            resume(spec)
                .await
                .map_err(|m| fail("resume", m, "Run rollback again."))?;
        }
        return Ok(Outcome {
            phases: vec![],
            lag_at_guard: None,
            fenced_ms: 0.0,
            sequences: 0,
            reverse: false,
            marker: String::new(),
        });
    }
    if !has_reverse {
        return Err(fail("refused", "the reverse subscription on the source is gone, so the target's writes cannot be brought back".into(), "Nothing was changed."));
    }
    if spec.reverse_later
        && !reverse_enabled(&spec.source)
            .await
            .map_err(|m| fail("inspect", m, "Nothing was changed."))?
    {
        enable_reverse(&spec.source)
            .await
            .map_err(|m| fail("reverse", m, "Nothing was changed."))?;
    }
    let mut phases = Vec::new();
    let fenced = Instant::now();
    let fenced_ok = if pooled {
        matches!(
            tokio::time::timeout(
                Duration::from_millis(spec.fence_timeout_ms),
                pooler::admin(&console, &format!("PAUSE {}", spec.database)),
            )
            .await,
            Ok(Ok(_))
        )
    } else {
        fence_read_only(&spec.target, Duration::from_millis(spec.fence_timeout_ms))
            .await
            .is_ok()
    };
    if !fenced_ok {
        let _ = unfence_target().await;
        return Err(fail(
            "fence",
            "in-flight transactions on the target did not finish in time".into(),
            "Unfenced: clients still use the target.",
        ));
    }
    phases.push(Phase {
        name: "fence".into(),
        ms: ms(fenced.elapsed()),
    });
    let reversed = Spec {
        source: spec.target.clone(),
        target: spec.source.clone(),
        ..spec.clone()
    };
    let marker = unique_marker("rollback");
    let t = Instant::now();
    if let Err(m) = wait_marker(&reversed, &[MARKER_TABLE.to_string()], &marker).await {
        let _ = unfence_target().await;
        return Err(fail(
            "catch-up",
            m,
            "Unfenced: clients still use the target.",
        ));
    }
    phases.push(Phase {
        name: "catch-up".into(),
        ms: ms(t.elapsed()),
    });
    let t = Instant::now();
    let sequences = match sync_sequences(&spec.target, &spec.source, spec.sequence_margin).await {
        Ok(n) => n,
        Err(e) => {
            let _ = unfence_target().await;
            return Err(fail(
                "sequences",
                e.to_string(),
                "Unfenced: clients still use the target.",
            ));
        }
    };
    phases.push(Phase {
        name: "sequences".into(),
        ms: ms(t.elapsed()),
    });
    let t = Instant::now();
    if pooled {
        // The source takes writes again before clients reach it (the fence left it read-only).
        if let Err(m) = unfence_read_only(&spec.source).await {
            let _ = resume(spec).await;
            return Err(fail("flip", m, "Unfenced: clients still use the target."));
        }
        if let Err(m) = b.set_route(&source_route(spec)) {
            let _ = resume(spec).await;
            return Err(fail("flip", m, "Unfenced: clients still use the target."));
        }
        if let Err(e) = pooler::admin(&console, "RELOAD").await {
            return Err(fail(
                "flip",
                e.to_string(),
                "The pooler's file names the source but RELOAD failed; run rollback again.",
            ));
        }
        resume(spec).await.map_err(|m| {
            fail(
                "flip",
                m,
                "The pooler points at the source but is paused; run rollback again.",
            )
        })?;
    } else {
        if let Some(path) = &spec.flip_file {
            if let Err(m) = write_flip_file(path, &spec.source) {
                let _ = unfence_target().await;
                return Err(fail("flip", m, "Unfenced: clients still use the target."));
            }
        }
        unfence_read_only(&spec.source).await.map_err(|m| {
            fail(
                "flip",
                m,
                "The target is read-only and the source still refuses writes; run rollback again.",
            )
        })?;
    }
    let fenced_ms = ms(fenced.elapsed());
    phases.push(Phase {
        name: "flip".into(),
        ms: ms(t.elapsed()),
    });
    progress(match (pooled, &spec.flip_file) {
        (true, _) => format!("flipped back: clients waited at most {fenced_ms} ms"),
        (false, Some(p)) => format!(
            "flipped back: {} names the source, which takes writes again; the target refuses them",
            p.display()
        ),
        (false, None) => "the source takes writes again and the target refuses them: re-point the clients at the source".to_string(),
    });
    // The reverse replication has done its work.
    if let Err(e) = src
        .batch_execute(&format!("DROP SUBSCRIPTION {REVERSE}"))
        .await
    {
        return Err(fail(
            "cleanup",
            spec.source.err("drop reverse subscription")(e).to_string(),
            "Clients use the source again; drop the reverse subscription by hand.",
        ));
    }
    if let Ok(dst) = writer(&spec.target).await {
        let _ = dst
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {REVERSE}"))
            .await;
    }
    Ok(Outcome {
        phases,
        lag_at_guard: None,
        fenced_ms,
        sequences,
        reverse: false,
        marker,
    })
}

/// What [`finish`] removed.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub subscriptions: Vec<String>,
    pub slots: Vec<String>,
    pub publications: Vec<String>,
    pub reverse: bool,
}

/// Ends replication after a cutover: the target's forward subscriptions (disabled by the cutover)
/// are dropped without touching the source, then the source's slots and publications of the same
/// names, so the old source stops retaining WAL for them, then the reverse replication: the
/// rollback window is closed (a later rollback refuses, changing nothing). Refuses, changing
/// nothing, while a forward subscription is enabled (no cutover yet, or rolled back) or a slot is
/// in use by someone else.
pub async fn finish(
    source: &Target,
    target: &Target,
    names: &[String],
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Finished, String> {
    let dst = writer(target).await?;
    let src = writer(source).await?;
    let mut subs = vec![];
    for n in names {
        let row = dst
            .query_opt(
                "SELECT subenabled FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid
                 WHERE d.datname = current_database() AND s.subname = $1",
                &[n],
            )
            .await
            .map_err(|e| target.err("forward subscriptions")(e).to_string())?;
        if let Some(r) = row {
            if r.get::<_, bool>(0) {
                return Err(format!(
                    "forward subscription {n} on {target} is enabled: the cutover has not happened (or was rolled back); nothing was dropped"
                ));
            }
            subs.push(n.clone());
        }
    }
    for n in names {
        let active: Option<bool> = src
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[n],
            )
            .await
            .map_err(|e| source.err("replication slots")(e).to_string())?
            .map(|r| r.get(0));
        if active == Some(true) && !subs.contains(n) {
            return Err(format!(
                "slot {n} on {source} is in use by a subscriber this step does not own; nothing was dropped"
            ));
        }
    }
    let mut out = Finished::default();
    for n in &subs {
        // Detached from its slot first, so the drop does not need the source.
        dst.batch_execute(&format!(
            "ALTER SUBSCRIPTION {0} SET (slot_name = NONE); DROP SUBSCRIPTION {0}",
            ident(n)
        ))
        .await
        .map_err(|e| target.err("drop forward subscription")(e).to_string())?;
        progress(format!("dropped subscription {n} on the target"));
        out.subscriptions.push(n.clone());
    }
    for n in names {
        let dropped = src
            .query_opt(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[n],
            )
            .await
            .map_err(|e| source.err("drop replication slot")(e).to_string())?;
        if dropped.is_some() {
            progress(format!("dropped slot {n} on the source"));
            out.slots.push(n.clone());
        }
        let existed = src
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[n])
            .await
            .map_err(|e| source.err("publications")(e).to_string())?
            .is_some();
        if existed {
            src.batch_execute(&format!("DROP PUBLICATION {}", ident(n)))
                .await
                .map_err(|e| source.err("drop publication")(e).to_string())?;
            out.publications.push(n.clone());
        }
    }
    let had_reverse = src
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1",
            &[&REVERSE],
        )
        .await
        .map_err(|e| source.err("reverse subscription")(e).to_string())?
        .is_some();
    src.batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {REVERSE}"))
        .await
        .map_err(|e| source.err("drop reverse subscription")(e).to_string())?;
    dst.batch_execute(&format!("DROP PUBLICATION IF EXISTS {REVERSE}"))
        .await
        .map_err(|e| target.err("drop reverse publication")(e).to_string())?;
    if had_reverse {
        progress("dropped the reverse replication: rollback is no longer possible".into());
        out.reverse = true;
    }
    Ok(out)
}

/// Whether [`finish`] has nothing left to do.
pub async fn finished(source: &Target, target: &Target, names: &[String]) -> Result<bool, String> {
    let dst = target.connect().await.map_err(|e| e.to_string())?;
    let src = source.connect().await.map_err(|e| e.to_string())?;
    let subs: i64 = dst
        .query_one(
            "SELECT count(*) FROM pg_subscription WHERE subname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| target.err("forward subscriptions")(e).to_string())?
        .get(0);
    let slots: i64 = src
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| source.err("replication slots")(e).to_string())?
        .get(0);
    let reverse_left: i64 = src
        .query_one(
            "SELECT count(*) FROM pg_subscription WHERE subname = $1",
            &[&REVERSE],
        )
        .await
        .map_err(|e| source.err("reverse subscription")(e).to_string())?
        .get(0);
    Ok(subs == 0 && slots == 0 && reverse_left == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_told_from_reads_by_the_statement() {
        for w in [
            "INSERT INTO t VALUES (1)",
            "  update t set a = 1",
            "DELETE FROM t",
            "copy t from stdin",
            "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
            "CREATE TABLE u (a int)",
            "ALTER TABLE t ADD COLUMN b int",
            "TRUNCATE t",
            "select nextval('s')",
            "(INSERT INTO t VALUES (1))",
        ] {
            assert!(is_write(w), "{w}");
        }
        for r in [
            "SELECT * FROM t",
            "copy t to stdout",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "BEGIN",
            "",
            "SHOW work_mem",
        ] {
            assert!(!is_write(r), "{r}");
        }
    }
}
