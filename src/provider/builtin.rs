//! Types every stack has: `core.null` (a resource with no object, like Terraform's
//! `terraform_data`), `wait.sleep`, `core.assert` and `core.note` (lines said to the person
//! running the plan: what they do by hand) steps.
//!
//! Nothing here touches the world beyond the clock; these types must never fail except where
//! their inputs say so (`core.assert`).

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Ctx, Observed, ProviderError, Registry, Request, ResourceType, StepType};
use crate::dsl::{Declare, NodeKind};
use crate::value::{Attrs, Value};

pub fn register(r: &mut Registry) {
    r.resource(NullType)
        .step(SleepType)
        .step(AssertType)
        .step(NoteType);
}

/// A resource that only stores its inputs; its outputs are its inputs plus `id`. Changing the
/// input `replace_on` replaces it.
#[derive(Debug, Clone, Default)]
pub struct Null {
    inputs: Attrs,
}

impl Null {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds an input.
    pub fn input(mut self, name: &str, v: impl Into<Value>) -> Self {
        self.inputs.insert(name.into(), v.into());
        self
    }
}

crate::declare!(Null, "core.null", Resource);

crate::outputs!(Null {
    /// The identifier (known after apply).
    id: String = "id",
});

struct NullType;

fn null_observed(id: &str, inputs: &Attrs) -> Observed {
    let mut outputs = inputs.clone();
    outputs.insert("id".into(), Value::String(id.into()));
    Observed {
        id: id.into(),
        inputs: inputs.clone(),
        outputs,
    }
}

#[async_trait]
impl ResourceType for NullType {
    fn type_name(&self) -> &'static str {
        Null::TYPE
    }
    fn service(&self) -> &'static str {
        "core"
    }
    fn force_new(&self) -> &'static [&'static str] {
        &["replace_on"]
    }
    async fn create(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError> {
        Ok(null_observed(req.deterministic_id, req.inputs))
    }
    async fn read(
        &self,
        _ctx: &Ctx,
        _req: &Request<'_>,
        _id: &str,
    ) -> Result<Option<Observed>, ProviderError> {
        // There is no object: an interrupted create simply runs again.
        Ok(None)
    }
    async fn update(
        &self,
        _ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
        _changed: &[String],
    ) -> Result<Observed, ProviderError> {
        Ok(null_observed(id, req.inputs))
    }
    async fn delete(&self, _ctx: &Ctx, _req: &Request<'_>, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// Waits a fixed time (with progress).
#[derive(Debug, Clone)]
pub struct Sleep {
    ms: u64,
}

impl Sleep {
    pub fn ms(ms: u64) -> Self {
        Sleep { ms }
    }
}

impl Declare for Sleep {
    const TYPE: &'static str = "wait.sleep";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        Attrs::from([("ms".to_string(), Value::from(self.ms))])
    }
}

struct SleepType;

#[async_trait]
impl StepType for SleepType {
    fn type_name(&self) -> &'static str {
        "wait.sleep"
    }
    fn service(&self) -> &'static str {
        "core"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match inputs.get("ms") {
            Some(v) if v.is_u64() || crate::value::has_refs(v) => vec![],
            _ => vec!["input `ms` must be a whole number of milliseconds".into()],
        }
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let ms = crate::value::get_u64(req.inputs, "ms").unwrap_or(0);
        let start = Instant::now();
        let total = Duration::from_millis(ms);
        let tick = Duration::from_secs(5);
        while start.elapsed() < total {
            let left = total - start.elapsed();
            tokio::time::sleep(left.min(tick)).await;
            if start.elapsed() < total {
                ctx.report(
                    req.node,
                    &format!("waiting, {}s left", (total - start.elapsed()).as_secs()),
                );
            }
        }
        Ok(Attrs::new())
    }
}

/// Fails with `message` unless `that` is true (a precondition a plan can place before a step).
#[derive(Debug, Clone)]
pub struct Assert {
    that: Value,
    message: String,
}

impl Assert {
    pub fn that(cond: impl Into<Value>, message: &str) -> Self {
        Assert {
            that: cond.into(),
            message: message.into(),
        }
    }
}

impl Declare for Assert {
    const TYPE: &'static str = "core.assert";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("that".to_string(), self.that),
            ("message".to_string(), Value::String(self.message)),
        ])
    }
}

struct AssertType;

#[async_trait]
impl StepType for AssertType {
    fn type_name(&self) -> &'static str {
        "core.assert"
    }
    fn service(&self) -> &'static str {
        "core"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, _ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        match req.inputs.get("that") {
            Some(Value::Bool(true)) => Ok(Attrs::new()),
            _ => Err(ProviderError::new(format!(
                "assertion failed: {}",
                crate::value::get_str(req.inputs, "message").unwrap_or("(no message)")
            ))),
        }
    }
}

/// Lines said to the person running the plan when the step runs (and kept in its outputs): what
/// they must do by hand, e.g. remove an object the plan does not own. Each line is text or a
/// step's output.
#[derive(Debug, Clone)]
pub struct Note {
    lines: Vec<Value>,
}

impl Note {
    pub fn lines(lines: Vec<Value>) -> Self {
        Note { lines }
    }
}

impl Declare for Note {
    const TYPE: &'static str = "core.note";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        Attrs::from([("lines".to_string(), Value::Array(self.lines))])
    }
}

struct NoteType;

#[async_trait]
impl StepType for NoteType {
    fn type_name(&self) -> &'static str {
        "core.note"
    }
    fn service(&self) -> &'static str {
        "core"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let lines: Vec<String> = req
            .inputs
            .get("lines")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| {
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        for l in &lines {
            ctx.report(req.node, l);
        }
        Ok(Attrs::from([(
            "said".to_string(),
            serde_json::json!(lines),
        )]))
    }
}
