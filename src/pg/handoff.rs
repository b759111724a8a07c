//! The hand-off at a standby's position (case 2's phases): logical slots made on the primary
//! first, then the standby's replay paused at a position every slot can serve and recorded, that
//! position verified on the primary, the load read from the paused standby, its replay resumed,
//! and change capture started exactly there. With native replication (PostgreSQL 10 and later,
//! and the emulation) the start is a subscription created disabled on the existing slot, its
//! replication origin advanced to the position, then enabled; with DMS it is the task's
//! `CdcStartPosition` on the slot its endpoint names.
//!
//! Why this order: a slot can serve any position at or after its confirmed one, and decodes the
//! transactions that commit after the position it is started from; the paused standby shows
//! exactly the transactions committed before its replay position. So a load read there and a
//! capture started there neither miss nor repeat a change.
//!
//! On the primary this makes only slots, publications and the cutover's marker tables; on the
//! standby it only pauses and resumes replay. It must never resume a replay it did not pause in
//! the same hand-off, nor hand on a position a slot cannot serve.

use std::time::{Duration, Instant};

use super::version::{lsn, lsn_text, Version};
use super::{ident, literal, PgError, Target};

/// One slot as the primary reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub plugin: String,
    pub active: bool,
    pub restart: Option<String>,
    pub confirmed: Option<String>,
}

/// The slots of `names` on the primary, by name.
pub async fn slots(primary: &Target, names: &[String]) -> Result<Vec<Slot>, PgError> {
    let c = primary.connect().await?;
    let v = Version::of(primary, &c).await?;
    Ok(c.query(v.slots(), &[&names])
        .await
        .map_err(primary.err("read the replication slots"))?
        .iter()
        .map(|r| Slot {
            name: r.get(0),
            plugin: r.get(1),
            active: r.get(2),
            restart: r.get(3),
            confirmed: r.get(4),
        })
        .collect())
}

/// Creates the logical slots of `names` with `plugin` on the primary, unless they exist (with
/// that plugin); returns each slot's confirmed position.
pub async fn create_slots(
    primary: &Target,
    names: &[String],
    plugin: &str,
) -> Result<Vec<(String, String)>, PgError> {
    let c = primary.connect().await?;
    let v = Version::of(primary, &c).await?;
    if !v.logical_decoding() {
        return Err(PgError::Other(format!(
            "{primary}: {v} has no logical decoding (9.4 and later do): no slot can capture its changes"
        )));
    }
    let have = slots(primary, names).await?;
    for n in names {
        match have.iter().find(|s| &s.name == n) {
            Some(s) if s.plugin != plugin => {
                return Err(PgError::Other(format!(
                    "{primary}: slot `{n}` exists with plugin {}, not {plugin}: drop it (SELECT pg_drop_replication_slot('{n}')) if it is an earlier attempt's, or name the plan's plugin",
                    s.plugin
                )))
            }
            Some(_) => {}
            None => {
                c.query_one(v.create_slot(n, plugin).as_str(), &[])
                    .await
                    .map_err(primary.err(&format!("create slot {n}")))?;
            }
        }
    }
    Ok(slots(primary, names)
        .await?
        .into_iter()
        .map(|s| (s.name, s.confirmed.unwrap_or_default()))
        .collect())
}

/// Drops the slots of `names` that exist, for a restart of their table groups: never one that
/// is active (its consumer, a DMS task or a subscription, must be stopped first). Returns how
/// many it dropped.
pub async fn drop_idle_slots(primary: &Target, names: &[String]) -> Result<usize, PgError> {
    let have = slots(primary, names).await?;
    if let Some(s) = have.iter().find(|s| s.active) {
        return Err(PgError::Other(format!(
            "{primary}: slot `{}` is in use: stop what reads it (its DMS task, or its subscription) before its group restarts",
            s.name
        )));
    }
    let c = primary.connect().await?;
    for s in &have {
        c.execute("SELECT pg_drop_replication_slot($1)", &[&s.name])
            .await
            .map_err(primary.err(&format!("drop slot {}", s.name)))?;
    }
    Ok(have.len())
}

/// The standby's replay, paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    /// The last position replayed: the data there is what the load reads.
    pub lsn: String,
    pub version: Version,
    /// Replay was paused already (an interrupted run of this step, which paused it).
    pub already: bool,
}

/// `(paused, last position replayed, in recovery)` of the standby.
async fn replay_state(
    standby: &Target,
    c: &tokio_postgres::Client,
    v: Version,
) -> Result<(bool, Option<String>, bool), PgError> {
    let r = c
        .query_one(v.replay_state(), &[])
        .await
        .map_err(standby.err("read the replay state"))?;
    Ok((r.get(0), r.get(1), r.get(2)))
}

/// Waits until the standby has replayed at least `at_least` (every slot's confirmed position:
/// the slots can serve what it shows then), pauses its replay and returns the position replay
/// stopped at, once it no longer moves. A replay already paused at or after `at_least` is kept
/// (this step's interrupted run); one paused before it is refused, untouched.
pub async fn pause(
    standby: &Target,
    at_least: &str,
    timeout: Duration,
    report: &(dyn Fn(String) + Send + Sync),
) -> Result<Paused, PgError> {
    let c = standby.connect().await?;
    let v = Version::of(standby, &c).await?;
    let need = lsn(at_least).unwrap_or(0);
    let (paused, at, recovering) = replay_state(standby, &c, v).await?;
    if !recovering {
        return Err(PgError::Other(format!(
            "{standby} is not a standby (it is not in recovery): the load reads from a paused replica of the primary, so that the primary and its other replicas never stop"
        )));
    }
    if paused {
        let at = at.unwrap_or_default();
        if lsn(&at).unwrap_or(0) < need {
            return Err(PgError::Other(format!(
                "{standby}: replay is paused at {at}, before the slots' position {at_least}; the slots cannot serve a load read there. Resume it ({}) if no one else needs it paused, and run again",
                v.resume_replay()
            )));
        }
        return Ok(Paused {
            lsn: at,
            version: v,
            already: true,
        });
    }
    let started = Instant::now();
    let mut said = Instant::now() - Duration::from_secs(10);
    loop {
        let (_, at, _) = replay_state(standby, &c, v).await?;
        let at_n = at.as_deref().and_then(lsn).unwrap_or(0);
        if at_n >= need {
            break;
        }
        if started.elapsed() > timeout {
            return Err(PgError::Other(format!(
                "{standby}: replay reached {} in {} s, not yet the slots' position {at_least}: the standby is behind its primary; look at its replication (pg_stat_wal_receiver) and run again",
                at.unwrap_or_else(|| "nothing".into()),
                timeout.as_secs()
            )));
        }
        if said.elapsed() >= Duration::from_secs(5) {
            report(format!(
                "waiting for the standby to replay up to the slots' position {at_least} (at {}, {} behind)",
                at.unwrap_or_default(),
                human_bytes(need.saturating_sub(at_n))
            ));
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.query_one(v.pause_replay(), &[])
        .await
        .map_err(standby.err("pause replay"))?;
    // A pause is a request: replay may finish a record or two. The position is read once it
    // holds still.
    let mut last = String::new();
    let mut same = 0;
    let t0 = Instant::now();
    while same < 3 {
        let (paused, at, _) = replay_state(standby, &c, v).await?;
        if !paused {
            return Err(PgError::Other(format!(
                "{standby}: replay was resumed by someone else right after this step paused it; run again"
            )));
        }
        let at = at.unwrap_or_default();
        if at == last {
            same += 1;
        } else {
            same = 0;
            last = at;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(PgError::Other(format!(
                "{standby}: replay kept moving for 30 s after it was paused"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Paused {
        lsn: last,
        version: v,
        already: false,
    })
}

/// Whether the standby's replay is paused at `at` still (the load's data did not move).
pub async fn still_paused(standby: &Target, at: &str) -> Result<(), PgError> {
    let c = standby.connect().await?;
    let v = Version::of(standby, &c).await?;
    let (paused, now, _) = replay_state(standby, &c, v).await?;
    let now = now.unwrap_or_default();
    if !paused || lsn(&now) != lsn(at) {
        return Err(PgError::Other(format!(
            "{standby}: replay is {} (at {now}), not paused at {at} as the hand-off left it: what was read may be newer than the recorded position; run the hand-off again from the pause (`plan apply STACK --replace` the pause step)",
            if paused { "paused elsewhere" } else { "running" }
        )));
    }
    Ok(())
}

/// Resumes the standby's replay, unless it runs.
pub async fn resume(standby: &Target) -> Result<bool, PgError> {
    let c = standby.connect().await?;
    let v = Version::of(standby, &c).await?;
    let (paused, _, recovering) = replay_state(standby, &c, v).await?;
    if !recovering || !paused {
        return Ok(false);
    }
    c.query_one(v.resume_replay(), &[])
        .await
        .map_err(standby.err("resume replay"))?;
    Ok(true)
}

/// Checks on the primary that change capture can start at `at` on each slot of `names`: the
/// standby is the primary's (one system identifier), the position is not ahead of the primary,
/// and each slot exists, is not in use, and still holds the WAL from there (its restart and
/// confirmed positions at or before it). Returns the position capture starts at: `at` itself,
/// since a slot serves any position from its confirmed one on.
pub async fn verify(
    primary: &Target,
    standby: &Target,
    names: &[String],
    at: &str,
) -> Result<String, PgError> {
    let want = lsn(at).ok_or_else(|| {
        PgError::Other(format!("`{at}` is not a WAL position (such as 0/16B3748)"))
    })?;
    let p = primary.connect().await?;
    let s = standby.connect().await?;
    let id = "SELECT system_identifier::text FROM pg_control_system()";
    let pid: String = p
        .query_one(id, &[])
        .await
        .map_err(primary.err("read the system identifier"))?
        .get(0);
    let sid: String = s
        .query_one(id, &[])
        .await
        .map_err(standby.err("read the system identifier"))?
        .get(0);
    if pid != sid {
        return Err(PgError::Other(format!(
            "{standby} is not a replica of {primary} (system identifiers {sid} and {pid}): its position means nothing on that primary; name the primary's own standby"
        )));
    }
    let v = Version::of(primary, &p).await?;
    let current: String = p
        .query_one(v.current_lsn(), &[])
        .await
        .map_err(primary.err("read the current WAL position"))?
        .get(0);
    if lsn(&current).unwrap_or(0) < want {
        return Err(PgError::Other(format!(
            "{primary}: the recorded position {at} is ahead of the primary's {current}"
        )));
    }
    let found = slots(primary, names).await?;
    for n in names {
        let Some(slot) = found.iter().find(|s| &s.name == n) else {
            return Err(PgError::Other(format!(
                "{primary}: slot `{n}` is gone: change capture cannot start at {at} without it; the hand-off starts over from the slots (`plan apply STACK --replace` the slots step)"
            )));
        };
        if slot.active {
            return Err(PgError::Other(format!(
                "{primary}: slot `{n}` is in use by another session: something already reads it, and may have moved it past {at}"
            )));
        }
        for (what, pos) in [("restart", &slot.restart), ("confirmed", &slot.confirmed)] {
            let pos_n = pos.as_deref().and_then(lsn).unwrap_or(u64::MAX);
            if pos_n > want {
                return Err(PgError::Other(format!(
                    "{primary}: slot `{n}`'s {what} position {} is after the recorded {at}: the changes in between are gone from it, and a task started there would fail (or miss them). Start the hand-off over from the slots",
                    pos.clone().unwrap_or_else(|| "(none)".into())
                )));
            }
        }
    }
    Ok(lsn_text(want))
}

/// Starts native replication of each group at `at`: its subscription created disabled on the
/// existing slot, without copying, its replication origin advanced to `at`, then enabled. A
/// subscription an interrupted run left disabled with its origin before `at` is finished the
/// same way; one whose origin is past `at` (it has streamed: a later step disabled it) is left
/// as it is.
pub async fn subscribe_at(
    source: &Target,
    target: &Target,
    setup: &super::replication::Setup,
    at: &str,
) -> Result<(), PgError> {
    let want = lsn(at).unwrap_or(0);
    let dst = target.connect().await?;
    for g in &setup.groups {
        if !super::replication::subscribed(target, &dst, &g.subscription).await? {
            // Disabled until its origin is at the position: created enabled, it would stream
            // from the slot's confirmed position, before the load's data.
            dst.batch_execute(&format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false, create_slot = false, enabled = false, slot_name = {})",
                ident(&g.subscription),
                literal(&source.conninfo()),
                ident(&g.publication),
                literal(&g.slot),
            ))
            .await
            .map_err(target.err("create subscription"))?;
        }
        let r = dst
            .query_one(
                "SELECT subenabled, pg_replication_origin_progress('pg_' || oid, false)::text FROM pg_subscription WHERE subname = $1",
                &[&g.subscription],
            )
            .await
            .map_err(target.err("read the subscription"))?;
        let (enabled, progress): (bool, Option<String>) = (r.get(0), r.get(1));
        let progress = progress.as_deref().and_then(lsn).unwrap_or(0);
        if enabled || progress > want {
            continue;
        }
        if progress < want {
            dst.execute(
                "SELECT pg_replication_origin_advance('pg_' || oid, $2::text::pg_lsn) FROM pg_subscription WHERE subname = $1",
                &[&g.subscription, &at],
            )
            .await
            .map_err(target.err("advance the subscription's origin"))?;
        }
        dst.batch_execute(&format!(
            "ALTER SUBSCRIPTION {} ENABLE",
            ident(&g.subscription)
        ))
        .await
        .map_err(target.err("enable subscription"))?;
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} kB", n / 1024)
    }
}
