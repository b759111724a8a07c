//! `local.postgres`: a PostgreSQL cluster on this machine for rehearsals (the `local` provider's
//! stand-in for an RDS instance or Aurora cluster). Its outputs are what a connection needs.
//!
//! It listens on 127.0.0.1 only, with trust authentication: it must never be used for anything
//! but a rehearsal on a machine of one's own.

use async_trait::async_trait;

use super::{Ctx, Observed, ProviderError, Registry, Request, ResourceType};
use crate::dsl::{Declare, Handle, NodeKind, Output};
use crate::pg::cluster::LocalCluster;
use crate::value::{self, get_str, get_u64, Attrs, Value};

pub fn register(r: &mut Registry) {
    r.resource(PostgresType).resource(PgbouncerType);
}

/// A local cluster.
#[derive(Debug, Clone)]
pub struct Postgres {
    data_dir: Value,
    port: u16,
    settings: Attrs,
}

impl Postgres {
    /// A cluster in `data_dir` (relative to the project root) listening on 127.0.0.1:`port`.
    pub fn new(data_dir: impl Into<Output<String>>, port: u16) -> Self {
        Postgres {
            data_dir: data_dir.into().into(),
            port,
            settings: Attrs::new(),
        }
    }
    /// A `postgresql.conf` setting, e.g. `("shared_buffers", "'128MB'")`.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings
            .insert(name.into(), Value::String(value.into()));
        self
    }
}

impl Declare for Postgres {
    const TYPE: &'static str = "local.postgres";
    const KIND: NodeKind = NodeKind::Resource;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("data_dir".to_string(), self.data_dir),
            ("port".to_string(), Value::from(self.port)),
            (
                "settings".to_string(),
                Value::Object(self.settings.into_iter().collect()),
            ),
            ("running".to_string(), Value::Bool(true)),
        ])
    }
}

impl Handle<Postgres> {
    /// A connection to database `dbname` on this cluster, for steps' `conn` inputs.
    pub fn conn(&self, dbname: &str) -> Value {
        serde_json::json!({
            "host": Value::from(self.output::<String>("host")),
            "port": Value::from(self.output::<u64>("port")),
            "user": Value::from(self.output::<String>("user")),
            "dbname": dbname,
        })
    }
}

struct PostgresType;

/// The TCP port a local cluster or pooler listens on, as a claim.
fn port_claim(inputs: &Attrs) -> Vec<(String, String)> {
    match inputs.get("port").filter(|p| !value::has_refs(p)) {
        Some(p) => match p.as_u64() {
            Some(port) => vec![("port".into(), format!("TCP port {port}"))],
            None => vec![],
        },
        None => vec![],
    }
}

/// Who listens on 127.0.0.1:`port`, unless the port is free or its holder is the process named
/// in `pidfile` of a node this state records.
fn port_holder(inputs: &Attrs, pidfile: &std::path::Path, recorded: bool) -> Option<String> {
    let port = u16::try_from(get_u64(inputs, "port")?).ok()?;
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
        return None;
    }
    let holders = crate::pg::cluster::listeners(port);
    let ours = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok());
    if recorded && ours.is_some_and(|pid| holders.iter().any(|(h, _)| *h == pid)) {
        return None;
    }
    Some(match holders.first() {
        Some((pid, command)) => format!("pid {pid} (`{command}`)"),
        None => "a program this user cannot see".into(),
    })
}

fn cluster(ctx: &Ctx, inputs: &Attrs) -> Result<LocalCluster, ProviderError> {
    let dir = get_str(inputs, "data_dir")
        .ok_or_else(|| ProviderError::new("input `data_dir` must be a string"))?;
    let port = get_u64(inputs, "port")
        .filter(|p| *p > 0 && *p < 65536)
        .ok_or_else(|| ProviderError::new("input `port` must be a TCP port"))?;
    Ok(LocalCluster::new(ctx.path(dir), port as u16))
}

fn settings(inputs: &Attrs) -> Vec<(String, String)> {
    inputs
        .get("settings")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn observed(id: &str, inputs: &Attrs, running: bool) -> Observed {
    let mut obs_inputs = inputs.clone();
    obs_inputs.insert("running".into(), Value::Bool(running));
    let port = inputs.get("port").cloned().unwrap_or(Value::Null);
    Observed {
        id: id.into(),
        inputs: obs_inputs,
        outputs: Attrs::from([
            ("id".to_string(), Value::from(id)),
            ("host".to_string(), Value::from("127.0.0.1")),
            ("port".to_string(), port),
            ("user".to_string(), Value::from("postgres")),
            ("dbname".to_string(), Value::from("postgres")),
            ("data_dir".to_string(), Value::from(id)),
        ]),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProviderError::new(e.to_string()))?
        .map_err(ProviderError::new)
}

#[async_trait]
impl ResourceType for PostgresType {
    fn review(&self, _inputs: &Attrs) -> super::Review {
        super::Review {
            holds_data: true,
            ..Default::default()
        }
    }
    fn type_name(&self) -> &'static str {
        "local.postgres"
    }
    fn service(&self) -> &'static str {
        "local_pg"
    }
    fn force_new(&self) -> &'static [&'static str] {
        &["data_dir"]
    }
    fn claims(&self, inputs: &Attrs) -> Vec<(String, String)> {
        port_claim(inputs)
    }
    fn claim_holder(&self, ctx: &Ctx, _: &str, inputs: &Attrs, recorded: bool) -> Option<String> {
        let dir = ctx.path(get_str(inputs, "data_dir")?);
        port_holder(inputs, &dir.join("postmaster.pid"), recorded)
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        &["id", "host", "user", "dbname", "data_dir"]
    }
    fn planned_outputs(&self, inputs: &Attrs, _id: &str) -> Attrs {
        let mut out = Attrs::from([
            ("host".to_string(), Value::from("127.0.0.1")),
            ("user".to_string(), Value::from("postgres")),
            ("dbname".to_string(), Value::from("postgres")),
        ]);
        if let Some(p) = inputs.get("port").filter(|p| !value::has_refs(p)) {
            out.insert("port".into(), p.clone());
        }
        out
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match get_u64(inputs, "port") {
            Some(p) if (1024..65536).contains(&p) && p != 5432 => vec![],
            Some(5432) => vec!["input `port` 5432 is the system PostgreSQL's: choose another port for a rehearsal cluster".into()],
            _ => vec!["input `port` must be a TCP port from 1024 to 65535".into()],
        }
    }
    fn id_for(&self, req: &Request<'_>) -> String {
        get_str(req.inputs, "data_dir")
            .unwrap_or_default()
            .to_string()
    }
    async fn create(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError> {
        let c = cluster(ctx, req.inputs)?;
        let s = settings(req.inputs);
        ctx.report(req.node, "initdb");
        let c2 = c.clone();
        blocking(move || {
            c2.init(&s)?;
            c2.start()
        })
        .await?;
        Ok(observed(&self.id_for(req), req.inputs, true))
    }
    async fn read(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Observed>, ProviderError> {
        let mut inputs = req.inputs.clone();
        inputs.insert("data_dir".into(), Value::from(id));
        let c = cluster(ctx, &inputs)?;
        blocking(move || {
            if !c.exists() {
                return Ok(None);
            }
            let running = c.running();
            Ok(Some(running))
        })
        .await
        .map(|r| r.map(|running| observed(id, &inputs, running)))
    }
    async fn update(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        _id: &str,
        _changed: &[String],
    ) -> Result<Observed, ProviderError> {
        let c = cluster(ctx, req.inputs)?;
        let s = settings(req.inputs);
        ctx.report(req.node, "reconfiguring and restarting");
        blocking(move || {
            c.configure(&s)?;
            c.restart()
        })
        .await?;
        Ok(observed(&self.id_for(req), req.inputs, true))
    }
    async fn delete(&self, ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), ProviderError> {
        let mut inputs = req.inputs.clone();
        inputs.insert("data_dir".into(), Value::from(id));
        let c = cluster(ctx, &inputs)?;
        blocking(move || c.destroy()).await
    }
}

/// A local pgbouncer in transaction pooling mode: the stand-in for the DNS name or pooler clients
/// use. Its routes are set at creation; afterwards the cutover step moves them.
#[derive(Debug, Clone)]
pub struct Pgbouncer {
    dir: Value,
    port: u16,
    routes: Vec<Value>,
}

impl Pgbouncer {
    pub fn new(dir: impl Into<Output<String>>, port: u16) -> Self {
        Pgbouncer {
            dir: dir.into().into(),
            port,
            routes: vec![],
        }
    }
    /// Clients of database `name` reach `conn` (a cluster's `conn(db)`).
    pub fn route(mut self, name: &str, conn: Value) -> Self {
        self.routes
            .push(serde_json::json!({ "name": name, "conn": conn }));
        self
    }
}

impl Declare for Pgbouncer {
    const TYPE: &'static str = "local.pgbouncer";
    const KIND: NodeKind = NodeKind::Resource;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("dir".to_string(), self.dir),
            ("port".to_string(), Value::from(self.port)),
            ("routes".to_string(), Value::Array(self.routes)),
            ("running".to_string(), Value::Bool(true)),
        ])
    }
}

impl Handle<Pgbouncer> {
    /// A connection through the pooler to database `name`.
    pub fn conn(&self, name: &str) -> Value {
        serde_json::json!({
            "host": Value::from(self.output::<String>("host")),
            "port": Value::from(self.output::<u64>("port")),
            "user": "postgres",
            "dbname": name,
        })
    }
    /// What a cutover step needs to drive this pooler.
    pub fn pooler(&self) -> Value {
        serde_json::json!({
            "dir": Value::from(self.output::<String>("dir")),
            "port": Value::from(self.output::<u64>("port")),
        })
    }
}

struct PgbouncerType;

fn bouncer(ctx: &Ctx, inputs: &Attrs) -> Result<crate::pg::pooler::LocalBouncer, ProviderError> {
    let dir =
        get_str(inputs, "dir").ok_or_else(|| ProviderError::new("input `dir` must be a string"))?;
    let port = get_u64(inputs, "port")
        .ok_or_else(|| ProviderError::new("input `port` must be a TCP port"))?;
    Ok(crate::pg::pooler::LocalBouncer::new(
        ctx.path(dir),
        port as u16,
    ))
}

fn routes(inputs: &Attrs) -> Result<Vec<crate::pg::pooler::Route>, ProviderError> {
    let mut out = Vec::new();
    for r in inputs
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let name = r
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let t = crate::pg::Target::from_value(r.get("conn").unwrap_or(&Value::Null))
            .map_err(|e| ProviderError::new(format!("route `{name}`: {e}")))?;
        out.push(crate::pg::pooler::Route {
            name,
            host: t.host,
            port: t.port,
            dbname: t.dbname,
        });
    }
    Ok(out)
}

fn bouncer_observed(id: &str, inputs: &Attrs, running: bool) -> Observed {
    let mut obs = inputs.clone();
    obs.insert("running".into(), Value::Bool(running));
    Observed {
        id: id.into(),
        inputs: obs,
        outputs: Attrs::from([
            ("id".to_string(), Value::from(id)),
            ("dir".to_string(), Value::from(id)),
            ("host".to_string(), Value::from("127.0.0.1")),
            (
                "port".to_string(),
                inputs.get("port").cloned().unwrap_or(Value::Null),
            ),
        ]),
    }
}

#[async_trait]
impl ResourceType for PgbouncerType {
    fn type_name(&self) -> &'static str {
        "local.pgbouncer"
    }
    fn service(&self) -> &'static str {
        "local_pg"
    }
    fn force_new(&self) -> &'static [&'static str] {
        &["dir", "port"]
    }
    fn claims(&self, inputs: &Attrs) -> Vec<(String, String)> {
        port_claim(inputs)
    }
    fn claim_holder(&self, ctx: &Ctx, _: &str, inputs: &Attrs, recorded: bool) -> Option<String> {
        let dir = ctx.path(get_str(inputs, "dir")?);
        port_holder(inputs, &dir.join("pgbouncer.pid"), recorded)
    }
    fn create_only(&self) -> &'static [&'static str] {
        &["routes"]
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        &["id", "dir", "host", "port"]
    }
    fn planned_outputs(&self, inputs: &Attrs, _id: &str) -> Attrs {
        let mut out = Attrs::from([("host".to_string(), Value::from("127.0.0.1"))]);
        for k in ["dir", "port"] {
            if let Some(v) = inputs.get(k).filter(|v| !value::has_refs(v)) {
                out.insert(k.into(), v.clone());
            }
        }
        out
    }
    fn id_for(&self, req: &Request<'_>) -> String {
        get_str(req.inputs, "dir").unwrap_or_default().to_string()
    }
    async fn create(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError> {
        let b = bouncer(ctx, req.inputs)?;
        let r = routes(req.inputs)?;
        blocking(move || {
            b.write_config(&r)?;
            b.start()
        })
        .await?;
        Ok(bouncer_observed(&self.id_for(req), req.inputs, true))
    }
    async fn read(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Observed>, ProviderError> {
        let mut inputs = req.inputs.clone();
        inputs.insert("dir".into(), Value::from(id));
        let b = bouncer(ctx, &inputs)?;
        let exists = b.config_path().exists();
        let running = b.running();
        Ok(exists.then(|| bouncer_observed(id, &inputs, running)))
    }
    async fn update(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        _id: &str,
        _changed: &[String],
    ) -> Result<Observed, ProviderError> {
        // Only `running` can change in place: start it again (routes stay as the cutover left them).
        let b = bouncer(ctx, req.inputs)?;
        blocking(move || b.start()).await?;
        Ok(bouncer_observed(&self.id_for(req), req.inputs, true))
    }
    async fn delete(&self, ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), ProviderError> {
        let mut inputs = req.inputs.clone();
        inputs.insert("dir".into(), Value::from(id));
        let b = bouncer(ctx, &inputs)?;
        blocking(move || {
            b.stop()?;
            if b.dir.join("pgbouncer.ini").exists() {
                std::fs::remove_dir_all(&b.dir)
                    .map_err(|e| format!("remove {}: {e}", b.dir.display()))?;
            }
            Ok(())
        })
        .await
    }
}
