//! A stack's state kept in S3 (`state = "s3://BUCKET/PREFIX"` or a `[state]` table): the engine's
//! remote store over PutObject with `If-None-Match: *` (create only if absent) and `If-Match`
//! (replace or delete only while unchanged), ListObjectsV2 and GetObject, with the credentials of
//! the standard chain. Objects are encrypted with the stack's KMS key when it names one.
//!
//! The engine's state calls are synchronous (a commit must be durable before the call it
//! announces), so the SDK runs on a runtime of its own. This module must never report a
//! conditional write's refusal as a success, nor create the bucket: a bucket is the user's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use super::Aws;
use crate::stack::{Stack, StateSpec};
use crate::state::{Object, RemoteStore};

/// The fields a `[state]` table takes.
const FIELDS: &[&str] = &[
    "url",
    "bucket",
    "prefix",
    "region",
    "kms_key",
    "endpoint_url",
    "profile",
];

/// The state of one stack in one bucket, under one prefix.
pub struct S3State {
    bucket: String,
    prefix: String,
    kms_key: Option<String>,
    stack_file: String,
    stack: String,
    aws: Arc<Aws>,
    client: OnceLock<Result<aws_sdk_s3::Client, String>>,
    rt: Option<tokio::runtime::Runtime>,
    /// Requests made, by operation, for the run's summary.
    requests: Mutex<BTreeMap<&'static str, u64>>,
}

impl S3State {
    /// Reads the stack's `state` settings; an error names the file, the line and the fix.
    /// `base` is the stack's AWS, whose region, endpoint and profile a field of the table
    /// overrides.
    pub fn from_spec(spec: &StateSpec, stack: &Stack, base: &Aws) -> Result<S3State, String> {
        let file = stack.path.display().to_string();
        for (k, (line, _)) in &spec.fields {
            if !FIELDS.contains(&k.as_str()) {
                return Err(format!(
                    "{file}:{line}: [state] has no field `{k}`; it takes {}",
                    FIELDS.join(", ")
                ));
            }
        }
        let field = |k: &str| spec.fields.get(k).map(|(_, v)| v.trim().to_string());
        let (bucket, prefix) = match (field("url"), field("bucket")) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{file}:{}: [state] names both `url` and `bucket`; keep one",
                    spec.line
                ))
            }
            (Some(url), None) => {
                let line = spec.fields["url"].0;
                let rest = url.strip_prefix("s3://").ok_or_else(|| {
                    format!("{file}:{line}: `state = \"{url}\"` is not a remote state location this build serves; write `s3://BUCKET/PREFIX`")
                })?;
                let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
                (b.to_string(), (!p.is_empty()).then(|| p.to_string()))
            }
            (None, Some(b)) => (b, field("prefix")),
            (None, None) => {
                return Err(format!(
                    "{file}:{}: [state] names no bucket: write `state = \"s3://BUCKET/PREFIX\"`, or `bucket = \"...\"` in the table",
                    spec.line
                ))
            }
        };
        if field("url").is_some() && field("prefix").is_some() {
            return Err(format!(
                "{file}:{}: [state] names the prefix twice (in `url` and in `prefix`); keep one",
                spec.fields["prefix"].0
            ));
        }
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(format!(
                "{file}:{}: `{bucket}` is not an S3 bucket name (lowercase letters, digits, hyphens and dots)",
                spec.line
            ));
        }
        let prefix = prefix
            .unwrap_or_else(|| stack.name.clone())
            .trim_matches('/')
            .to_string();
        let aws = Arc::new(Aws {
            region: field("region").or_else(|| base.region.clone()),
            endpoint_url: field("endpoint_url").or_else(|| base.endpoint_url.clone()),
            profile: field("profile").or_else(|| base.profile.clone()),
            ..Aws::default()
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("state-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("the runtime for the remote state could not start: {e}"))?;
        Ok(S3State {
            bucket,
            prefix,
            kms_key: field("kms_key"),
            stack_file: file,
            stack: stack.name.clone(),
            aws,
            client: OnceLock::new(),
            rt: Some(rt),
            requests: Mutex::default(),
        })
    }

    fn count(&self, op: &'static str) {
        *self.requests.lock().unwrap().entry(op).or_default() += 1;
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// Runs `f` on this store's runtime and waits for it, from any thread (inside another
    /// runtime too).
    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt
            .as_ref()
            .expect("runtime until drop")
            .spawn(async move {
                let _ = tx.send(f.await);
            });
        rx.recv()
            .map_err(|_| "the remote state's runtime stopped".to_string())
    }

    /// The client, made once: credentials found (or a sentence saying they are not) first.
    fn client(&self) -> Result<aws_sdk_s3::Client, String> {
        self.client
            .get_or_init(|| {
                let aws = self.aws.clone();
                let file = self.stack_file.clone();
                let stack = self.stack.clone();
                let forced = aws.endpoint_url.is_some();
                self.run(async move {
                    use aws_sdk_s3::config::ProvideCredentials;
                    let conf = aws.config().await;
                    if conf.region().is_none() {
                        return Err(format!("no AWS region is set to reach the state of stack `{stack}`: set `region` in [state] or in {file} (or AWS_REGION); nothing was read or changed"));
                    }
                    let found = match conf.credentials_provider() {
                        Some(c) => tokio::time::timeout(Duration::from_secs(10), c.provide_credentials())
                            .await
                            .map_err(|_| "the credential chain did not answer within 10 s".to_string())
                            .and_then(|r| r.map(|_| ()).map_err(|e| {
                                // The chain's own account, first line, without its list of
                                // every provider it tried.
                                let s = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
                                let first = s.lines().next().unwrap_or(&s);
                                let first = first.split(". Attempted").next().unwrap_or(first);
                                first.split(" (").next().unwrap_or(first).trim_end_matches(':').to_string()
                            })),
                        None => Err("no credentials provider could be set up".into()),
                    };
                    if let Err(why) = found {
                        return Err(format!("no AWS credentials were found to read the state of stack `{stack}` ({why}): set `profile` in [state] or in {file}, AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; nothing was read or changed (a preview without the state would show everything as new)"));
                    }
                    Ok(aws_sdk_s3::Client::from_conf(
                        aws_sdk_s3::config::Builder::from(&conf)
                            // Emulators and private endpoints serve buckets by path.
                            .force_path_style(forced)
                            .interceptor(aws.retries())
                            .build(),
                    ))
                })?
            })
            .clone()
    }

    /// A failed request in a person's words: the object, the cause and the fix.
    fn explain<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        op: &str,
        name: &str,
        e: &SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> String {
        let at = name;
        match e {
            SdkError::ServiceError(s) => {
                let code = s.err().code().unwrap_or("");
                let message = s.err().message().unwrap_or("");
                match code {
                    "NoSuchBucket" => format!("{op} {at}: the bucket `{}` does not exist (or these credentials cannot see it): create it (versioning on, so an older state can be recovered) or fix `state` in {}", self.bucket, self.stack_file),
                    "AccessDenied" | "Forbidden" => format!("{op} {at}: access denied ({message}): these credentials need s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the bucket{}", if self.kms_key.is_some() { ", and kms:GenerateDataKey and kms:Decrypt on the key" } else { "" }),
                    _ => format!("{op} {at}: {code}: {message}"),
                }
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => format!(
                "{op} {at}: S3 could not be reached ({}); check the network, `region` and `endpoint_url`",
                aws_sdk_s3::error::DisplayErrorContext(e).to_string().split(" (").next().unwrap_or("no connection")
            ),
            _ => format!("{op} {at}: {}", aws_sdk_s3::error::DisplayErrorContext(e)),
        }
    }

    fn status<E>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
        e.raw_response().map(|r| r.status().as_u16())
    }

    /// A put with a condition: `Some(etag)` done, `None` refused by the condition.
    fn put(&self, name: &str, bytes: &[u8], cond: Cond) -> Result<Option<String>, String> {
        let client = self.client()?;
        self.count("PutObject");
        let mut req = client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .content_type(if name.ends_with(".json") {
                "application/json"
            } else {
                "text/plain"
            })
            .body(ByteStream::from(bytes.to_vec()));
        req = match &cond {
            Cond::Absent => req.if_none_match("*"),
            Cond::Unchanged(etag) => req.if_match(etag),
        };
        if let Some(k) = &self.kms_key {
            req = req
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        match self.run(req.send())? {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            // 412: the condition failed; 409: a conditional write raced another on this key;
            // 404 on a replace: the object is gone.
            Err(e) if matches!(S3State::status(&e), Some(412) | Some(409)) => Ok(None),
            Err(e) if matches!(cond, Cond::Unchanged(_)) && S3State::status(&e) == Some(404) => {
                Ok(None)
            }
            Err(e) => Err(self.explain("PutObject", name, &e)),
        }
    }
}

enum Cond {
    Absent,
    Unchanged(String),
}

impl Drop for S3State {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's task is not allowed; this lets it go.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl RemoteStore for S3State {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, String> {
        let client = self.client()?;
        self.count("ListObjectsV2");
        let (bucket, full) = (self.bucket.clone(), self.key(dir));
        let found = self.run(async move {
            let mut out = Vec::new();
            let mut pages = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(full)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page?;
                out.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(String::from)),
                );
            }
            Ok::<_, SdkError<_, _>>(out)
        })?;
        let base = self.key("");
        let mut names: Vec<String> = found
            .map_err(|e| self.explain("ListObjectsV2", dir, &e))?
            .into_iter()
            .map(|k| k.strip_prefix(&base).unwrap_or(&k).to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    fn get(&self, name: &str) -> Result<Option<Object>, String> {
        let client = self.client()?;
        self.count("GetObject");
        let req = client.get_object().bucket(&self.bucket).key(self.key(name));
        let got = self.run(async move {
            let out = req.send().await?;
            let etag = out.e_tag().unwrap_or_default().to_string();
            let bytes = out
                .body
                .collect()
                .await
                .map(|b| b.into_bytes().to_vec())
                .map_err(|e| e.to_string());
            Ok::<_, SdkError<_, _>>((etag, bytes))
        })?;
        match got {
            Ok((etag, Ok(bytes))) => Ok(Some(Object { bytes, etag })),
            Ok((_, Err(why))) => Err(format!(
                "GetObject {}/{name}: the body was cut off ({why}); run again",
                self.location()
            )),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self.explain("GetObject", name, &e)),
        }
    }

    fn create(&self, name: &str, bytes: &[u8]) -> Result<Option<String>, String> {
        self.put(name, bytes, Cond::Absent)
    }

    fn replace(&self, name: &str, bytes: &[u8], etag: &str) -> Result<Option<String>, String> {
        self.put(name, bytes, Cond::Unchanged(etag.to_string()))
    }

    fn delete(&self, name: &str, etag: Option<&str>) -> Result<bool, String> {
        let client = self.client()?;
        self.count("DeleteObject");
        let mut req = client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(name));
        if let Some(t) = etag {
            req = req.if_match(t);
        }
        match self.run(req.send())? {
            Ok(_) => Ok(true),
            Err(e) if S3State::status(&e) == Some(412) => Ok(false),
            // Already gone: what a delete wants.
            Err(e) if S3State::status(&e) == Some(404) => Ok(true),
            Err(e) => Err(self.explain("DeleteObject", name, &e)),
        }
    }

    fn delete_all(&self, names: &[String]) -> Result<(), String> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let client = self.client()?;
        // DeleteObjects takes at most 1,000 keys; in the order given, chunk by chunk.
        for chunk in names.chunks(1000) {
            self.count("DeleteObjects");
            let ids = chunk
                .iter()
                .map(|n| ObjectIdentifier::builder().key(self.key(n)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("DeleteObjects {}: {e}", self.location()))?;
            let del = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| format!("DeleteObjects {}: {e}", self.location()))?;
            let req = client.delete_objects().bucket(&self.bucket).delete(del);
            let out = self
                .run(req.send())?
                .map_err(|e| self.explain("DeleteObjects", &chunk[0], &e))?;
            if let Some(e) = out.errors().first() {
                return Err(format!(
                    "DeleteObjects {}/{}: {}: {} ({} of {} keys not deleted); run again",
                    self.location(),
                    e.key().unwrap_or_default(),
                    e.code().unwrap_or_default(),
                    e.message().unwrap_or_default(),
                    out.errors().len(),
                    chunk.len()
                ));
            }
        }
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        let m = self.requests.lock().unwrap();
        let n: u64 = m.values().sum();
        if n == 0 {
            return None;
        }
        let ops = m
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let retried = match self.aws.retries().total() {
            (0, _) => String::new(),
            (k, why) => {
                format!("; {k} retried by the SDK after throttling or transient errors ({why})")
            }
        };
        Some(format!(
            "state {}: {n} request{} ({ops}){retried}",
            self.location(),
            if n == 1 { "" } else { "s" }
        ))
    }
}
