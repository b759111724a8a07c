//! `plan emulate STACK`: a stack's own plan run on this machine against the AWS emulator
//! (`moto_server`) with real PostgreSQL clusters standing in for the databases, without editing the
//! stack file. It keeps the stack's name (identifiers embed it) and gets a project of its own under
//! `.cutover/emulate/<stack>/root`: an overlay of the stack file (the emulator's endpoint, secrets
//! generated for the run, the stand-ins' CA bundle, `[connect]` to the stand-ins), its own state,
//! the stand-ins' data. The emulator, the proxy that corrects its known defects and the stand-ins
//! run as daemons with pid files in `.cutover/emulate/<stack>/run` and are reused by the next
//! `plan emulate` of the stack; `plan emulate STACK destroy` removes them all.
//!
//! What the emulator cannot do is said, never pretended: moto evaluates no alarms (the emulation
//! sets them OK and prints each change), runs no database (the stand-ins do), moves no data for
//! DMS, and its Route53 answers no DNS queries (clients read the record through the API and dial
//! through `[connect]`). This must never touch the real stack's state, never listen on anything
//! but 127.0.0.1, and never send a request to AWS itself (every client it makes names the
//! emulator's endpoint).

pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine;
use crate::pg::cluster::{free_port, LocalCluster};
use crate::pg::Target;
use crate::value::{get_str, Value};

/// The emulation of one stack.
pub struct Emulation {
    /// The project (holding `stacks/`).
    pub project: PathBuf,
    pub stack: String,
    /// `.cutover/emulate/<stack>`.
    pub dir: PathBuf,
}

/// Ports and names chosen once and kept for the next run.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Layout {
    moto: u16,
    proxy: u16,
    /// Stand-in name (a node, or a stack table of a database the plan does not own) -> port.
    standins: BTreeMap<String, u16>,
    /// Secret key -> generated value (this file is 0600).
    secrets: BTreeMap<String, String>,
}

/// A database the emulation stands in for.
#[derive(Debug, Clone)]
struct StandIn {
    name: String,
    /// The name clients verify (the RDS endpoint moto reports, or the source's host).
    host: String,
    user: String,
    password: String,
    dbname: String,
    /// The stand-in this one is a streaming standby of (`standby_of` in its stack table, or
    /// the instance an RDS read replica replicates).
    standby_of: Option<String>,
    /// The stand-in whose server this one shares, as a database of its own (the tenants'
    /// instances of one plan: one local cluster holds them all).
    server: Option<String>,
}

/// The user, database and password-secret key of the connection a step dials to `node`, when
/// one does.
fn dialled(nodes: &[crate::dsl::NodeSpec], node: &str) -> Option<(String, String, Option<String>)> {
    fn find(v: &Value, node: &str) -> Option<(String, String, Option<String>)> {
        match v {
            Value::Object(m) => {
                if m.get("node").and_then(Value::as_str) == Some(node) && m.contains_key("user") {
                    let s = |k: &str| m.get(k).and_then(Value::as_str).map(String::from);
                    let secret = m
                        .get("password")
                        .and_then(crate::value::as_secret)
                        .map(String::from);
                    return Some((
                        s("user")?,
                        s("dbname").unwrap_or_else(|| "postgres".into()),
                        secret,
                    ));
                }
                m.values().find_map(|x| find(x, node))
            }
            Value::Array(a) => a.iter().find_map(|x| find(x, node)),
            _ => None,
        }
    }
    nodes
        .iter()
        .find_map(|n| n.inputs.values().find_map(|v| find(v, node)))
}

fn io(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

/// The secret environment variable the overlay names for `[secrets] key`.
fn secret_env(key: &str) -> String {
    format!(
        "CUTOVER_EMULATED_{}",
        key.to_ascii_uppercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether process `pid` lives.
fn alive(pid: i32) -> bool {
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

fn wait_listening(port: u16, what: &str, log: &Path) -> Result<(), String> {
    let t0 = Instant::now();
    while !listening(port) {
        if t0.elapsed() > Duration::from_secs(60) {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "{what} did not listen on 127.0.0.1:{port} within 60 s; its log ({}) ends: {}",
                log.display(),
                tail.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A `Name` tag for an EC2 object being created.
fn named(
    kind: aws_sdk_ec2::types::ResourceType,
    name: &str,
) -> aws_sdk_ec2::types::TagSpecification {
    aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(kind)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("Name")
                .value(name)
                .build(),
        )
        .build()
}

/// Where `moto_server` is: `CUTOVER_MOTO_SERVER`, or the project's venv (`scripts/prereqs all`).
pub fn moto_server(project: &Path) -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("CUTOVER_MOTO_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let p = project.join("target/test-venv/bin/moto_server");
    if p.exists() {
        return Ok(p);
    }
    Err(format!(
        "moto_server (the AWS emulator) is not installed: run `scripts/prereqs all` (it installs moto[server] 5.2.5 into {}), or set CUTOVER_MOTO_SERVER",
        project.join("target/test-venv").display()
    ))
}

impl Emulation {
    pub fn new(project: &Path, stack: &str) -> Emulation {
        Emulation {
            project: project.to_path_buf(),
            stack: stack.into(),
            dir: project.join(".cutover/emulate").join(stack),
        }
    }

    /// The emulation's own project: the overlaid stack file, its state, the stand-ins.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn layout_path(&self) -> PathBuf {
        self.dir.join("layout.json")
    }

    fn layout(&self) -> Layout {
        std::fs::read_to_string(self.layout_path())
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    fn save_layout(&self, l: &Layout) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.layout_path();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| io("write", &p, e))?;
        use std::io::Write;
        f.write_all(
            serde_json::to_string_pretty(l)
                .unwrap_or_default()
                .as_bytes(),
        )
        .map_err(|e| io("write", &p, e))
    }

    fn pid_of(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.run_dir().join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Starts `cmd` as a daemon of the emulation (its own session, output to a log), recording
    /// its pid; waits until it listens on `port`.
    fn daemon(&self, name: &str, mut cmd: std::process::Command, port: u16) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let log = self.run_dir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| io("create", &log, e))?;
        let err = out.try_clone().map_err(|e| io("open", &log, e))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        let pidf = self.run_dir().join(format!("{name}.pid"));
        std::fs::write(&pidf, child.id().to_string()).map_err(|e| io("write", &pidf, e))?;
        wait_listening(port, name, &log)
    }

    fn running(&self, name: &str, port: u16) -> bool {
        self.pid_of(name).is_some_and(alive) && port > 0 && listening(port)
    }

    /// Makes sure the emulator, the proxy, the overlay and the stand-ins are up; returns the
    /// lines to show.
    pub async fn up(
        &self,
        catalog: &crate::engine::Catalog<'_>,
        sets: &[(String, String)],
        rows: u64,
        say: &dyn Fn(&str),
    ) -> Result<(), String> {
        let original =
            crate::stack::Stack::load(&self.project, &self.stack).map_err(|e| e.to_string())?;
        if original.provider != "aws" {
            return Err(format!(
                "{}: provider `{}`: the emulation stands in for AWS; run this stack as it is (`plan apply {}`)",
                original.path.display(),
                original.provider,
                self.stack
            ));
        }
        std::fs::create_dir_all(self.run_dir()).map_err(|e| io("create", &self.run_dir(), e))?;
        std::fs::create_dir_all(self.root().join("stacks"))
            .map_err(|e| io("create", &self.root(), e))?;
        self.open_up(&self.dir)?;
        let mut layout = self.layout();
        // The emulator and the proxy that corrects it.
        if !self.running("moto", layout.moto) {
            let bin = moto_server(&self.project)?;
            layout.moto = free_port();
            let mut c = std::process::Command::new(&bin);
            c.args(["-H", "127.0.0.1", "-p", &layout.moto.to_string()]);
            self.daemon("moto", c, layout.moto)?;
            say(&format!(
                "emulated: moto_server started on 127.0.0.1:{}",
                layout.moto
            ));
        }
        if !self.running("proxy", layout.proxy) {
            layout.proxy = free_port();
            let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
            let mut c = std::process::Command::new(exe);
            c.args([
                "emulate-proxy",
                "--upstream",
                &layout.moto.to_string(),
                "--port",
                &layout.proxy.to_string(),
            ]);
            self.daemon("proxy", c, layout.proxy)?;
            say(&format!(
                "emulated: the proxy correcting moto's known defects on 127.0.0.1:{}",
                layout.proxy
            ));
        }
        self.save_layout(&layout)?;

        // The overlay, first without the stand-ins of the plan's databases (the plan names them).
        let certs = self.root().join("certs");
        std::fs::create_dir_all(&certs).map_err(|e| io("create", &certs, e))?;
        let ca = certs.join("emulated-ca.pem");
        let (text, externals, notes) = self.overlay(original.source(), &mut layout, sets, &ca)?;
        for n in &notes {
            say(n);
        }
        self.write_stack(&text)?;
        let loaded = engine::load(&self.root(), catalog, &self.stack).map_err(|e| e.to_string())?;
        let region = crate::provider::aws::settings::Settings::read(&loaded.stack)
            .map_err(|e| e.to_string())?
            .region
            .unwrap_or_else(|| "us-east-1".into());
        // The databases the plan creates: RDS PostgreSQL instances and Aurora PostgreSQL
        // clusters (their endpoints as moto names them, the proxy fixing clusters' to the
        // account's one label as AWS does); the RDS instances it does not own that a step
        // dials (sharing one server, each its own database); RDS read replicas of those, as
        // streaming standbys.
        let nodes = &loaded.graph.spec.nodes;
        let secret_value = |r: Option<&str>| -> String {
            let Some(r) = r else { return String::new() };
            let key = r.trim_start_matches("env:CUTOVER_EMULATED_");
            layout
                .secrets
                .iter()
                .find(|(k, _)| secret_env(k).trim_start_matches("CUTOVER_EMULATED_") == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let id_of = |node: &str| {
            crate::provider::deterministic_id(&loaded.graph.spec.plan, &self.stack, node)
        };
        let mut standins: Vec<StandIn> = externals;
        let mut shared: Option<String> = None;
        let mut one_password: Vec<(String, String)> = Vec::new();
        for n in nodes {
            if n.type_name == "aws.rds.existing_instance" {
                let Some((user, dbname, secret)) = dialled(nodes, &n.name) else {
                    continue;
                };
                let id = get_str(&n.inputs, "id").unwrap_or_default();
                // One server has one role of a name: a tenant's user that is the first
                // tenant's too gets its password (the secret's generated value follows).
                let same_role = shared
                    .as_ref()
                    .and_then(|srv| standins.iter().find(|s| &s.name == srv))
                    .filter(|srv| srv.user == user)
                    .map(|srv| srv.password.clone());
                let password = match (same_role, &secret) {
                    (Some(pw), Some(r)) => {
                        one_password.push((r.clone(), pw.clone()));
                        pw
                    }
                    _ => secret_value(secret.as_deref()),
                };
                standins.push(StandIn {
                    name: n.name.clone(),
                    host: format!("{id}.aaaaaaaaaa.{region}.rds.amazonaws.com"),
                    user,
                    password,
                    dbname,
                    standby_of: None,
                    server: shared.clone(),
                });
                shared.get_or_insert_with(|| n.name.clone());
                continue;
            }
            let cluster = n.type_name == "aws.rds.cluster";
            if n.type_name != "aws.rds.instance" && !cluster {
                continue;
            }
            if let Some(of) = n.inputs.get("replica_of") {
                let mut refs = std::collections::BTreeSet::new();
                crate::value::collect_refs(of, &mut refs);
                let of = refs.into_iter().next().unwrap_or_default();
                let dial = dialled(nodes, &n.name);
                match (dial, standins.iter().any(|s| s.name == of)) {
                    (Some((user, dbname, secret)), true) => standins.push(StandIn {
                        name: n.name.clone(),
                        host: format!("{}.aaaaaaaaaa.{region}.rds.amazonaws.com", id_of(&n.name)),
                        user,
                        password: secret_value(secret.as_deref()),
                        dbname,
                        standby_of: Some(of),
                        server: None,
                    }),
                    _ => say(&format!(
                        "emulated: `{}` is a read replica that no step of the plan dials: it has no stand-in",
                        n.name
                    )),
                }
                continue;
            }
            let engine = get_str(&n.inputs, "engine").unwrap_or_default();
            if engine != "postgres" && engine != "aurora-postgresql" {
                say(&format!(
                    "emulated: `{}` is not PostgreSQL: no stand-in",
                    n.name
                ));
                continue;
            }
            let id = id_of(&n.name);
            standins.push(StandIn {
                name: n.name.clone(),
                host: if cluster {
                    format!("{id}.cluster-aaaaaaaaaa.{region}.rds.amazonaws.com")
                } else {
                    format!("{id}.aaaaaaaaaa.{region}.rds.amazonaws.com")
                },
                user: get_str(&n.inputs, "master_username")
                    .unwrap_or("postgres")
                    .to_string(),
                password: secret_value(
                    n.inputs
                        .get("master_password")
                        .and_then(crate::value::as_secret),
                ),
                dbname: get_str(&n.inputs, if cluster { "database_name" } else { "db_name" })
                    .unwrap_or("postgres")
                    .to_string(),
                standby_of: None,
                server: None,
            });
        }
        for (reference, pw) in one_password {
            let key = reference
                .trim_start_matches("env:CUTOVER_EMULATED_")
                .to_string();
            for (k, v) in layout.secrets.iter_mut() {
                if secret_env(k).trim_start_matches("CUTOVER_EMULATED_") == key {
                    *v = pw.clone();
                }
            }
        }
        for s in &standins {
            let port = match s.server.as_ref().and_then(|x| layout.standins.get(x)) {
                Some(p) => *p,
                None => *layout.standins.get(&s.name).unwrap_or(&0),
            };
            let port = if port == 0 { free_port() } else { port };
            layout.standins.insert(s.name.clone(), port);
        }
        self.save_layout(&layout)?;
        let (text, _, _) = self.overlay(original.source(), &mut layout, sets, &ca)?;
        self.write_stack(&text)?;
        let loaded = engine::load(&self.root(), catalog, &self.stack).map_err(|e| e.to_string())?;

        // What a real account already holds.
        self.seed_aws(&loaded, &layout, &region, &standins, say)
            .await?;
        // The stand-ins, with TLS for the names clients verify.
        self.certificates(&certs, &standins)?;
        // Primaries first: a standby is copied from its primary's stand-in.
        let (standbys, primaries): (Vec<&StandIn>, Vec<&StandIn>) =
            standins.iter().partition(|s| s.standby_of.is_some());
        let (sharing, primaries): (Vec<&StandIn>, Vec<&StandIn>) =
            primaries.into_iter().partition(|s| s.server.is_some());
        for s in primaries.into_iter().chain(sharing) {
            let port = layout.standins[&s.name];
            self.standin(s, port, &certs, say).await?;
        }
        for s in standbys {
            let of = s.standby_of.clone().unwrap_or_default();
            let primary = *layout.standins.get(&of).ok_or_else(|| {
                format!(
                    "{}: [values.{}] standby_of = \"{of}\": there is no stack table `{of}` with a database to be a standby of",
                    original.path.display(),
                    s.name
                )
            })?;
            self.standby(s, layout.standins[&s.name], primary, &of, say)?;
        }
        // The sources' tables, for the replication to move: those the groups name, or, when
        // they name none, the emulated writer's `public.events`.
        for repl in loaded
            .graph
            .spec
            .nodes
            .iter()
            .filter(|n| n.type_name == "pg.replicate" || n.type_name == "pg.capture_slots")
        {
            let mut tables: Vec<String> = repl
                .inputs
                .get("groups")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|g| crate::value::strings(g.get("tables")))
                .collect();
            if tables.is_empty() {
                tables.push("public.events".into());
            }
            let src = standins.iter().find(|s| {
                repl.inputs
                    .get("source")
                    .and_then(|v| v.get("node"))
                    .and_then(Value::as_str)
                    == Some(s.name.as_str())
            });
            if let Some(src) = src {
                self.seed_source(src, layout.standins[&src.name], &tables, rows, say)
                    .await?;
            }
        }
        say(&format!(
            "emulated: stack `{}` runs in {} (its own state; the real stack's is never touched)",
            self.stack,
            self.root().display()
        ));
        Ok(())
    }

    /// The postgres user (stand-ins run as it when we are root) must reach the emulation's files.
    fn open_up(&self, dir: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.to_path_buf(), self.root(), self.root().join("certs")] {
            if d.exists() {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| io("chmod", &d, e))?;
            }
        }
        Ok(())
    }

    fn write_stack(&self, text: &str) -> Result<(), String> {
        let p = self
            .root()
            .join("stacks")
            .join(format!("{}.toml", self.stack));
        std::fs::write(&p, text).map_err(|e| io("write", &p, e))
    }

    /// The stack file with the keys emulation changes; and the stand-ins for the stack tables of
    /// databases the plan does not own (`host`, `port`, `user`, `dbname`).
    fn overlay(
        &self,
        source: &str,
        layout: &mut Layout,
        sets: &[(String, String)],
        ca: &Path,
    ) -> Result<(String, Vec<StandIn>, Vec<String>), String> {
        let mut t: toml::Table = source
            .parse()
            .map_err(|e| format!("stacks/{}.toml: {e}", self.stack))?;
        t.insert(
            "endpoint_url".into(),
            toml::Value::String(format!("http://127.0.0.1:{}", layout.proxy)),
        );
        t.insert("connect_servers".into(), toml::Value::Boolean(true));
        t.remove("state_dir");
        // A rehearsal's state is the emulation's own, never the team's remote one.
        t.remove("state");
        t.remove("profile");
        let mut secrets = toml::Table::new();
        if let Some(toml::Value::Table(s)) = t.get("secrets") {
            for (k, reference) in s {
                // Keys that name one secret get one value (a standby's password is its
                // primary's).
                let same = s
                    .iter()
                    .filter(|(other, r)| *other != k && *r == reference)
                    .find_map(|(other, _)| layout.secrets.get(other).cloned());
                layout
                    .secrets
                    .entry(k.clone())
                    .or_insert_with(|| same.unwrap_or_else(|| format!("Emu-{}", random_hex(12))));
                secrets.insert(
                    k.clone(),
                    toml::Value::String(format!("env:{}", secret_env(k))),
                );
            }
        }
        t.insert("secrets".into(), toml::Value::Table(secrets));
        let mut externals = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let mut connect = toml::Table::new();
        let ca_s = ca.display().to_string();
        if let Some(toml::Value::Table(values)) = t.get_mut("values") {
            for (k, v) in sets {
                let parsed: toml::Value = format!("x = {v}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut x| x.remove("x"))
                    .unwrap_or_else(|| toml::Value::String(v.clone()));
                values.insert(k.clone(), parsed);
            }
            let asked = sets.iter().any(|(k, _)| k == "data_path");
            match values.get("data_path").and_then(|v| v.as_str()) {
                Some(d) if d != "native" && !asked => {
                    values.insert("data_path".into(), toml::Value::String("native".into()));
                    notes.push("emulated: data_path = \"native\" (moto's DMS moves no data, so the emulation replicates natively; the DMS objects are not created; `--set data_path=\"dms\"` creates them instead)".to_string());
                }
                Some(d) if d != "native" => notes.push(format!("emulated: data_path = \"{d}\" as asked: the DMS objects are created and started in the emulator, which moves no rows, so no change made after the load reaches the target")),
                _ => {}
            }
            if values.contains_key("health_url") {
                values.insert(
                    "health_url".into(),
                    toml::Value::String(format!(
                        "http://127.0.0.1:{}{}",
                        layout.proxy,
                        proxy::HEALTH_PATH
                    )),
                );
            }
            if values.contains_key("ca_bundle") {
                values.insert("ca_bundle".into(), toml::Value::String(ca_s.clone()));
            }
            for (k, v) in values.iter_mut() {
                let toml::Value::Table(db) = v else { continue };
                let field = |f: &str| db.get(f).and_then(|x| x.as_str()).map(String::from);
                let standby_of = field("standby_of");
                let (Some(host), Some(user), Some(dbname)) =
                    (field("host"), field("user"), field("dbname"))
                else {
                    continue;
                };
                if !db.contains_key("port") {
                    continue;
                }
                if db.contains_key("sslrootcert")
                    || field("sslmode").as_deref() == Some("verify-full")
                {
                    db.insert("sslrootcert".into(), toml::Value::String(ca_s.clone()));
                }
                db.remove("server_host");
                db.remove("server_port");
                let password = layout
                    .secrets
                    .get(&format!("{k}_password"))
                    .cloned()
                    .unwrap_or_default();
                externals.push(StandIn {
                    name: k.clone(),
                    host,
                    user,
                    password,
                    dbname,
                    standby_of,
                    server: None,
                });
                let port = *layout.standins.entry(k.clone()).or_insert_with(free_port);
                connect.insert(k.clone(), toml::Value::String(format!("127.0.0.1:{port}")));
            }
        }
        for (name, port) in &layout.standins {
            connect.insert(
                name.clone(),
                toml::Value::String(format!("127.0.0.1:{port}")),
            );
        }
        t.insert("connect".into(), toml::Value::Table(connect));
        let body = toml::to_string(&t).map_err(|e| e.to_string())?;
        Ok((
            format!(
                "# EMULATED: written by `plan emulate {}` from stacks/{}.toml; do not edit.\n{body}",
                self.stack, self.stack
            ),
            externals,
            notes,
        ))
    }

    /// A client configuration for the emulator itself (never AWS).
    fn sdk(&self, layout: &Layout, region: &str) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .endpoint_url(format!("http://127.0.0.1:{}", layout.proxy))
            .credentials_provider(aws_sdk_rds::config::SharedCredentialsProvider::new(
                aws_sdk_rds::config::Credentials::new(
                    "testing",
                    "testing",
                    None,
                    None,
                    "emulation",
                ),
            ))
            .build()
    }

    /// The VPC, subnets, hosted zone and the record a flip re-points, as a real account holds
    /// them, when the emulator lacks them.
    async fn seed_aws(
        &self,
        l: &engine::Loaded,
        layout: &Layout,
        region: &str,
        standins: &[StandIn],
        say: &dyn Fn(&str),
    ) -> Result<(), String> {
        let conf = self.sdk(layout, region);
        let ec2 = aws_sdk_ec2::Client::new(&conf);
        let e = |what: &str| {
            let what = what.to_string();
            move |e: String| format!("emulation: {what}: {e}")
        };
        // The RDS instances the plan reads and does not own (a tenant's), untagged, as the
        // account holds them.
        let rds = aws_sdk_rds::Client::new(&conf);
        for n in &l.graph.spec.nodes {
            if n.type_name != "aws.rds.existing_instance" {
                continue;
            }
            let Some(s) = standins.iter().find(|s| s.name == n.name) else {
                continue;
            };
            let id = get_str(&n.inputs, "id").unwrap_or_default();
            let have = rds
                .describe_db_instances()
                .db_instance_identifier(id)
                .send()
                .await;
            if have.is_ok_and(|h| !h.db_instances().is_empty()) {
                continue;
            }
            rds.create_db_instance()
                .db_instance_identifier(id)
                .engine("postgres")
                .engine_version("15.4")
                .db_instance_class("db.t3.medium")
                .allocated_storage(20)
                .master_username(&s.user)
                .master_user_password(&s.password)
                .send()
                .await
                .map_err(|x| {
                    e("create an instance")(aws_sdk_rds::error::DisplayErrorContext(x).to_string())
                })?;
            say(&format!(
                "emulated: the account's RDS instance `{id}` created in the emulator (not the plan's)"
            ));
        }
        let r53 = aws_sdk_route53::Client::from_conf(
            aws_sdk_route53::config::Builder::from(&conf)
                .region(aws_config::Region::new("us-east-1"))
                .build(),
        );
        let mut vpc_id = None;
        for n in &l.graph.spec.nodes {
            if n.type_name == "aws.ec2.vpc" {
                let name = get_str(&n.inputs, "find").unwrap_or_default().to_string();
                let found = ec2
                    .describe_vpcs()
                    .filters(
                        aws_sdk_ec2::types::Filter::builder()
                            .name("tag:Name")
                            .values(&name)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|x| {
                        e("describe VPCs")(aws_sdk_rds::error::DisplayErrorContext(x).to_string())
                    })?;
                vpc_id = match found.vpcs().first().and_then(|v| v.vpc_id()) {
                    Some(id) => Some(id.to_string()),
                    None => {
                        let v = ec2
                            .create_vpc()
                            .cidr_block("10.99.0.0/16")
                            .tag_specifications(named(aws_sdk_ec2::types::ResourceType::Vpc, &name))
                            .send()
                            .await
                            .map_err(|x| {
                                e("create VPC")(
                                    aws_sdk_rds::error::DisplayErrorContext(x).to_string(),
                                )
                            })?;
                        say(&format!(
                            "emulated: the account's VPC `{name}` created in the emulator"
                        ));
                        v.vpc().and_then(|v| v.vpc_id()).map(String::from)
                    }
                };
            }
        }
        for n in &l.graph.spec.nodes {
            if n.type_name != "aws.ec2.subnets" {
                continue;
            }
            let Some(vpc) = &vpc_id else { continue };
            let have = ec2
                .describe_subnets()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("vpc-id")
                        .values(vpc)
                        .build(),
                )
                .send()
                .await
                .map_err(|x| {
                    e("describe subnets")(aws_sdk_rds::error::DisplayErrorContext(x).to_string())
                })?;
            if !have.subnets().is_empty() {
                continue;
            }
            let pattern = get_str(&n.inputs, "name").unwrap_or("subnet-*");
            for (i, zone) in ["a", "b"].iter().enumerate() {
                let name = if pattern.contains('*') {
                    pattern.replace('*', zone)
                } else {
                    pattern.to_string()
                };
                ec2.create_subnet()
                    .vpc_id(vpc)
                    .cidr_block(format!("10.99.{}.0/24", i + 1))
                    .availability_zone(format!("{region}{zone}"))
                    .tag_specifications(named(aws_sdk_ec2::types::ResourceType::Subnet, &name))
                    .send()
                    .await
                    .map_err(|x| {
                        e("create subnet")(aws_sdk_rds::error::DisplayErrorContext(x).to_string())
                    })?;
            }
            say("emulated: two private subnets created in the emulator's VPC");
        }
        let mut zone_ids: BTreeMap<String, String> = BTreeMap::new();
        for n in &l.graph.spec.nodes {
            if n.type_name != "aws.route53.zone" {
                continue;
            }
            let name = get_str(&n.inputs, "name")
                .unwrap_or_default()
                .trim_end_matches('.')
                .to_string();
            let zones = r53
                .list_hosted_zones_by_name()
                .dns_name(&name)
                .send()
                .await
                .map_err(|x| {
                    e("list zones")(aws_sdk_rds::error::DisplayErrorContext(x).to_string())
                })?;
            let id = match zones
                .hosted_zones()
                .iter()
                .find(|z| z.name().trim_end_matches('.') == name)
            {
                Some(z) => z.id().to_string(),
                None => {
                    let z = r53
                        .create_hosted_zone()
                        .name(&name)
                        .caller_reference(format!("cutover-emulate-{}", random_hex(6)))
                        .send()
                        .await
                        .map_err(|x| {
                            e("create zone")(aws_sdk_rds::error::DisplayErrorContext(x).to_string())
                        })?;
                    say(&format!(
                        "emulated: the account's hosted zone `{name}` created in the emulator"
                    ));
                    z.hosted_zone()
                        .map(|z| z.id().to_string())
                        .unwrap_or_default()
                }
            };
            zone_ids.insert(
                n.name.clone(),
                id.trim_start_matches("/hostedzone/").to_string(),
            );
        }
        for n in &l.graph.spec.nodes {
            if n.type_name != "aws.route53.flip" {
                continue;
            }
            let zone = n
                .inputs
                .get("zone_id")
                .and_then(|v| {
                    let mut refs = std::collections::BTreeSet::new();
                    crate::value::collect_refs(v, &mut refs);
                    refs.into_iter().next()
                })
                .and_then(|z| zone_ids.get(&z))
                .or_else(|| zone_ids.values().next())
                .cloned();
            let (Some(zone), Some(name), Some(kind)) =
                (zone, get_str(&n.inputs, "name"), get_str(&n.inputs, "type"))
            else {
                continue;
            };
            let mut from = crate::value::strings(n.inputs.get("from"));
            if from.is_empty() {
                // A record that names a database the plan reads (a tenant's instance).
                let mut refs = std::collections::BTreeSet::new();
                if let Some(v) = n.inputs.get("from") {
                    crate::value::collect_refs(v, &mut refs);
                }
                from = refs
                    .iter()
                    .filter_map(|r| standins.iter().find(|s| &s.name == r))
                    .map(|s| s.host.clone())
                    .collect();
            }
            if from.is_empty() {
                continue;
            }
            let have = r53
                .list_resource_record_sets()
                .hosted_zone_id(&zone)
                .start_record_name(name)
                .send()
                .await
                .map_err(|x| {
                    e("list records")(aws_sdk_rds::error::DisplayErrorContext(x).to_string())
                })?;
            let exists = have.resource_record_sets().iter().any(|r| {
                r.name().trim_end_matches('.') == name.trim_end_matches('.')
                    && r.r#type().as_str() == kind
            });
            if exists {
                continue;
            }
            use aws_sdk_route53::types::{
                Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
            };
            // The TTL the plan says the record has today (a TTL-lowering step's `was`), so
            // the emulated wait is the one the stack declares.
            let ttl = l
                .graph
                .spec
                .nodes
                .iter()
                .find(|m| {
                    m.type_name == "aws.route53.lower_ttl"
                        && get_str(&m.inputs, "name") == Some(name)
                })
                .and_then(|m| crate::value::get_u64(&m.inputs, "was"))
                .unwrap_or(300);
            let set = ResourceRecordSet::builder()
                .name(name)
                .r#type(RrType::from(kind))
                .ttl(ttl as i64)
                .set_resource_records(Some(
                    from.iter()
                        .map(|v| ResourceRecord::builder().value(v).build().expect("a value"))
                        .collect(),
                ))
                .build()
                .map_err(|x| e("record")(x.to_string()))?;
            r53.change_resource_record_sets()
                .hosted_zone_id(&zone)
                .change_batch(
                    ChangeBatch::builder()
                        .changes(
                            Change::builder()
                                .action(ChangeAction::Create)
                                .resource_record_set(set)
                                .build()
                                .map_err(|x| e("record")(x.to_string()))?,
                        )
                        .build()
                        .map_err(|x| e("record")(x.to_string()))?,
                )
                .send()
                .await
                .map_err(|x| {
                    e("create record")(aws_sdk_rds::error::DisplayErrorContext(x).to_string())
                })?;
            say(&format!(
                "emulated: the record `{name}` the application uses created, pointing at {}",
                from.join(", ")
            ));
        }
        Ok(())
    }

    /// The emulation's CA and one server certificate naming every stand-in (made once).
    fn certificates(&self, certs: &Path, standins: &[StandIn]) -> Result<(), String> {
        let ca = certs.join("emulated-ca.pem");
        let ca_key = certs.join("emulated-ca.key");
        let names: Vec<String> = standins
            .iter()
            .map(|s| {
                // moto's endpoints differ only in their first label.
                match s.host.split_once(".aaaaaaaaaa.") {
                    Some((_, rest)) => format!("DNS:*.aaaaaaaaaa.{rest}"),
                    None => format!("DNS:{}", s.host),
                }
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let san = format!(
            "subjectAltName=IP:127.0.0.1,{}\nbasicConstraints=CA:FALSE\n",
            names.join(",")
        );
        let ext = certs.join("server.ext");
        if std::fs::read_to_string(&ext).ok().as_deref() == Some(san.as_str())
            && certs.join("server.crt").exists()
        {
            return Ok(());
        }
        std::fs::write(&ext, &san).map_err(|e| io("write", &ext, e))?;
        let p = |x: &Path| x.display().to_string();
        let mut steps: Vec<Vec<String>> = Vec::new();
        if !ca.exists() {
            steps.push(
                [
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "30",
                    "-subj",
                    "/CN=cutover emulated CA",
                    "-keyout",
                    &p(&ca_key),
                    "-out",
                    &p(&ca),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            );
        }
        let key = certs.join("server.key");
        let csr = certs.join("server.csr");
        let crt = certs.join("server.crt");
        steps.push(
            [
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=cutover emulated database",
                "-keyout",
                &p(&key),
                "-out",
                &p(&csr),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        steps.push(
            [
                "x509",
                "-req",
                "-days",
                "30",
                "-in",
                &p(&csr),
                "-CA",
                &p(&ca),
                "-CAkey",
                &p(&ca_key),
                "-CAcreateserial",
                "-extfile",
                &p(&ext),
                "-out",
                &p(&crt),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        for args in steps {
            let out = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .map_err(|e| format!("openssl (scripts/prereqs installs it): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "openssl {}: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io("chmod", &ca, e))?;
        Ok(())
    }

    /// One stand-in cluster: TLS with the emulation's certificate, passwords checked over TCP
    /// (the local `postgres` administrator excepted), the user and database the plan expects.
    async fn standin(
        &self,
        s: &StandIn,
        port: u16,
        certs: &Path,
        say: &dyn Fn(&str),
    ) -> Result<(), String> {
        let dir = s.server.as_deref().unwrap_or(&s.name);
        let c = LocalCluster::new(self.root().join("pgdata").join(dir), port);
        let told = self.run_dir().join(format!("standin-{}", s.name));
        if s.server.is_some() {
            if !told.exists() {
                say(&format!(
                    "emulated: `{}` ({}) is database `{}` of `{dir}`'s stand-in on 127.0.0.1:{port}, user {}",
                    s.name, s.host, s.dbname, s.user
                ));
                std::fs::write(&told, "").map_err(|e| io("write", &told, e))?;
            }
        } else if !c.exists() {
            std::fs::create_dir_all(self.root().join("pgdata"))
                .map_err(|e| io("create", &self.root().join("pgdata"), e))?;
            self.open_up(&self.dir)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                self.root().join("pgdata"),
                std::fs::Permissions::from_mode(0o755),
            )
            .map_err(|e| io("chmod", &self.root().join("pgdata"), e))?;
            c.init(&[
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "'server.crt'".into()),
                ("ssl_key_file".into(), "'server.key'".into()),
                ("password_encryption".into(), "'scram-sha-256'".into()),
            ])?;
            let hba = c.data_dir.join("pg_hba.conf");
            std::fs::write(
                &hba,
                "# Written by cutover's emulation: the administrator by trust, everyone else by password.\nhost all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
            )
            .map_err(|e| io("write", &hba, e))?;
            for (f, mode) in [("server.crt", 0o644), ("server.key", 0o600)] {
                let dest = c.data_dir.join(f);
                std::fs::copy(certs.join(f), &dest).map_err(|e| io("copy", &dest, e))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io("chmod", &dest, e))?;
                if let Some((uid, gid)) = crate::pg::cluster::run_as()? {
                    std::os::unix::fs::chown(&dest, Some(uid), Some(gid))
                        .map_err(|e| io("chown", &dest, e))?;
                }
                if let Some((uid, gid)) = crate::pg::cluster::run_as()? {
                    std::os::unix::fs::chown(&hba, Some(uid), Some(gid))
                        .map_err(|e| io("chown", &hba, e))?;
                }
            }
            say(&format!(
                "emulated: PostgreSQL 15 on 127.0.0.1:{port} stands in for `{}` ({}), user {} (a superuser: stand-ins do not model RDS's privileges)",
                s.name, s.host, s.user
            ));
        }
        c.start()?;
        let admin = Target {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            dbname: "postgres".into(),
            ..Default::default()
        };
        let a = admin.connect().await.map_err(|e| e.to_string())?;
        let lit = crate::pg::literal;
        let id = crate::pg::ident;
        a.batch_execute(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser') THEN CREATE ROLE rds_superuser NOLOGIN; END IF;
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') THEN CREATE ROLE rds_replication NOLOGIN; END IF;
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {u}) THEN CREATE ROLE {ui} LOGIN SUPERUSER REPLICATION; END IF;
             END $$;
             ALTER ROLE {ui} PASSWORD {p};
             GRANT rds_superuser, rds_replication TO {ui};",
            u = lit(&s.user),
            ui = id(&s.user),
            p = lit(&s.password),
        ))
        .await
        .map_err(|e| admin.err("stand-in roles")(e).to_string())?;
        let exists: bool = a
            .query_one(
                "SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)",
                &[&s.dbname],
            )
            .await
            .map_err(|e| admin.err("stand-in database")(e).to_string())?
            .get(0);
        if !exists {
            a.batch_execute(&format!(
                "CREATE DATABASE {} OWNER {}",
                id(&s.dbname),
                id(&s.user)
            ))
            .await
            .map_err(|e| admin.err("stand-in database")(e).to_string())?;
        }
        Ok(())
    }

    /// A stand-in that is a streaming standby of the stand-in `of` (on `primary`): a base
    /// backup of it with its roles, databases and TLS files, streaming from it.
    fn standby(
        &self,
        s: &StandIn,
        port: u16,
        primary: u16,
        of: &str,
        say: &dyn Fn(&str),
    ) -> Result<(), String> {
        let c = LocalCluster::new(self.root().join("pgdata").join(&s.name), port);
        if !c.exists() {
            c.standby_of(
                primary,
                &[
                    ("ssl".into(), "on".into()),
                    ("ssl_cert_file".into(), "'server.crt'".into()),
                    ("ssl_key_file".into(), "'server.key'".into()),
                    ("password_encryption".into(), "'scram-sha-256'".into()),
                ],
            )?;
            say(&format!(
                "emulated: PostgreSQL 15 on 127.0.0.1:{port} stands in for `{}` ({}), a streaming standby of `{of}`'s stand-in",
                s.name, s.host
            ));
        }
        c.start()
    }

    /// The source stand-in's tables: those the plan replicates, each with `rows` rows of made-up
    /// data, when absent (a real source has its own schema; the emulation cannot know it).
    async fn seed_source(
        &self,
        s: &StandIn,
        port: u16,
        tables: &[String],
        rows: u64,
        say: &dyn Fn(&str),
    ) -> Result<(), String> {
        let t = Target {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            dbname: s.dbname.clone(),
            ..Default::default()
        };
        let c = t.connect().await.map_err(|e| e.to_string())?;
        let mut made = 0;
        for name in tables {
            let (schema, table) = name.split_once('.').unwrap_or(("public", name));
            let exists: bool = c
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&format!(
                        "{}.{}",
                        crate::pg::ident(schema),
                        crate::pg::ident(table)
                    )],
                )
                .await
                .map_err(|e| t.err("look up a table")(e).to_string())?
                .get(0);
            if exists {
                continue;
            }
            let q = format!("{}.{}", crate::pg::ident(schema), crate::pg::ident(table));
            c.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE {q} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, account bigint NOT NULL CHECK (account >= 0), parent bigint REFERENCES {q} (id), payload text NOT NULL, at timestamptz NOT NULL DEFAULT now());
                 CREATE INDEX ON {q} (account);
                 INSERT INTO {q} (account, payload) SELECT g % 97, repeat(md5(g::text), 2) FROM generate_series(1, {rows}) g;
                 UPDATE {q} SET parent = id - 1 WHERE id % 10 = 0;
                 ALTER TABLE {q} OWNER TO {o};",
                s = crate::pg::ident(schema),
                o = crate::pg::ident(&s.user),
            ))
            .await
            .map_err(|e| t.err("seed the source")(e).to_string())?;
            made += 1;
        }
        if made > 0 {
            say(&format!(
                "emulated: the source stand-in holds {made} table(s) of made-up rows ({rows} each, with an index, a foreign key and a check constraint): the ones the plan replicates"
            ));
        }
        Ok(())
    }

    /// The environment of a `plan` command run in the emulation: the emulator's credentials and
    /// the generated secrets.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let l = self.layout();
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "testing".to_string()),
            ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
            ("CUTOVER_EMULATED".to_string(), "1".to_string()),
        ];
        for (k, v) in &l.secrets {
            env.push((secret_env(k), v.clone()));
        }
        env
    }

    /// Sets every alarm that is not OK to OK (moto evaluates no alarms), reporting each change.
    pub async fn quiet_alarms(&self, region: &str, say: &dyn Fn(&str)) -> Result<usize, String> {
        let l = self.layout();
        let cw = aws_sdk_cloudwatch::Client::new(&self.sdk(&l, region));
        let out = cw
            .describe_alarms()
            .send()
            .await
            .map_err(|e| aws_sdk_rds::error::DisplayErrorContext(e).to_string())?;
        let mut n = 0;
        for a in out.metric_alarms() {
            let state = a
                .state_value()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if state == "OK" {
                continue;
            }
            let name = a.alarm_name().unwrap_or_default();
            cw.set_alarm_state()
                .alarm_name(name)
                .state_value(aws_sdk_cloudwatch::types::StateValue::Ok)
                .state_reason(
                    "emulated: moto evaluates no alarms; the emulation reports them quiet",
                )
                .send()
                .await
                .map_err(|e| aws_sdk_rds::error::DisplayErrorContext(e).to_string())?;
            say(&format!(
                "emulated: alarm {name} {state} -> OK (moto evaluates no alarms)"
            ));
            n += 1;
        }
        Ok(n)
    }

    /// The region the overlaid stack names.
    pub fn region(&self) -> String {
        crate::stack::Stack::load(&self.root(), &self.stack)
            .ok()
            .and_then(|s| crate::provider::aws::settings::Settings::read(&s).ok())
            .and_then(|s| s.region)
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// Stops the stand-ins, the proxy and the emulator, and removes the emulation's directory.
    pub fn down(&self, say: &dyn Fn(&str)) -> Result<(), String> {
        let l = self.layout();
        for name in l.standins.keys() {
            let c = LocalCluster::new(self.root().join("pgdata").join(name), 0);
            if c.exists() {
                c.destroy()?;
            }
        }
        // The proxy ends on SIGTERM; moto_server (werkzeug) does not, and holds nothing worth
        // keeping: it is killed.
        for (d, sig) in [("proxy", libc::SIGTERM), ("moto", libc::SIGKILL)] {
            if let Some(pid) = self.pid_of(d) {
                if alive(pid) {
                    unsafe {
                        libc::kill(-pid, sig);
                        libc::kill(pid, sig);
                    }
                    let t0 = Instant::now();
                    while alive(pid) && t0.elapsed() < Duration::from_secs(10) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if alive(pid) {
                        unsafe {
                            libc::kill(-pid, libc::SIGKILL);
                        }
                    }
                }
            }
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| io("remove", &self.dir, e))?;
        }
        say(&format!(
            "emulated: stand-ins, proxy and emulator of `{}` stopped; {} removed",
            self.stack,
            self.dir.display()
        ));
        Ok(())
    }
}

/// Runs the proxy in this process until it is killed (`plan emulate-proxy`, started by `up`).
pub fn serve_proxy(upstream: u16, port: u16) -> Result<(), String> {
    let _p = proxy::Proxy::start_on(upstream, port)
        .map_err(|e| format!("listen on 127.0.0.1:{port}: {e}"))?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
