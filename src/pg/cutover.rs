//! The cutover, one composite step with timed phases: guard (lag, long transactions, validation
//! age) -> fence (pgbouncer PAUSE: waits for in-flight transactions) -> catch-up (a marker row
//! written on the source after the fence, seen on the target) -> sequences (target at least the
//! source's last value plus a margin) -> optional reverse replication (forward subscriptions
//! disabled first; PostgreSQL 15 has no `origin = none`) -> flip (the pooler re-pointed, RELOAD,
//! RESUME) -> post-check (a write and a read through the pooler reach the target).
//!
//! Any failure before the flip unfences and leaves the source as it was. The probe used after a
//! crash finishes a flip whose file was written, or unfences: it must never leave the pooler paused.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::pooler::{self, LocalBouncer, Route};
use super::{ident, literal, replication, PgError, Target};

/// The marker table replication carries for the catch-up check.
pub const MARKER_TABLE: &str = "public.cutover_marker";
/// Its definition (created on the source before the schema is copied).
pub const MARKER_DDL: &str =
    "CREATE TABLE IF NOT EXISTS public.cutover_marker (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())";
/// The reverse replication's publication (target) and subscription (source).
pub const REVERSE: &str = "cutover_reverse";

/// What the cutover needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub source: Target,
    pub target: Target,
    /// The local pgbouncer: its directory and port, and the database clients use.
    pub pooler_dir: PathBuf,
    pub pooler_port: u16,
    pub database: String,
    /// Forward replication: slots on the source, subscriptions on the target.
    pub slots: Vec<String>,
    pub subscriptions: Vec<String>,
    pub max_lag_bytes: i64,
    pub max_xact_seconds: f64,
    /// When validation last passed (RFC 3339) and how old it may be.
    pub validated_at: Option<String>,
    pub max_validation_age_seconds: u64,
    pub sequence_margin: i64,
    pub reverse: bool,
    pub fence_timeout_ms: u64,
    pub catchup_timeout_ms: u64,
}

/// A timed phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub ms: f64,
}

/// What the cutover did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub phases: Vec<Phase>,
    /// From PAUSE issued to RESUME done: the longest time a client could wait.
    pub fenced_ms: f64,
    pub sequences: usize,
    pub reverse: bool,
    pub marker: String,
}

/// A cutover that stopped, and what state it left.
#[derive(Debug, thiserror::Error)]
#[error("cutover stopped in phase `{phase}`: {message}. {state}")]
pub struct CutoverError {
    pub phase: String,
    pub message: String,
    pub state: String,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn bouncer(spec: &Spec) -> LocalBouncer {
    LocalBouncer::new(&spec.pooler_dir, spec.pooler_port)
}

async fn guard(spec: &Spec) -> Result<(), String> {
    for slot in &spec.slots {
        let l = replication::lag(&spec.source, slot)
            .await
            .map_err(|e| e.to_string())?;
        if l.bytes > spec.max_lag_bytes {
            return Err(format!("replication lag on `{slot}` is {} bytes, above the bound of {}; wait until it is lower", l.bytes, spec.max_lag_bytes));
        }
    }
    let c = spec.source.connect().await.map_err(|e| e.to_string())?;
    let oldest: f64 = c
        .query_one(
            "SELECT COALESCE(max(EXTRACT(epoch FROM now() - xact_start)), 0)::float8 FROM pg_stat_activity
             WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .map_err(|e| spec.source.err("oldest transaction")(e).to_string())?
        .get(0);
    if oldest > spec.max_xact_seconds {
        return Err(format!(
            "a transaction on the source has been open for {oldest:.1} s, above the bound of {:.1} s: the fence would wait for it; end it or wait",
            spec.max_xact_seconds
        ));
    }
    match &spec.validated_at {
        None => return Err("validation has not passed: run the validation step first".into()),
        Some(at) => {
            let t =
                humantime::parse_rfc3339(at).map_err(|e| format!("validated_at `{at}`: {e}"))?;
            let age = std::time::SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_secs();
            if age > spec.max_validation_age_seconds {
                return Err(format!(
                    "validation passed {age} s ago, longer than the bound of {} s: validate again (`--replace` the validation step)",
                    spec.max_validation_age_seconds
                ));
            }
        }
    }
    Ok(())
}

async fn wait_marker(spec: &Spec, marker: &str) -> Result<(), String> {
    let src = spec.source.connect().await.map_err(|e| e.to_string())?;
    src.execute(
        &format!("INSERT INTO {MARKER_TABLE} (id) VALUES ($1)"),
        &[&marker],
    )
    .await
    .map_err(|e| spec.source.err("write the marker")(e).to_string())?;
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    let q = dst
        .prepare(&format!(
            "SELECT exists(SELECT 1 FROM {MARKER_TABLE} WHERE id = $1)"
        ))
        .await
        .map_err(|e| spec.target.err("prepare")(e).to_string())?;
    let t0 = Instant::now();
    loop {
        let seen: bool = dst
            .query_one(&q, &[&marker])
            .await
            .map_err(|e| spec.target.err("read the marker")(e).to_string())?
            .get(0);
        if seen {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_millis(spec.catchup_timeout_ms) {
            return Err(format!(
                "the target did not apply the source's writes within {} ms",
                spec.catchup_timeout_ms
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sets every target sequence to at least the source's last value plus `margin`; returns how many.
pub async fn sync_sequences(
    source: &Target,
    target: &Target,
    margin: i64,
) -> Result<usize, PgError> {
    let src = source.connect().await?;
    let rows = src
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences
             WHERE schemaname NOT IN ('pg_catalog','information_schema') AND last_value IS NOT NULL",
            &[],
        )
        .await
        .map_err(source.err("read sequences"))?;
    let mut sql = String::new();
    for r in &rows {
        let (name, last): (String, i64) = (r.get(0), r.get(1));
        // Never lower a sequence the target may already have advanced.
        sql.push_str(&format!(
            "SELECT setval({lit}::regclass, GREATEST({v}, (SELECT last_value FROM {name})), true);\n",
            lit = literal(&name),
            v = last.saturating_add(margin),
        ));
    }
    if !sql.is_empty() {
        let dst = target.connect().await?;
        dst.batch_execute(&sql)
            .await
            .map_err(target.err("set sequences"))?;
    }
    Ok(rows.len())
}

async fn setup_reverse(spec: &Spec) -> Result<(), String> {
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    let src = spec.source.connect().await.map_err(|e| e.to_string())?;
    for s in &spec.subscriptions {
        dst.batch_execute(&format!("ALTER SUBSCRIPTION {} DISABLE", ident(s)))
            .await
            .map_err(|e| spec.target.err("disable forward subscription")(e).to_string())?;
    }
    let tables = replication::tables(&spec.target, &dst)
        .await
        .map_err(|e| e.to_string())?;
    let list: Vec<String> = tables
        .iter()
        .map(|t| {
            let (s, n) = t.split_once('.').unwrap_or(("public", t));
            format!("{}.{}", ident(s), ident(n))
        })
        .collect();
    let exists: bool = dst
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&REVERSE],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        dst.batch_execute(&format!(
            "CREATE PUBLICATION {REVERSE} FOR TABLE {}",
            list.join(", ")
        ))
        .await
        .map_err(|e| spec.target.err("create reverse publication")(e).to_string())?;
    }
    let exists: bool = src
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&REVERSE],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        src.batch_execute(&format!(
            "CREATE SUBSCRIPTION {REVERSE} CONNECTION {} PUBLICATION {REVERSE} WITH (copy_data = false)",
            literal(&spec.target.conninfo())
        ))
        .await
        .map_err(|e| spec.source.err("create reverse subscription")(e).to_string())?;
    }
    Ok(())
}

/// Removes reverse replication and re-enables forward subscriptions (undo before a flip).
pub async fn undo_reverse(spec: &Spec) -> Result<(), String> {
    let src = spec.source.connect().await.map_err(|e| e.to_string())?;
    let dst = spec.target.connect().await.map_err(|e| e.to_string())?;
    let has: bool = src
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&REVERSE],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if has {
        src.batch_execute(&format!("DROP SUBSCRIPTION {REVERSE}"))
            .await
            .map_err(|e| spec.source.err("drop reverse subscription")(e).to_string())?;
    }
    dst.batch_execute(&format!("DROP PUBLICATION IF EXISTS {REVERSE}"))
        .await
        .map_err(|e| e.to_string())?;
    for s in &spec.subscriptions {
        dst.batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", ident(s)))
            .await
            .map_err(|e| spec.target.err("enable forward subscription")(e).to_string())?;
    }
    Ok(())
}

fn target_route(spec: &Spec) -> Route {
    Route {
        name: spec.database.clone(),
        host: spec.target.host.clone(),
        port: spec.target.port,
        dbname: spec.target.dbname.clone(),
    }
}

async fn resume(spec: &Spec) -> Result<(), String> {
    let console = bouncer(spec).admin();
    match pooler::pool_state(&console, &spec.database)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(s) if s.paused => pooler::admin(&console, &format!("RESUME {}", spec.database))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

/// Runs the cutover. `progress` gets a line per phase.
pub async fn run(
    spec: &Spec,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Outcome, CutoverError> {
    let mut phases = Vec::new();
    let fail = |phase: &str, message: String, state: &str| CutoverError {
        phase: phase.into(),
        message,
        state: state.into(),
    };
    let t = Instant::now();
    guard(spec).await.map_err(|m| {
        fail(
            "guard",
            m,
            "Nothing was changed; the source takes writes as before.",
        )
    })?;
    phases.push(Phase {
        name: "guard".into(),
        ms: ms(t.elapsed()),
    });
    progress("guard passed: lag, open transactions and validation within bounds".into());

    let console = bouncer(spec).admin();
    let fenced = Instant::now();
    let paused = tokio::time::timeout(
        Duration::from_millis(spec.fence_timeout_ms),
        pooler::admin(&console, &format!("PAUSE {}", spec.database)),
    )
    .await;
    let unfence = |phase: &'static str, message: String| async move {
        let undo = if spec.reverse {
            undo_reverse(spec).await.err()
        } else {
            None
        };
        let resumed = resume(spec).await;
        let state = match (undo, resumed) {
            (None, Ok(())) => "Unfenced: the source takes writes as before.".to_string(),
            (u, r) => format!(
                "Unfencing was incomplete ({}{}): check the pooler (SHOW DATABASES) and run apply again",
                u.unwrap_or_default(),
                r.err().unwrap_or_default()
            ),
        };
        CutoverError {
            phase: phase.into(),
            message,
            state,
        }
    };
    match paused {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(unfence("fence", e.to_string()).await),
        Err(_) => {
            return Err(unfence(
                "fence",
                format!(
                    "in-flight transactions did not finish within {} ms",
                    spec.fence_timeout_ms
                ),
            )
            .await)
        }
    }
    phases.push(Phase {
        name: "fence".into(),
        ms: ms(fenced.elapsed()),
    });

    let marker = format!(
        "cutover-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let t = Instant::now();
    if let Err(m) = wait_marker(spec, &marker).await {
        return Err(unfence("catch-up", m).await);
    }
    phases.push(Phase {
        name: "catch-up".into(),
        ms: ms(t.elapsed()),
    });

    let t = Instant::now();
    let sequences = match sync_sequences(&spec.source, &spec.target, spec.sequence_margin).await {
        Ok(n) => n,
        Err(e) => return Err(unfence("sequences", e.to_string()).await),
    };
    phases.push(Phase {
        name: "sequences".into(),
        ms: ms(t.elapsed()),
    });

    if spec.reverse {
        let t = Instant::now();
        if let Err(m) = setup_reverse(spec).await {
            return Err(unfence("reverse", m).await);
        }
        phases.push(Phase {
            name: "reverse".into(),
            ms: ms(t.elapsed()),
        });
    }

    let t = Instant::now();
    let b = bouncer(spec);
    if let Err(m) = b.set_route(&target_route(spec)) {
        return Err(unfence("flip", m).await);
    }
    // From here the flip is decided: the file names the target.
    if let Err(e) = pooler::admin(&console, "RELOAD").await {
        return Err(fail("flip", e.to_string(), "The pooler's file names the target but RELOAD failed; run apply again: it finishes the flip."));
    }
    if let Err(m) = resume(spec).await {
        return Err(fail(
            "flip",
            m,
            "The pooler points at the target but is paused; run apply again: it resumes it.",
        ));
    }
    let fenced_ms = ms(fenced.elapsed());
    phases.push(Phase {
        name: "flip".into(),
        ms: ms(t.elapsed()),
    });
    progress(format!("flipped: clients waited at most {fenced_ms} ms"));

    let t = Instant::now();
    let through = Target {
        host: "127.0.0.1".into(),
        port: spec.pooler_port,
        user: spec.target.user.clone(),
        dbname: spec.database.clone(),
        password: spec.target.password.clone(),
        // The local pgbouncer serves no TLS.
        ..Default::default()
    };
    let check = async {
        let c = through.connect().await.map_err(|e| e.to_string())?;
        let post = format!("{marker}-post-check");
        let msgs = c
            .simple_query(&format!(
                "INSERT INTO {MARKER_TABLE} (id) VALUES ({}); SELECT inet_server_port()::text",
                literal(&post)
            ))
            .await
            .map_err(|e| through.err("post-check")(e).to_string())?;
        let port = msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        });
        if port.as_deref() != Some(spec.target.port.to_string().as_str()) {
            return Err(format!(
                "a write through the pooler reached port {port:?}, not the target's {}",
                spec.target.port
            ));
        }
        Ok::<(), String>(())
    };
    if let Err(m) = check.await {
        return Err(fail("post-check", m, "The pooler points at the target; writes may have reached it. Investigate before any rollback."));
    }
    phases.push(Phase {
        name: "post-check".into(),
        ms: ms(t.elapsed()),
    });
    Ok(Outcome {
        phases,
        fenced_ms,
        sequences,
        reverse: spec.reverse,
        marker,
    })
}

/// After a crash: where did the cutover stop? Finishes a decided flip (RELOAD, RESUME) and returns
/// true; otherwise undoes reverse replication, unfences and returns false (the cutover runs again).
pub async fn recover(spec: &Spec) -> Result<bool, String> {
    let b = bouncer(spec);
    let routes = b.routes()?;
    let flipped = routes.iter().any(|r| {
        r.name == spec.database && r.port == spec.target.port && r.host == spec.target.host
    });
    let console = b.admin();
    if flipped {
        pooler::admin(&console, "RELOAD")
            .await
            .map_err(|e| e.to_string())?;
        resume(spec).await?;
        Ok(true)
    } else {
        if spec.reverse {
            undo_reverse(spec).await?;
        }
        resume(spec).await?;
        Ok(false)
    }
}

fn source_route(spec: &Spec) -> Route {
    Route {
        name: spec.database.clone(),
        host: spec.source.host.clone(),
        port: spec.source.port,
        dbname: spec.source.dbname.clone(),
    }
}

/// Rolls a flipped cutover back through its reverse replication: fence the target (PAUSE), wait
/// until the source has every write made on the target (a marker), sync sequences back, point the
/// pooler at the source, RESUME, and remove the reverse replication. Safe to repeat. Without
/// reverse replication it refuses: the target's writes since the flip would be lost.
pub async fn rollback(
    spec: &Spec,
    flipped_at: Option<&str>,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Outcome, CutoverError> {
    let fail = |phase: &str, message: String, state: &str| CutoverError {
        phase: phase.into(),
        message,
        state: state.into(),
    };
    if !spec.reverse {
        return Err(fail(
            "refused",
            format!(
                "the cutover ran without reverse replication, and the target has taken writes since the flip{}; pointing clients back at the source would lose them",
                flipped_at.map(|t| format!(" at {t}")).unwrap_or_default()
            ),
            "Nothing was changed. To go back, copy the target's changes to the source first (or rebuild the source from the target).",
        ));
    }
    let b = bouncer(spec);
    let console = b.admin();
    let on_source = b
        .routes()
        .map_err(|m| fail("inspect", m, "Nothing was changed."))?
        .iter()
        .any(|r| {
            r.name == spec.database && r.port == spec.source.port && r.host == spec.source.host
        });
    let src = spec
        .source
        .connect()
        .await
        .map_err(|e| fail("inspect", e.to_string(), "Nothing was changed."))?;
    let has_reverse: bool = src
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&REVERSE],
        )
        .await
        .map_err(|e| fail("inspect", e.to_string(), "Nothing was changed."))?
        .get(0);
    if on_source && !has_reverse {
        // Done before (an interrupted rollback that had finished its work).
        let _ = pooler::admin(&console, "RELOAD").await;
        resume(spec)
            .await
            .map_err(|m| fail("resume", m, "Run rollback again."))?;
        return Ok(Outcome {
            phases: vec![],
            fenced_ms: 0.0,
            sequences: 0,
            reverse: false,
            marker: String::new(),
        });
    }
    if !has_reverse {
        return Err(fail("refused", "the reverse subscription on the source is gone, so the target's writes cannot be brought back".into(), "Nothing was changed."));
    }
    let mut phases = Vec::new();
    let fenced = Instant::now();
    let paused = tokio::time::timeout(
        Duration::from_millis(spec.fence_timeout_ms),
        pooler::admin(&console, &format!("PAUSE {}", spec.database)),
    )
    .await;
    if !matches!(paused, Ok(Ok(_))) {
        let _ = resume(spec).await;
        return Err(fail(
            "fence",
            "in-flight transactions on the target did not finish in time".into(),
            "Unfenced: clients still use the target.",
        ));
    }
    phases.push(Phase {
        name: "fence".into(),
        ms: ms(fenced.elapsed()),
    });
    let reversed = Spec {
        source: spec.target.clone(),
        target: spec.source.clone(),
        ..spec.clone()
    };
    let marker = format!(
        "rollback-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let t = Instant::now();
    if let Err(m) = wait_marker(&reversed, &marker).await {
        let _ = resume(spec).await;
        return Err(fail(
            "catch-up",
            m,
            "Unfenced: clients still use the target.",
        ));
    }
    phases.push(Phase {
        name: "catch-up".into(),
        ms: ms(t.elapsed()),
    });
    let t = Instant::now();
    let sequences = match sync_sequences(&spec.target, &spec.source, spec.sequence_margin).await {
        Ok(n) => n,
        Err(e) => {
            let _ = resume(spec).await;
            return Err(fail(
                "sequences",
                e.to_string(),
                "Unfenced: clients still use the target.",
            ));
        }
    };
    phases.push(Phase {
        name: "sequences".into(),
        ms: ms(t.elapsed()),
    });
    let t = Instant::now();
    if let Err(m) = b.set_route(&source_route(spec)) {
        let _ = resume(spec).await;
        return Err(fail("flip", m, "Unfenced: clients still use the target."));
    }
    if let Err(e) = pooler::admin(&console, "RELOAD").await {
        return Err(fail(
            "flip",
            e.to_string(),
            "The pooler's file names the source but RELOAD failed; run rollback again.",
        ));
    }
    resume(spec).await.map_err(|m| {
        fail(
            "flip",
            m,
            "The pooler points at the source but is paused; run rollback again.",
        )
    })?;
    let fenced_ms = ms(fenced.elapsed());
    phases.push(Phase {
        name: "flip".into(),
        ms: ms(t.elapsed()),
    });
    progress(format!(
        "flipped back: clients waited at most {fenced_ms} ms"
    ));
    // The reverse replication has done its work.
    if let Err(e) = src
        .batch_execute(&format!("DROP SUBSCRIPTION {REVERSE}"))
        .await
    {
        return Err(fail(
            "cleanup",
            spec.source.err("drop reverse subscription")(e).to_string(),
            "Clients use the source again; drop the reverse subscription by hand.",
        ));
    }
    if let Ok(dst) = spec.target.connect().await {
        let _ = dst
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {REVERSE}"))
            .await;
    }
    Ok(Outcome {
        phases,
        fenced_ms,
        sequences,
        reverse: false,
        marker,
    })
}
