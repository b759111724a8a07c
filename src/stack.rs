//! Stack files (`stacks/<name>.toml`): which plan, which provider, where state lives, limits,
//! typed values and secret references, with errors that name the file, the line and the key.
//!
//! A stack file never holds a secret value, only where to find it (`env:NAME`); this module must
//! never read a secret's value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Spanned;

/// A problem with a stack file. Every variant names the file; most name a line and a key.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("unknown stack `{name}`: no file {path}. Stacks here: {available}. Create the file or pick one of those.")]
    NotFound {
        name: String,
        path: String,
        available: String,
    },
    #[error("`{name}` is not a stack name: a stack is a file stacks/NAME.toml, and NAME uses only letters, digits, `-`, `_` and `.` (no path). Run `plan list` for the stacks here.")]
    BadName { name: String },
    #[error("{path}:{line}: `state_dir = \"{value}\"` {why}; name a directory of the stack's own, e.g. `.cutover/{stack}` (the default when the key is absent).")]
    StateDir {
        path: String,
        line: usize,
        value: String,
        why: String,
        stack: String,
    },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: missing key `{key}` in [values]: plan `{plan}` needs it ({expected}). Add `{key} = ...` under [values].")]
    Missing {
        path: String,
        key: String,
        plan: String,
        expected: String,
    },
    #[error("{path}:{line}: key `{key}` has the wrong type: expected {expected}, found {found} ({detail}). Change the value on that line.")]
    WrongType {
        path: String,
        line: usize,
        key: String,
        expected: String,
        found: String,
        detail: String,
    },
    #[error("{path}: {}", unknown_lines(.unknown, .known))]
    Unknown {
        path: String,
        unknown: Vec<(usize, String)>,
        known: Vec<String>,
    },
    #[error("{path}:{line}: secret `{key}`: {message}")]
    Secret {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

fn unknown_lines(unknown: &[(usize, String)], known: &[String]) -> String {
    let mut s = String::new();
    for (i, (line, key)) in unknown.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&format!("line {line}: unknown key `{key}`"));
    }
    if known.is_empty() {
        s.push_str(". The plan reads no keys here: remove these lines.");
    } else {
        s.push_str(&format!(
            ". The plan reads: {}. Fix the spelling or remove the line.",
            known.join(", ")
        ));
    }
    s
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStack {
    plan: Spanned<String>,
    provider: Spanned<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    profile: Option<String>,
    /// Whether modifications of databases apply now rather than in the maintenance window
    /// (a node's own `.apply_immediately(..)` wins).
    #[serde(default)]
    apply_immediately: bool,
    state_dir: Option<String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    values: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Where this machine dials a database instead of its own address (a tunnel's end): a
    /// database node's name, or a host name, mapped to `HOST:PORT`.
    #[serde(default)]
    connect: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Whether the databases' servers (a subscription) dial the `[connect]` addresses too: true
    /// when every server runs where the addresses lead (the emulation).
    #[serde(default)]
    connect_servers: bool,
}

/// Concurrency limits: a global one and one per service (for example `rds`, `route53`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_global")]
    pub global: usize,
    #[serde(default)]
    pub services: BTreeMap<String, usize>,
}

fn default_global() -> usize {
    32
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            global: default_global(),
            services: BTreeMap::new(),
        }
    }
}

/// The providers a stack may name.
pub const PROVIDERS: &[&str] = &["local", "aws"];

/// A parsed stack file. Values are read by the plan with [`Stack::get`]; after the plan is built,
/// [`Stack::check_unused`] reports keys the plan never read (usually a typo).
#[derive(Debug)]
pub struct Stack {
    pub name: String,
    /// The file, as given (relative to the project root when found there).
    pub path: PathBuf,
    pub plan: String,
    pub provider: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// The stack's apply-immediately choice for database modifications.
    pub apply_immediately: bool,
    pub state_dir: Option<String>,
    pub limits: Limits,
    /// `[connect]`: a database node's name or a host name -> the `HOST:PORT` this machine dials
    /// instead (an SSH or SSM tunnel to a private database). TLS still verifies the database's
    /// own name.
    pub connect: BTreeMap<String, String>,
    /// Whether servers dial the `[connect]` addresses too.
    pub connect_servers: bool,
    source: String,
    values: BTreeMap<String, (usize, toml::Value)>,
    secrets: BTreeMap<String, (usize, String)>,
    read: Mutex<BTreeSet<String>>,
}

/// Whether `name` is a plain name (a stack, a node): letters, digits, `-`, `_`, `.`, not only dots.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.chars().all(|c| c == '.')
}

/// Splits a `[connect]` address, `HOST:PORT` (an IPv6 address in brackets), checking both parts.
pub fn parse_dial(address: &str) -> Result<(String, u16), String> {
    let fix =
        "write the address to dial as HOST:PORT, e.g. \"127.0.0.1:15432\" for a tunnel's local end";
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("no port; {fix}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("no host; {fix}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{port}` is not a TCP port; {fix}"))?;
    Ok((host.to_string(), port))
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::new();
    let mut word = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or(""));
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or(""));
    out
}

fn toml_type(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl Stack {
    /// Loads `stacks/<name>.toml` under `root`.
    pub fn load(root: &Path, name: &str) -> Result<Stack, StackError> {
        if !plain_name(name) {
            return Err(StackError::BadName { name: name.into() });
        }
        let rel = PathBuf::from("stacks").join(format!("{name}.toml"));
        let full = root.join(&rel);
        if !full.exists() {
            let available = Self::list(root);
            return Err(StackError::NotFound {
                name: name.into(),
                path: rel.display().to_string(),
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                },
            });
        }
        let source = std::fs::read_to_string(&full).map_err(|source| StackError::Io {
            path: rel.display().to_string(),
            source,
        })?;
        Self::parse(name, &rel, &source)
    }

    /// The stack names found under `root/stacks`, sorted.
    pub fn list(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join("stacks"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
            })
            .collect();
        names.sort();
        names
    }

    /// Parses a stack file's text; `path` is used in messages.
    pub fn parse(name: &str, path: &Path, source: &str) -> Result<Stack, StackError> {
        let p = path.display().to_string();
        let raw: RawStack = toml::from_str(source).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let line = line_of(source, offset);
            let column = offset - source[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            let message = e.message().trim().replace('\n', " ");
            let hint = if message.contains("unknown field") {
                " Remove the key or fix its spelling; values for the plan go under [values]."
            } else {
                ""
            };
            StackError::Parse {
                path: p.clone(),
                line,
                column,
                message: format!("{message}.{hint}"),
            }
        })?;
        if !PROVIDERS.contains(&raw.provider.get_ref().as_str()) {
            let line = line_of(source, raw.provider.span().start);
            return Err(StackError::Parse {
                path: p,
                line,
                column: 1,
                message: format!(
                    "unknown provider `{}`; use one of: {}.",
                    raw.provider.get_ref(),
                    PROVIDERS.join(", ")
                ),
            });
        }
        let mut secrets = BTreeMap::new();
        for (k, v) in raw.secrets {
            let line = line_of(source, k.span().start);
            let key = k.into_inner();
            let reference = v.into_inner();
            if !reference.starts_with("env:") && !reference.starts_with("arn:aws:secretsmanager:") {
                return Err(StackError::Secret {
                    path: p,
                    line,
                    key,
                    message: "the value is not a secret reference (it is not repeated here in case it is the secret itself); write `env:NAME` (an environment variable) or a Secrets Manager ARN (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`, with `#KEY` for one key of a JSON secret), and keep the secret out of the file".into(),
                });
            }
            secrets.insert(key, (line, reference));
        }
        if let Some(d) = &raw.state_dir {
            let trimmed = d.trim().trim_end_matches('/');
            let why = if trimmed.is_empty() || trimmed == "." {
                Some("is the project root")
            } else if trimmed == "stacks" || trimmed.starts_with("stacks/") {
                Some("is inside stacks/")
            } else {
                None
            };
            if let Some(why) = why {
                let line = source
                    .lines()
                    .position(|l| l.trim_start().starts_with("state_dir"))
                    .map(|i| i + 1)
                    .unwrap_or(1);
                return Err(StackError::StateDir {
                    path: p,
                    line,
                    value: d.clone(),
                    why: why.into(),
                    stack: name.into(),
                });
            }
        }
        let mut connect = BTreeMap::new();
        for (k, v) in raw.connect {
            let line = line_of(source, k.span().start);
            let key = k.into_inner();
            let address = v.into_inner();
            if let Err(message) = parse_dial(&address) {
                return Err(StackError::Parse {
                    path: p,
                    line,
                    column: 1,
                    message: format!("[connect] `{key}` = \"{address}\": {message}"),
                });
            }
            connect.insert(key, address);
        }
        Ok(Stack {
            name: name.into(),
            path: path.to_path_buf(),
            plan: raw.plan.into_inner(),
            provider: raw.provider.into_inner(),
            region: raw.region,
            endpoint_url: raw.endpoint_url,
            profile: raw.profile,
            apply_immediately: raw.apply_immediately,
            state_dir: raw.state_dir,
            limits: raw.limits,
            connect,
            connect_servers: raw.connect_servers,
            values: raw
                .values
                .into_iter()
                .map(|(k, v)| {
                    let line = line_of(source, k.span().start);
                    (k.into_inner(), (line, v.into_inner()))
                })
                .collect(),
            secrets,
            source: source.into(),
            read: Mutex::new(BTreeSet::new()),
        })
    }

    fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// A typed value from `[values]`; an error names the file, line and key when it is missing or
    /// of another type.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, StackError> {
        self.read.lock().unwrap().insert(key.to_string());
        let Some((line, v)) = self.values.get(key) else {
            return Err(StackError::Missing {
                path: self.path_str(),
                key: key.into(),
                plan: self.plan.clone(),
                expected: short_type_name::<T>(),
            });
        };
        v.clone()
            .try_into::<T>()
            .map_err(|e| StackError::WrongType {
                path: self.path_str(),
                line: *line,
                key: key.into(),
                expected: short_type_name::<T>(),
                found: toml_type(v).into(),
                detail: e.message().trim().to_string(),
            })
    }

    /// A typed value, or `default` when the key is absent (a present key of the wrong type is
    /// still an error).
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, StackError> {
        if self.values.contains_key(key) {
            self.get(key)
        } else {
            self.read.lock().unwrap().insert(key.to_string());
            Ok(default)
        }
    }

    /// A secret reference from `[secrets]`, as a value for a node's input. The value itself is
    /// read only by a provider at call time.
    pub fn secret(&self, key: &str) -> Result<crate::dsl::Output<String>, StackError> {
        self.read.lock().unwrap().insert(format!("secrets.{key}"));
        match self.secrets.get(key) {
            Some((_, r)) => Ok(crate::dsl::Output::from_value(crate::value::secret(r))),
            None => Err(StackError::Missing {
                path: self.path_str(),
                key: format!("secrets.{key}"),
                plan: self.plan.clone(),
                expected: "a secret reference such as \"env:NAME\"".into(),
            }),
        }
    }

    /// Every `[secrets]` entry as (key, line, reference).
    pub fn secret_refs(&self) -> Vec<(String, usize, String)> {
        self.secrets
            .iter()
            .map(|(k, (l, r))| (k.clone(), *l, r.clone()))
            .collect()
    }

    /// Reports keys under [values] and [secrets] that the plan never read.
    pub fn check_unused(&self) -> Result<(), StackError> {
        let read = self.read.lock().unwrap();
        let mut unknown: Vec<(usize, String)> = self
            .values
            .iter()
            .filter(|(k, _)| !read.contains(*k))
            .map(|(k, (l, _))| (*l, k.clone()))
            .chain(
                self.secrets
                    .iter()
                    .filter(|(k, _)| !read.contains(&format!("secrets.{k}")))
                    .map(|(k, (l, _))| (*l, format!("secrets.{k}"))),
            )
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort();
        Err(StackError::Unknown {
            path: self.path_str(),
            unknown,
            known: read.iter().cloned().collect(),
        })
    }

    /// The stack file's text (for fingerprints).
    pub fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Stack, StackError> {
        Stack::parse("t", Path::new("stacks/t.toml"), src)
    }

    #[test]
    fn typed_values_and_errors_name_line_and_key() {
        let s =
            parse("plan = \"demo\"\nprovider = \"local\"\n[values]\nreaders = 2\nname = \"x\"\n")
                .unwrap();
        assert_eq!(s.get::<u32>("readers").unwrap(), 2);
        let e = s.get::<u32>("name").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "stacks/t.toml:5: key `name` has the wrong type: expected u32, found a string"
            ),
            "{e}"
        );
        let e = s.get::<String>("absent").unwrap_err().to_string();
        assert!(e.contains("missing key `absent`"), "{e}");
    }

    #[test]
    fn unknown_top_level_key_names_line() {
        let e = parse("plan = \"demo\"\nprovider = \"local\"\nregoin = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("stacks/t.toml:3:1: unknown field `regoin`"),
            "{e}"
        );
    }

    #[test]
    fn unread_values_are_reported() {
        let s =
            parse("plan = \"demo\"\nprovider = \"local\"\n[values]\nreaders = 2\nreaderz = 3\n")
                .unwrap();
        s.get::<u32>("readers").unwrap();
        let e = s.check_unused().unwrap_err().to_string();
        assert_eq!(e, "stacks/t.toml: line 5: unknown key `readerz`. The plan reads: readers. Fix the spelling or remove the line.");
    }

    #[test]
    fn connect_addresses_are_checked_with_their_line() {
        let s = parse("plan = \"d\"\nprovider = \"aws\"\n[connect]\ntarget = \"127.0.0.1:15432\"\n\"db.corp.example\" = \"[::1]:6000\"\n").unwrap();
        assert_eq!(s.connect["target"], "127.0.0.1:15432");
        assert_eq!(parse_dial("[::1]:6000").unwrap(), ("::1".to_string(), 6000));
        let e = parse("plan = \"d\"\nprovider = \"aws\"\n[connect]\ntarget = \"127.0.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("stacks/t.toml:4:1: [connect] `target` = \"127.0.0.1\": no port"),
            "{e}"
        );
        let e = parse("plan = \"d\"\nprovider = \"aws\"\n[connect]\ntarget = \"h:99999\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`99999` is not a TCP port"), "{e}");
    }

    #[test]
    fn secret_values_are_refused() {
        let e = parse("plan = \"d\"\nprovider = \"local\"\n[secrets]\npw = \"hunter2\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stacks/t.toml:4: secret `pw`"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "the error must not repeat a secret: {e}"
        );
    }
}
