//! Steps that talk to PostgreSQL directly, whatever created the databases: run SQL (with a probe),
//! preflight. Their `conn` inputs are maps (host, port, user, dbname, password as a secret
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
    r.step(SqlType).step(PreflightType);
}

fn target(inputs: &Attrs, key: &str) -> Result<Target, ProviderError> {
    Target::from_input(inputs, key).map_err(ProviderError::new)
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
        let t = target(req.inputs, "conn")?;
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
    async fn probe(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let Some(q) = get_str(req.inputs, "probe") else {
            return Ok(None);
        };
        let t = target(req.inputs, "conn")?;
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

/// Checks a source and a target before replication; fails on errors, reports warnings.
#[derive(Debug, Clone)]
pub struct Preflight {
    source: Value,
    target: Value,
    slots: u64,
}

impl Preflight {
    pub fn between(source: Value, target: Value) -> Self {
        Preflight {
            source,
            target,
            slots: 1,
        }
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
        ])
    }
}

struct PreflightType;

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
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let s = target(req.inputs, "source")?;
        let t = target(req.inputs, "target")?;
        let slots = crate::value::get_u64(req.inputs, "slots").unwrap_or(1) as i64;
        let findings = preflight::check(&s, &t, slots).await.map_err(pg_err)?;
        for f in findings.iter().filter(|f| f.level == Level::Warning) {
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
