//! Steps that talk to PostgreSQL directly, whatever created the databases: run SQL (with a probe),
//! preflight, logical replication, waiting for lag. Their `conn` inputs are maps (host, port, user, dbname, password as a secret
//! reference).
//!
//! A step here must never run a statement that changes data unless that is its declared purpose.

use async_trait::async_trait;

use super::{Ctx, Probe, ProviderError, Registry, Request, StepType};
use crate::dsl::{Declare, NodeKind};
use crate::pg::preflight::{self, Level};
use crate::pg::Target;
use crate::value::{get_str, Attrs, Value};

pub fn register(r: &mut Registry) {
    r.step(SqlType)
        .step(CreateDatabaseType)
        .step(PreflightType)
        .step(ReplicateType)
        .step(WaitLagType)
        .step(ValidateType)
        .step(CutoverType)
        .step(UnfenceType)
        .step(EnableReverseType)
        .step(CopySchemaType)
        .step(ExtendType)
        .step(FinishType);
    handoff::register(r);
}

/// A step builder that is nothing but its inputs: the struct and its `Declare`, once.
macro_rules! inputs_step {
    ($(#[$doc:meta])* $name:ident, $type:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            inputs: Attrs,
        }

        impl Declare for $name {
            const TYPE: &'static str = $type;
            const KIND: NodeKind = NodeKind::Step;
            fn inputs(self) -> Attrs {
                self.inputs
            }
        }
    };
}

#[path = "pg_handoff.rs"]
mod handoff;
pub use handoff::{
    CaptureSlots, LoadFromStandby, PauseReplay, ReplicateFrom, ResumeReplay, VerifyLsn,
};

/// The connection in input `key`, dialled through the stack's `[connect]` table, with an IAM
/// token for its password when it uses IAM authentication.
async fn target(ctx: &Ctx, inputs: &Attrs, key: &str) -> Result<Target, ProviderError> {
    let mut t = Target::from_input(inputs, key)
        .and_then(|t| t.dial_through(&ctx.connect, ctx.connect_servers))
        .map_err(ProviderError::new)?;
    if t.iam {
        if t.password.is_some() {
            return Err(ProviderError::new(format!(
                "input `{key}`: give a password or IAM authentication, not both"
            )));
        }
        if matches!(t.sslmode.as_deref(), None | Some("disable")) {
            return Err(ProviderError::with_fix(
                format!("input `{key}`: IAM authentication needs TLS"),
                "add .verify_full(ca_bundle) (or .require_tls()) to the connection",
            ));
        }
        let tokens = ctx.tokens.clone().ok_or_else(|| {
            ProviderError::new(format!(
                "input `{key}`: IAM authentication needs a provider that signs tokens (provider = \"aws\")"
            ))
        })?;
        t.password = Some(
            tokens
                .token(&t.host, t.port, &t.user)
                .await
                .map_err(ProviderError::new)?,
        );
    }
    Ok(t)
}

/// Refuses IAM authentication on a connection a server keeps (`what`): its token would expire.
fn kept_by_a_server(inputs: &Attrs, key: &str, what: &str) -> Option<String> {
    (inputs
        .get(key)
        .and_then(|c| c.get("auth"))
        .and_then(Value::as_str)
        == Some("iam"))
    .then(|| format!("input `{key}` uses IAM authentication, but {what} keeps its connection string and an IAM token expires after 15 minutes: give `{key}` a password (a replication user's secret)"))
}

fn pg_err(e: crate::pg::PgError) -> ProviderError {
    ProviderError::new(e.to_string())
}

/// Runs SQL (one or more statements, simple protocol). `probe` is a query returning one boolean:
/// true when the SQL's effect is already in place (so a crash never runs it twice).
#[derive(Debug, Clone)]
pub struct Sql {
    conn: Value,
    sql: String,
    probe: Option<String>,
}

impl Sql {
    pub fn run(conn: Value, sql: &str) -> Self {
        Sql {
            conn,
            sql: sql.into(),
            probe: None,
        }
    }
    /// A query returning true when the effect is in place.
    pub fn probe(mut self, query: &str) -> Self {
        self.probe = Some(query.into());
        self
    }
}

impl Declare for Sql {
    const TYPE: &'static str = "pg.sql";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        let mut a = Attrs::from([
            ("conn".to_string(), self.conn),
            ("sql".to_string(), Value::String(self.sql)),
        ]);
        if let Some(p) = self.probe {
            a.insert("probe".into(), Value::String(p));
        }
        a
    }
}

struct SqlType;

#[async_trait]
impl StepType for SqlType {
    fn type_name(&self) -> &'static str {
        "pg.sql"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let t = target(ctx, req.inputs, "conn").await?;
        let sql = get_str(req.inputs, "sql").unwrap_or_default();
        let client = t.connect().await.map_err(pg_err)?;
        ctx.report(req.node, &format!("running SQL on {t}"));
        client
            .batch_execute(sql)
            .await
            .map_err(t.err("run SQL"))
            .map_err(pg_err)?;
        Ok(Attrs::new())
    }
    async fn probe(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let Some(q) = get_str(req.inputs, "probe") else {
            return Ok(None);
        };
        let t = target(ctx, req.inputs, "conn").await?;
        let client = t.connect().await.map_err(pg_err)?;
        let row = client
            .query_one(q, &[])
            .await
            .map_err(t.err("probe"))
            .map_err(pg_err)?;
        Ok(Some(if row.get::<_, bool>(0) {
            Probe::Done(Attrs::new())
        } else {
            Probe::NotDone
        }))
    }
}

inputs_step!(
    /// Creates a database on a server when it is absent, owned by the connection's user (a
    /// tenant's database in a shared cluster). `CreateDatabase::on(conn, name)`, `conn` a
    /// connection to another database of that server (`postgres`). It never drops, renames or
    /// alters a database that exists.
    CreateDatabase,
    "pg.create_database"
);

impl CreateDatabase {
    pub fn on(conn: Value, name: &str) -> Self {
        CreateDatabase {
            inputs: Attrs::from([
                ("conn".to_string(), conn),
                ("name".to_string(), Value::from(name)),
            ]),
        }
    }
}

struct CreateDatabaseType;

#[async_trait]
impl StepType for CreateDatabaseType {
    fn type_name(&self) -> &'static str {
        "pg.create_database"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match get_str(inputs, "name") {
            Some(n) if !n.is_empty() && n.len() <= 63 && !n.chars().any(char::is_control) => {
                vec![]
            }
            other => vec![format!(
                "database name {:?}: give 1 to 63 characters without control characters",
                other.unwrap_or_default()
            )],
        }
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let t = target(ctx, req.inputs, "conn").await?;
        let name = get_str(req.inputs, "name").unwrap_or_default();
        let client = t.connect().await.map_err(pg_err)?;
        let exists: bool = client
            .query_one(
                "SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)",
                &[&name],
            )
            .await
            .map_err(t.err("look up the database"))
            .map_err(pg_err)?
            .get(0);
        if exists {
            ctx.report(
                req.node,
                &format!("database `{name}` exists on {t}: left as it is"),
            );
        } else {
            // CREATE DATABASE cannot run in a transaction: one statement, simple protocol.
            client
                .batch_execute(&format!("CREATE DATABASE {}", crate::pg::ident(name)))
                .await
                .map_err(t.err("create the database"))
                .map_err(pg_err)?;
            ctx.report(req.node, &format!("database `{name}` created on {t}"));
        }
        Ok(Attrs::from([
            ("name".to_string(), Value::from(name)),
            ("created".to_string(), Value::Bool(!exists)),
        ]))
    }
}

/// Checks a source and a target before replication; fails on errors, reports warnings.
#[derive(Debug, Clone)]
pub struct Preflight {
    source: Value,
    target: Value,
    slots: u64,
    pooler: Value,
    capture: Value,
}

impl Preflight {
    pub fn between(source: Value, target: Value) -> Self {
        Preflight {
            source,
            target,
            slots: 1,
            pooler: Value::Null,
            capture: Value::Null,
        }
    }
    /// AWS DMS captures the changes, decoding with `plugin` (`pglogical` or `test_decoding`);
    /// `batch_apply` lists the tables whose tasks apply in batches. The checks become DMS's: an
    /// old source without native replication is fine, the plugin must be there, batch apply is
    /// refused on a table with a primary key and another unique constraint, and large values
    /// need a key.
    pub fn dms(mut self, plugin: &str, batch_apply: &[String]) -> Self {
        self.capture = serde_json::json!({"dms_plugin": plugin, "batch_apply": batch_apply});
        self
    }
    /// The pooler the application reaches the source through (a pgbouncer handle's `pooler()`):
    /// the sessions that bypass it are listed, and one that writes is a warning (the pooler
    /// cutover's guard refuses it).
    pub fn pooler(mut self, pooler: Value) -> Self {
        self.pooler = pooler;
        self
    }
    /// Replication slots the plan will need on the source.
    pub fn slots(mut self, n: u64) -> Self {
        self.slots = n;
        self
    }
}

impl Declare for Preflight {
    const TYPE: &'static str = "pg.preflight";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("source".to_string(), self.source),
            ("target".to_string(), self.target),
            ("slots".to_string(), Value::from(self.slots)),
            ("pooler".to_string(), self.pooler),
            ("capture".to_string(), self.capture),
        ])
    }
}

struct PreflightType;

/// The preflight's findings: the checks of both sides, then the source's sessions.
async fn preflight_findings(
    ctx: &Ctx,
    inputs: &Attrs,
) -> Result<Vec<preflight::Finding>, ProviderError> {
    let s = target(ctx, inputs, "source").await?;
    let t = target(ctx, inputs, "target").await?;
    let slots = crate::value::get_u64(inputs, "slots").unwrap_or(1) as i64;
    let capture = match inputs.get("capture") {
        Some(c) if !c.is_null() => preflight::Capture {
            dms_plugin: c
                .get("dms_plugin")
                .and_then(Value::as_str)
                .map(String::from),
            batch_apply: crate::value::strings(c.get("batch_apply")),
        },
        _ => preflight::Capture::default(),
    };
    let mut findings = preflight::check_for(&s, &t, slots, &capture)
        .await
        .map_err(pg_err)?;
    let console = match inputs.get("pooler") {
        Some(p) if !p.is_null() => {
            let dir = p.get("dir").and_then(Value::as_str).unwrap_or("");
            let port = p.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
            Some(crate::pg::pooler::LocalBouncer::new(ctx.path(dir), port).admin())
        }
        _ => None,
    };
    findings.extend(
        preflight::direct_sessions(&s, console.as_ref(), std::time::Duration::from_millis(300))
            .await
            .map_err(pg_err)?,
    );
    Ok(findings)
}

#[async_trait]
impl StepType for PreflightType {
    fn type_name(&self) -> &'static str {
        "pg.preflight"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn check(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
    ) -> Result<Option<Vec<(crate::provider::CheckLevel, String)>>, ProviderError> {
        let findings = preflight_findings(ctx, req.inputs).await?;
        Ok(Some(
            findings
                .into_iter()
                .map(|f| {
                    let level = match f.level {
                        Level::Note => crate::provider::CheckLevel::Note,
                        Level::Warning => crate::provider::CheckLevel::Warning,
                        Level::Error => crate::provider::CheckLevel::Error,
                    };
                    let mut m = format!("[{}] {}", f.check, f.message);
                    if let Some(fix) = f.fix {
                        m.push_str(&format!(" Fix: {fix}"));
                    }
                    (level, m)
                })
                .collect(),
        ))
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let findings = preflight_findings(ctx, req.inputs).await?;
        // Warnings and notes (what bounds decoding and apply against the table groups) are
        // reported; errors fail the step below.
        for f in findings.iter().filter(|f| f.level != Level::Error) {
            ctx.report(req.node, &f.to_string());
        }
        let errors: Vec<String> = findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .map(|f| f.to_string())
            .collect();
        if !errors.is_empty() {
            return Err(ProviderError::new(format!(
                "preflight found {} problem(s):\n    {}",
                errors.len(),
                errors.join("\n    ")
            )));
        }
        Ok(Attrs::from([(
            "findings".to_string(),
            serde_json::to_value(&findings).unwrap_or(Value::Null),
        )]))
    }
}

/// Native logical replication from `source` to `target`: schema (unless told not to), one
/// publication, slot and subscription per table group, and the initial load. By default the load
/// is parallel from each slot's exported snapshot (tables copied by several workers into tables
/// without indexes, then keys and indexes built in parallel, then the subscriptions stream from
/// the slots); `native_load()` lets the subscriptions copy instead (`copy_data`, keys first).
/// Outputs `slots` and `subscriptions` (lists of names) and, for the parallel load, `load` (rows,
/// bytes, seconds).
#[derive(Debug, Clone)]
pub struct Replicate {
    source: Value,
    target: Value,
    groups: Vec<crate::pg::replication::Group>,
    prefix: String,
    copy_schema: bool,
    load: Value,
}

impl Replicate {
    pub fn between(source: Value, target: Value) -> Self {
        Replicate {
            source,
            target,
            groups: vec![],
            prefix: "cutover".into(),
            copy_schema: true,
            load: load_input(&crate::pg::load::Options::default()),
        }
    }
    /// The parallel load's workers (copy sessions and index builds at once; default 4) and the
    /// size above which a table is split into block ranges copied in parallel (default 1024 MB;
    /// smaller tables are copied whole, frozen).
    pub fn parallel_load(mut self, workers: usize, split_above_mb: u64) -> Self {
        self.load = load_input(&crate::pg::load::Options {
            workers,
            chunk_pages: (split_above_mb * 128).max(1),
        });
        self
    }
    /// Let the subscriptions copy the data (`copy_data`), with keys created first: slower, but
    /// needs neither `psql` here nor a replication connection from here.
    pub fn native_load(mut self) -> Self {
        self.load = serde_json::json!({"mode": "native"});
        self
    }
    /// A group of tables with its own publication, subscription and slot; tables named in no
    /// group go to the group `rest`.
    pub fn group(mut self, name: &str, tables: &[&str]) -> Self {
        self.groups.push(crate::pg::replication::Group {
            name: name.into(),
            tables: tables.iter().map(|s| s.to_string()).collect(),
        });
        self
    }
    /// The prefix of publication, subscription and slot names (default `cutover`).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// The target already has the schema.
    pub fn without_schema(mut self) -> Self {
        self.copy_schema = false;
        self
    }
}

impl Declare for Replicate {
    const TYPE: &'static str = "pg.replicate";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("source".to_string(), self.source),
            ("target".to_string(), self.target),
            (
                "groups".to_string(),
                serde_json::to_value(&self.groups).unwrap_or(Value::Null),
            ),
            ("prefix".to_string(), Value::String(self.prefix)),
            ("copy_schema".to_string(), Value::Bool(self.copy_schema)),
            ("load".to_string(), self.load),
        ])
    }
}

fn load_input(o: &crate::pg::load::Options) -> Value {
    serde_json::json!({"mode": "snapshot", "workers": o.workers, "split_above_mb": o.chunk_pages / 128})
}

/// The load options of a replicate node; None for the native load.
fn load_options(inputs: &Attrs) -> Option<crate::pg::load::Options> {
    let l = inputs.get("load");
    if l.and_then(|l| l.get("mode")).and_then(Value::as_str) == Some("native") {
        return None;
    }
    let d = crate::pg::load::Options::default();
    let n = |k: &str| l.and_then(|l| l.get(k)).and_then(Value::as_u64);
    Some(crate::pg::load::Options {
        workers: n("workers").map(|w| w.max(1) as usize).unwrap_or(d.workers),
        chunk_pages: n("split_above_mb")
            .map(|m| (m * 128).max(1))
            .unwrap_or(d.chunk_pages),
    })
}

impl crate::dsl::Handle<Replicate> {
    /// The replication slots on the source (one per group).
    pub fn slots(&self) -> Value {
        self.output::<Vec<String>>("slots").into()
    }

    /// The source's schema digest as replication started (`Cutover::schema_at_start`).
    pub fn schema(&self) -> Value {
        self.output::<Value>("schema").into()
    }

    /// The step that takes tables created on the source after this replication started into it
    /// (see [`ExtendReplication`]). Declare it before the cutover: `.after(..)` it.
    pub fn extend(&self) -> ExtendReplication {
        let mut inputs = self.declared_inputs();
        inputs.insert("subscriptions".into(), self.subscriptions());
        ExtendReplication { inputs }
    }
}

inputs_step!(
    /// Keeps a native replication in line with the source's tables: a table created on the source
    /// after replication started (in no publication; its rows would never reach the target) is
    /// created on the target, added to its group's publication (the catch-all group's) and copied,
    /// without starting over; a group without its catch-up table gets one. It converges: at every
    /// apply, and in `preview --refresh`, its probe looks for such tables, and it runs again when
    /// it finds some. Made by `replicate.extend()`.
    ExtendReplication,
    "pg.extend_replication"
);

impl crate::dsl::Handle<ExtendReplication> {
    /// The tables its last run took in (a validation's trigger: validate them too).
    pub fn added(&self) -> Value {
        self.output::<Vec<String>>("added").into()
    }
}

struct ExtendType;

#[async_trait]
impl StepType for ExtendType {
    fn type_name(&self) -> &'static str {
        "pg.extend_replication"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn converges(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        use crate::pg::replication as r;
        let s = target(ctx, req.inputs, "source").await?;
        let t = target(ctx, req.inputs, "target").await?;
        let prefix = get_str(req.inputs, "prefix").unwrap_or("cutover");
        let added = r::extend(&s, &t, prefix, &groups_of(req.inputs))
            .await
            .map_err(pg_err)?;
        if added.is_empty() {
            ctx.report(req.node, "every source table is replicated");
        } else {
            ctx.report(
                req.node,
                &format!("took {} into replication; copying", added.join(", ")),
            );
            let subs = crate::value::strings(req.inputs.get("subscriptions"));
            wait_for_copy(ctx, req, &t, &subs).await?;
        }
        Ok(Attrs::from([(
            "added".to_string(),
            serde_json::json!(added),
        )]))
    }
    async fn probe(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let s = target(ctx, req.inputs, "source").await?;
        let t = target(ctx, req.inputs, "target").await?;
        let prefix = get_str(req.inputs, "prefix").unwrap_or("cutover");
        // Unless every forward subscription is there and enabled (the cutover disabled them, the
        // finish dropped them) there is nothing to extend.
        let subs = crate::value::strings(req.inputs.get("subscriptions"));
        let dst = t.connect().await.map_err(pg_err)?;
        let enabled: i64 = dst
            .query_one(
                "SELECT count(*) FROM pg_subscription WHERE subname = ANY($1) AND subenabled",
                &[&subs],
            )
            .await
            .map_err(t.err("read the subscriptions"))
            .map_err(pg_err)?
            .get(0);
        let live = enabled as usize == subs.len();
        let todo = if live {
            crate::pg::replication::unpublished(&s, prefix, &groups_of(req.inputs))
                .await
                .map_err(pg_err)?
        } else {
            vec![]
        };
        Ok(Some(if todo.is_empty() {
            Probe::Done(Attrs::from([(
                "added".to_string(),
                serde_json::json!(Vec::<String>::new()),
            )]))
        } else {
            Probe::NotDone
        }))
    }
    async fn check(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
    ) -> Result<Option<Vec<(crate::provider::CheckLevel, String)>>, ProviderError> {
        let s = target(ctx, req.inputs, "source").await?;
        let prefix = get_str(req.inputs, "prefix").unwrap_or("cutover");
        let todo = crate::pg::replication::unpublished(&s, prefix, &groups_of(req.inputs))
            .await
            .map_err(pg_err)?;
        Ok(Some(
            todo.into_iter()
                .map(|(g, _, ts)| {
                    (
                        crate::provider::CheckLevel::Warning,
                        format!(
                            "{} in no publication of group `{g}`: taken into replication at the next apply",
                            ts.join(", ")
                        ),
                    )
                })
                .collect(),
        ))
    }
}

struct ReplicateType;

/// Waits until every table of `subs` has finished its initial copy (native load), reporting it.
async fn wait_for_copy(
    ctx: &Ctx,
    req: &Request<'_>,
    t: &crate::pg::Target,
    subs: &[String],
) -> Result<(), ProviderError> {
    use crate::pg::replication as r;
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let (done, total, errors) = r::copy_progress(t, subs).await.map_err(pg_err)?;
        let msg = if errors > 0 {
            format!("initial copy: {done} of {total} tables ready; {errors} table sync error(s) so far, retrying (see the target's log)")
        } else {
            format!("initial copy: {done} of {total} tables ready")
        };
        if msg != last {
            ctx.report(req.node, &msg);
            last = msg;
        }
        if total > 0 && done == total {
            return Ok(());
        }
        if total == 0 && started.elapsed() > std::time::Duration::from_secs(30) {
            return Err(ProviderError::new(
                "the subscriptions list no tables after 30 s: the publications are empty",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn groups_of(inputs: &Attrs) -> Vec<crate::pg::replication::Group> {
    inputs
        .get("groups")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Creates the marker table and the groups' catch-up tables on the source (and on the target when
/// `on_target`: no schema copy carries them there).
async fn create_markers(
    s: &Target,
    t: &Target,
    groups: &[crate::pg::replication::Group],
    on_target: bool,
) -> Result<(), ProviderError> {
    use crate::pg::replication as r;
    let src = s.connect().await.map_err(pg_err)?;
    src.batch_execute(crate::pg::cutover::MARKER_DDL)
        .await
        .map_err(s.err("create the marker table"))
        .map_err(pg_err)?;
    let names = r::create_catch_up_tables(s, &src, groups)
        .await
        .map_err(pg_err)?;
    if on_target {
        let ddl: Vec<String> = std::iter::once(crate::pg::cutover::MARKER_DDL.to_string())
            .chain(names.iter().map(|g| r::catch_up_ddl(g)))
            .collect();
        t.connect()
            .await
            .map_err(pg_err)?
            .batch_execute(&ddl.join(";\n"))
            .await
            .map_err(t.err("create the catch-up tables"))
            .map_err(pg_err)?;
    }
    Ok(())
}

/// The source's schema digest (recorded as replication starts).
async fn schema_digest(s: &Target) -> Result<Value, ProviderError> {
    let c = crate::pg::schema::catalog(s).await.map_err(pg_err)?;
    Ok(serde_json::json!(crate::pg::schema::digest(&c)))
}

fn setup_outputs(names: &[String], tables: usize) -> Attrs {
    Attrs::from([
        ("slots".to_string(), serde_json::json!(names)),
        ("subscriptions".to_string(), serde_json::json!(names)),
        ("publications".to_string(), serde_json::json!(names)),
        ("tables".to_string(), Value::from(tables as u64)),
    ])
}

#[async_trait]
impl StepType for ReplicateType {
    /// An initial copy of terabytes takes days.
    fn default_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(168 * 3600)
    }
    fn measured(&self, outputs: &Attrs) -> Vec<String> {
        load_measured("initial load", outputs)
    }
    fn type_name(&self) -> &'static str {
        "pg.replicate"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        kept_by_a_server(inputs, "source", "the target's subscription")
            .into_iter()
            .collect()
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        use crate::pg::replication as r;
        let s = target(ctx, req.inputs, "source").await?;
        let t = target(ctx, req.inputs, "target").await?;
        let prefix = get_str(req.inputs, "prefix")
            .unwrap_or("cutover")
            .to_string();
        let copy_schema = req
            .inputs
            .get("copy_schema")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        // The cutover's markers travel with the data: one catch-up table per group.
        let groups = groups_of(req.inputs);
        create_markers(&s, &t, &groups, !copy_schema).await?;
        let opts = load_options(req.inputs);
        let rest = if copy_schema {
            ctx.report(
                req.node,
                if opts.is_some() {
                    "copying the schema (tables; keys and indexes after the data)"
                } else {
                    "copying the schema (tables and keys)"
                },
            );
            r::copy_schema_pre(&s, &t, opts.is_none())
                .await
                .map_err(pg_err)?
        } else {
            vec![]
        };
        let mut loaded = None;
        let setup = match opts {
            Some(opts) => {
                let setup = r::publish(&s, &prefix, &groups).await.map_err(pg_err)?;
                let report = |m: String| ctx.report(req.node, &m);
                let done = crate::pg::load::load(&s, &t, &setup, opts, &report)
                    .await
                    .map_err(pg_err)?;
                if done.chunks > 0 {
                    ctx.report(
                        req.node,
                        &format!(
                            "initial load: {} rows, {:.0} MB of tables in {:.1} s",
                            done.rows,
                            done.bytes as f64 / 1e6,
                            done.seconds
                        ),
                    );
                    loaded = Some(done);
                }
                if !rest.is_empty() {
                    ctx.report(
                        req.node,
                        &format!(
                            "building {} key(s), index(es), foreign key(s) and the rest of the schema",
                            rest.len()
                        ),
                    );
                    crate::pg::load::build_post(&t, &rest, opts.workers)
                        .await
                        .map_err(pg_err)?;
                }
                r::subscribe(&s, &t, &setup, false).await.map_err(pg_err)?
            }
            None => {
                let setup = r::start(&s, &t, &prefix, &groups).await.map_err(pg_err)?;
                let subs: Vec<String> = setup
                    .groups
                    .iter()
                    .map(|g| g.subscription.clone())
                    .collect();
                wait_for_copy(ctx, req, &t, &subs).await?;
                if !rest.is_empty() {
                    ctx.report(
                        req.node,
                        &format!(
                            "building {} index(es), foreign key(s) and the rest of the schema",
                            rest.len()
                        ),
                    );
                    r::copy_schema_post(&t, &rest).await.map_err(pg_err)?;
                }
                setup
            }
        };
        let subs: Vec<String> = setup
            .groups
            .iter()
            .map(|g| g.subscription.clone())
            .collect();
        r::mark_ready(&t, &subs).await.map_err(pg_err)?;
        let mut out = setup_outputs(&subs, setup.tables);
        out.insert("schema".into(), schema_digest(&s).await?);
        out.insert(
            "groups".into(),
            serde_json::to_value(&setup.groups).unwrap_or(Value::Null),
        );
        if let Some(l) = loaded {
            out.insert(
                "load".into(),
                serde_json::to_value(&l).unwrap_or(Value::Null),
            );
        }
        Ok(out)
    }
    async fn probe(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        use crate::pg::replication as r;
        let s = target(ctx, req.inputs, "source").await?;
        let t = target(ctx, req.inputs, "target").await?;
        let prefix = get_str(req.inputs, "prefix")
            .unwrap_or("cutover")
            .to_string();
        let src = s.connect().await.map_err(pg_err)?;
        let all = r::tables(&s, &src).await.map_err(pg_err)?;
        let names: Vec<String> = r::assign(&all, &groups_of(req.inputs))
            .map_err(ProviderError::new)?
            .into_iter()
            .map(|(g, _)| r::object_name(&prefix, &g))
            .collect();
        Ok(Some(if r::is_ready(&t, &names).await.map_err(pg_err)? {
            let mut out = setup_outputs(&names, all.len());
            out.insert("schema".into(), schema_digest(&s).await?);
            Probe::Done(out)
        } else {
            Probe::NotDone
        }))
    }
}

/// A load's throughput from the `load` output it recorded (a `load::Report`), for the run report.
fn load_measured(what: &str, outputs: &Attrs) -> Vec<String> {
    let Some(l) = outputs.get("load") else {
        return vec![];
    };
    let num = |k: &str| l.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (rows, bytes, s) = (num("rows"), num("bytes"), num("seconds"));
    if s <= 0.0 {
        return vec![];
    }
    vec![format!(
        "{what}: {rows:.0} rows, {:.1} MB in {s:.1} s ({:.0} rows/s, {:.1} MB/s)",
        bytes / 1e6,
        rows / s,
        bytes / 1e6 / s
    )]
}

/// Waits until every slot's lag is under the bounds, reporting it.
#[derive(Debug, Clone)]
pub struct WaitLag {
    source: Value,
    slots: Value,
    max_bytes: u64,
    max_seconds: f64,
}

impl WaitLag {
    /// Waits on `slots` (a replicate step's `slots()`) of `source`.
    pub fn on(source: Value, slots: Value) -> Self {
        WaitLag {
            source,
            slots,
            max_bytes: 64 * 1024,
            max_seconds: 5.0,
        }
    }
    pub fn under_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }
    pub fn under_seconds(mut self, s: f64) -> Self {
        self.max_seconds = s;
        self
    }
}

impl Declare for WaitLag {
    const TYPE: &'static str = "pg.wait_lag";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("source".to_string(), self.source),
            ("slots".to_string(), self.slots),
            ("max_bytes".to_string(), Value::from(self.max_bytes)),
            ("max_seconds".to_string(), Value::from(self.max_seconds)),
        ])
    }
}

struct WaitLagType;

#[async_trait]
impl StepType for WaitLagType {
    /// After a copy of days, the WAL written meanwhile takes hours to apply.
    fn default_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(24 * 3600)
    }
    fn review(&self, inputs: &Attrs) -> crate::provider::Review {
        let mut guards = vec![];
        if let Some(b) = crate::value::get_u64(inputs, "max_bytes") {
            guards.push(format!(
                "replication lag under {}",
                crate::provider::Review::bytes(b)
            ));
        }
        if let Some(s) = inputs.get("max_seconds").and_then(Value::as_f64) {
            guards.push(format!("replication lag under {s} s"));
        }
        crate::provider::Review {
            guards,
            ..Default::default()
        }
    }
    fn type_name(&self) -> &'static str {
        "pg.wait_lag"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let s = target(ctx, req.inputs, "source").await?;
        let slots: Vec<String> = req
            .inputs
            .get("slots")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| ProviderError::new("input `slots` must be a list of slot names"))?;
        let max_bytes = crate::value::get_u64(req.inputs, "max_bytes").unwrap_or(0) as i64;
        let max_seconds = req
            .inputs
            .get("max_seconds")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let mut last_report = std::time::Instant::now() - std::time::Duration::from_secs(10);
        loop {
            let mut worst = crate::pg::replication::Lag {
                bytes: 0,
                seconds: 0.0,
            };
            for slot in &slots {
                let l = crate::pg::replication::lag(&s, slot)
                    .await
                    .map_err(pg_err)?;
                worst.bytes = worst.bytes.max(l.bytes);
                worst.seconds = worst.seconds.max(l.seconds);
            }
            if worst.bytes <= max_bytes && worst.seconds <= max_seconds {
                return Ok(Attrs::from([
                    ("bytes".to_string(), Value::from(worst.bytes)),
                    ("seconds".to_string(), Value::from(worst.seconds)),
                ]));
            }
            if last_report.elapsed() >= std::time::Duration::from_secs(2) {
                ctx.report(
                    req.node,
                    &format!(
                        "lag {} bytes, {:.1} s (waiting for at most {max_bytes} bytes, {max_seconds:.1} s)",
                        worst.bytes, worst.seconds
                    ),
                );
                last_report = std::time::Instant::now();
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// Compares the target with the source: row counts and whole-row checksums per key range, down to
/// the differing keys. Fails when anything differs, naming the keys; the report is recorded in
/// state either way (`report` output when it passes).
#[derive(Debug, Clone)]
pub struct Validate {
    source: Value,
    target: Value,
    slots: Value,
    tables: Vec<String>,
}

impl Validate {
    pub fn between(source: Value, target: Value) -> Self {
        Validate {
            source,
            target,
            slots: Value::Array(vec![]),
            tables: vec![],
        }
    }
    /// Replication is live on these slots: differences are checked again once caught up.
    pub fn live(mut self, slots: Value) -> Self {
        self.slots = slots;
        self
    }
    /// Only these tables (`schema.table`).
    pub fn tables(mut self, tables: &[&str]) -> Self {
        self.tables = tables.iter().map(|s| s.to_string()).collect();
        self
    }
}

impl Declare for Validate {
    const TYPE: &'static str = "pg.validate";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("source".to_string(), self.source),
            ("target".to_string(), self.target),
            ("slots".to_string(), self.slots),
            ("tables".to_string(), serde_json::json!(self.tables)),
        ])
    }
}

struct ValidateType;

/// Fails when the two sides' schemas differ in a way that loses or changes data; reports the
/// differences that do not.
async fn check_drift(ctx: &Ctx, node: &str, s: &Target, t: &Target) -> Result<(), ProviderError> {
    let d = crate::pg::schema::drift(s, t, None).await.map_err(pg_err)?;
    for w in &d.warnings {
        ctx.report(node, &format!("warning: {w}"));
    }
    if d.errors.is_empty() {
        Ok(())
    } else {
        Err(ProviderError::new(d.refusal()))
    }
}

#[async_trait]
impl StepType for ValidateType {
    /// A validation of terabytes takes hours.
    fn default_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(24 * 3600)
    }
    fn measured(&self, outputs: &Attrs) -> Vec<String> {
        let rows = outputs.get("rows").and_then(Value::as_f64).unwrap_or(0.0);
        let ms = outputs
            .get("report")
            .and_then(|r| r.get("elapsed_ms"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        if ms <= 0.0 {
            return vec![];
        }
        vec![format!(
            "validated {rows:.0} rows in {:.1} s ({:.0} rows/s)",
            ms / 1000.0,
            rows / (ms / 1000.0)
        )]
    }
    fn type_name(&self) -> &'static str {
        "pg.validate"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        use crate::pg::validate;
        let s = target(ctx, req.inputs, "source").await?;
        let t = target(ctx, req.inputs, "target").await?;
        let list = |k: &str| -> Vec<String> {
            req.inputs
                .get(k)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default()
        };
        let opts = validate::Options {
            slots: list("slots"),
            ..Default::default()
        };
        check_drift(ctx, req.node, &s, &t).await?;
        let node = req.node.to_string();
        let report = validate::validate(&s, &t, &list("tables"), &opts, &|m| ctx.report(&node, &m))
            .await
            .map_err(pg_err)?;
        if !report.passed {
            return Err(ProviderError::with_fix(
                format!("validation found differences: {}", report.summary()),
                "find why those rows differ (a write to the target, a missed table, a type difference), repair them, then apply again",
            ));
        }
        let rows: i64 = report.tables.iter().map(|t| t.source_rows).sum();
        ctx.report(
            req.node,
            &format!(
                "{} table(s), {rows} rows identical ({} ranges, {} ms)",
                report.tables.len(),
                report.ranges_checked,
                report.elapsed_ms
            ),
        );
        Ok(Attrs::from([
            ("passed".to_string(), Value::Bool(true)),
            ("rows".to_string(), Value::from(rows)),
            (
                "report".to_string(),
                serde_json::to_value(&report).unwrap_or(Value::Null),
            ),
            ("validated_at".to_string(), Value::from(crate::state::now())),
        ]))
    }
}

impl crate::dsl::Handle<Replicate> {
    /// The subscriptions on the target (one per group).
    pub fn subscriptions(&self) -> Value {
        self.output::<Vec<String>>("subscriptions").into()
    }
}

impl crate::dsl::Handle<Validate> {
    /// When validation last passed (RFC 3339), for the cutover's guard.
    pub fn validated_at(&self) -> Value {
        self.output::<String>("validated_at").into()
    }
}

/// The cutover through a local pgbouncer: guard, fence, catch-up, sequences, optional reverse
/// replication, flip, post-check. See `crate::pg::cutover`.
#[derive(Debug, Clone)]
pub struct Cutover {
    inputs: Attrs,
}

impl Cutover {
    /// Moves clients of `database` on `pooler` (a pgbouncer handle's `pooler()`) from `source` to
    /// `target`.
    pub fn between(source: Value, target: Value, pooler: Value, database: &str) -> Self {
        Cutover {
            inputs: Attrs::from([
                ("source".to_string(), source),
                ("target".to_string(), target),
                ("pooler".to_string(), pooler),
                ("database".to_string(), Value::from(database)),
                ("slots".to_string(), Value::Array(vec![])),
                ("subscriptions".to_string(), Value::Array(vec![])),
                ("validated_at".to_string(), Value::Null),
                ("max_lag_bytes".to_string(), Value::from(1024 * 1024u64)),
                ("max_xact_seconds".to_string(), Value::from(5.0)),
                (
                    "max_validation_age_seconds".to_string(),
                    Value::from(3600u64),
                ),
                ("sequence_margin".to_string(), Value::from(1000u64)),
                ("reverse".to_string(), Value::Bool(false)),
                ("fence_timeout_ms".to_string(), Value::from(10_000u64)),
                ("catchup_timeout_ms".to_string(), Value::from(30_000u64)),
            ]),
        }
    }
    /// Moves clients from `source` to `target` without a pooler: the source database is fenced
    /// read-only (new sessions read-only, in-flight transactions given the fence timeout, then
    /// its client sessions ended) and stays so after the flip. Clients see errors while fenced
    /// (unlike a pooler's PAUSE). The flip rewrites `flip_file` if one is set (`flip_file`),
    /// otherwise a later step re-points the clients (a DNS flip).
    pub fn read_only_fence(source: Value, target: Value) -> Self {
        Cutover::between(source, target, Value::Null, "").set("fence", Value::from("read_only"))
    }
    /// The file the application reads its connection string from (read-only fence): the flip
    /// rewrites it atomically with the target's (libpq keywords, no password).
    pub fn flip_file(self, path: &str) -> Self {
        self.set("flip_file", Value::from(path))
    }
    /// How long the fence waits for in-flight transactions (default 10 s).
    pub fn fence_timeout_ms(self, ms: u64) -> Self {
        self.set("fence_timeout_ms", Value::from(ms))
    }
    fn set(mut self, k: &str, v: Value) -> Self {
        self.inputs.insert(k.into(), v);
        self
    }
    /// Forward replication (a replicate step's `slots()` and `subscriptions()`).
    pub fn replication(self, slots: Value, subscriptions: Value) -> Self {
        self.set("slots", slots).set("subscriptions", subscriptions)
    }
    /// A validation step's `validated_at()`: the guard requires it recent.
    pub fn validated(self, at: Value, max_age_seconds: u64) -> Self {
        self.set("validated_at", at)
            .set("max_validation_age_seconds", Value::from(max_age_seconds))
    }
    /// Guard bounds: replication lag and the oldest open transaction on the source.
    pub fn guards(self, max_lag_bytes: u64, max_xact_seconds: f64) -> Self {
        self.set("max_lag_bytes", Value::from(max_lag_bytes))
            .set("max_xact_seconds", Value::from(max_xact_seconds))
    }
    /// A guard on the replication lag in time as well: a probe written to every stream's
    /// catch-up table must reach the target within `seconds`, or the cutover refuses before the
    /// fence (a zero-downtime move that promises a short catch-up).
    pub fn max_lag_seconds(self, seconds: f64) -> Self {
        self.set("max_lag_seconds", Value::from(seconds))
    }
    /// Sequences on the target end at least this far past the source's.
    pub fn sequence_margin(self, n: u64) -> Self {
        self.set("sequence_margin", Value::from(n))
    }
    /// Set up replication from the target back to the source inside the fence (for rollback).
    pub fn reverse_replication(self) -> Self {
        self.set("reverse", Value::Bool(true))
    }
    /// Pooler fence: accept sessions that write to the source without the pooler (a cron job, an
    /// admin, a second application). By default the guard refuses when one wrote while it
    /// watched; accepted, the fence ends them with every other direct session, and the source
    /// stays read-only after the flip.
    pub fn end_direct_writers(self) -> Self {
        self.set("direct_writers", Value::from("end"))
    }
    /// The source's schema as replication started (a replicate step's `schema()`): each
    /// difference the guard refuses then says which side changed.
    pub fn schema_at_start(self, digest: Value) -> Self {
        self.set("schema_at_start", digest)
    }
    /// How long the guard watches the source's direct sessions (default 1000 ms).
    pub fn observe_direct_sessions_ms(self, ms: u64) -> Self {
        self.set("observe_ms", Value::from(ms))
    }
    /// The catch-up tables of a forward replication the tool cannot see into (a DMS task per
    /// group, each carrying its group's `replication::catch_up_table`): the cutover writes a
    /// marker to each after the fence and waits until the target has all of them. Without it,
    /// each forward subscription's own catch-up table is found on the target.
    pub fn catch_up_tables(self, tables: Vec<String>) -> Self {
        self.set("catch_up", serde_json::json!(tables))
    }
    /// Reverse replication created disabled, for a forward replication another tool runs (a DMS
    /// task): the plan stops that task after the cutover and then enables the reverse
    /// replication (`cutover.enable_reverse()`), before the flip.
    pub fn reverse_replication_enabled_later(self) -> Self {
        self.set("reverse", Value::Bool(true))
            .set("reverse_later", Value::Bool(true))
    }
}

crate::declare!(Cutover, "pg.cutover", Step);

struct CutoverType;

async fn cutover_spec(
    ctx: &Ctx,
    inputs: &Attrs,
) -> Result<crate::pg::cutover::Spec, ProviderError> {
    let list = |k: &str| -> Vec<String> {
        inputs
            .get(k)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    let num = |k: &str| inputs.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    use crate::pg::cutover::Fence;
    let fence = match get_str(inputs, "fence") {
        None | Some("pooler") => Fence::Pooler,
        Some("read_only") => Fence::ReadOnly,
        Some(other) => {
            return Err(ProviderError::new(format!(
                "input `fence` is `{other}`; use `pooler` or `read_only`"
            )))
        }
    };
    let (dir, port) = match fence {
        Fence::Pooler => {
            let pooler = inputs.get("pooler").cloned().unwrap_or(Value::Null);
            let dir = pooler.get("dir").and_then(Value::as_str).ok_or_else(|| {
                ProviderError::new("input `pooler` needs `dir` (a pgbouncer handle's pooler()); without a pooler use Cutover::read_only_fence")
            })?;
            let port = pooler
                .get("port")
                .and_then(Value::as_u64)
                .ok_or_else(|| ProviderError::new("input `pooler` needs `port`"))?;
            (ctx.path(dir), port as u16)
        }
        Fence::ReadOnly => (std::path::PathBuf::new(), 0),
    };
    Ok(crate::pg::cutover::Spec {
        source: target(ctx, inputs, "source").await?,
        target: target(ctx, inputs, "target").await?,
        fence,
        flip_file: get_str(inputs, "flip_file").map(|p| ctx.path(p)),
        pooler_dir: dir,
        pooler_port: port,
        database: get_str(inputs, "database").unwrap_or("app").to_string(),
        slots: list("slots"),
        subscriptions: list("subscriptions"),
        max_lag_bytes: num("max_lag_bytes") as i64,
        max_lag_seconds: inputs.get("max_lag_seconds").and_then(Value::as_f64),
        max_xact_seconds: num("max_xact_seconds"),
        validated_at: get_str(inputs, "validated_at").map(String::from),
        max_validation_age_seconds: num("max_validation_age_seconds") as u64,
        sequence_margin: num("sequence_margin") as i64,
        reverse: inputs
            .get("reverse")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        reverse_later: inputs
            .get("reverse_later")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        fence_timeout_ms: num("fence_timeout_ms") as u64,
        catchup_timeout_ms: num("catchup_timeout_ms") as u64,
        catch_up: list("catch_up"),
        direct_writers: match get_str(inputs, "direct_writers") {
            None | Some("refuse") => crate::pg::cutover::DirectWriters::Refuse,
            Some("end") => crate::pg::cutover::DirectWriters::End,
            Some(other) => {
                return Err(ProviderError::new(format!(
                    "input `direct_writers` is `{other}`; use `refuse` or `end`"
                )))
            }
        },
        observe_ms: crate::value::get_u64(inputs, "observe_ms").unwrap_or(1000),
        schema_at_start: inputs
            .get("schema_at_start")
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
    })
}

#[async_trait]
impl StepType for CutoverType {
    fn measured(&self, outputs: &Attrs) -> Vec<String> {
        let mut out = vec![];
        if let Some(ms) = outputs.get("fenced_ms").and_then(Value::as_f64) {
            out.push(format!(
                "writers were held or refused for {ms:.0} ms, from the fence to the step's end (as the tool measured it, not the clients)"
            ));
        }
        if let Some(b) = outputs.get("lag_bytes_at_guard").and_then(Value::as_i64) {
            out.push(format!(
                "at the guard, just before the fence: replication lag {b} bytes{}",
                match outputs.get("lag_probe_ms").and_then(Value::as_f64) {
                    Some(ms) =>
                        format!("; a probe reached the target through every stream in {ms:.0} ms"),
                    None => String::new(),
                }
            ));
        }
        if let Some(phases) = outputs.get("phases").and_then(Value::as_array) {
            let parts: Vec<String> = phases
                .iter()
                .filter_map(|p| {
                    Some(format!(
                        "{} {:.0} ms",
                        p.get("name")?.as_str()?,
                        p.get("ms")?.as_f64()?
                    ))
                })
                .collect();
            if !parts.is_empty() {
                out.push(format!("phases: {}", parts.join(", ")));
            }
        }
        out
    }
    fn review(&self, inputs: &Attrs) -> crate::provider::Review {
        let mut guards = vec!["the schemas agree and every table is replicated".to_string()];
        if let Some(b) = crate::value::get_u64(inputs, "max_lag_bytes") {
            guards.push(format!(
                "replication lag under {}",
                crate::provider::Review::bytes(b)
            ));
        }
        if let Some(s) = inputs.get("max_lag_seconds").and_then(Value::as_f64) {
            guards.push(format!("a probe through every stream within {s} s"));
        }
        if let Some(s) = inputs.get("max_xact_seconds").and_then(Value::as_f64) {
            guards.push(format!("no source transaction open over {s} s"));
        }
        if inputs.contains_key("validated_at") {
            if let Some(s) = crate::value::get_u64(inputs, "max_validation_age_seconds") {
                guards.push(format!("validated within the last {} min", s / 60));
            }
        }
        let moves_traffic = match (get_str(inputs, "fence"), get_str(inputs, "flip_file")) {
            (Some("read_only"), Some(f)) => Some(format!("the connection file {f}")),
            (Some("read_only"), None) => None,
            _ => Some(format!(
                "the pooler's database `{}`",
                get_str(inputs, "database").unwrap_or("app")
            )),
        };
        let refuses_rollback = self.rollback_refusal(inputs);
        crate::provider::Review {
            fences_writes: true,
            moves_traffic,
            guards,
            can_roll_back: refuses_rollback.is_none(),
            refuses_rollback,
            ..Default::default()
        }
    }
    fn type_name(&self) -> &'static str {
        Cutover::TYPE
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        if inputs.get("reverse").and_then(Value::as_bool) != Some(true) {
            return vec![];
        }
        kept_by_a_server(
            inputs,
            "target",
            "the reverse replication (the source's subscription)",
        )
        .into_iter()
        .collect()
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let spec = cutover_spec(ctx, req.inputs).await?;
        let node = req.node.to_string();
        let out = crate::pg::cutover::run(&spec, &|m| ctx.report(&node, &m))
            .await
            .map_err(|e| ProviderError::new(e.to_string()))?;
        let phases: Vec<String> = out
            .phases
            .iter()
            .map(|p| format!("{} {} ms", p.name, p.ms))
            .collect();
        ctx.report(req.node, &format!("phases: {}", phases.join(", ")));
        // When the fence began and when the step ended, to the millisecond, for time budgets
        // (`Budget`): the fence lasted `fenced_ms` up to the end.
        let done = std::time::SystemTime::now();
        let fenced = done - std::time::Duration::from_secs_f64(out.fenced_ms / 1000.0);
        let mut o = Attrs::from([
            (
                "fenced_at".to_string(),
                Value::from(humantime::format_rfc3339_millis(fenced).to_string()),
            ),
            (
                "done_at".to_string(),
                Value::from(humantime::format_rfc3339_millis(done).to_string()),
            ),
            ("fenced_ms".to_string(), Value::from(out.fenced_ms)),
            ("sequences".to_string(), Value::from(out.sequences as u64)),
            ("reverse".to_string(), Value::Bool(out.reverse)),
            ("flipped_at".to_string(), Value::from(crate::state::now())),
        ]);
        o.insert(
            "phases".into(),
            serde_json::to_value(&out.phases).unwrap_or(Value::Null),
        );
        if let Some((bytes, probe_ms)) = out.lag_at_guard {
            o.insert("lag_bytes_at_guard".into(), Value::from(bytes));
            if let Some(ms) = probe_ms {
                o.insert("lag_probe_ms".into(), Value::from(ms));
            }
        }
        Ok(o)
    }
    fn can_roll_back(&self) -> bool {
        true
    }
    fn rollback_refusal(&self, inputs: &Attrs) -> Option<String> {
        (inputs.get("reverse").and_then(Value::as_bool) != Some(true)).then(|| {
            "the cutover runs without reverse replication, so once the target takes writes, pointing clients back at the source would lose them; until the flip, a failed flip unfences the source by itself; after it, going back means copying the target's changes to the source first".to_string()
        })
    }
    async fn rollback(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        outputs: &Attrs,
    ) -> Result<Attrs, ProviderError> {
        let spec = cutover_spec(ctx, req.inputs).await?;
        let node = req.node.to_string();
        let out = crate::pg::cutover::rollback(&spec, get_str(outputs, "flipped_at"), &|m| {
            ctx.report(&node, &m)
        })
        .await
        .map_err(|e| ProviderError::new(e.to_string()))?;
        Ok(Attrs::from([
            ("fenced_ms".to_string(), Value::from(out.fenced_ms)),
            ("sequences".to_string(), Value::from(out.sequences as u64)),
        ]))
    }
    async fn probe(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let spec = cutover_spec(ctx, req.inputs).await?;
        let flipped = crate::pg::cutover::recover(&spec)
            .await
            .map_err(ProviderError::new)?;
        ctx.report(
            req.node,
            if flipped {
                "an interrupted cutover had flipped: finished it (pooler resumed on the target)"
            } else {
                "an interrupted cutover had not flipped: unfenced the source; it runs again"
            },
        );
        Ok(Some(if flipped {
            Probe::Done(Attrs::from([
                ("recovered".to_string(), Value::Bool(true)),
                ("reverse".to_string(), Value::Bool(spec.reverse)),
                ("flipped_at".to_string(), Value::from(crate::state::now())),
            ]))
        } else {
            Probe::NotDone
        }))
    }
}

impl crate::dsl::Handle<Cutover> {
    /// When the fence began (RFC 3339, milliseconds): the start of a time budget.
    pub fn fenced_at(&self) -> Value {
        self.output::<String>("fenced_at").into()
    }
    /// When the cutover step ended (with the pooler fence: writers released on the target).
    pub fn done_at(&self) -> Value {
        self.output::<String>("done_at").into()
    }
    /// When the cutover flipped (RFC 3339); changes each time it runs.
    pub fn flipped_at(&self) -> Value {
        self.output::<String>("flipped_at").into()
    }

    /// The compensation of a read-only cutover whose flip is a later step (a DNS record): when
    /// that flip fails, nothing has reached the target, and this puts the source back as it was
    /// (reverse replication dropped, forward replication enabled, the source writable). Declare
    /// it `.rollback_only().reopens(&[&cutover]).trigger("cutover", cutover.flipped_at())` and
    /// name it in the flip's `.compensate_with(..)`: the next apply runs the cutover again.
    pub fn unfence(&self) -> Unfence {
        Unfence {
            inputs: self.declared_inputs(),
        }
    }

    /// The step that enables the reverse replication this cutover created disabled.
    pub fn enable_reverse(&self) -> EnableReverse {
        EnableReverse {
            inputs: self.declared_inputs(),
        }
    }
}

inputs_step!(
    /// Enables the reverse replication a cutover created disabled (see
    /// `Cutover::reverse_replication_enabled_later`).
    EnableReverse,
    "pg.enable_reverse"
);

struct EnableReverseType;

#[async_trait]
impl StepType for EnableReverseType {
    fn type_name(&self) -> &'static str {
        "pg.enable_reverse"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        if inputs.get("reverse_later").and_then(Value::as_bool) != Some(true) {
            return vec![
                "pg.enable_reverse follows a cutover with reverse_replication_enabled_later()"
                    .into(),
            ];
        }
        vec![]
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let s = target(ctx, req.inputs, "source").await?;
        crate::pg::cutover::enable_reverse(&s)
            .await
            .map_err(ProviderError::new)?;
        ctx.report(
            req.node,
            "reverse replication enabled: the new database's writes reach the old one",
        );
        Ok(Attrs::new())
    }
    async fn probe(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let s = target(ctx, req.inputs, "source").await?;
        Ok(Some(
            if crate::pg::cutover::reverse_enabled(&s)
                .await
                .map_err(ProviderError::new)?
            {
                Probe::Done(Attrs::new())
            } else {
                Probe::NotDone
            },
        ))
    }
}

inputs_step!(
    /// Copies the source's schema to the target for a data path that moves rows only (a DMS task):
    /// `pre` creates the tables with their keys (and the marker and catch-up tables) unless the target has them,
    /// `post` adds the indexes, foreign keys and triggers (after the full load, which they would slow).
    CopySchema,
    "pg.copy_schema"
);

impl CopySchema {
    pub fn pre(source: Value, target: Value) -> Self {
        CopySchema {
            inputs: Attrs::from([
                ("source".to_string(), source),
                ("target".to_string(), target),
                ("phase".to_string(), Value::from("pre")),
            ]),
        }
    }
    /// The table groups of the data path (one DMS task each): `pre` creates each group's
    /// catch-up table on the source first, so the copy carries them.
    pub fn groups(mut self, groups: &[crate::pg::replication::Group]) -> Self {
        self.inputs
            .insert("groups".into(), serde_json::json!(groups));
        self
    }
    pub fn post(source: Value, target: Value) -> Self {
        CopySchema {
            inputs: Attrs::from([
                ("source".to_string(), source),
                ("target".to_string(), target),
                ("phase".to_string(), Value::from("post")),
            ]),
        }
    }
}

struct CopySchemaType;

#[async_trait]
impl StepType for CopySchemaType {
    fn type_name(&self) -> &'static str {
        "pg.copy_schema"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        // The tables are created only when absent; the rest ignores what exists.
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        use crate::pg::replication;
        let s = target(ctx, req.inputs, "source").await?;
        let t = target(ctx, req.inputs, "target").await?;
        create_markers(&s, &t, &groups_of(req.inputs), false).await?;
        match get_str(req.inputs, "phase") {
            Some("post") => {
                let script = {
                    let s = s.clone();
                    tokio::task::spawn_blocking(move || replication::dump_schema(&s, "post-data"))
                        .await
                        .map_err(|e| ProviderError::new(format!("pg_dump: {e}")))?
                        .map_err(pg_err)?
                };
                let rest = replication::statements(&script);
                replication::copy_schema_post(&t, &rest)
                    .await
                    .map_err(pg_err)?;
                ctx.report(
                    req.node,
                    &format!(
                        "{} index, key and trigger statement(s) applied on {t}",
                        rest.len()
                    ),
                );
            }
            _ => {
                replication::copy_schema_pre(&s, &t, true)
                    .await
                    .map_err(pg_err)?;
                ctx.report(req.node, &format!("tables and keys of {s} present on {t}"));
            }
        }
        Ok(Attrs::new())
    }
}

inputs_step!(
    /// Undoes a read-only cutover whose flip did not happen (see `Handle<Cutover>::unfence`).
    Unfence,
    "pg.unfence"
);

struct UnfenceType;

#[async_trait]
impl StepType for UnfenceType {
    fn type_name(&self) -> &'static str {
        "pg.unfence"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        if get_str(inputs, "fence") != Some("read_only") || inputs.contains_key("flip_file") {
            return vec!["pg.unfence undoes a read-only cutover whose flip is a later step (Cutover::read_only_fence without flip_file); a pooler or flip-file cutover unfences itself on failure".into()];
        }
        vec![]
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let spec = cutover_spec(ctx, req.inputs).await?;
        crate::pg::cutover::undo_before_flip(&spec)
            .await
            .map_err(ProviderError::new)?;
        ctx.report(
            req.node,
            "the flip did not happen: the source takes writes again and forward replication runs; the next apply runs the cutover again",
        );
        Ok(Attrs::from([(
            "unfenced_at".to_string(),
            Value::from(crate::state::now()),
        )]))
    }
}

/// Ends replication once the cutover is behind you: drops the target's forward subscriptions
/// (which the cutover disabled), then the source's slots and publications, so the old source
/// stops keeping WAL for them, then the reverse replication, which closes the rollback window
/// (`plan rollback` then refuses, changing nothing). Refuses, dropping nothing, while a forward
/// subscription is enabled. Put it behind a gate.
#[derive(Debug, Clone)]
pub struct FinishReplication {
    inputs: Attrs,
}

impl FinishReplication {
    /// `replication`: a replicate step's `slots()` (slots, subscriptions and publications share
    /// the names).
    pub fn between(source: Value, target: Value, replication: Value) -> Self {
        FinishReplication {
            inputs: Attrs::from([
                ("source".to_string(), source),
                ("target".to_string(), target),
                ("names".to_string(), replication),
            ]),
        }
    }
}

crate::declare!(FinishReplication, "pg.finish_replication", Step);

struct FinishType;

async fn finish_inputs(
    ctx: &Ctx,
    inputs: &Attrs,
) -> Result<(Target, Target, Vec<String>), ProviderError> {
    let names: Vec<String> = inputs
        .get("names")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| ProviderError::new("input `names` must be a list of slot names"))?;
    Ok((
        target(ctx, inputs, "source").await?,
        target(ctx, inputs, "target").await?,
        names,
    ))
}

#[async_trait]
impl StepType for FinishType {
    fn review(&self, _inputs: &Attrs) -> crate::provider::Review {
        crate::provider::Review {
            ends_rollback: true,
            ..Default::default()
        }
    }
    fn type_name(&self) -> &'static str {
        FinishReplication::TYPE
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let (s, t, names) = finish_inputs(ctx, req.inputs).await?;
        let node = req.node.to_string();
        let f = crate::pg::cutover::finish(&s, &t, &names, &|m| ctx.report(&node, &m))
            .await
            .map_err(ProviderError::new)?;
        Ok(Attrs::from([
            (
                "subscriptions".to_string(),
                serde_json::json!(f.subscriptions),
            ),
            ("slots".to_string(), serde_json::json!(f.slots)),
            (
                "publications".to_string(),
                serde_json::json!(f.publications),
            ),
            ("reverse_dropped".to_string(), Value::Bool(f.reverse)),
        ]))
    }
    async fn probe(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let (s, t, names) = finish_inputs(ctx, req.inputs).await?;
        Ok(Some(
            if crate::pg::cutover::finished(&s, &t, &names)
                .await
                .map_err(ProviderError::new)?
            {
                Probe::Done(Attrs::new())
            } else {
                Probe::NotDone
            },
        ))
    }
}

#[cfg(test)]
mod iam_tests {
    use super::*;

    struct Signer;
    impl crate::provider::TokenSource for Signer {
        fn token<'a>(
            &'a self,
            host: &'a str,
            port: u16,
            user: &'a str,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>
        {
            Box::pin(async move { Ok(format!("token-for-{user}@{host}:{port}")) })
        }
    }

    fn ctx(tokens: bool) -> Ctx {
        let mut c = Ctx::new(
            std::env::temp_dir(),
            "p",
            "s",
            std::sync::Arc::new(crate::value::EnvSecrets),
        );
        if tokens {
            c.tokens = Some(std::sync::Arc::new(Signer));
        }
        c
    }

    fn conn(c: crate::provider::pg_conn::PgConn) -> Attrs {
        Attrs::from([("conn".to_string(), Value::from(c))])
    }

    #[tokio::test]
    async fn an_iam_connection_gets_a_token_for_each_session_and_needs_tls() {
        use crate::provider::pg_conn::PgConn;
        let c = PgConn::to("db.example", 5432u64)
            .user("app")
            .dbname("app")
            .verify_full("bundle.pem")
            .iam_auth();
        let t = target(&ctx(true), &conn(c.clone()), "conn").await.unwrap();
        assert_eq!(t.password.as_deref(), Some("token-for-app@db.example:5432"));
        let e = target(&ctx(false), &conn(c), "conn")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a provider that signs tokens"), "{e}");
        let plain = PgConn::to("db.example", 5432u64).user("app").iam_auth();
        let e = target(&ctx(true), &conn(plain), "conn")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("IAM authentication needs TLS"), "{e}");
    }

    #[test]
    fn a_connection_a_server_keeps_refuses_iam() {
        use crate::provider::pg_conn::PgConn;
        let iam: Value = PgConn::to("h", 5432u64).require_tls().iam_auth().into();
        let pw: Value = PgConn::to("h", 5432u64).into();
        let r = Replicate::between(iam.clone(), pw.clone()).inputs();
        assert!(ReplicateType.validate(&r)[0]
            .contains("the target's subscription keeps its connection string"));
        assert!(ReplicateType
            .validate(&Replicate::between(pw.clone(), iam.clone()).inputs())
            .is_empty());
        let c = Cutover::read_only_fence(pw.clone(), iam.clone())
            .reverse_replication()
            .inputs();
        assert!(CutoverType.validate(&c)[0].contains("reverse replication"));
        let c = Cutover::read_only_fence(pw, iam).inputs();
        assert!(CutoverType.validate(&c).is_empty());
    }
}
