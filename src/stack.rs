//! Stack files (`stacks/<name>.toml`): which plan, which provider, where state lives, limits,
//! typed values and secret references, with errors that name the file, the line and the key.
//!
//! The core reads the keys every stack has; the other top-level keys (`region = ...`) are the
//! stack's provider's settings, kept as written for the provider to read and check
//! ([`Stack::setting`], [`Stack::check_settings`]). A stack file never holds a secret value, only
//! where to find it (`env:NAME`, or a reference a provider's reader claims); this module must
//! never read a secret's value, and names no provider.

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
    #[error("{path}: cannot read it: {why}")]
    Io { path: String, why: String },
    #[error("{path} is empty. A stack file names its plan and provider, e.g.\n  plan = \"demo\"\n  provider = \"local\"\nand the plan's values under [values]; `plan list` shows the plans.")]
    Empty { path: String },
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
    #[error("{path}:{line}: key `{key}`: {message}. Change the value on that line.")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{path}:{line}: key `{key}`: an entry has {detail}. Change the value on that line.")]
    BadEntry {
        path: String,
        line: usize,
        key: String,
        detail: String,
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
    #[error("{path}:{line}:{column}: no `provider = ...`: name the provider this stack runs with{}.", offered_list(.offered))]
    NoProvider {
        path: String,
        line: usize,
        column: usize,
        /// The providers the binary offers (empty when not known yet).
        offered: Vec<String>,
    },
    #[error("{path}:{line}: secret `{key}`: {message}")]
    Secret {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

fn offered_list(offered: &[String]) -> String {
    match offered.first() {
        None => String::new(),
        Some(first) => format!(
            ", e.g. `provider = \"{first}\"` (this binary offers {})",
            offered.join(", ")
        ),
    }
}

/// The top-level keys the core reads; every other top-level key is a provider's setting.
pub const CORE_KEYS: &[&str] = &[
    "plan",
    "provider",
    "state_dir",
    "state",
    "limits",
    "values",
    "secrets",
    "connect",
    "connect_servers",
];

/// How many problems of one kind an error lists before it counts the rest.
const LISTED: usize = 5;

fn unknown_lines(unknown: &[(usize, String)], known: &[String]) -> String {
    let mut s = String::new();
    for (i, (line, key)) in unknown.iter().take(LISTED).enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&format!("line {line}: unknown key `{key}`"));
    }
    if unknown.len() > LISTED {
        s.push_str(&format!(
            "; and {} more unknown keys",
            unknown.len() - LISTED
        ));
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

/// The file as TOML: the core's keys, and the rest for the provider (see [`CORE_KEYS`]).
#[derive(Debug, Deserialize)]
struct RawStack {
    plan: Spanned<String>,
    provider: Spanned<String>,
    state_dir: Option<String>,
    /// Where a provider keeps the state: `"s3://BUCKET/PREFIX"` or a table of settings.
    state: Option<Spanned<toml::Value>>,
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
    /// Every other top-level key: the provider's settings.
    #[serde(flatten)]
    settings: BTreeMap<String, toml::Value>,
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

/// A stack's `state` key: a remote location as written (`state = "s3://BUCKET/PREFIX"` gives the
/// one field `url`; a `[state]` table gives its fields), for the provider that serves it.
#[derive(Debug, Clone)]
pub struct StateSpec {
    /// The key's line.
    pub line: usize,
    /// Field name -> (its line, its text).
    pub fields: BTreeMap<String, (usize, String)>,
}

/// A parsed stack file. Values are read by the plan with [`Stack::get`]; after the plan is built,
/// [`Stack::check_unused`] reports keys the plan never read (usually a typo).
#[derive(Debug)]
pub struct Stack {
    pub name: String,
    /// The file, as given (relative to the project root when found there).
    pub path: PathBuf,
    pub plan: String,
    pub provider: String,
    /// The line of `provider = ...`, for the error when no provider of that name is offered.
    pub provider_line: usize,
    /// The line of `plan = ...`, for the error when no plan of that name is offered.
    pub plan_line: usize,
    pub state_dir: Option<String>,
    /// `state = ...`: a remote state location, for the provider that serves it to read.
    pub state: Option<StateSpec>,
    pub limits: Limits,
    /// `[connect]`: a database node's name or a host name -> the `HOST:PORT` this machine dials
    /// instead (an SSH or SSM tunnel to a private database). TLS still verifies the database's
    /// own name.
    pub connect: BTreeMap<String, String>,
    /// Whether servers dial the `[connect]` addresses too.
    pub connect_servers: bool,
    source: String,
    values: BTreeMap<String, (usize, toml::Value)>,
    /// The top-level keys the core does not read, with their lines: the provider's settings.
    settings: BTreeMap<String, (usize, toml::Value)>,
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

/// Where each line of a text starts, so that finding the line of an offset costs a binary
/// search, not a scan from the start (a file with many keys parses in time linear in its size).
struct Lines(Vec<usize>);

impl Lines {
    fn new(source: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }

    /// The 1-based line of `offset`.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&s| s <= offset)
    }

    /// The 1-based (line, column) of `offset`, the column counted in characters.
    fn position(&self, source: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(source.len());
        let line = self.line(offset);
        let start = self.0[line - 1];
        let column = source
            .get(start..offset)
            .map(|t| t.chars().count())
            .unwrap_or(offset - start);
        (line, column + 1)
    }
}

/// A duplicate key's message: the key, and the line that set it first when it can be found.
fn duplicate(source: &str, lines: &Lines, span: std::ops::Range<usize>) -> String {
    let key = source
        .get(span.clone())
        .unwrap_or("")
        .trim()
        .trim_matches(|c| c == '[' || c == ']' || c == '"')
        .to_string();
    let here = lines.line(span.start);
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let defines = |l: &str| {
        let l = l.trim_start();
        let l = l.strip_prefix('"').unwrap_or(l);
        l.strip_prefix(key.as_str())
            .is_some_and(|r| r.trim_start().starts_with('=') || r.starts_with('"'))
    };
    let header = |l: &str| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .is_some_and(|t| t.trim() == key)
    };
    let before: Vec<&str> = source.lines().take(here - 1).collect();
    let dup_line = source.lines().nth(here - 1).unwrap_or("");
    let first = if is_header(dup_line) {
        before.iter().position(|l| header(l))
    } else {
        // Within the same table: back to the last header before this line.
        let table_start = before
            .iter()
            .rposition(|l| is_header(l))
            .map_or(0, |i| i + 1);
        before[table_start..]
            .iter()
            .position(|l| defines(l))
            .map(|i| i + table_start)
    };
    let what = if is_header(dup_line) { "table" } else { "key" };
    match first {
        Some(i) => format!(
            "duplicate {what} `{key}`: line {} sets it already. Keep one of the two.",
            i + 1
        ),
        None => format!("duplicate {what} `{key}`: it is set earlier in the file. Keep one."),
    }
}

/// The line of the top-level key `key`: its `key = ...` before the first table, or its `[key]`
/// header (1 when neither is found).
fn top_level_line(source: &str, key: &str) -> usize {
    let sets = |l: &str| {
        let l = l.trim_start();
        let l = l.strip_prefix('"').unwrap_or(l);
        l.strip_prefix(key).is_some_and(|r| {
            let r = r.strip_prefix('"').unwrap_or(r).trim_start();
            r.starts_with('=') || r.starts_with('.')
        })
    };
    let header = |l: &str| {
        let t = l.trim().trim_start_matches('[').trim_end_matches(']');
        l.trim_start().starts_with('[') && (t == key || t.starts_with(&format!("{key}.")))
    };
    let mut in_table = false;
    for (i, l) in source.lines().enumerate() {
        if l.trim_start().starts_with('[') {
            in_table = true;
            if header(l) {
                return i + 1;
            }
        } else if !in_table && sets(l) {
            return i + 1;
        }
    }
    1
}

/// Why bytes that are not UTF-8 text cannot be a stack file, with the line and column of the
/// first bad byte.
fn not_text(path: &str, bytes: &[u8], e: std::str::Utf8Error) -> StackError {
    let at = e.valid_up_to();
    let good = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
    let (line, column) = Lines::new(good).position(good, at);
    StackError::Parse {
        path: path.into(),
        line,
        column,
        message: format!(
            "byte 0x{:02x} is not UTF-8 text; a stack file is TOML, which is UTF-8: save the file as UTF-8 (a Latin-1 `é` is one such byte)",
            bytes[at]
        ),
    }
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
        let path = rel.display().to_string();
        let bytes = std::fs::read(&full).map_err(|e| StackError::Io {
            path: path.clone(),
            why: crate::io_error::explain(&e, "a stack file"),
        })?;
        let source = std::str::from_utf8(&bytes).map_err(|e| not_text(&path, &bytes, e))?;
        Self::parse(name, &rel, source)
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
        if source
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err(StackError::Empty { path: p });
        }
        let lines = Lines::new(source);
        let line_of = |_: &str, offset: usize| lines.line(offset);
        let raw: RawStack = toml::from_str(source).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = lines.position(source, span.start);
            let message = e.message().trim().replace('\n', " ");
            if message == "missing field `provider`" {
                return StackError::NoProvider {
                    path: p.clone(),
                    line,
                    column,
                    offered: Vec::new(),
                };
            }
            let message = if message == "duplicate key" {
                duplicate(source, &lines, span)
            } else if message.contains("unknown field") {
                format!("{message}. Remove the key or fix its spelling; values for the plan go under [values].")
            } else if message == "missing field `plan`" {
                "no `plan = \"NAME\"`: name the plan this stack runs (`plan list` shows them).".into()
            } else {
                format!("{message}.")
            };
            StackError::Parse {
                path: p.clone(),
                line,
                column,
                message,
            }
        })?;
        let provider_line = line_of(source, raw.provider.span().start);
        let plan_line = line_of(source, raw.plan.span().start);
        let mut secrets = BTreeMap::new();
        for (k, v) in raw.secrets {
            let line = line_of(source, k.span().start);
            let key = k.into_inner();
            let reference = v.into_inner();
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
                let line = top_level_line(source, "state_dir");
                return Err(StackError::StateDir {
                    path: p,
                    line,
                    value: d.clone(),
                    why: why.into(),
                    stack: name.into(),
                });
            }
        }
        let state = match raw.state {
            None => None,
            Some(v) => {
                let line = line_of(source, v.span().start);
                let mut fields = BTreeMap::new();
                match v.into_inner() {
                    toml::Value::String(u) => {
                        fields.insert("url".to_string(), (line, u));
                    }
                    toml::Value::Table(t) => {
                        for (k, v) in t {
                            let Some(text) = v.as_str() else {
                                return Err(StackError::Parse {
                                    path: p,
                                    line,
                                    column: 1,
                                    message: format!("[state] `{k}` must be a string (in quotes)"),
                                });
                            };
                            let at = source
                                .lines()
                                .enumerate()
                                .skip(line.saturating_sub(1))
                                .find(|(_, l)| {
                                    l.trim_start().strip_prefix(k.as_str()).is_some_and(|r| {
                                        r.trim_start().starts_with('=')
                                    })
                                })
                                .map(|(i, _)| i + 1)
                                .unwrap_or(line);
                            fields.insert(k, (at, text.to_string()));
                        }
                    }
                    _ => {
                        return Err(StackError::Parse {
                            path: p,
                            line,
                            column: 1,
                            message: "`state` names where the state is kept remotely: a location in quotes (`state = \"SCHEME://...\"`), or a `[state]` table of the settings the stack's provider takes for it".into(),
                        })
                    }
                }
                Some(StateSpec { line, fields })
            }
        };
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
            provider_line,
            plan_line,
            state_dir: raw.state_dir,
            state,
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
            settings: raw
                .settings
                .into_iter()
                .map(|(k, v)| (top_level_line(source, &k), (k, v)))
                .map(|(line, (k, v))| (k, (line, v)))
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
        v.clone().try_into::<T>().map_err(|e| {
            let detail = e.message().trim().to_string();
            // A list of tables (or a table) whose entry lacks a field or has an unknown one:
            // the shape is right, an entry is not; the Rust type would only confuse.
            if detail.starts_with("missing field") || detail.starts_with("unknown field") {
                StackError::BadEntry {
                    path: self.path_str(),
                    line: *line,
                    key: key.into(),
                    detail: detail.replacen("missing field", "no field", 1),
                }
            } else {
                StackError::WrongType {
                    path: self.path_str(),
                    line: *line,
                    key: key.into(),
                    expected: short_type_name::<T>(),
                    found: toml_type(v).into(),
                    detail,
                }
            }
        })
    }

    /// A typed value that `check` accepts; its refusal names the key's line.
    pub fn get_checked<T: DeserializeOwned>(
        &self,
        key: &str,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<T, StackError> {
        let v: T = self.get(key)?;
        check(&v).map_err(|message| StackError::Invalid {
            path: self.path_str(),
            line: self.values.get(key).map(|(l, _)| *l).unwrap_or(0),
            key: key.into(),
            message,
        })?;
        Ok(v)
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

    /// The reference of a secret of `[secrets]` (`env:NAME`, an ARN), never its value; a plan
    /// takes it as an input with `stack.secret(key)` (in `dsl`).
    pub fn secret_reference(&self, key: &str) -> Result<String, StackError> {
        self.read.lock().unwrap().insert(format!("secrets.{key}"));
        match self.secrets.get(key) {
            Some((_, r)) => Ok(r.clone()),
            None => Err(StackError::Missing {
                path: self.path_str(),
                key: format!("secrets.{key}"),
                plan: self.plan.clone(),
                expected: "a secret reference such as \"env:NAME\"".into(),
            }),
        }
    }

    /// The `[values]` keys whose value is `v` (an integer or a string), as "FILE:LINE `KEY`":
    /// where a person changes a value the plan passed on.
    pub fn keys_with_value(&self, v: &crate::value::Value) -> Vec<String> {
        self.values
            .iter()
            .filter(|(_, (_, t))| match (t, v) {
                (toml::Value::Integer(a), v) => v.as_i64() == Some(*a),
                (toml::Value::String(a), v) => v.as_str() == Some(a.as_str()),
                _ => false,
            })
            .map(|(k, (line, _))| format!("{}:{line} `{k}`", self.path_str()))
            .collect()
    }

    /// Every `[secrets]` entry as (key, line, reference).
    pub fn secret_refs(&self) -> Vec<(String, usize, String)> {
        self.secrets
            .iter()
            .map(|(k, (l, r))| (k.clone(), *l, r.clone()))
            .collect()
    }

    /// A provider's setting (a top-level key the core does not read), typed; `None` when absent.
    /// A value of another type is an error naming the line and the key.
    pub fn setting<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StackError> {
        let Some((line, v)) = self.settings.get(key) else {
            return Ok(None);
        };
        v.clone()
            .try_into::<T>()
            .map(Some)
            .map_err(|e| StackError::WrongType {
                path: self.path_str(),
                line: *line,
                key: key.into(),
                expected: short_type_name::<T>(),
                found: toml_type(v).into(),
                detail: e.message().trim().to_string(),
            })
    }

    /// A provider's setting that `check` accepts; its refusal quotes the line as written
    /// (`` `region = "x"`: why ``).
    pub fn setting_checked<T: DeserializeOwned>(
        &self,
        key: &str,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<Option<T>, StackError> {
        let Some(v) = self.setting::<T>(key)? else {
            return Ok(None);
        };
        check(&v).map_err(|why| {
            let (line, raw) = &self.settings[key];
            StackError::Parse {
                path: self.path_str(),
                line: *line,
                column: 1,
                message: format!("`{key} = {raw}`: {why}"),
            }
        })?;
        Ok(Some(v))
    }

    /// Refuses a top-level key that neither the core nor the stack's provider (`keys`) reads,
    /// naming its line and the keys there are.
    pub fn check_settings(&self, keys: &[&str]) -> Result<(), StackError> {
        let Some((key, (line, _))) = self
            .settings
            .iter()
            .filter(|(k, _)| !keys.contains(&k.as_str()))
            .min_by_key(|(_, (line, _))| *line)
        else {
            return Ok(());
        };
        let quoted = |ks: &[&str]| {
            ks.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let theirs = if keys.is_empty() {
            String::new()
        } else {
            format!(", or provider `{}`'s {}", self.provider, quoted(keys))
        };
        Err(StackError::Parse {
            path: self.path_str(),
            line: *line,
            column: 1,
            message: format!(
                "unknown field `{key}`, expected one of {}{theirs}. Remove the key or fix its spelling; values for the plan go under [values].",
                quoted(CORE_KEYS)
            ),
        })
    }

    /// Refuses a `[secrets]` entry that is neither `env:NAME` nor a reference one of the
    /// provider's readers claims, without repeating it (it may be the secret itself); `forms`
    /// describes the references the readers take, for the fix.
    pub fn check_secret_references(
        &self,
        claimed: &dyn Fn(&str) -> bool,
        forms: &[String],
    ) -> Result<(), StackError> {
        let Some((key, (line, _))) = self
            .secrets
            .iter()
            .find(|(_, (_, r))| !r.starts_with("env:") && !claimed(r))
        else {
            return Ok(());
        };
        let others: String = forms.iter().map(|f| format!(" or {f}")).collect();
        Err(StackError::Secret {
            path: self.path_str(),
            line: *line,
            key: key.clone(),
            message: format!("the value is not a secret reference (it is not repeated here in case it is the secret itself); write `env:NAME` (an environment variable){others}, and keep the secret out of the file"),
        })
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
    fn an_entry_without_a_field_names_the_field_not_the_rust_type() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Entry {
            name: String,
            size: u64,
        }
        let s = parse(
            "plan = \"d\"\nprovider = \"local\"\n[values]\nlist = [{ name = \"a\", size = 1 }, { name = \"b\" }]\nodd = [{ name = \"c\", size = 2, colour = \"red\" }]\n",
        )
        .unwrap();
        let e = s.get::<Vec<Entry>>("list").unwrap_err().to_string();
        assert_eq!(
            e,
            "stacks/t.toml:4: key `list`: an entry has no field `size`. Change the value on that line."
        );
        let e = s.get::<Vec<Entry>>("odd").unwrap_err().to_string();
        assert!(
            e.starts_with("stacks/t.toml:5: key `odd`: an entry has unknown field `colour`"),
            "{e}"
        );
    }

    #[test]
    fn other_top_level_keys_are_the_providers_and_the_rest_are_refused_at_their_line() {
        let s = parse("plan = \"demo\"\nprovider = \"local\"\nregion = \"eu-west-1\"\nregoin = \"x\"\n[values]\nregoin = 1\n")
            .unwrap();
        assert_eq!(
            s.setting::<String>("region").unwrap().as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(s.setting::<String>("profile").unwrap(), None);
        s.check_settings(&["region", "regoin"]).unwrap();
        let e = s.check_settings(&["region"]).unwrap_err().to_string();
        assert!(
            e.starts_with("stacks/t.toml:4:1: unknown field `regoin`, expected one of `plan`, "),
            "{e}"
        );
        assert!(e.contains("or provider `local`'s `region`."), "{e}");
        let e = s.setting::<bool>("region").unwrap_err().to_string();
        assert!(
            e.starts_with("stacks/t.toml:3: key `region` has the wrong type"),
            "{e}"
        );
        let e = s
            .setting_checked::<String>("region", |_| Err("no such region".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "stacks/t.toml:3:1: `region = \"eu-west-1\"`: no such region"
        );
        let e = parse("plan = \"demo\"\n").unwrap_err().to_string();
        assert!(e.contains("no `provider = ...`"), "{e}");
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
        let s = parse("plan = \"d\"\nprovider = \"local\"\n[secrets]\nok = \"env:PW\"\nother = \"vault:x\"\npw = \"hunter2\"\n")
            .unwrap();
        let vault = |r: &str| r.starts_with("vault:");
        let e = s
            .check_secret_references(&vault, &["a vault path (`vault:PATH`)".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("or a vault path (`vault:PATH`), and keep"),
            "{e}"
        );
        assert!(e.contains("stacks/t.toml:6: secret `pw`"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "the error must not repeat a secret: {e}"
        );
    }

    #[test]
    fn many_unknown_keys_list_the_first_few_and_a_count() {
        let mut src = String::from("plan = \"demo\"\nprovider = \"local\"\n[values]\n");
        for i in 0..20_000 {
            src.push_str(&format!("key{i:05} = {i}\n"));
        }
        let s = parse(&src).unwrap();
        let e = s.check_unused().unwrap_err().to_string();
        assert!(
            e.starts_with(
                "stacks/t.toml: line 4: unknown key `key00000`; line 5: unknown key `key00001`;"
            ),
            "{}",
            &e[..200]
        );
        assert!(e.contains("; and 19995 more unknown keys."), "{e}");
        assert!(e.len() < 400, "{e}");
        let lines = Lines::new(&src);
        assert_eq!(lines.line(0), 1);
        assert_eq!(lines.line(src.len() - 1), 20_003);
        let t = "ab\ncé d";
        assert_eq!(Lines::new(t).position(t, 6), (2, 3));
    }

    #[test]
    fn duplicates_empty_files_and_bytes_that_are_not_text_name_the_line() {
        let e = parse("plan = \"d\"\nprovider = \"local\"\n[values]\na = 1\nb = 2\na = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("stacks/t.toml:6:1: duplicate key `a`: line 4 sets it already."),
            "{e}"
        );
        let e = parse("# only a comment\n\n").unwrap_err().to_string();
        assert!(e.starts_with("stacks/t.toml is empty."), "{e}");
        let bytes: &[u8] = &[b"plan = \"d\"\n# caf".as_slice(), &[0xe9, b'\n']].concat();
        let e = not_text(
            "stacks/t.toml",
            bytes,
            std::str::from_utf8(bytes).unwrap_err(),
        )
        .to_string();
        assert!(
            e.starts_with("stacks/t.toml:2:6: byte 0xe9 is not UTF-8 text"),
            "{e}"
        );
    }
}
