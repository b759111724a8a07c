//! The data plane: talking to PostgreSQL databases directly, whatever created them. Connection
//! settings, local clusters for rehearsals and tests (`initdb`/`pg_ctl` on loopback ports), and the
//! checks and steps of a migration (preflight, replication, lag, validation).
//!
//! Nothing here prints, and nothing here keeps a password beyond the call that uses it.

pub mod cluster;
pub mod cutover;
pub mod handoff;
pub mod load;
pub mod pooler;
pub mod preflight;
pub mod replication;
pub mod schema;
pub mod validate;
pub mod version;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};

use crate::value::{Attrs, Value};

/// A problem talking to a database, naming which one.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to {target}: {message}; check that it runs and accepts connections from here")]
    Connect { target: String, message: String },
    #[error("{target}: {what}: {message}")]
    Query {
        target: String,
        what: String,
        message: String,
        /// The SQLSTATE, when the server sent one.
        code: Option<String>,
    },
    #[error("{0}")]
    Other(String),
}

/// Where a database is. Built from a node's `conn` input (a map with host, port, user, dbname and
/// an optional password, already revealed for the call).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// `disable` (the default), `require` (encrypted, server not verified) or `verify-full`
    /// (encrypted, certificate and host name verified), as libpq's `sslmode`.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// A PEM bundle of the CAs to trust for `verify-full` (for RDS, its global bundle); without it
    /// the Mozilla roots (webpki-roots) are used.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// The plan's node this database belongs to (its name is a `[connect]` key).
    #[serde(default)]
    pub node: Option<String>,
    /// The address another server dials to reach this one (a subscription's connection string),
    /// when it differs from `host`/`port`.
    #[serde(default)]
    pub server_host: Option<String>,
    #[serde(default)]
    pub server_port: Option<u16>,
    /// Where this machine dials instead of `host:port` (the stack's `[connect]`, a tunnel's
    /// end); TLS still verifies `host`.
    #[serde(default, skip_serializing)]
    pub dial: Option<(String, u16)>,
    /// IAM authentication: the password is a token made for each session (`auth = "iam"`).
    #[serde(default)]
    pub iam: bool,
    /// Whether other servers dial `dial` too (the stack's `connect_servers`).
    #[serde(default, skip_serializing)]
    pub servers_dial: bool,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )?;
        if let Some((h, p)) = &self.dial {
            write!(f, " (dialled at {h}:{p})")?;
        }
        Ok(())
    }
}

impl Target {
    /// From a `conn` value.
    pub fn from_value(v: &Value) -> Result<Target, String> {
        let port = match v.get("port") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        Ok(Target {
            host: s("host").ok_or("connection: `host` is missing")?,
            port: port.ok_or("connection: `port` is missing or not a number")? as u16,
            user: s("user").unwrap_or_else(|| "postgres".into()),
            dbname: s("dbname").unwrap_or_else(|| "postgres".into()),
            password: s("password"),
            sslmode: s("sslmode"),
            sslrootcert: s("sslrootcert"),
            node: s("node"),
            server_host: s("server_host"),
            server_port: match v.get("server_port") {
                Some(Value::Number(n)) => n.as_u64().map(|p| p as u16),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            },
            dial: None,
            iam: s("auth").as_deref() == Some("iam"),
            servers_dial: false,
        })
    }

    /// Applies the stack's `[connect]` table: the entry for this database's node, else for its
    /// host name, says where this machine dials instead.
    pub fn dial_through(
        mut self,
        connect: &std::collections::BTreeMap<String, String>,
        servers_too: bool,
    ) -> Result<Target, String> {
        self.servers_dial = servers_too;
        let entry = self
            .node
            .as_ref()
            .and_then(|n| connect.get(n).map(|a| (n.clone(), a)))
            .or_else(|| connect.get(&self.host).map(|a| (self.host.clone(), a)));
        if let Some((key, address)) = entry {
            let dial =
                crate::stack::parse_dial(address).map_err(|m| format!("[connect] `{key}`: {m}"))?;
            self.dial = Some(dial);
        }
        Ok(self)
    }

    /// The numeric address and port this machine connects to (libpq's `hostaddr`, for TLS to
    /// verify `host` while dialing elsewhere), when `[connect]` sent it elsewhere.
    fn dial_addr(&self) -> Result<Option<(std::net::IpAddr, u16)>, String> {
        let Some((h, p)) = &self.dial else {
            return Ok(None);
        };
        if let Ok(ip) = h.parse() {
            return Ok(Some((ip, *p)));
        }
        use std::net::ToSocketAddrs;
        let ip = (h.as_str(), *p)
            .to_socket_addrs()
            .map_err(|e| format!("[connect] address {h}:{p} of {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("[connect] address {h}:{p} of {}: no address", self.host))?
            .ip();
        Ok(Some((ip, *p)))
    }

    /// From the input `key` of a node.
    pub fn from_input(inputs: &Attrs, key: &str) -> Result<Target, String> {
        let v = inputs
            .get(key)
            .ok_or_else(|| format!("input `{key}` (a connection) is missing"))?;
        Target::from_value(v).map_err(|e| format!("input `{key}`: {e}"))
    }

    /// A libpq connection string for another server to dial (for `CREATE SUBSCRIPTION`): the
    /// server address when the plan set one; includes the password if any.
    pub fn conninfo(&self) -> String {
        let mut s = if self.servers_dial && self.dial.is_some() {
            self.conninfo_without_password()
        } else {
            Target {
                host: self
                    .server_host
                    .clone()
                    .unwrap_or_else(|| self.host.clone()),
                port: self.server_port.unwrap_or(self.port),
                dial: None,
                ..self.clone()
            }
            .app_conninfo()
        };
        if let Some(p) = &self.password {
            s.push_str(&format!(
                " password='{}'",
                p.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
        s
    }

    /// A libpq connection string without the password, for programs run here (`pg_dump`,
    /// `psql`), which get the password from the environment (`libpq_command`) so that it never
    /// shows in the process list. Dials the `[connect]` address (`hostaddr`) when there is one.
    pub fn conninfo_without_password(&self) -> String {
        let mut s = self.app_conninfo();
        if let Ok(Some((ip, port))) = self.dial_addr() {
            s = Target {
                port,
                dial: None,
                ..self.clone()
            }
            .app_conninfo();
            s.push_str(&format!(" hostaddr={ip}"));
        }
        s
    }

    /// The connection string an application uses (no password, no `[connect]` address).
    pub fn app_conninfo(&self) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.dbname)
        );
        if let Some(m) = &self.sslmode {
            s.push_str(&format!(" sslmode={m}"));
        }
        if let Some(r) = &self.sslrootcert {
            s.push_str(&format!(" sslrootcert='{}'", r.replace('\'', "\\'")));
        }
        s
    }

    /// A command for a libpq program (`pg_dump`, `psql`) with the password in its environment;
    /// the caller passes `conninfo_without_password()` (or a variant) as its database argument.
    pub fn libpq_command(&self, program: &str) -> Result<std::process::Command, PgError> {
        let mut c = std::process::Command::new(cluster::program(program).map_err(PgError::Other)?);
        die_with_parent(&mut c);
        if let Some(p) = &self.password {
            c.env("PGPASSWORD", p);
        }
        c.env_remove("PGSERVICE").env("PGCONNECT_TIMEOUT", "10");
        Ok(c)
    }

    fn config(&self) -> Result<tokio_postgres::Config, String> {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host);
        match self.dial_addr()? {
            Some((ip, port)) => {
                c.hostaddr(ip).port(port);
            }
            None => {
                c.port(self.port);
            }
        }
        c.user(&self.user)
            .dbname(&self.dbname)
            .application_name("cutover")
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(p) = &self.password {
            c.password(p);
        }
        Ok(c)
    }

    /// A client; its connection runs on a task of its own.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let fail = |message: String| PgError::Connect {
            target: self.to_string(),
            message,
        };
        let mut config = self.config().map_err(fail)?;
        match self.sslmode.as_deref().unwrap_or("disable") {
            "disable" => {
                let (client, conn) = config
                    .connect(NoTls)
                    .await
                    .map_err(|e| fail(describe(&e)))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            mode @ ("require" | "verify-full") => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tls::connector(mode == "verify-full", self.sslrootcert.as_deref())
                    .map_err(fail)?;
                let (client, conn) = config.connect(tls).await.map_err(|e| fail(describe(&e)))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            other => Err(fail(format!(
                "sslmode `{other}` is not supported; use disable, require or verify-full"
            ))),
        }
    }

    /// Wraps a query error with this target and what was being done.
    pub fn err(&self, what: &str) -> impl FnOnce(tokio_postgres::Error) -> PgError + '_ {
        let what = what.to_string();
        move |e| PgError::Query {
            target: self.to_string(),
            what,
            code: e.code().map(|c| c.code().to_string()),
            message: describe(&e),
        }
    }
}

/// A driver error as a person needs it: the server's message, detail, hint and SQLSTATE.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            s.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                s.push_str(&format!(": {x}"));
                src = x.source();
            }
            s
        }
    }
}

/// Quotes an identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

mod tls {
    //! TLS for database connections with rustls: `verify-full` checks the certificate chain and
    //! host name against the given CA bundle (or the Mozilla roots); `require` encrypts without
    //! verifying, as libpq's `sslmode=require` does.

    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
    use tokio_postgres_rustls::MakeRustlsConnect;

    #[derive(Debug)]
    struct NoVerify(Arc<CryptoProvider>);

    impl ServerCertVerifier for NoVerify {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// A connector: verifying (`verify`) against `root` (a PEM bundle) or the Mozilla roots.
    pub fn connector(verify: bool, root: Option<&str>) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut roots = RootCertStore::empty();
        match root {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?
                {
                    let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let mut config = builder.with_root_certificates(roots).with_no_client_auth();
        if !verify {
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(NoVerify(provider)));
        }
        Ok(MakeRustlsConnect::new(config))
    }
}

/// Makes a child die with the thread that starts it (Linux `PR_SET_PDEATHSIG`), so a `plan` that
/// is killed mid-copy leaves no `psql` writing into the target behind it. Children must be started
/// from threads that outlive them: a tokio worker, or a blocking thread that waits for the child.
pub fn die_with_parent(c: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (prctl, getppid, _exit) and allocates nothing.
        unsafe {
            c.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nothing would signal us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod death_tests {
    use super::die_with_parent;

    /// A child started with `die_with_parent` is killed when the thread that started it ends,
    /// as it is when a killed `plan`'s threads end; one started without it lives on.
    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        let start = |guard: bool| {
            std::thread::spawn(move || {
                let mut c = std::process::Command::new("sleep");
                c.arg("30");
                if guard {
                    die_with_parent(&mut c);
                }
                c.spawn().unwrap()
            })
            .join()
            .unwrap()
        };
        let mut guarded = start(true);
        let status = guarded.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        let mut free = start(false);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            free.try_wait().unwrap().is_none(),
            "without it the child lives on"
        );
        free.kill().unwrap();
        free.wait().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rds() -> Target {
        Target::from_value(&serde_json::json!({
            "host": "db.abc.eu-west-1.rds.amazonaws.com", "port": 5432, "user": "admin",
            "dbname": "app", "node": "target", "sslmode": "verify-full",
            "sslrootcert": "global-bundle.pem", "password": "pw"
        }))
        .unwrap()
    }

    #[test]
    fn connect_sends_this_machine_to_the_tunnel_and_keeps_the_name_for_tls() {
        let map = std::collections::BTreeMap::from([(
            "target".to_string(),
            "127.0.0.1:15432".to_string(),
        )]);
        let t = rds().dial_through(&map, false).unwrap();
        assert_eq!(t.dial, Some(("127.0.0.1".to_string(), 15432)));
        let local = t.conninfo_without_password();
        assert!(
            local.contains("host='db.abc.eu-west-1.rds.amazonaws.com' port=15432")
                && local.ends_with("hostaddr=127.0.0.1")
                && local.contains("sslmode=verify-full"),
            "{local}"
        );
        assert!(!local.contains("pw"), "{local}");
        // Another server (a subscription) dials the real address, not this machine's tunnel.
        let server = t.conninfo();
        assert!(
            server.contains("port=5432") && !server.contains("hostaddr"),
            "{server}"
        );
        // The application's connection string names the database, never the tunnel.
        assert!(!t.app_conninfo().contains("15432"));
        let c = t.config().unwrap();
        assert_eq!(
            c.get_hostaddrs(),
            &["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(c.get_ports(), &[15432]);
    }

    #[test]
    fn connect_matches_a_host_name_and_leaves_others_alone() {
        let map = std::collections::BTreeMap::from([(
            "db.abc.eu-west-1.rds.amazonaws.com".to_string(),
            "localhost:6000".to_string(),
        )]);
        let t = Target {
            node: None,
            ..rds()
        }
        .dial_through(&map, false)
        .unwrap();
        assert_eq!(t.dial, Some(("localhost".to_string(), 6000)));
        assert!(t.config().unwrap().get_hostaddrs()[0].is_loopback());
        let other = rds().dial_through(&Default::default(), false).unwrap();
        assert_eq!(other.dial, None);
        assert!(!other.conninfo_without_password().contains("hostaddr"));
    }

    #[test]
    fn with_connect_servers_subscriptions_dial_the_tunnel_too() {
        let map = std::collections::BTreeMap::from([(
            "target".to_string(),
            "127.0.0.1:15432".to_string(),
        )]);
        let s = rds().dial_through(&map, true).unwrap().conninfo();
        assert!(
            s.contains("port=15432 ")
                && s.contains("hostaddr=127.0.0.1")
                && s.contains("password='pw'"),
            "{s}"
        );
    }

    #[test]
    fn a_server_address_is_what_subscriptions_dial() {
        let mut t = rds();
        t.server_host = Some("10.0.0.5".into());
        t.server_port = Some(6432);
        let s = t.conninfo();
        assert!(s.contains("host='10.0.0.5' port=6432"), "{s}");
        assert!(t.conninfo_without_password().contains("port=5432"));
    }
}
