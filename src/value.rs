//! Values that flow between nodes: literals, references to another node's outputs that resolve
//! only at apply time, string concatenations of both, and secret references.
//!
//! A value is JSON with three reserved object forms: `{"$ref": "node.output"}`,
//! `{"$concat": [..]}` and `{"$secret": "env:NAME"}`. This module must never reveal a secret
//! except through [`reveal_secrets`], which providers call at the moment of a call and whose result
//! must never be stored, rendered or logged.

use std::collections::{BTreeMap, BTreeSet};

pub use serde_json::Value;

/// Inputs or outputs of a node, by attribute name, in a stable order.
pub type Attrs = BTreeMap<String, Value>;

const REF: &str = "$ref";
const CONCAT: &str = "$concat";
const SECRET: &str = "$secret";

/// A reference to `node.output`.
pub fn reference(node: &str, output: &str) -> Value {
    serde_json::json!({ REF: format!("{node}.{output}") })
}

/// A string built from parts that may be references.
pub fn concat(parts: Vec<Value>) -> Value {
    serde_json::json!({ CONCAT: parts })
}

/// A secret reference such as `env:PGPASSWORD`.
pub fn secret(reference: &str) -> Value {
    serde_json::json!({ SECRET: reference })
}

fn single_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get(key),
        _ => None,
    }
}

/// `Some(("node", "output"))` when the value is a reference.
pub fn as_ref(v: &Value) -> Option<(&str, &str)> {
    single_key(v, REF)
        .and_then(Value::as_str)
        .and_then(|s| s.split_once('.'))
}

/// `Some("env:NAME")` when the value is a secret reference.
pub fn as_secret(v: &Value) -> Option<&str> {
    single_key(v, SECRET).and_then(Value::as_str)
}

/// Every node this value refers to, added to `out`.
pub fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    if let Some((node, _)) = as_ref(v) {
        out.insert(node.to_string());
        return;
    }
    match v {
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Whether any part of the value is still a reference (unknown until apply).
pub fn has_refs(v: &Value) -> bool {
    let mut s = BTreeSet::new();
    collect_refs(v, &mut s);
    !s.is_empty()
}

/// Replaces every reference whose node has known outputs; leaves the others in place. A
/// concatenation whose parts are all known becomes a string. Secrets are left as references.
pub fn resolve(v: &Value, lookup: &dyn Fn(&str, &str) -> Option<Value>) -> Value {
    if let Some((node, output)) = as_ref(v) {
        return lookup(node, output).unwrap_or_else(|| v.clone());
    }
    if let Some(Value::Array(parts)) = single_key(v, CONCAT) {
        let parts: Vec<Value> = parts.iter().map(|p| resolve(p, lookup)).collect();
        if parts.iter().all(|p| !has_refs(p) && as_secret(p).is_none()) {
            let mut s = String::new();
            for p in &parts {
                match p {
                    Value::String(x) => s.push_str(x),
                    Value::Null => {}
                    other => s.push_str(&other.to_string()),
                }
            }
            return Value::String(s);
        }
        return concat(parts);
    }
    match v {
        Value::Array(a) => Value::Array(a.iter().map(|x| resolve(x, lookup)).collect()),
        Value::Object(m) if as_secret(v).is_none() => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), resolve(x, lookup)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Resolves every attribute.
pub fn resolve_attrs(a: &Attrs, lookup: &dyn Fn(&str, &str) -> Option<Value>) -> Attrs {
    a.iter()
        .map(|(k, v)| (k.clone(), resolve(v, lookup)))
        .collect()
}

/// Where secrets come from. Implementations read the environment (and, in the AWS provider,
/// Secrets Manager).
pub trait SecretSource: Send + Sync {
    /// The value of a reference such as `env:NAME`, or an error naming the reference and the fix.
    fn reveal(&self, reference: &str) -> Result<String, String>;
}

/// Secrets from environment variables: `env:NAME`.
#[derive(Debug, Default, Clone)]
pub struct EnvSecrets;

impl SecretSource for EnvSecrets {
    fn reveal(&self, reference: &str) -> Result<String, String> {
        match reference.split_once(':') {
            Some(("env", name)) => std::env::var(name).map_err(|_| {
                format!("secret {reference}: environment variable {name} is not set; export it before running")
            }),
            _ => Err(format!(
                "secret {reference}: unknown secret source; use env:NAME"
            )),
        }
    }
}

/// Replaces secret references by their values, for the moment of a provider call only.
pub fn reveal_secrets(v: &Value, source: &dyn SecretSource) -> Result<Value, String> {
    if let Some(r) = as_secret(v) {
        return source.reveal(r).map(Value::String);
    }
    Ok(match v {
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| reveal_secrets(x, source))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), reveal_secrets(x, source)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// [`reveal_secrets`] over every attribute.
pub fn reveal_attrs(a: &Attrs, source: &dyn SecretSource) -> Result<Attrs, String> {
    a.iter()
        .map(|(k, v)| Ok((k.clone(), reveal_secrets(v, source)?)))
        .collect()
}

/// How a value reads in a preview: references as `(known after apply)`, secrets as
/// `(secret env:NAME)`, the rest as JSON.
pub fn display(v: &Value) -> String {
    if has_refs(v) {
        return "(known after apply)".into();
    }
    if let Some(r) = as_secret(v) {
        return format!("(secret {r})");
    }
    v.to_string()
}

/// A typed view of an attribute, for providers reading their inputs.
pub fn get_str<'a>(a: &'a Attrs, key: &str) -> Option<&'a str> {
    a.get(key).and_then(Value::as_str)
}

/// The strings of an array value (others skipped; none when it is not an array).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A typed view of an integer attribute.
pub fn get_u64(a: &Attrs, key: &str) -> Option<u64> {
    a.get(key).and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolve_replaces_known_refs_and_keeps_unknown() {
        let v = json!({"a": reference("x", "path"), "b": reference("y", "id")});
        let r = resolve(&v, &|n, o| {
            (n == "x" && o == "path").then(|| json!("/tmp/x"))
        });
        assert_eq!(r["a"], json!("/tmp/x"));
        assert_eq!(as_ref(&r["b"]), Some(("y", "id")));
    }

    #[test]
    fn concat_becomes_string_once_known() {
        let v = concat(vec![reference("d", "path"), json!("/f.txt")]);
        let r = resolve(&v, &|_, _| Some(json!("/out")));
        assert_eq!(r, json!("/out/f.txt"));
        let r = resolve(&v, &|_, _| None);
        assert!(has_refs(&r));
        assert_eq!(display(&r), "(known after apply)");
    }

    #[test]
    fn secrets_stay_references_until_revealed() {
        let v = json!({"password": secret("env:CUTOVER_TEST_SECRET_X")});
        let r = resolve(&v, &|_, _| None);
        assert_eq!(r, v);
        assert_eq!(
            display(&r["password"]),
            "(secret env:CUTOVER_TEST_SECRET_X)"
        );
        let err = reveal_secrets(&v, &EnvSecrets).unwrap_err();
        assert!(err.contains("CUTOVER_TEST_SECRET_X is not set"), "{err}");
    }
}
