//! The secrets of one run: `env:NAME` references read from the environment when a call needs
//! them; every other reference (a Secrets Manager ARN) read once, before the first call that could
//! need it, by the provider's reader that claims it ([`SecretReader`], registered with the
//! provider's types), and held in memory for the run.
//!
//! This module must never write a secret's value anywhere: not to state, not to a log, not into an
//! error message (errors name the reference and the stack file's line, never the value). It names
//! no provider: readers plug in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::stack::Stack;
use crate::value::{EnvSecrets, SecretSource};

/// A provider's reader of the secret references it knows (`arn:aws:secretsmanager:...`).
#[async_trait]
pub trait SecretReader: Send + Sync {
    /// Whether this reader reads `reference`.
    fn claims(&self, reference: &str) -> bool;
    /// The references it reads, for a person writing one (`a Secrets Manager ARN (...)`).
    fn form(&self) -> &'static str;
    /// The values of `wanted` (key, line, reference), by reference. Errors name the stack file's
    /// line, the reference and the fix, never a value.
    async fn read(
        &self,
        stack: &Stack,
        wanted: &[(String, usize, String)],
    ) -> Result<BTreeMap<String, String>, String>;
}

/// A reference split into (the secret, the JSON key after `#`, if any).
pub fn split_reference(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once('#') {
        Some((secret, key)) => (secret, Some(key)),
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

/// Environment references as they are; the others from what their readers fetched.
#[derive(Default)]
pub struct RunSecrets {
    fetched: Mutex<BTreeMap<String, String>>,
}

impl RunSecrets {
    /// Checks that every environment reference of the stack is set (naming each one that is
    /// not, with its line), then has each of `readers` fetch the references it claims that are
    /// not fetched yet (each once per run): a run with a secret it cannot read stops before it
    /// records anything.
    pub async fn fetch(
        &self,
        stack: &Stack,
        readers: &[Arc<dyn SecretReader>],
    ) -> Result<(), String> {
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
        let pending: Vec<(String, usize, String)> = {
            let have = self.fetched.lock().unwrap();
            stack
                .secret_refs()
                .into_iter()
                .filter(|(_, _, r)| !r.starts_with("env:") && !have.contains_key(r))
                .collect()
        };
        for reader in readers {
            let wanted: Vec<(String, usize, String)> = pending
                .iter()
                .filter(|(_, _, r)| reader.claims(r))
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let values = reader.read(stack, &wanted).await?;
            self.fetched.lock().unwrap().extend(values);
        }
        let have = self.fetched.lock().unwrap();
        let unread: Vec<String> = pending
            .iter()
            .filter(|(_, _, r)| !have.contains_key(r))
            .map(|(key, line, r)| {
                format!(
                    "{}:{line}: secret `{key}`: no provider of this stack reads `{r}`; use `env:NAME`",
                    stack.path.display()
                )
            })
            .collect();
        if unread.is_empty() {
            Ok(())
        } else {
            Err(unread.join("\n"))
        }
    }
}

impl SecretSource for RunSecrets {
    fn reveal(&self, reference: &str) -> Result<String, String> {
        if reference.starts_with("env:") {
            return EnvSecrets.reveal(reference);
        }
        self.fetched
            .lock()
            .unwrap()
            .get(reference)
            .cloned()
            .ok_or_else(|| format!("secret {reference}: not fetched for this command"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that knows one secret, and counts its calls.
    struct One(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl SecretReader for One {
        fn claims(&self, reference: &str) -> bool {
            reference.starts_with("arn:aws:secretsmanager:")
        }
        fn form(&self) -> &'static str {
            "an ARN"
        }
        async fn read(
            &self,
            _stack: &Stack,
            wanted: &[(String, usize, String)],
        ) -> Result<BTreeMap<String, String>, String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(wanted
                .iter()
                .map(|(_, _, r)| (r.clone(), "from-the-reader".to_string()))
                .collect())
        }
    }

    #[tokio::test]
    async fn references_are_read_once_by_the_reader_that_claims_them_and_refused_without_one() {
        let stack = Stack::parse(
            "t",
            std::path::Path::new("stacks/t.toml"),
            "plan = \"p\"\nprovider = \"local\"\n[secrets]\ndb = \"arn:aws:secretsmanager:us-east-1:1:secret:db\"\n",
        )
        .unwrap();
        let r = "arn:aws:secretsmanager:us-east-1:1:secret:db";
        let run = RunSecrets::default();
        let e = run.fetch(&stack, &[]).await.unwrap_err();
        assert!(
            e.contains("stacks/t.toml:4: secret `db`: no provider of this stack reads"),
            "{e}"
        );
        let reader = Arc::new(One(Default::default()));
        let readers: Vec<Arc<dyn SecretReader>> = vec![reader.clone()];
        run.fetch(&stack, &readers).await.unwrap();
        run.fetch(&stack, &readers).await.unwrap();
        assert_eq!(
            reader.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "read once"
        );
        assert_eq!(run.reveal(r).unwrap(), "from-the-reader");
    }

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
