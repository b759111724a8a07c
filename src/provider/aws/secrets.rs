//! Secrets Manager reads for secret references (`arn:aws:secretsmanager:...[#KEY]`): one
//! `GetSecretValue` per secret, with the stack's credentials and endpoint and the ARN's region.
//!
//! It must never put a value into an error, a log line or a return other than the map it fills.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_config::Region;

use super::Aws;
use crate::secrets::{pick, split_reference, SecretReader};
use crate::stack::Stack;

/// Whether `reference` names a Secrets Manager secret.
pub fn is_secrets_manager(reference: &str) -> bool {
    reference.starts_with("arn:aws:secretsmanager:")
}

/// The reader of a stack's Secrets Manager references, through the provider's clients (so that
/// what its SDK retried is in the run's summary).
pub struct SecretsManager(pub Arc<Aws>);

#[async_trait]
impl SecretReader for SecretsManager {
    fn claims(&self, reference: &str) -> bool {
        is_secrets_manager(reference)
    }
    fn form(&self) -> &'static str {
        "a Secrets Manager ARN (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`, with `#KEY` for one key of a JSON secret)"
    }
    async fn read(
        &self,
        stack: &Stack,
        wanted: &[(String, usize, String)],
    ) -> Result<BTreeMap<String, String>, String> {
        fetch(&self.0, stack, wanted).await
    }
}

/// The values of `wanted` (key, line, reference), by reference. Errors name the stack file's line,
/// the reference and the fix.
async fn fetch(
    aws: &Aws,
    stack: &Stack,
    wanted: &[(String, usize, String)],
) -> Result<BTreeMap<String, String>, String> {
    let base = aws.config().await;
    let mut out = BTreeMap::new();
    let mut secrets: BTreeMap<&str, String> = BTreeMap::new();
    for (key, line, reference) in wanted {
        let at = format!("{}:{line}: secrets.{key}", stack.path.display());
        let (arn, json_key) = split_reference(reference);
        let region = arn.split(':').nth(3).filter(|r| !r.is_empty()).ok_or_else(|| {
            format!("{at}: `{reference}` is not a Secrets Manager ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)")
        })?;
        if !secrets.contains_key(arn) {
            let client = aws_sdk_secretsmanager::Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(&base)
                    .region(Region::new(region.to_string()))
                    .interceptor(aws.retries())
                    .build(),
            );
            let v = client
                .get_secret_value()
                .secret_id(arn)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "{at}: {}; check the ARN and that these credentials may call secretsmanager:GetSecretValue on it",
                        super::sdk_err(&format!("read secret {arn}"), e)
                    )
                })?;
            let s = v.secret_string().map(String::from).ok_or_else(|| {
                format!("{at}: secret {arn} holds binary data; store the value as a secret string")
            })?;
            secrets.insert(arn, s);
        }
        let value = pick(reference, &secrets[arn], json_key).map_err(|e| format!("{at}: {e}"))?;
        out.insert(reference.clone(), value);
    }
    Ok(out)
}
