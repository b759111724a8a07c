//! The steps of a hand-off at a paused standby's position (see [`crate::pg::handoff`]): the
//! capture slots on the primary, the standby's replay paused and its position recorded, that
//! position verified on the primary, the load read from the standby, its replay resumed, and
//! native replication started exactly at the position. DMS tasks start at the same verified
//! position (`DmsTask::cdc_start_position(verified.start())`).
//!
//! None of these steps writes rows anywhere but into the target's tables the load fills; on the
//! standby they only pause and resume replay.

use async_trait::async_trait;

use super::{create_markers, groups_of, pg_err, target};
use crate::dsl::{Declare, Handle, NodeKind, Output};
use crate::provider::{Ctx, ProviderError, Request, Review, StepType};
use crate::value::{get_str, get_u64, Attrs, Value};

pub(super) fn register(r: &mut crate::provider::Registry) {
    r.step(SlotsType)
        .step(PauseType)
        .step(VerifyType)
        .step(LoadType)
        .step(ResumeType)
        .step(StartAtType);
}

inputs_step!(
    /// One logical slot per table group on the primary (made before the standby is paused, so
    /// every slot can serve the position it stops at), with the cutover's marker tables and, for
    /// native replication, each group's publication. `CaptureSlots::on(primary, groups)`.
    CaptureSlots,
    "pg.capture_slots"
);

impl CaptureSlots {
    /// Slots for `groups` (a table of no group goes to `rest`) on `primary`, decoded with
    /// `pgoutput` (native replication) unless [`CaptureSlots::plugin`] says otherwise.
    pub fn on(primary: Value, groups: &[crate::pg::replication::Group]) -> Self {
        CaptureSlots {
            inputs: Attrs::from([
                ("source".to_string(), primary),
                (
                    "groups".to_string(),
                    serde_json::to_value(groups).unwrap_or(Value::Null),
                ),
                ("prefix".to_string(), Value::from("cutover")),
                ("plugin".to_string(), Value::from("pgoutput")),
            ]),
        }
    }
    /// The output plugin the consumer decodes with (`pglogical_output` for DMS's pglogical,
    /// `test_decoding`); no publication is made for another plugin than `pgoutput`.
    pub fn plugin(mut self, plugin: &str) -> Self {
        self.inputs.insert("plugin".into(), Value::from(plugin));
        self
    }
    /// Only the groups of these names (the others, `rest` among them, still decide which tables
    /// go where): a restart of one table group.
    pub fn only(mut self, names: &[&str]) -> Self {
        self.inputs.insert("only".into(), serde_json::json!(names));
        self
    }
    /// Drop the groups' slots first when they exist (refused while one is in use), so that they
    /// start from now: a restart of their groups.
    pub fn recreate(mut self) -> Self {
        self.inputs.insert("recreate".into(), Value::Bool(true));
        self
    }
    /// The prefix of the slots' (and publications') names (default `cutover`): one per tenant
    /// when several databases of one server each get their own slots.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.inputs.insert("prefix".into(), Value::from(prefix));
        self
    }
}

impl Handle<CaptureSlots> {
    /// The slots' names, one per group.
    pub fn slots(&self) -> Value {
        self.output::<Vec<String>>("slots").into()
    }
    /// The highest of the slots' confirmed positions: a standby paused at or after it shows
    /// data every slot can continue from.
    pub fn position(&self) -> Output<String> {
        self.output("position")
    }
    /// The groups as they resolved (name, tables, slot, publication, subscription).
    pub fn groups(&self) -> Value {
        self.output::<Value>("groups").into()
    }
}

struct SlotsType;

#[async_trait]
impl StepType for SlotsType {
    fn type_name(&self) -> &'static str {
        "pg.capture_slots"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        use crate::pg::replication as r;
        let s = target(ctx, req.inputs, "source").await?;
        let prefix = get_str(req.inputs, "prefix").unwrap_or("cutover");
        let plugin = get_str(req.inputs, "plugin").unwrap_or("pgoutput");
        let groups = groups_of(req.inputs);
        create_markers(&s, &s, &groups, false).await?;
        let setup = if plugin == "pgoutput" {
            // The publications before the slots: a publication made after a slot is not seen
            // by the changes decoded before it was made.
            r::publish(&s, prefix, &groups).await.map_err(pg_err)?
        } else {
            let src = s.connect().await.map_err(pg_err)?;
            let all = r::tables(&s, &src).await.map_err(pg_err)?;
            let assigned = r::assign(&all, &groups).map_err(ProviderError::new)?;
            r::Setup {
                tables: all.len(),
                groups: assigned
                    .into_iter()
                    .map(|(name, tables)| {
                        let obj = r::object_name(prefix, &name);
                        r::GroupSetup {
                            name,
                            publication: String::new(),
                            subscription: obj.clone(),
                            slot: obj,
                            tables,
                        }
                    })
                    .collect(),
            }
        };
        let mut setup = setup;
        let only = crate::value::strings(req.inputs.get("only"));
        if !only.is_empty() {
            setup.groups.retain(|g| only.contains(&g.name));
            if setup.groups.len() != only.len() {
                return Err(ProviderError::new(format!(
                    "groups {}: not all of them are table groups of this plan",
                    only.join(", ")
                )));
            }
        }
        let names: Vec<String> = setup.groups.iter().map(|g| g.slot.clone()).collect();
        if req.inputs.get("recreate").and_then(Value::as_bool) == Some(true) {
            let n = crate::pg::handoff::drop_idle_slots(&s, &names)
                .await
                .map_err(pg_err)?;
            ctx.report(
                req.node,
                &format!("{n} earlier slot(s) dropped: the group(s) start again from now"),
            );
        }
        let made = crate::pg::handoff::create_slots(&s, &names, plugin)
            .await
            .map_err(pg_err)?;
        let position = made
            .iter()
            .filter_map(|(_, p)| crate::pg::version::lsn(p))
            .max()
            .map(crate::pg::version::lsn_text)
            .unwrap_or_default();
        ctx.report(
            req.node,
            &format!(
                "{} slot(s) ({plugin}) on the primary, confirmed up to {position}: {}",
                names.len(),
                names.join(", ")
            ),
        );
        Ok(Attrs::from([
            ("slots".to_string(), serde_json::json!(names)),
            ("position".to_string(), Value::from(position)),
            (
                "groups".to_string(),
                serde_json::to_value(&setup.groups).unwrap_or(Value::Null),
            ),
        ]))
    }
}

inputs_step!(
    /// Pauses a standby's replay at a position the capture slots can serve and records it: the
    /// load reads there, and change capture starts there. `PauseReplay::on(standby,
    /// slots.position())`; `resume-replay` (`paused.resume()`) lets it go on after the load.
    PauseReplay,
    "pg.pause_replay"
);

impl PauseReplay {
    pub fn on(standby: Value, at_least: Output<String>) -> Self {
        PauseReplay {
            inputs: Attrs::from([
                ("standby".to_string(), standby),
                ("at_least".to_string(), at_least.into()),
                ("timeout_seconds".to_string(), Value::from(600u64)),
            ]),
        }
    }
}

impl Handle<PauseReplay> {
    /// The position replay stopped at.
    pub fn lsn(&self) -> Output<String> {
        self.output("lsn")
    }
    /// The step that resumes the standby's replay (declare it after the load).
    pub fn resume(&self) -> ResumeReplay {
        ResumeReplay {
            inputs: Attrs::from([
                (
                    "standby".to_string(),
                    self.declared_inputs()
                        .get("standby")
                        .cloned()
                        .unwrap_or(Value::Null),
                ),
                ("lsn".to_string(), self.lsn().into()),
            ]),
        }
    }
}

struct PauseType;

#[async_trait]
impl StepType for PauseType {
    fn type_name(&self) -> &'static str {
        "pg.pause_replay"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn review(&self, _inputs: &Attrs) -> Review {
        Review {
            guards: vec!["the standby has replayed past every capture slot's position".into()],
            caveat: Some(
                "the standby's replay stays paused until a resume step runs or the instance is deleted: whoever reads it sees older data meanwhile".into(),
            ),
            ..Default::default()
        }
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let s = target(ctx, req.inputs, "standby").await?;
        let at_least = get_str(req.inputs, "at_least").unwrap_or("0/0");
        let timeout = get_u64(req.inputs, "timeout_seconds").unwrap_or(600);
        let report = |m: String| ctx.report(req.node, &m);
        let p = crate::pg::handoff::pause(
            &s,
            at_least,
            std::time::Duration::from_secs(timeout),
            &report,
        )
        .await
        .map_err(pg_err)?;
        ctx.report(
            req.node,
            &format!(
                "{} ({}): replay {} at {}",
                s,
                p.version,
                if p.already {
                    "was paused already"
                } else {
                    "paused"
                },
                p.lsn
            ),
        );
        Ok(Attrs::from([
            ("lsn".to_string(), Value::from(p.lsn)),
            (
                "server_version".to_string(),
                Value::from(p.version.0 as i64),
            ),
        ]))
    }
}

inputs_step!(
    /// Verifies on the primary that change capture can start at the standby's recorded position:
    /// the standby is the primary's, and every slot exists, is idle and still holds the WAL from
    /// there. A task started at a position its slot cannot serve fails an hour later; this fails
    /// now, naming the slot. `VerifyLsn::on(primary, standby, slots.slots(), paused.lsn())`.
    VerifyLsn,
    "pg.verify_lsn"
);

impl VerifyLsn {
    pub fn on(primary: Value, standby: Value, slots: Value, lsn: Output<String>) -> Self {
        VerifyLsn {
            inputs: Attrs::from([
                ("source".to_string(), primary),
                ("standby".to_string(), standby),
                ("slots".to_string(), slots),
                ("lsn".to_string(), lsn.into()),
            ]),
        }
    }
}

crate::outputs!(VerifyLsn {
    /// The position change capture starts at.
    start: String = "start_lsn",
});

struct VerifyType;

#[async_trait]
impl StepType for VerifyType {
    fn type_name(&self) -> &'static str {
        "pg.verify_lsn"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn review(&self, _inputs: &Attrs) -> Review {
        Review {
            guards: vec![
                "the standby is the primary's, and every slot still serves the recorded position"
                    .into(),
            ],
            ..Default::default()
        }
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let p = target(ctx, req.inputs, "source").await?;
        let s = target(ctx, req.inputs, "standby").await?;
        let slots = crate::value::strings(req.inputs.get("slots"));
        let at = get_str(req.inputs, "lsn").unwrap_or_default();
        let start = crate::pg::handoff::verify(&p, &s, &slots, at)
            .await
            .map_err(pg_err)?;
        ctx.report(
            req.node,
            &format!(
                "{start} verified on {p}: {} slot(s) can serve it",
                slots.len()
            ),
        );
        Ok(Attrs::from([("start_lsn".to_string(), Value::from(start))]))
    }
}

inputs_step!(
    /// The full load read from the paused standby: the schema's tables, every table's rows in
    /// parallel (biggest first, a table above the split size in block ranges), then keys,
    /// indexes and the rest of the schema. It refuses unless replay is still paused at the
    /// recorded position before and after the copy. `LoadFromStandby::of(standby, target,
    /// paused.lsn())`.
    LoadFromStandby,
    "pg.load_standby"
);

impl LoadFromStandby {
    pub fn of(standby: Value, target: Value, lsn: Output<String>) -> Self {
        LoadFromStandby {
            inputs: Attrs::from([
                ("standby".to_string(), standby),
                ("target".to_string(), target),
                ("lsn".to_string(), lsn.into()),
                ("workers".to_string(), Value::from(6u64)),
                ("split_above_mb".to_string(), Value::from(1024u64)),
            ]),
        }
    }
    /// A reload of these groups' tables only (a capture step's `groups()`): the target has the
    /// schema; the tables are emptied and copied again, their keys and indexes kept.
    pub fn reload(mut self, groups: Value) -> Self {
        self.inputs.insert("reload".into(), groups);
        self
    }
    /// Parallel copy sessions (the case's six streams by default) and the size above which a
    /// table is copied in block ranges.
    pub fn parallel(mut self, workers: usize, split_above_mb: u64) -> Self {
        self.inputs
            .insert("workers".into(), Value::from(workers.max(1) as u64));
        self.inputs
            .insert("split_above_mb".into(), Value::from(split_above_mb.max(1)));
        self
    }
}

struct LoadType;

#[async_trait]
impl StepType for LoadType {
    /// A dump and restore of terabytes takes days.
    fn default_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(168 * 3600)
    }
    fn type_name(&self) -> &'static str {
        "pg.load_standby"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn measured(&self, outputs: &Attrs) -> Vec<String> {
        super::load_measured("load from the standby", outputs)
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        use crate::pg::replication as r;
        let s = target(ctx, req.inputs, "standby").await?;
        let t = target(ctx, req.inputs, "target").await?;
        let at = get_str(req.inputs, "lsn").unwrap_or_default();
        let opts = crate::pg::load::Options {
            workers: get_u64(req.inputs, "workers").unwrap_or(6).max(1) as usize,
            chunk_pages: get_u64(req.inputs, "split_above_mb").unwrap_or(1024).max(1) * 128,
        };
        crate::pg::handoff::still_paused(&s, at)
            .await
            .map_err(pg_err)?;
        let reload: Option<Vec<String>> = req.inputs.get("reload").map(|g| {
            g.as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| crate::value::strings(g.get("tables")))
                .collect()
        });
        let (post, tables) = match reload {
            Some(tables) => {
                let list: Vec<String> = tables.iter().map(|x| r::qualified(x)).collect();
                let dst = t.connect().await.map_err(pg_err)?;
                dst.batch_execute(&format!("TRUNCATE {}", list.join(", ")))
                    .await
                    .map_err(t.err("empty the group's tables"))
                    .map_err(pg_err)?;
                ctx.report(
                    req.node,
                    &format!(
                        "reloading {} table(s): emptied on the target, copied again from the standby",
                        tables.len()
                    ),
                );
                (vec![], tables)
            }
            None => {
                ctx.report(
                    req.node,
                    "copying the schema (tables; keys and indexes after the data)",
                );
                let post = r::copy_schema_pre(&s, &t, false).await.map_err(pg_err)?;
                let src = s.connect().await.map_err(pg_err)?;
                (post, r::tables(&s, &src).await.map_err(pg_err)?)
            }
        };
        let report = |m: String| ctx.report(req.node, &m);
        // The target is the plan's own new database: rows in it come from an interrupted run
        // of this step, read at the same paused position, and are copied again.
        let done = crate::pg::load::load_quiet(&s, &t, &tables, opts, true, &report)
            .await
            .map_err(pg_err)?;
        crate::pg::handoff::still_paused(&s, at)
            .await
            .map_err(pg_err)?;
        let rest = if post.is_empty() {
            String::new()
        } else {
            format!(
                "; building {} key(s), index(es) and the rest of the schema",
                post.len()
            )
        };
        ctx.report(
            req.node,
            &format!(
                "loaded {} rows, {:.0} MB of tables in {:.1} s from {at}{rest}",
                done.rows,
                done.bytes as f64 / 1e6,
                done.seconds,
            ),
        );
        crate::pg::load::build_post(&t, &post, opts.workers)
            .await
            .map_err(pg_err)?;
        Ok(Attrs::from([(
            "load".to_string(),
            serde_json::to_value(&done).unwrap_or(Value::Null),
        )]))
    }
}

inputs_step!(
    /// Resumes the standby's replay after the load (made by `paused.resume()`).
    ResumeReplay,
    "pg.resume_replay"
);

struct ResumeType;

#[async_trait]
impl StepType for ResumeType {
    fn type_name(&self) -> &'static str {
        "pg.resume_replay"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let s = target(ctx, req.inputs, "standby").await?;
        let resumed = crate::pg::handoff::resume(&s).await.map_err(pg_err)?;
        ctx.report(
            req.node,
            if resumed {
                "replay resumed"
            } else {
                "replay was running already"
            },
        );
        Ok(Attrs::new())
    }
}

inputs_step!(
    /// Native replication of every group started at the verified position, on the capture
    /// slots: each subscription created disabled, its origin advanced to the position, then
    /// enabled. Its `slots()` and `subscriptions()` serve `WaitLag`, `Validate::live` and
    /// `Cutover::replication` as a `Replicate` step's do. `ReplicateFrom::at(primary, target,
    /// slots.groups(), verified.start())`.
    ReplicateFrom,
    "pg.replicate_from"
);

impl ReplicateFrom {
    pub fn at(primary: Value, target: Value, groups: Value, start: Output<String>) -> Self {
        ReplicateFrom {
            inputs: Attrs::from([
                ("source".to_string(), primary),
                ("target".to_string(), target),
                ("setup".to_string(), groups),
                ("lsn".to_string(), start.into()),
            ]),
        }
    }
}

impl Handle<ReplicateFrom> {
    pub fn slots(&self) -> Value {
        self.output::<Vec<String>>("slots").into()
    }
    pub fn subscriptions(&self) -> Value {
        self.output::<Vec<String>>("subscriptions").into()
    }
}

struct StartAtType;

#[async_trait]
impl StepType for StartAtType {
    fn type_name(&self) -> &'static str {
        "pg.replicate_from"
    }
    fn service(&self) -> &'static str {
        "pg"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        super::kept_by_a_server(inputs, "source", "the target's subscription")
            .into_iter()
            .collect()
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let s = target(ctx, req.inputs, "source").await?;
        let t = target(ctx, req.inputs, "target").await?;
        let at = get_str(req.inputs, "lsn").unwrap_or_default();
        let groups: Vec<crate::pg::replication::GroupSetup> = req
            .inputs
            .get("setup")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        if groups.iter().any(|g| g.publication.is_empty()) {
            return Err(ProviderError::new(
                "the capture slots decode with another plugin than pgoutput, and have no publications: native replication cannot use them (give CaptureSlots the default plugin)",
            ));
        }
        let setup = crate::pg::replication::Setup {
            tables: groups.iter().map(|g| g.tables.len()).sum(),
            groups,
        };
        crate::pg::handoff::subscribe_at(&s, &t, &setup, at)
            .await
            .map_err(pg_err)?;
        let subs: Vec<String> = setup
            .groups
            .iter()
            .map(|g| g.subscription.clone())
            .collect();
        let slots: Vec<String> = setup.groups.iter().map(|g| g.slot.clone()).collect();
        ctx.report(
            req.node,
            &format!("{} subscription(s) streaming from {at}", subs.len()),
        );
        Ok(Attrs::from([
            ("slots".to_string(), serde_json::json!(slots)),
            ("subscriptions".to_string(), serde_json::json!(subs)),
        ]))
    }
}
