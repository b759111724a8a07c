//! The secrets of one run: `env:NAME` references read from the environment when a call needs
//! them, Secrets Manager references (`arn:aws:secretsmanager:...`, optionally `#KEY` for one key
//! of a JSON secret) fetched once, before the first call that could need them, and held in memory
//! for the run.
//!
//! This module must never write a secret's value anywhere: not to state, not to a log, not into an
//! error message (errors name the reference and the stack file's line, never the value).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::stack::Stack;
use crate::value::{EnvSecrets, SecretSource};

/// Whether `reference` names a Secrets Manager secret.
pub fn is_secrets_manager(reference: &str) -> bool {
    reference.starts_with("arn:aws:secretsmanager:")
}

/// A Secrets Manager reference split into (secret ARN, JSON key).
pub fn split_reference(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once('#') {
        Some((arn, key)) => (arn, Some(key)),
        None => (reference, None),
    }
}

/// The value of a fetched secret string for `key` (the whole string without one).
pub fn pick(reference: &str, secret: &str, key: Option<&str>) -> Result<String, String> {
    let Some(key) = key else {
        return Ok(secret.to_string());
    };
    let v: serde_json::Value = serde_json::from_str(secret).map_err(|_| {
        format!("secret {reference}: the secret is not a JSON object, so it has no key `{key}`; drop `#{key}`")
    })?;
    match v.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) if !other.is_null() => Ok(other.to_string()),
        _ => Err(format!(
            "secret {reference}: the JSON secret has no key `{key}`; its keys are {}",
            v.as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        )),
    }
}

/// Environment references as they are; Secrets Manager references from what was fetched.
#[derive(Default)]
pub struct RunSecrets {
    fetched: Mutex<BTreeMap<String, String>>,
}

impl RunSecrets {
    /// Checks that every environment reference of the stack is set (naming each one that is
    /// not, with its line), then fetches the Secrets Manager references not fetched yet (each
    /// once per run): a run with a secret it cannot read stops before it records anything.
    pub async fn fetch(&self, stack: &Stack) -> Result<(), String> {
        let unset: Vec<String> = stack
            .secret_refs()
            .into_iter()
            .filter_map(|(key, line, r)| {
                let name = r.strip_prefix("env:")?;
                let why = match std::env::var_os(name) {
                    None => "is not set",
                    Some(v) if v.is_empty() => "is set but empty",
                    Some(v) if v.to_str().is_none() => "is not UTF-8 text",
                    Some(_) => return None,
                };
                Some(format!(
                    "{}:{line}: secret `{key}`: environment variable {name} {why}; export it before running (nothing was changed)",
                    stack.path.display()
                ))
            })
            .collect();
        if !unset.is_empty() {
            return Err(unset.join("\n"));
        }
        let wanted: Vec<(String, usize, String)> = {
            let have = self.fetched.lock().unwrap();
            stack
                .secret_refs()
                .into_iter()
                .filter(|(_, _, r)| is_secrets_manager(r) && !have.contains_key(r))
                .collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let values = crate::provider::aws::secrets::fetch(stack, &wanted).await?;
        self.fetched.lock().unwrap().extend(values);
        Ok(())
    }
}

impl SecretSource for RunSecrets {
    fn reveal(&self, reference: &str) -> Result<String, String> {
        if is_secrets_manager(reference) {
            return self
                .fetched
                .lock()
                .unwrap()
                .get(reference)
                .cloned()
                .ok_or_else(|| {
                    format!("secret {reference}: not fetched from Secrets Manager for this command")
                });
        }
        EnvSecrets.reveal(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_are_picked_and_missing_ones_named_without_the_value() {
        let r = "arn:aws:secretsmanager:us-east-1:1:secret:db#password";
        let (arn, key) = split_reference(r);
        assert_eq!(arn, "arn:aws:secretsmanager:us-east-1:1:secret:db");
        assert_eq!(key, Some("password"));
        let doc = r#"{"username":"admin","password":"hunter2-x"}"#;
        assert_eq!(pick(r, doc, key).unwrap(), "hunter2-x");
        let e = pick(r, doc, Some("pass")).unwrap_err();
        assert!(
            e.contains("no key `pass`") && e.contains("username, password"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = pick(r, "plain-hunter2", Some("password")).unwrap_err();
        assert!(
            e.contains("not a JSON object") && !e.contains("hunter2"),
            "{e}"
        );
        assert_eq!(pick(r, "plain", None).unwrap(), "plain");
    }
}
