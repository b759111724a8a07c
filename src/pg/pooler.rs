//! A local pgbouncer for rehearsals and tests (transaction pooling, loopback only), and the admin
//! console operations the cutover uses: PAUSE (waits for in-flight transactions in transaction
//! pooling), RESUME, SHOW DATABASES, and re-pointing a database (rewrite its line, RELOAD).
//! pgbouncer refuses to run as root: when we are root it runs as the `postgres` OS user.
//!
//! The admin console speaks only the simple query protocol: everything here uses `simple_query`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio_postgres::SimpleQueryMessage;

use super::{PgError, Target};

/// Where pgbouncer's program is: `CUTOVER_PGBOUNCER`, or the PATH, or Debian's /usr/sbin.
pub fn program() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CUTOVER_PGBOUNCER") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.into_iter()
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.exists())
}

/// A database route: clients of `name` reach `dbname` on `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

/// A pgbouncer instance in a directory of its own.
#[derive(Debug, Clone)]
pub struct LocalBouncer {
    pub dir: PathBuf,
    pub port: u16,
}

fn ini_line(r: &Route) -> String {
    format!(
        "{} = host={} port={} dbname={}",
        r.name, r.host, r.port, r.dbname
    )
}

impl LocalBouncer {
    pub fn new(dir: impl Into<PathBuf>, port: u16) -> Self {
        LocalBouncer {
            dir: dir.into(),
            port,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("pgbouncer.ini")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.join("pgbouncer.pid")
    }

    /// Writes the configuration with these routes.
    pub fn write_config(&self, routes: &[Route]) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("create {}: {e}", self.dir.display()))?;
        let dbs: Vec<String> = routes.iter().map(ini_line).collect();
        let ini = format!(
            "; Written by cutover. Loopback only.\n[databases]\n{}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\nadmin_users = postgres\npool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\nserver_reset_query =\nignore_startup_parameters = extra_float_digits,options,application_name\nlogfile = {}\npidfile = {}\n",
            dbs.join("\n"),
            self.port,
            self.dir.join("userlist.txt").display(),
            self.dir.join("pgbouncer.log").display(),
            self.pid_path().display()
        );
        std::fs::write(self.dir.join("userlist.txt"), "\"postgres\" \"\"\n")
            .map_err(|e| e.to_string())?;
        std::fs::write(self.config_path(), ini).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = super::cluster::run_as()? {
            for p in [
                self.dir.clone(),
                self.config_path(),
                self.dir.join("userlist.txt"),
            ] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        Ok(())
    }

    /// The routes in the configuration file.
    pub fn routes(&self) -> Result<Vec<Route>, String> {
        let text = std::fs::read_to_string(self.config_path()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut in_dbs = false;
        for line in text.lines() {
            let l = line.trim();
            if l.starts_with('[') {
                in_dbs = l == "[databases]";
                continue;
            }
            if !in_dbs || l.is_empty() || l.starts_with(';') {
                continue;
            }
            let Some((name, rest)) = l.split_once('=') else {
                continue;
            };
            let mut r = Route {
                name: name.trim().into(),
                host: String::new(),
                port: 5432,
                dbname: name.trim().into(),
            };
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("host", v)) => r.host = v.into(),
                    Some(("port", v)) => r.port = v.parse().unwrap_or(5432),
                    Some(("dbname", v)) => r.dbname = v.into(),
                    _ => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Points `name` at a new place in the configuration file (RELOAD makes it take effect).
    pub fn set_route(&self, route: &Route) -> Result<(), String> {
        let mut routes = self.routes()?;
        match routes.iter_mut().find(|r| r.name == route.name) {
            Some(r) => *r = route.clone(),
            None => routes.push(route.clone()),
        }
        let text = std::fs::read_to_string(self.config_path()).map_err(|e| e.to_string())?;
        let start = text.find("[databases]").ok_or("no [databases] section")?;
        let end = text[start..]
            .find("\n[pgbouncer]")
            .map(|i| start + i)
            .ok_or("no [pgbouncer] section")?;
        let dbs: Vec<String> = routes.iter().map(ini_line).collect();
        let new = format!(
            "{}[databases]\n{}\n{}",
            &text[..start],
            dbs.join("\n"),
            &text[end..]
        );
        // Atomically: a crash leaves the old or the new file, never half of one.
        let tmp = self.dir.join("pgbouncer.ini.tmp");
        std::fs::write(&tmp, new).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = super::cluster::run_as()? {
            let _ = std::os::unix::fs::chown(&tmp, Some(uid), Some(gid));
        }
        std::fs::rename(&tmp, self.config_path()).map_err(|e| e.to_string())
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.pid()
            .map(|p| Path::new(&format!("/proc/{p}")).exists())
            .unwrap_or(false)
    }

    /// Starts it in the background and waits until it accepts connections.
    pub fn start(&self) -> Result<(), String> {
        if self.running() {
            return Ok(());
        }
        let prog = program().ok_or("pgbouncer not found: install it (Debian: apt-get install pgbouncer) or set CUTOVER_PGBOUNCER")?;
        let mut c = std::process::Command::new(prog);
        c.arg("-d").arg(self.config_path());
        if let Some((uid, gid)) = super::cluster::run_as()? {
            c.uid(uid).gid(gid);
        }
        let out = c
            .output()
            .map_err(|e| format!("pgbouncer: cannot run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pgbouncer failed to start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        Err(format!(
            "pgbouncer did not start listening on port {}: {}",
            self.port,
            log.lines().last().unwrap_or("")
        ))
    }

    /// Stops it (SIGTERM) and waits until it is gone.
    pub fn stop(&self) -> Result<(), String> {
        let Some(pid) = self.pid() else { return Ok(()) };
        if !self.running() {
            return Ok(());
        }
        std::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .map_err(|e| e.to_string())?;
        let t0 = std::time::Instant::now();
        while self.running() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// The admin console (database `pgbouncer`).
    pub fn admin(&self) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            dbname: "pgbouncer".into(),
            password: None,
            ..Default::default()
        }
    }
}

/// A database as pgbouncer's SHOW DATABASES reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub paused: bool,
}

/// Runs an admin command.
pub async fn admin(console: &Target, command: &str) -> Result<Vec<SimpleQueryMessage>, PgError> {
    let c = console.connect().await?;
    c.simple_query(command).await.map_err(console.err(command))
}

/// SHOW DATABASES, for `name`.
pub async fn pool_state(console: &Target, name: &str) -> Result<Option<PoolState>, PgError> {
    for m in admin(console, "SHOW DATABASES").await? {
        if let SimpleQueryMessage::Row(r) = m {
            if r.get("name") == Some(name) {
                return Ok(Some(PoolState {
                    name: name.into(),
                    host: r.get("host").unwrap_or("").into(),
                    port: r.get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
                    paused: r.get("paused").map(|p| p == "1").unwrap_or(false),
                }));
            }
        }
    }
    Ok(None)
}
