//! The `aws` provider: clients built once per stack from its region, profile and endpoint (or the
//! standard `AWS_ENDPOINT_URL`), with the SDK's standard retry mode and operation timeouts; the tags
//! every object we create carries; and error messages that keep the service's own words.
//!
//! It must never adopt or change an existing object that lacks our tags: the error says how to adopt
//! it with `plan import`.

pub mod autoscaling;
pub mod cluster;
pub mod dms;
pub mod driver;
pub mod instance;
pub mod monitoring;
pub mod network;
pub mod ops;
pub mod rds;
pub mod route53;
pub mod secrets;
pub mod settings;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use tokio::sync::OnceCell;

use super::{ProviderError, Registry};
use crate::stack::Stack;

/// Counts every request attempt that was a retry, by the HTTP status of the attempt before it, so
/// that throttling and transient server errors the SDK absorbed are reported, not hidden.
#[derive(Debug, Clone, Default)]
pub struct Retries(Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>);

/// The HTTP status of an operation's previous attempt (kept in the operation's config bag).
#[derive(Debug, Clone)]
struct PreviousAttempt(String);

impl aws_smithy_types::config_bag::Storable for PreviousAttempt {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for Retries {
    fn name(&self) -> &'static str {
        "cutover-retries"
    }

    fn read_before_attempt(
        &self,
        _ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let Some(PreviousAttempt(why)) = cfg.load::<PreviousAttempt>() {
            let why = why.clone();
            *self.0.lock().unwrap().entry(why).or_default() += 1;
        }
        Ok(())
    }

    fn read_after_attempt(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<
            '_,
        >,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let why = match ctx.response() {
            Some(r) => format!("HTTP {}", r.status().as_u16()),
            None => "no response".to_string(),
        };
        cfg.interceptor_state().store_put(PreviousAttempt(why));
        Ok(())
    }
}

impl Retries {
    /// How many attempts were retries, and after what (`HTTP 503: 2, ...`).
    pub fn total(&self) -> (u64, String) {
        let m = self.0.lock().unwrap();
        let why = m
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        (m.values().sum(), why)
    }

    /// `None` when nothing was retried; else one line: how many, and after what.
    pub fn summary(&self) -> Option<String> {
        let (n, why) = self.total();
        (n > 0).then(|| {
            format!(
                "AWS: {n} request{} retried by the SDK after throttling or transient errors ({why})",
                if n == 1 { " was" } else { "s were" },
            )
        })
    }
}

/// A client getter: made once from the stack's configuration, with the retry counter.
macro_rules! client {
    ($(#[$doc:meta])* $name:ident, $krate:ident) => {
        $(#[$doc])*
        pub async fn $name(&self) -> &$krate::Client {
            self.$name
                .get_or_init(|| async {
                    $krate::Client::from_conf(
                        $krate::config::Builder::from(&self.config().await)
                            .interceptor(self.retries.clone())
                            .build(),
                    )
                })
                .await
        }
    };
}

/// Where the stack's AWS is, and its clients once made.
#[derive(Default)]
pub struct Aws {
    retries: Retries,
    pub(crate) region: Option<String>,
    /// The stack's apply-immediately choice, for nodes that do not make their own.
    pub(crate) apply_immediately: bool,
    endpoint_url: Option<String>,
    profile: Option<String>,
    rds: OnceCell<aws_sdk_rds::Client>,
    autoscaling: OnceCell<aws_sdk_applicationautoscaling::Client>,
    route53: OnceCell<aws_sdk_route53::Client>,
    sns: OnceCell<aws_sdk_sns::Client>,
    cloudwatch: OnceCell<aws_sdk_cloudwatch::Client>,
    ec2: OnceCell<aws_sdk_ec2::Client>,
    dms: OnceCell<aws_sdk_databasemigration::Client>,
    /// The account and region the access check found (STS GetCallerIdentity, the SDK's chain).
    reached: std::sync::OnceLock<(Option<String>, String)>,
}

impl Aws {
    /// The ARN of `resource` (`subgrp:NAME`) of `service` in this stack's account and region,
    /// for APIs that answer with a name only. The account is the access check's, or asked of STS.
    pub async fn arn(&self, service: &str, resource: &str) -> Result<String, ProviderError> {
        let (account, region) = match self.reached.get() {
            Some((Some(a), r)) => (a.clone(), r.clone()),
            _ => {
                let conf = self.config().await;
                let region = conf.region().map(|r| r.to_string()).unwrap_or_default();
                let out = aws_sdk_sts::Client::new(&conf)
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| sdk_err("find the account (STS GetCallerIdentity)", e))?;
                let account = out.account().unwrap_or_default().to_string();
                let _ = self.reached.set((Some(account.clone()), region.clone()));
                (account, region)
            }
        };
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        Ok(format!(
            "arn:{partition}:{service}:{region}:{account}:{resource}"
        ))
    }

    /// Where this stack's objects live: `account=…, region=…, endpoint=…` (`endpoint=aws` for
    /// AWS's own). The account is known once the access check ran; before it (a preview) only
    /// region and endpoint are said, from the stack file or the environment.
    pub fn location(&self) -> Option<String> {
        let endpoint = self
            .endpoint_url
            .clone()
            .or_else(|| {
                std::env::var("AWS_ENDPOINT_URL")
                    .ok()
                    .filter(|e| !e.is_empty())
            })
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| "aws".into());
        let (account, region) = match self.reached.get() {
            Some((a, r)) => (a.clone(), Some(r.clone())),
            None => (
                None,
                self.region.clone().or_else(|| {
                    ["AWS_REGION", "AWS_DEFAULT_REGION"]
                        .iter()
                        .find_map(|k| std::env::var(k).ok().filter(|r| !r.is_empty()))
                }),
            ),
        };
        let mut parts = Vec::new();
        if let Some(a) = account {
            parts.push(format!("account={a}"));
        }
        if let Some(r) = region {
            parts.push(format!("region={r}"));
        }
        parts.push(format!("endpoint={endpoint}"));
        Some(parts.join(", "))
    }

    /// The stack's AWS, from its `region`, `endpoint_url`, `profile` and `apply_immediately`
    /// (an error names the line of a bad one).
    pub fn from_stack(stack: &Stack) -> Result<Arc<Aws>, crate::stack::StackError> {
        Ok(Arc::new(Aws::from_settings(&settings::Settings::read(
            stack,
        )?)))
    }

    pub(crate) fn from_settings(s: &settings::Settings) -> Aws {
        Aws {
            region: s.region.clone(),
            apply_immediately: s.apply_immediately,
            endpoint_url: s.endpoint_url.clone(),
            profile: s.profile.clone(),
            ..Aws::default()
        }
    }

    /// An `Aws` whose RDS client is given (tests that replay or capture requests).
    pub fn with_rds(client: aws_sdk_rds::Client) -> Arc<Aws> {
        Arc::new(Aws {
            rds: OnceCell::new_with(Some(client)),
            ..Aws::default()
        })
    }

    /// Sets the account and region as an access check would have found them (tests).
    #[cfg(test)]
    pub(crate) fn reached_at(&self, account: &str, region: &str) {
        let _ = self.reached.set((Some(account.into()), region.into()));
    }

    /// An `Aws` whose DMS client is given (tests that replay or capture requests).
    pub fn with_dms(client: aws_sdk_databasemigration::Client) -> Arc<Aws> {
        Arc::new(Aws {
            dms: OnceCell::new_with(Some(client)),
            ..Aws::default()
        })
    }

    pub(crate) async fn config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(6))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(120))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(r) = &self.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &self.endpoint_url {
            loader = loader.endpoint_url(e);
        }
        loader.load().await
    }

    /// Before anything is recorded: the credentials the SDK's chain finds (profile, environment,
    /// instance or task role) and a region, or an error saying which stack key or variable to set.
    pub async fn check_access(&self, stack_file: &str) -> Result<(), String> {
        use aws_sdk_rds::config::ProvideCredentials;
        let conf = self.config().await;
        if conf.region().is_none() {
            return Err(format!(
                "{stack_file}: no AWS region: set `region = \"...\"` in the stack file (or AWS_REGION)"
            ));
        }
        let Some(creds) = conf.credentials_provider() else {
            return Err(format!(
                "{stack_file}: no AWS credentials provider could be set up"
            ));
        };
        let found =
            tokio::time::timeout(Duration::from_secs(10), creds.provide_credentials()).await;
        let why = match found {
            Ok(Ok(_)) => return self.check_endpoint(&conf, stack_file).await,
            Ok(Err(e)) => {
                // The chain's own account, without the SDK's debug dump.
                let s = aws_sdk_rds::error::DisplayErrorContext(&e).to_string();
                s.split(" (").next().unwrap_or(&s).to_string()
            }
            Err(_) => "the credential chain did not answer within 10 s".to_string(),
        };
        Err(format!(
            "{stack_file}: no AWS credentials for this stack ({why}): set `profile = \"...\"` in the stack file or AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance or task role is available; nothing was changed"
        ))
    }

    /// One quick call with no retries (STS GetCallerIdentity, 5 s): an endpoint that refuses
    /// connections or never answers is named at once, with the stack key that sets it, instead
    /// of after the SDK's retries of the first real call. Any answer, even an error, means the
    /// endpoint is there; refused credentials are named too.
    async fn check_endpoint(
        &self,
        conf: &aws_config::SdkConfig,
        stack_file: &str,
    ) -> Result<(), String> {
        use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(conf)
                .retry_config(RetryConfig::disabled())
                .timeout_config(
                    TimeoutConfig::builder()
                        .operation_timeout(Duration::from_secs(5))
                        .build(),
                )
                .build(),
        );
        let at = match &self.endpoint_url {
            Some(e) => format!("the endpoint {e} (`endpoint_url` in {stack_file})"),
            None => format!(
                "AWS in region {} (`region` in {stack_file})",
                conf.region().map(|r| r.to_string()).unwrap_or_default()
            ),
        };
        let region = conf.region().map(|r| r.to_string()).unwrap_or_default();
        match sts.get_caller_identity().send().await {
            Ok(out) => {
                let _ = self
                    .reached
                    .set((out.account().map(String::from), region));
                Ok(())
            }
            Err(SdkError::DispatchFailure(d)) => Err(format!(
                "{at} cannot be reached ({}): check the address and that it runs; nothing was changed",
                if d.is_timeout() {
                    "timed out"
                } else if d.is_io() {
                    "connection refused or reset"
                } else {
                    "no connection"
                }
            )),
            Err(SdkError::TimeoutError(_)) => Err(format!(
                "{at} did not answer within 5 s: check the address and the network; nothing was changed"
            )),
            Err(e) => {
                let refused = e
                    .as_service_error()
                    .and_then(|s| s.code().map(|c| (c.to_string(), s.message().unwrap_or("").to_string())))
                    .filter(|(c, _)| {
                        ["InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"]
                            .iter()
                            .any(|k| c.contains(k))
                    });
                match refused {
                    Some((code, message)) => Err(format!(
                        "{at} refused the credentials ({code}: {message}): renew or correct them (`profile` in {stack_file}, or the AWS_* variables); nothing was changed"
                    )),
                    // Any other answer: the endpoint is there (throttled, or an emulator's quirk).
                    None => {
                        let _ = self.reached.set((None, region));
                        Ok(())
                    }
                }
            }
        }
    }

    client!(
        /// The Application Auto Scaling client.
        autoscaling,
        aws_sdk_applicationautoscaling
    );

    /// The Route53 client (a global service: its region is us-east-1 whatever the stack's).
    pub async fn route53(&self) -> &aws_sdk_route53::Client {
        self.route53
            .get_or_init(|| async {
                let conf = aws_sdk_route53::config::Builder::from(&self.config().await)
                    .region(Region::new("us-east-1"))
                    .interceptor(self.retries.clone())
                    .build();
                aws_sdk_route53::Client::from_conf(conf)
            })
            .await
    }

    client!(
        /// The SNS client.
        sns,
        aws_sdk_sns
    );

    client!(
        /// The CloudWatch client.
        cloudwatch,
        aws_sdk_cloudwatch
    );

    client!(
        /// The EC2 client.
        ec2,
        aws_sdk_ec2
    );

    client!(
        /// The DMS client.
        dms,
        aws_sdk_databasemigration
    );

    /// What the SDK retried so far, for the run's summary.
    pub fn retries(&self) -> Retries {
        self.retries.clone()
    }

    client!(
        /// The RDS client.
        rds,
        aws_sdk_rds
    );
}

/// Registers the `aws` provider's types.
pub fn register(r: &mut Registry, aws: Arc<Aws>, stack_file: &str) {
    register_shared(r, aws.clone());
    let here = aws.clone();
    r.location("aws.", move || here.location());
    r.token_source(aws.clone());
    let (a, file) = (aws.clone(), stack_file.to_string());
    r.access_check(move || {
        let (a, file) = (a.clone(), file.clone());
        Box::pin(async move { a.check_access(&file).await })
    });
    rds::register(r, aws.clone());
    cluster::register(r, aws.clone());
    autoscaling::register(r, aws.clone());
    route53::register(r, aws.clone());
    monitoring::register(r, aws.clone());
    network::register(r, aws.clone());
    dms::register(r, aws.clone());
    ops::register(r, aws.clone());
    instance::register(r, aws);
}

impl super::TokenSource for Aws {
    fn token<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        user: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let conf = self.config().await;
            iam_token(&conf, host, port, user).await
        })
    }
}

/// An RDS IAM authentication token (a presigned `connect` URL, valid 15 minutes) for `user` at
/// `host:port`, signed with the configuration's credentials and region.
pub async fn iam_token(
    conf: &aws_config::SdkConfig,
    host: &str,
    port: u16,
    user: &str,
) -> Result<String, String> {
    use aws_sdk_rds::auth_token::{AuthTokenGenerator, Config};
    let c = Config::builder()
        .hostname(host)
        .port(port as u64)
        .username(user)
        .build()
        .map_err(|e| format!("IAM authentication token for {user}@{host}: {e}"))?;
    AuthTokenGenerator::new(c)
        .auth_token(conf)
        .await
        .map(|t| t.to_string())
        .map_err(|e| {
            format!("IAM authentication token for {user}@{host}:{port}: {e}; check the stack's AWS credentials")
        })
}

/// The tags naming plan, stack and node that every object we create carries.
pub fn tags(plan: &str, stack: &str, node: &str) -> Vec<(String, String)> {
    vec![
        ("cutover:plan".into(), plan.into()),
        ("cutover:stack".into(), stack.into()),
        ("cutover:node".into(), node.into()),
    ]
}

/// The name of the final snapshot a delete of `id` takes now (`ID-final-2026-12-03-14-20-00`).
pub(crate) fn final_snapshot_name(id: &str) -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', 'T', 'Z'], "-");
    format!("{id}-final-{}", stamp.trim_end_matches('-'))
}

/// The command that deletes snapshot `id` (a cluster's or an instance's), for the run's list of
/// what it kept.
pub(crate) fn delete_snapshot_command(cluster: bool, id: &str) -> String {
    if cluster {
        format!("aws rds delete-db-cluster-snapshot --db-cluster-snapshot-identifier {id}")
    } else {
        format!("aws rds delete-db-snapshot --db-snapshot-identifier {id}")
    }
}

/// The refusal to take over an existing object without our tags, with the command that adopts it
/// (`import_id` is what `plan import` takes: an ARN, an id or the name).
pub fn not_ours(
    ctx: &super::Ctx,
    what: &str,
    name: &str,
    node: &str,
    import_id: &str,
) -> ProviderError {
    ProviderError::refused(
        format!("{what} `{name}` exists and is not this plan's (no cutover tags)"),
        format!(
            "adopt it with `plan import {} {node} {import_id}`",
            ctx.stack
        ),
    )
}

/// Whether `found` are our tags for this node.
pub fn ours(found: &[(String, String)], plan: &str, stack: &str, node: &str) -> bool {
    tags(plan, stack, node).iter().all(|t| found.contains(t))
}

/// Tags as an output value (what `owned` reads back).
pub fn tags_value(tags: &[(String, String)]) -> crate::value::Value {
    crate::value::Value::Object(
        tags.iter()
            .map(|(k, v)| (k.clone(), crate::value::Value::from(v.clone())))
            .collect(),
    )
}

/// The AWS types with clients of no stack, for tests of what needs no call (validation, limits).
#[cfg(test)]
pub(crate) fn offline_registry() -> Registry {
    let mut r = Registry::new();
    register(&mut r, Arc::new(Aws::default()), "stacks/x.toml");
    r
}

/// What every stack may use of AWS, whatever its provider: the reader of Secrets Manager
/// references (its clients' retries reported like the provider's) and state kept in S3.
pub fn register_shared(r: &mut Registry, aws: Arc<Aws>) {
    let retries = aws.retries();
    r.summary(move || retries.summary());
    r.secret_reader(Arc::new(secrets::SecretsManager(aws.clone())));
    r.state_backend(super::StateBackend {
        form: "state = \"s3://BUCKET/PREFIX\"",
        open: Arc::new(move |spec, stack| {
            Ok(Arc::new(state::S3State::from_spec(spec, stack, &aws)?))
        }),
    });
}

/// What an instance with a `class` input is billed by the hour as: the class, and `Multi-AZ`
/// (a standby billed as much again) when the `multi_az` input says so.
pub fn billed_as(inputs: &crate::value::Attrs, class: &str, multi_az: &str) -> Option<String> {
    let class = crate::value::get_str(inputs, class)?;
    let multi = inputs.get(multi_az).and_then(|v| v.as_bool()) == Some(true);
    Some(format!("`{class}`{}", if multi { " Multi-AZ" } else { "" }))
}

/// Whether an observed object's `tags` output says this node created it.
pub fn owned_by_tags(ctx: &super::Ctx, node: &str, found: &super::Observed) -> bool {
    let tags: Vec<(String, String)> = found
        .outputs
        .get("tags")
        .and_then(crate::value::Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    ours(&tags, &ctx.plan, &ctx.stack, node)
}

/// An SDK error as the user needs it: the service's code and message when the service answered
/// (never the raw response), the SDK's own account otherwise (a timeout, a connection refused).
pub fn sdk_err<E, R>(what: &str, e: aws_sdk_rds::error::SdkError<E, R>) -> ProviderError
where
    E: std::error::Error + aws_sdk_rds::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if let Some(s) = e.as_service_error() {
        if let Some(code) = s.code() {
            return ProviderError::new(format!(
                "{what}: {code}: {}",
                s.message().unwrap_or("(no message)")
            ));
        }
    }
    ProviderError::new(format!("{what}: {}", error_words(&e)))
}

/// An error and its causes in their own words (`Display`), each once, joined with ": ": never
/// the `Debug` dump the SDK's error context appends.
pub fn error_words(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod token_tests {
    #[tokio::test]
    async fn an_iam_token_is_a_presigned_connect_url_for_the_user() {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_rds::config::Credentials::new(
                "AKIDEXAMPLE",
                "secret-key-never-shown",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        let t = super::iam_token(
            &conf,
            "db.abc.eu-west-1.rds.amazonaws.com",
            5432,
            "app_user",
        )
        .await
        .unwrap();
        assert!(
            t.starts_with(
                "db.abc.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user&"
            ),
            "{t}"
        );
        assert!(
            t.contains("X-Amz-Signature=") && t.contains("X-Amz-Expires=900"),
            "{t}"
        );
        assert!(t.contains("eu-west-1%2Frds-db%2Faws4_request"), "{t}");
        assert!(!t.contains("secret-key-never-shown"), "{t}");
    }
}
