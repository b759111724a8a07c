//! One lifecycle for every AWS object. A type says only what is its own (describe, create,
//! modify, delete; which error codes mean "not found" and "already exists"; which statuses mean
//! ready and failed; how its objects prove they are ours) by implementing [`AwsObject`]; the
//! driver [`Driven`] turns that into the engine's resource contract once for every type:
//! look-up by the deterministic name, a create that survives the SDK's retry of a create AWS
//! already performed, the ownership check, waiting with progress (the one poller, [`poll`]),
//! resume after a crash, and a delete that counts "not found" as done.
//!
//! It must never adopt an object that is not ours: a tagged type's object without our tags is
//! refused with the `plan import` command, and a type whose objects cannot be tagged says so in
//! its [`Ownership`] (there is no default to forget). It must never make a second object when a
//! create is retried or resumed, and never wait without saying what for.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};

use super::{not_ours, owned_by_tags, sdk_err, tags};
use crate::provider::model::Model;
use crate::provider::{Ctx, Observed, ProviderError, Request, ResourceType, Review};
use crate::value::{as_secret, get_str, has_refs, Attrs};

/// An AWS call's failure, with the service's error code kept so that the driver can tell "not
/// found" and "already exists" apart by the codes a type declares.
#[derive(Debug)]
pub struct AwsError {
    pub code: Option<String>,
    pub error: ProviderError,
}

impl From<ProviderError> for AwsError {
    fn from(error: ProviderError) -> Self {
        AwsError { code: None, error }
    }
}

/// Where a caller wants a plain provider error (a step using a type's calls).
impl From<AwsError> for ProviderError {
    fn from(e: AwsError) -> Self {
        e.error
    }
}

impl AwsError {
    fn is(&self, codes: &[&str]) -> bool {
        self.code.as_deref().is_some_and(|c| codes.contains(&c))
    }
}

/// An SDK call's result with what it was doing named (`describe topic x`) and its code kept.
pub trait Call<T> {
    fn during(self, what: &str) -> Result<T, AwsError>;
}

impl<T, E, R> Call<T> for Result<T, SdkError<E, R>>
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn during(self, what: &str) -> Result<T, AwsError> {
        self.map_err(|e| AwsError {
            code: e.code().map(String::from),
            error: sdk_err(what, e),
        })
    }
}

/// Where an object stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Ready,
    /// Not usable yet; the status as the service words it (`creating`).
    Pending(String),
    /// It will not become ready (`failed`, `incompatible-parameters`).
    Failed(String),
}

impl Status {
    /// An RDS or DMS status: `available` is ready, one naming a failure or an incompatibility has
    /// failed, anything else is on its way.
    pub fn rds(s: &str) -> Status {
        if s == "available" {
            Status::Ready
        } else if s.contains("fail") || s.starts_with("incompatible-") {
            Status::Failed(s.into())
        } else {
            Status::Pending(s.into())
        }
    }
}

/// An object as its type describes it.
pub struct Found {
    /// What the engine records; `id` is the reference every later call uses, and the `tags`
    /// output (for a tagged type) what ownership is read from.
    pub observed: Observed,
    pub status: Status,
}

impl Found {
    /// An object that is usable as soon as it exists.
    pub fn ready(observed: Observed) -> Found {
        Found {
            observed,
            status: Status::Ready,
        }
    }
}

/// How a type's objects show that this plan's node made them.
pub enum Ownership {
    /// By our tags, read back by `describe` into the `tags` output: an object without them is
    /// never adopted.
    Tags,
    /// By a mark the type's `describe` reads back into this boolean output (a policy of the
    /// node's name on a scalable target): an object found where a create would make one is
    /// adopted only with it; one found by reconciliation after our own interrupted create is
    /// ours (the create may have stopped before the call that sets the mark).
    Mark(&'static str),
    /// The API cannot tag them: an object found where a create would make one is refused
    /// (the text says why that is safe to rely on); one found by reconciliation after our own
    /// interrupted create is ours.
    Untagged(&'static str),
}

/// Whether every input `found` shows is what `asked` declares (secrets aside): the object an
/// untagged type's create made, answered "already exists" when the SDK retried it.
fn as_asked(found: &Observed, asked: &Attrs) -> bool {
    !found.inputs.is_empty()
        && found.inputs.iter().all(|(k, v)| {
            asked
                .get(k)
                .is_none_or(|a| a == v || as_secret(a).is_some())
        })
}

/// Whether `found` carries the mark `key` of a [`Ownership::Mark`] type.
fn marked(found: &Observed, key: &str) -> bool {
    found.outputs.get(key).and_then(|v| v.as_bool()) == Some(true)
}

/// What one AWS resource type says about itself; [`Driven`] does the rest.
#[async_trait]
pub trait AwsObject: Send + Sync + 'static {
    const TYPE: &'static str;
    /// The API, for the per-service concurrency limit.
    const SERVICE: &'static str;
    /// What a person calls one (`SNS topic`), for messages.
    const WHAT: &'static str;
    const OWNERSHIP: Ownership;
    /// The type's inputs, read once the values are known (at create and update): what forces a
    /// replacement, what only a create uses and what is secret are declared on its fields.
    type Args: Model + Send + Sync;
    /// Error codes that mean the object does not exist.
    const NOT_FOUND: &'static [&'static str];
    /// Error codes a create answers when an object of that name exists.
    const EXISTS: &'static [&'static str] = &[];
    /// Whether a delete waits until the object is gone (dependents deleted after it need that).
    const WAIT_GONE: bool = false;

    /// Whether the plan may name the object (a `name` input); else it is named after the node.
    const NAMED: bool = false;

    /// The name a create gives the object: the deterministic one, or its `name` input for a
    /// `NAMED` type. It is also what the create's intent records, so `describe` must find the
    /// object by it.
    fn name(&self, req: &Request<'_>) -> String {
        match get_str(req.inputs, "name") {
            Some(n) if Self::NAMED => n.to_string(),
            _ => req.deterministic_id.to_string(),
        }
    }
    /// The object `reference` names: the name a create gives, or the id a record keeps (an
    /// ARN, a group id). `None` when it does not exist (or an error with a `NOT_FOUND` code).
    async fn describe(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        reference: &str,
    ) -> Result<Option<Found>, AwsError>;
    /// Makes the object named `name` carrying `tags`; returns its reference (what `describe`
    /// takes). An `EXISTS` code means a create already made it (a retried or resumed create).
    async fn create(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        args: &Self::Args,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError>;
    /// Brings an object just made, or adopted from an interrupted create, to what its create call
    /// cannot set (a security group's rules): run before the wait, safe to repeat.
    async fn settle(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        _args: &Self::Args,
        _id: &str,
    ) -> Result<(), AwsError> {
        Ok(())
    }
    /// Changes `changed` inputs of the object in place.
    async fn modify(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        args: &Self::Args,
        id: &str,
        changed: &[String],
    ) -> Result<(), AwsError>;
    /// Deletes the object (a `NOT_FOUND` answer counts as done).
    async fn delete(&self, ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), AwsError>;

    // What the engine's contract asks of a type beyond the lifecycle and its model, forwarded
    // as they are.
    fn validate(&self, _inputs: &Attrs) -> Vec<String> {
        vec![]
    }
    fn validate_refs(
        &self,
        _inputs: &Attrs,
        _referenced: &dyn Fn(&str) -> Option<(String, Attrs)>,
    ) -> Vec<String> {
        vec![]
    }
    fn planned_outputs(&self, _inputs: &Attrs, _id: &str) -> Attrs {
        Attrs::new()
    }
    fn review(&self, _inputs: &Attrs) -> Review {
        Review::default()
    }
    fn default_timeout(&self) -> Duration {
        crate::provider::DEFAULT_TIMEOUT
    }
    fn check_id(&self, _id: &str) -> Result<(), String> {
        Ok(())
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        &["id"]
    }
    fn update_note(&self, _recorded: &Attrs) -> Option<String> {
        None
    }
    fn kept(&self, _id: &str, _outputs: &Attrs) -> Option<(String, String)> {
        None
    }
    async fn check(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
    ) -> Result<Option<Vec<(crate::provider::CheckLevel, String)>>, ProviderError> {
        Ok(None)
    }
}

/// The engine's resource contract for an [`AwsObject`].
pub struct Driven<T>(pub T);

impl<T: AwsObject> Driven<T> {
    /// The object `reference` names, with "not found" as `None`.
    async fn look(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        reference: &str,
    ) -> Result<Option<Found>, ProviderError> {
        match self.0.describe(ctx, req, reference).await {
            Ok(f) => Ok(f),
            Err(e) if e.is(T::NOT_FOUND) => Ok(None),
            Err(e) => Err(e.error),
        }
    }

    /// The reference of `found` when it is ours to take over, else the refusal.
    fn adopt(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        name: &str,
        found: &Found,
    ) -> Result<String, ProviderError> {
        let id = &found.observed.id;
        match T::OWNERSHIP {
            Ownership::Tags if owned_by_tags(ctx, req.node, &found.observed) => Ok(id.clone()),
            Ownership::Tags => Err(not_ours(ctx, T::WHAT, name, req.node, id)),
            Ownership::Mark(key) if marked(&found.observed, key) => Ok(id.clone()),
            Ownership::Mark(_) => Err(ProviderError::refused(
                format!("{} `{name}` exists and is not this plan's", T::WHAT),
                format!(
                    "remove it, or adopt it with `plan import {} {} {id}`",
                    ctx.stack, req.node
                ),
            )),
            Ownership::Untagged(why) => Err(ProviderError::refused(
                format!(
                    "{} `{name}` exists: {why}, so it is never taken over",
                    T::WHAT
                ),
                format!(
                    "adopt it with `plan import {} {} {id}`",
                    ctx.stack, req.node
                ),
            )),
        }
    }

    /// Waits until the object is ready and returns it as found.
    async fn ready(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        reference: &str,
    ) -> Result<Observed, ProviderError> {
        let what = format!("{} {reference}", T::WHAT);
        let last = std::sync::Mutex::new(None);
        poll(ctx, req.node, &what, Until::Ready, || async {
            let f = self.look(ctx, req, reference).await?;
            let status = f.as_ref().map(|f| f.status.clone());
            *last.lock().unwrap() = f.map(|f| f.observed);
            Ok(status)
        })
        .await?;
        let found = last.into_inner().unwrap();
        found.ok_or_else(|| ProviderError::new(format!("{what} vanished")))
    }
}

#[async_trait]
impl<T: AwsObject> ResourceType for Driven<T> {
    fn type_name(&self) -> &'static str {
        T::TYPE
    }
    fn service(&self) -> &'static str {
        T::SERVICE
    }
    fn review(&self, inputs: &Attrs) -> Review {
        self.0.review(inputs)
    }
    fn force_new(&self) -> &'static [&'static str] {
        T::Args::REPLACE
    }
    fn create_only(&self) -> &'static [&'static str] {
        T::Args::CREATE_ONLY
    }
    /// A sensitive input is a secret reference (or an output not known yet), never a literal
    /// that would be stored in the plan and the state; then the type's own checks.
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        let mut v: Vec<String> = T::Args::SENSITIVE
            .iter()
            .filter(|k| {
                inputs
                    .get(**k)
                    .is_some_and(|x| !has_refs(x) && as_secret(x).is_none())
            })
            .map(|k| {
                format!("`{k}` must be a secret reference (stack.secret(..)), never a literal")
            })
            .collect();
        v.extend(self.0.validate(inputs));
        v
    }
    fn validate_refs(
        &self,
        inputs: &Attrs,
        referenced: &dyn Fn(&str) -> Option<(String, Attrs)>,
    ) -> Vec<String> {
        self.0.validate_refs(inputs, referenced)
    }
    fn planned_outputs(&self, inputs: &Attrs, id: &str) -> Attrs {
        self.0.planned_outputs(inputs, id)
    }
    fn default_timeout(&self) -> Duration {
        self.0.default_timeout()
    }
    fn check_id(&self, id: &str) -> Result<(), String> {
        self.0.check_id(id)
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        self.0.stable_outputs()
    }
    fn update_note(&self, recorded: &Attrs) -> Option<String> {
        self.0.update_note(recorded)
    }
    fn kept(&self, id: &str, outputs: &Attrs) -> Option<(String, String)> {
        self.0.kept(id, outputs)
    }
    async fn check(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
    ) -> Result<Option<Vec<(crate::provider::CheckLevel, String)>>, ProviderError> {
        self.0.check(ctx, req).await
    }
    /// The create's intent records the name the object gets: enough to find it after a kill.
    fn id_for(&self, req: &Request<'_>) -> String {
        self.0.name(req)
    }
    /// An interrupted create that reached an object of ours resumes: the create runs again,
    /// finds it by its tags and waits for it, making no other. An untagged or marked object
    /// found after our own interrupted create is recorded as it stands (such types have no
    /// wait).
    fn create_resumes(&self) -> bool {
        matches!(T::OWNERSHIP, Ownership::Tags)
    }
    fn owned(&self, ctx: &Ctx, node: &str, found: &Observed) -> bool {
        match T::OWNERSHIP {
            Ownership::Tags => owned_by_tags(ctx, node, found),
            // Found by the reference our own create's intent recorded (a marked type's create
            // perhaps killed before the call that sets the mark: the next update sets it).
            Ownership::Mark(_) | Ownership::Untagged(_) => true,
        }
    }
    async fn create(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError> {
        let args = T::Args::from_attrs(req.node, req.inputs)?;
        let name = self.0.name(req);
        let reference = match self.look(ctx, req, &name).await? {
            Some(f) => self.adopt(ctx, req, &name, &f)?,
            None => {
                let ours = tags(&ctx.plan, &ctx.stack, req.node);
                match self.0.create(ctx, req, &args, &name, &ours).await {
                    Ok(r) => r,
                    // The SDK retried a create AWS had performed (its answer lost): the object
                    // is there, with the tags the first attempt gave it, or (a type that
                    // cannot be tagged) exactly as this create asked, where the look-up just
                    // before found nothing.
                    Err(e) if e.is(T::EXISTS) => match self.look(ctx, req, &name).await? {
                        Some(f)
                            if matches!(T::OWNERSHIP, Ownership::Untagged(_))
                                && as_asked(&f.observed, req.inputs) =>
                        {
                            f.observed.id.clone()
                        }
                        Some(f) => self.adopt(ctx, req, &name, &f)?,
                        None => return Err(e.error),
                    },
                    Err(e) => return Err(e.error),
                }
            }
        };
        self.0.settle(ctx, req, &args, &reference).await?;
        self.ready(ctx, req, &reference).await
    }
    async fn read(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Observed>, ProviderError> {
        Ok(self.look(ctx, req, id).await?.map(|f| f.observed))
    }
    async fn update(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
        changed: &[String],
    ) -> Result<Observed, ProviderError> {
        let args = T::Args::from_attrs(req.node, req.inputs)?;
        self.0.modify(ctx, req, &args, id, changed).await?;
        self.ready(ctx, req, id).await
    }
    async fn delete(&self, ctx: &Ctx, req: &Request<'_>, id: &str) -> Result<(), ProviderError> {
        match self.0.delete(ctx, req, id).await {
            Ok(()) => {}
            Err(e) if e.is(T::NOT_FOUND) => return Ok(()),
            Err(e) => return Err(e.error),
        }
        if T::WAIT_GONE {
            let what = format!("{} {id}", T::WHAT);
            poll(ctx, req.node, &what, Until::Gone, || async {
                Ok(self.look(ctx, req, id).await?.map(|f| f.status))
            })
            .await?;
        }
        Ok(())
    }
}

/// What [`poll`] waits for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Until {
    Ready,
    Gone,
}

/// The one poller: asks `look` (the status, `None` when the object does not exist) with a
/// backoff from 200 ms to 15 s until the object is ready (or gone), reporting each new status
/// with the time waited. A failed status, or an object gone while waiting for it to be ready,
/// ends the wait with an error naming the last status. Its limit is the node's timeout (the
/// executor's, which names the last status reported here).
pub async fn poll<F, Fut>(
    ctx: &Ctx,
    node: &str,
    what: &str,
    until: Until,
    mut look: F,
) -> Result<(), ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Status>, ProviderError>>,
{
    let t0 = Instant::now();
    let mut last = String::new();
    let mut delay = Duration::from_millis(200);
    loop {
        let shown = match (look().await?, until) {
            (Some(Status::Ready), Until::Ready) | (None, Until::Gone) => return Ok(()),
            (None, Until::Ready) => {
                return Err(ProviderError::new(format!(
                    "{what} disappeared while waiting for it{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(" (last seen `{last}`)")
                    }
                )))
            }
            (Some(Status::Failed(s)), _) => {
                return Err(ProviderError::new(format!("{what} is `{s}`")))
            }
            (Some(Status::Pending(s)), _) => s,
            (Some(Status::Ready), Until::Gone) => "deleting".to_string(),
        };
        if shown != last {
            ctx.report(
                node,
                &format!("{what}: {shown} ({}s)", t0.elapsed().as_secs()),
            );
            last = shown;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn ctx() -> (Ctx, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let mut ctx = Ctx::new(".".into(), "p", "s", Arc::new(crate::value::EnvSecrets));
        ctx.progress = Arc::new(move |_, m| log.lock().unwrap().push(m.to_string()));
        (ctx, seen)
    }

    /// A password written into a plan as text would be stored in the plan and the state: every
    /// type refuses a literal in a field its model marks sensitive, naming the field.
    #[test]
    fn a_sensitive_input_given_as_text_is_refused_by_every_type_that_has_one() {
        let r = super::super::offline_registry();
        for (type_name, key) in [
            ("aws.dms.endpoint", "password"),
            ("aws.rds.cluster", "master_password"),
            ("aws.rds.instance", "master_password"),
        ] {
            let Some(crate::provider::TypeImpl::Resource(t)) = r.get(type_name) else {
                panic!("{type_name} is not registered");
            };
            let with = |v: serde_json::Value| Attrs::from([(key.to_string(), v)]);
            let literal = t.validate(&with(serde_json::json!("hunter2")));
            assert!(
                literal
                    .iter()
                    .any(|m| m.starts_with(&format!("`{key}` must be a secret reference"))),
                "{type_name}: {literal:?}"
            );
            for fine in [
                crate::value::secret("env:PW"),
                crate::value::reference("db", "pw"),
            ] {
                let v = t.validate(&with(fine));
                assert!(
                    !v.iter().any(|m| m.contains("secret reference")),
                    "{type_name}: {v:?}"
                );
            }
        }
    }

    #[test]
    fn rds_statuses_are_read_as_ready_failed_or_pending() {
        assert_eq!(Status::rds("available"), Status::Ready);
        assert_eq!(Status::rds("failed"), Status::Failed("failed".into()));
        assert_eq!(
            Status::rds("incompatible-parameters"),
            Status::Failed("incompatible-parameters".into())
        );
        assert_eq!(Status::rds("creating"), Status::Pending("creating".into()));
    }

    #[tokio::test]
    async fn the_poller_reports_each_new_status_and_stops_at_ready() {
        let (ctx, seen) = ctx();
        let answers = Mutex::new(vec![
            Some(Status::Ready),
            Some(Status::Pending("backing-up".into())),
            Some(Status::Pending("creating".into())),
            Some(Status::Pending("creating".into())),
        ]);
        poll(&ctx, "n", "thing x", Until::Ready, || async {
            Ok(answers.lock().unwrap().pop().unwrap())
        })
        .await
        .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].starts_with("thing x: creating ("), "{seen:?}");
        assert!(seen[1].starts_with("thing x: backing-up ("), "{seen:?}");
    }

    #[tokio::test]
    async fn the_poller_names_the_failure_and_the_last_status_before_a_disappearance() {
        let (ctx, _) = ctx();
        let answers = Mutex::new(vec![Some(Status::Failed("failed".into()))]);
        let e = poll(&ctx, "n", "thing x", Until::Ready, || async {
            Ok(answers.lock().unwrap().pop().unwrap())
        })
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "thing x is `failed`");
        let answers = Mutex::new(vec![None, Some(Status::Pending("creating".into()))]);
        let e = poll(&ctx, "n", "thing x", Until::Ready, || async {
            Ok(answers.lock().unwrap().pop().unwrap())
        })
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "thing x disappeared while waiting for it (last seen `creating`)"
        );
        // Waiting for a delete: a ready object is still being deleted; gone ends the wait.
        let answers = Mutex::new(vec![None, Some(Status::Ready)]);
        poll(&ctx, "n", "thing x", Until::Gone, || async {
            Ok(answers.lock().unwrap().pop().unwrap())
        })
        .await
        .unwrap();
    }
}
