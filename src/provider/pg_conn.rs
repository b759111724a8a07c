//! Connections for the data-plane steps, as plans write them: [`PgConn`] builds the `conn`,
//! `source` and `target` inputs of the `pg.*` steps from a database node's outputs (an RDS
//! instance's `endpoint()` and `port()`, an Aurora cluster's), or from a stack table for a
//! database the plan does not own (an on-premise host, an RDS instance of another team).
//!
//! A connection names its node, so the stack's `[connect]` table can send this machine to a
//! tunnel's end while TLS keeps verifying the database's own name. The password is a secret
//! reference and never a value; this module must never read a secret.

use serde::Deserialize;

use crate::dsl::Output;
use crate::stack::{Stack, StackError};
use crate::value::Value;

/// A PostgreSQL connection: host and port (values or outputs of other nodes), user, database,
/// password as a secret reference, TLS, and the node it belongs to.
#[derive(Debug, Clone)]
pub struct PgConn {
    fields: serde_json::Map<String, Value>,
}

/// How a database the plan does not own is reached: a table under `[values]`.
///
/// ```toml
/// [values.source]
/// host = "pg-main.corp.example"
/// port = 5432
/// user = "migrator"
/// dbname = "app"
/// sslmode = "verify-full"             # optional: disable, require, verify-full
/// sslrootcert = "certs/corp-ca.pem"   # optional: the CAs verify-full trusts
/// server_host = "10.20.0.5"           # optional: the address the target server dials
/// server_port = 5432
/// ```
/// Its password is the secret `<key>_password` under `[secrets]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct External {
    host: String,
    port: u16,
    user: String,
    dbname: String,
    #[serde(default)]
    sslmode: Option<String>,
    #[serde(default)]
    sslrootcert: Option<String>,
    #[serde(default)]
    server_host: Option<String>,
    #[serde(default)]
    server_port: Option<u16>,
    /// The stack table of the primary this server is a streaming standby of (a reviewer's note;
    /// `plan emulate` makes its stand-in a standby of that one's).
    #[serde(default)]
    standby_of: Option<String>,
}

impl PgConn {
    /// A connection to `host:port` (either may be another node's output).
    pub fn to(host: impl Into<Value>, port: impl Into<Value>) -> PgConn {
        let mut fields = serde_json::Map::new();
        fields.insert("host".into(), host.into());
        fields.insert("port".into(), port.into());
        PgConn { fields }
    }

    fn set(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.fields.insert(k.into(), v.into());
        self
    }

    /// The database user.
    pub fn user(self, user: impl Into<Value>) -> Self {
        self.set("user", user)
    }

    /// A database node's connection: its `endpoint` and `port` outputs, `user` with `password`
    /// (a secret reference), named after `node` for `[connect]`.
    pub fn of_database(
        node: &str,
        endpoint: Output<String>,
        port: Output<u64>,
        user: &str,
        password: Output<String>,
    ) -> PgConn {
        PgConn::to(endpoint, port)
            .user(user)
            .password(password)
            .of_node(node)
    }

    /// The host (a value, or another node's output).
    pub fn host(&self) -> Value {
        self.fields.get("host").cloned().unwrap_or(Value::Null)
    }

    /// The port and user when they are values (a stack table's), for another tool's endpoint (a
    /// DMS endpoint); 5432 and `postgres` when they are not known yet.
    pub fn port_and_user(&self) -> (u16, String) {
        (
            self.fields
                .get("port")
                .and_then(Value::as_u64)
                .map(|p| p as u16)
                .unwrap_or(5432),
            self.fields
                .get("user")
                .and_then(Value::as_str)
                .unwrap_or("postgres")
                .to_string(),
        )
    }

    /// The user's password: a secret reference (`stack.secret(..)`, a managed master secret).
    pub fn password(self, secret: Output<String>) -> Self {
        self.set("password", secret)
    }

    /// The database to connect to.
    pub fn dbname(self, name: &str) -> Self {
        self.set("dbname", name)
    }

    /// IAM database authentication instead of a password: each session's password is a token
    /// the stack's provider signs (RDS: 15 minutes, TLS required). For this machine's sessions
    /// only: a subscription keeps its connection string, so a connection a server dials (the
    /// source of a replication, the target of a reverse replication) needs a password.
    pub fn iam_auth(mut self) -> Self {
        self.fields.remove("password");
        self.set("auth", "iam")
    }

    /// The same server and credentials, another database.
    pub fn database(&self, name: &str) -> PgConn {
        self.clone().dbname(name)
    }

    /// TLS with the certificate chain and host name verified against `ca_bundle` (for RDS its
    /// global bundle, `global-bundle.pem`).
    pub fn verify_full(self, ca_bundle: &str) -> Self {
        self.set("sslmode", "verify-full")
            .set("sslrootcert", ca_bundle)
    }

    /// TLS without verifying the server (libpq's `require`).
    pub fn require_tls(self) -> Self {
        self.set("sslmode", "require")
    }

    /// The plan's node this database belongs to: its name is the `[connect]` key that sends
    /// this machine elsewhere.
    pub fn of_node(self, node: &str) -> Self {
        self.set("node", node)
    }

    /// The address another server dials to reach this database (the target's subscription to
    /// the source), when it is not `host:port`.
    pub fn server_address(self, host: &str, port: u16) -> Self {
        self.set("server_host", host)
            .set("server_port", port as u64)
    }

    /// A database the plan does not own, from the stack table `[values.<key>]` (host, port,
    /// user, dbname, optional sslmode, sslrootcert, server_host, server_port) and the secret
    /// `<key>_password`. Its `[connect]` key is `key`.
    pub fn from_stack(stack: &Stack, key: &str) -> Result<PgConn, StackError> {
        let e: External = stack.get_checked(key, |e: &External| match &e.standby_of {
            Some(p) if p == key => Err(format!(
                "`{key}` cannot be a standby of itself: name the stack table of its primary (e.g. \"source\")"
            )),
            _ => Ok(()),
        })?;
        let mut c = PgConn::to(e.host.as_str(), e.port as u64)
            .user(e.user.as_str())
            .dbname(&e.dbname)
            .of_node(key)
            .password(stack.secret(&format!("{key}_password"))?);
        if let Some(m) = e.sslmode {
            c = c.set("sslmode", m);
        }
        if let Some(r) = e.sslrootcert {
            c = c.set("sslrootcert", r);
        }
        if let Some(h) = e.server_host {
            c = c.server_address(&h, e.server_port.unwrap_or(e.port));
        }
        Ok(c)
    }
}

impl From<PgConn> for Value {
    fn from(c: PgConn) -> Value {
        Value::Object(c.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_stack_table_becomes_a_connection_with_a_secret_password() {
        let s = Stack::parse(
            "t",
            Path::new("stacks/t.toml"),
            "plan = \"p\"\nprovider = \"aws\"\n[values.source]\nhost = \"pg.corp.example\"\nport = 5432\nuser = \"migrator\"\ndbname = \"app\"\nsslmode = \"verify-full\"\n[secrets]\nsource_password = \"env:SRC_PW\"\n",
        )
        .unwrap();
        let v: Value = PgConn::from_stack(&s, "source").unwrap().into();
        assert_eq!(v["host"], "pg.corp.example");
        assert_eq!(v["port"], 5432);
        assert_eq!(v["node"], "source");
        assert_eq!(v["sslmode"], "verify-full");
        assert_eq!(v["password"], serde_json::json!({"$secret": "env:SRC_PW"}));
        s.check_unused().unwrap();
        let t = crate::pg::Target::from_value(&v).unwrap();
        assert_eq!(t.user, "migrator");
        assert_eq!(t.node.as_deref(), Some("source"));
    }

    #[test]
    fn a_misspelled_key_in_the_table_names_the_line() {
        let s = Stack::parse(
            "t",
            Path::new("stacks/t.toml"),
            "plan = \"p\"\nprovider = \"aws\"\n[values.source]\nhost = \"h\"\nport = 5432\nuser = \"u\"\ndbname = \"d\"\nsslmod = \"require\"\n",
        )
        .unwrap();
        let e = PgConn::from_stack(&s, "source").unwrap_err().to_string();
        assert!(e.contains("stacks/t.toml") && e.contains("sslmod"), "{e}");
    }
}
