//! A local PostgreSQL cluster for rehearsals and tests: `initdb`, configuration for logical
//! replication, `pg_ctl start/stop`, on a loopback port with trust authentication (loopback only).
//! PostgreSQL refuses to run as root: when we are root, its commands run as the `postgres` OS user
//! and the data directory belongs to that user.
//!
//! This must never listen on anything but 127.0.0.1, and never delete a directory that is not a
//! PostgreSQL data directory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where PostgreSQL's programs are: `CUTOVER_PG_BIN`, Debian's PostgreSQL 15, or the PATH.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("CUTOVER_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("pg_ctl").exists() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).find(|d| d.join("pg_ctl").exists() && d.join("initdb").exists())
    })
}

/// The program `name` in [`bin_dir`].
pub fn program(name: &str) -> Result<PathBuf, String> {
    let dir = bin_dir().ok_or_else(|| {
        "PostgreSQL's programs were not found: install PostgreSQL 15 (Debian: apt-get install postgresql-15) or set CUTOVER_PG_BIN".to_string()
    })?;
    let p = dir.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} not found", p.display()))
    }
}

fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|x| x.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

/// The OS user PostgreSQL runs as: `None` (ourselves) unless we are root, then `postgres`.
pub fn run_as() -> Result<Option<(u32, u32)>, String> {
    if effective_uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return Ok(Some((
                f[2].parse().map_err(|_| "bad uid")?,
                f[3].parse().map_err(|_| "bad gid")?,
            )));
        }
    }
    Err("running as root, and PostgreSQL refuses to run as root, but there is no `postgres` OS user: create one (useradd -r postgres) or run as another user".into())
}

/// A command that runs as PostgreSQL's OS user.
pub fn command(name: &str) -> Result<Command, String> {
    let mut c = Command::new(program(name)?);
    if let Some((uid, gid)) = run_as()? {
        c.uid(uid).gid(gid);
        c.env("HOME", "/tmp");
    }
    c.env_remove("PGHOST").env_remove("PGPORT");
    Ok(c)
}

fn run(mut c: Command, what: &str) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// A cluster's data directory and port.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    pub data_dir: PathBuf,
    pub port: u16,
}

impl LocalCluster {
    pub fn new(data_dir: impl Into<PathBuf>, port: u16) -> Self {
        LocalCluster {
            data_dir: data_dir.into(),
            port,
        }
    }

    /// Whether the directory holds a cluster.
    pub fn exists(&self) -> bool {
        self.data_dir.join("PG_VERSION").exists()
    }

    /// Creates the data directory, empty, owned by the user the server runs as, mode 0700;
    /// refuses one that holds a cluster.
    fn empty_data_dir(&self) -> Result<(), String> {
        if self.exists() {
            return Err(format!(
                "{} already holds a cluster",
                self.data_dir.display()
            ));
        }
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("create {}: {e}", self.data_dir.display()))?;
        if let Some((uid, gid)) = run_as()? {
            std::os::unix::fs::chown(&self.data_dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", self.data_dir.display()))?;
            check_reachable(&self.data_dir)?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", self.data_dir.display()))?;
        Ok(())
    }

    /// `initdb` and our configuration. `settings` are extra `postgresql.conf` lines.
    pub fn init(&self, settings: &[(String, String)]) -> Result<(), String> {
        self.empty_data_dir()?;
        let mut c = command("initdb")?;
        c.arg("-D").arg(&self.data_dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        ]);
        run(c, "initdb")?;
        self.configure(settings)
    }

    /// A streaming standby of the local cluster on `primary_port` (`pg_basebackup -R`), with our
    /// configuration on this cluster's port (and `settings`). Not started.
    pub fn standby_of(
        &self,
        primary_port: u16,
        settings: &[(String, String)],
    ) -> Result<(), String> {
        self.empty_data_dir()?;
        let mut c = command("pg_basebackup")?;
        c.args(["-h", "127.0.0.1", "-p", &primary_port.to_string()])
            .args(["-U", "postgres", "-D"])
            .arg(&self.data_dir)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(c, "pg_basebackup")?;
        // The primary's log and pid files came with the copy: not this server's.
        for f in ["server.log", "postmaster.opts"] {
            let _ = std::fs::remove_file(self.data_dir.join(f));
        }
        self.configure(settings)
    }

    /// Writes our settings (and `settings`) to `postgresql.auto.conf`-style include file.
    pub fn configure(&self, settings: &[(String, String)]) -> Result<(), String> {
        let mut conf = format!(
            "# Written by cutover. Loopback only.\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\nwal_level = logical\nmax_replication_slots = 32\nmax_wal_senders = 32\nmax_worker_processes = 32\nmax_logical_replication_workers = 16\nmax_sync_workers_per_subscription = 4\nwal_retrieve_retry_interval = 200ms\nlogging_collector = off\n",
            self.port
        );
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let path = self.data_dir.join("cutover.conf");
        std::fs::write(&path, conf).map_err(|e| format!("write {}: {e}", path.display()))?;
        if let Some((uid, gid)) = run_as()? {
            let _ = std::os::unix::fs::chown(&path, Some(uid), Some(gid));
        }
        let main = self.data_dir.join("postgresql.conf");
        let text =
            std::fs::read_to_string(&main).map_err(|e| format!("read {}: {e}", main.display()))?;
        if !text.contains("include_if_exists = 'cutover.conf'") {
            std::fs::write(
                &main,
                format!("{text}\ninclude_if_exists = 'cutover.conf'\n"),
            )
            .map_err(|e| format!("write {}: {e}", main.display()))?;
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), String> {
        if self.running() {
            return Ok(());
        }
        let mut c = command("pg_ctl")?;
        c.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.data_dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        run(c, "pg_ctl start").map(|_| ()).map_err(|e| {
            let log = std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            format!(
                "{e}; server log ends: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        })
    }

    /// Stops the server (fast mode: rolls back open transactions).
    pub fn stop(&self) -> Result<(), String> {
        if !self.running() {
            return Ok(());
        }
        let mut c = command("pg_ctl")?;
        c.arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60", "-m", "fast", "stop"]);
        run(c, "pg_ctl stop").map(|_| ())
    }

    /// Restarts to apply settings that need it.
    pub fn restart(&self) -> Result<(), String> {
        self.stop()?;
        self.start()
    }

    /// Whether a server runs on this data directory.
    pub fn running(&self) -> bool {
        let Ok(mut c) = command("pg_ctl") else {
            return false;
        };
        c.arg("-D").arg(&self.data_dir).arg("status");
        c.output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// Stops the server and removes the data directory (only if it is one).
    pub fn destroy(&self) -> Result<(), String> {
        if !self.data_dir.exists() {
            return Ok(());
        }
        if !self.exists() {
            return Err(format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION); refusing to delete it",
                self.data_dir.display()
            ));
        }
        self.stop()?;
        std::fs::remove_dir_all(&self.data_dir)
            .map_err(|e| format!("remove {}: {e}", self.data_dir.display()))
    }
}

/// Every parent of `dir` must be traversable by the postgres user.
fn check_reachable(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for a in dir.ancestors().skip(1) {
        if let Ok(m) = std::fs::metadata(a) {
            if m.permissions().mode() & 0o001 == 0 {
                return Err(format!(
                    "PostgreSQL runs as the `postgres` user, which cannot reach {} (mode {:o}); put the data directory elsewhere or `chmod o+x {}`",
                    a.display(),
                    m.permissions().mode() & 0o777,
                    a.display()
                ));
            }
        }
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (for tests and rehearsals that pick their own).
///
/// It is chosen below the kernel's ephemeral range: a port the kernel hands out (`bind` to port
/// 0) is also what it gives the next outgoing connection as its source port, so a server started
/// on it a moment later can find it taken by some client's connection. Each call in one process
/// moves on to the next port, from an offset derived from the process id, so two processes
/// rarely try the same one, and a port something already listens on or uses is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = 15_000;
    let high: u32 = ephemeral_low().clamp(low + 1_000, 65_535);
    let span = high - low;
    let base = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + (base + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && listeners(port).is_empty() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The lowest port of the kernel's ephemeral range (Linux's default 32768 where it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The processes listening on TCP `port` (IPv4 or IPv6), as (pid, command line), found through
/// /proc; empty when none is visible to this user.
pub fn listeners(port: u16) -> Vec<(u32, String)> {
    let mut inodes = std::collections::BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 the socket's inode.
            let listening = f.get(3) == Some(&"0A");
            let on_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port {
                if let Some(inode) = f.get(9) {
                    inodes.insert(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let mut found = Vec::new();
    if inodes.is_empty() {
        return found;
    }
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let holds = std::fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| inodes.contains(l.to_string_lossy().as_ref()))
            });
        if holds {
            let command = std::fs::read(p.path().join("cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .split('\0')
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let mut command = command.split_whitespace().collect::<Vec<_>>().join(" ");
            if command.chars().count() > 80 {
                command = command.chars().take(79).collect::<String>() + "…";
            }
            found.push((pid, command));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!(
                u32::from(p) >= 15_000 && u32::from(p) < ephemeral_low(),
                "{p}"
            );
        }
    }
}
