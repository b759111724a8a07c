//! What differs between PostgreSQL major versions for the statements the data plane sends to a
//! source, in one place: PostgreSQL 10 renamed `xlog` to `wal` and `location` to `lsn` in its
//! functions, added `pg_sequences` and native logical replication, and 12 added generated
//! columns. Every step that can face an old source (9.6 in case 2) asks this module for its SQL.
//!
//! It only builds statements and reads the version; it must never send a statement itself, and
//! never answer for a version it does not know with the newer spelling silently: below 9.4 (no
//! logical decoding) it says so through [`Version::logical_decoding`].

use std::fmt;

/// A server's version, as `server_version_num` gives it (90624 for 9.6.24, 120008 for 12.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub i32);

impl Version {
    /// The version of the server `c` talks to.
    pub async fn of(
        t: &super::Target,
        c: &tokio_postgres::Client,
    ) -> Result<Version, super::PgError> {
        let v: String = c
            .query_one("SELECT current_setting('server_version_num')", &[])
            .await
            .map_err(t.err("read the server's version"))?
            .get(0);
        Ok(Version(v.trim().parse().unwrap_or(0)))
    }

    /// The major version as people write it (9.6, 12).
    pub fn major(&self) -> String {
        if self.0 >= 100_000 {
            (self.0 / 10_000).to_string()
        } else {
            format!("{}.{}", self.0 / 10_000, self.0 / 100 % 100)
        }
    }

    fn wal(&self) -> bool {
        self.0 >= 100_000
    }

    /// Whether the server can publish tables to native logical replication (10 and later).
    pub fn native_logical_replication(&self) -> bool {
        self.0 >= 100_000
    }

    /// Whether the server decodes its WAL logically at all (9.4 and later), which slots for
    /// pglogical and DMS need.
    pub fn logical_decoding(&self) -> bool {
        self.0 >= 90_400
    }

    /// The server's current WAL write position, as text.
    pub fn current_lsn(&self) -> &'static str {
        if self.wal() {
            "SELECT pg_current_wal_lsn()::text"
        } else {
            "SELECT pg_current_xlog_location()::text"
        }
    }

    /// The function giving the distance in bytes between two positions.
    pub fn lsn_diff(&self) -> &'static str {
        if self.wal() {
            "pg_wal_lsn_diff"
        } else {
            "pg_xlog_location_diff"
        }
    }

    /// On a standby: pause its replay.
    pub fn pause_replay(&self) -> &'static str {
        if self.wal() {
            "SELECT pg_wal_replay_pause()"
        } else {
            "SELECT pg_xlog_replay_pause()"
        }
    }

    /// On a standby: resume its replay.
    pub fn resume_replay(&self) -> &'static str {
        if self.wal() {
            "SELECT pg_wal_replay_resume()"
        } else {
            "SELECT pg_xlog_replay_resume()"
        }
    }

    /// (whether replay is paused, the last position replayed as text, whether the server is in
    /// recovery at all); on a primary (false, NULL, false): the pause functions, which fail there,
    /// are not called.
    pub fn replay_state(&self) -> &'static str {
        if self.wal() {
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, pg_last_wal_replay_lsn()::text, pg_is_in_recovery()"
        } else {
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_is_xlog_replay_paused() ELSE false END, pg_last_xlog_replay_location()::text, pg_is_in_recovery()"
        }
    }

    /// The user sequences' names (`schema.name`, quoted) and, from 10 on, their last values
    /// (NULL until first used). Before 10 there is no `pg_sequences`: the second column is NULL
    /// and [`Version::sequence_values`] reads each sequence.
    pub fn sequences(&self) -> &'static str {
        if self.wal() {
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences
             WHERE schemaname NOT IN ('pg_catalog','information_schema')"
        } else {
            "SELECT format('%I.%I', n.nspname, c.relname), NULL::bigint FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog','information_schema')"
        }
    }

    /// Before 10: one statement reading the last values of `names` (quoted `schema.name`, as
    /// [`Version::sequences`] gives them), NULL where a sequence was never used. None from 10 on,
    /// or when there are none.
    pub fn sequence_values(&self, names: &[String]) -> Option<String> {
        if self.wal() || names.is_empty() {
            return None;
        }
        Some(
            names
                .iter()
                .map(|n| {
                    format!(
                        "SELECT {}::text, CASE WHEN is_called THEN last_value END FROM {n}",
                        super::literal(n)
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL "),
        )
    }

    /// The condition on `pg_attribute a` that leaves generated columns out of a copy (`a.attgenerated`
    /// exists from 12 on; before, there are none).
    pub fn not_generated(&self) -> &'static str {
        if self.0 >= 120_000 {
            "a.attgenerated = ''"
        } else {
            "true"
        }
    }

    /// The condition on `pg_class c` that leaves partitions out (their parent stands for them);
    /// partitions exist from 10 on.
    pub fn not_partition(&self) -> &'static str {
        if self.wal() {
            "NOT c.relispartition"
        } else {
            "true"
        }
    }

    /// The condition on `pg_stat_activity` that keeps client sessions only. From 10 on it says
    /// `backend_type`; before, the view lists backends only, of which autovacuum workers are
    /// told apart by their query.
    pub fn client_backends(&self) -> &'static str {
        if self.wal() {
            "backend_type = 'client backend'"
        } else {
            "coalesce(query, '') NOT LIKE 'autovacuum:%'"
        }
    }

    /// Creates the logical slot `slot` with `plugin` (both quoted as literals).
    pub fn create_slot(&self, slot: &str, plugin: &str) -> String {
        format!(
            "SELECT lsn::text FROM pg_create_logical_replication_slot({}, {}) AS s(name, lsn)",
            super::literal(slot),
            super::literal(plugin)
        )
    }

    /// Each of `$1` (slot names): (name, plugin, active, restart position, confirmed position).
    pub fn slots(&self) -> &'static str {
        "SELECT slot_name::text, plugin::text, active, restart_lsn::text, confirmed_flush_lsn::text
         FROM pg_replication_slots WHERE slot_name = ANY($1) ORDER BY slot_name"
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

/// A WAL position (`0/16B3748`) as a number, for comparing; None when it is not one.
pub fn lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

/// A number as a WAL position's text.
pub fn lsn_text(n: u64) -> String {
    format!("{:X}/{:X}", n >> 32, n & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V96: Version = Version(90624);
    const V12: Version = Version(120008);
    const V15: Version = Version(150004);

    #[test]
    fn majors_are_written_as_people_write_them() {
        assert_eq!(V96.major(), "9.6");
        assert_eq!(V12.major(), "12");
        assert_eq!(V15.to_string(), "PostgreSQL 15");
        assert!(!V96.native_logical_replication() && V96.logical_decoding());
        assert!(V12.native_logical_replication());
        assert!(!Version(90313).logical_decoding());
    }

    #[test]
    fn nine_six_gets_the_xlog_spelling_and_ten_on_the_wal_one() {
        assert_eq!(V96.current_lsn(), "SELECT pg_current_xlog_location()::text");
        assert_eq!(V12.current_lsn(), "SELECT pg_current_wal_lsn()::text");
        assert_eq!(V96.lsn_diff(), "pg_xlog_location_diff");
        assert_eq!(V15.lsn_diff(), "pg_wal_lsn_diff");
        assert_eq!(V96.pause_replay(), "SELECT pg_xlog_replay_pause()");
        assert_eq!(V12.pause_replay(), "SELECT pg_wal_replay_pause()");
        assert_eq!(V96.resume_replay(), "SELECT pg_xlog_replay_resume()");
        assert_eq!(V12.resume_replay(), "SELECT pg_wal_replay_resume()");
        assert!(V96.replay_state().contains("pg_is_xlog_replay_paused()"));
        assert!(V96
            .replay_state()
            .contains("pg_last_xlog_replay_location()"));
        assert!(V12.replay_state().contains("pg_last_wal_replay_lsn()"));
        for v in [V96, V12, V15] {
            for sql in [v.current_lsn(), v.pause_replay(), v.replay_state()] {
                assert_eq!(sql.contains("xlog"), v.0 < 100_000, "{v}: {sql}");
                assert_eq!(sql.contains("wal"), v.0 >= 100_000, "{v}: {sql}");
            }
        }
    }

    #[test]
    fn sequences_before_ten_come_from_pg_class_and_are_read_one_by_one() {
        assert!(V12.sequences().contains("FROM pg_sequences"));
        assert!(!V96.sequences().contains("pg_sequences"));
        assert!(V96.sequences().contains("relkind = 'S'"));
        assert_eq!(V12.sequence_values(&["public.s".into()]), None);
        assert_eq!(V96.sequence_values(&[]), None);
        assert_eq!(
            V96.sequence_values(&["public.a_id_seq".into(), "\"Odd\".\"s\"".into()])
                .unwrap(),
            "SELECT 'public.a_id_seq'::text, CASE WHEN is_called THEN last_value END FROM public.a_id_seq UNION ALL SELECT '\"Odd\".\"s\"'::text, CASE WHEN is_called THEN last_value END FROM \"Odd\".\"s\""
        );
    }

    #[test]
    fn generated_columns_are_filtered_only_where_they_exist() {
        assert_eq!(V96.not_generated(), "true");
        assert_eq!(Version(110012).not_generated(), "true");
        assert_eq!(V12.not_generated(), "a.attgenerated = ''");
        assert_eq!(V96.not_partition(), "true");
        assert!(!V96.client_backends().contains("backend_type"));
        assert_eq!(V15.client_backends(), "backend_type = 'client backend'");
        assert_eq!(V12.not_partition(), "NOT c.relispartition");
    }

    #[test]
    fn positions_compare_as_numbers() {
        assert_eq!(lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(lsn("1/0"), Some(1 << 32));
        assert!(lsn("0/FFFFFFFF") < lsn("1/0"));
        assert_eq!(lsn("nonsense"), None);
        assert_eq!(lsn("0/"), None);
        assert_eq!(lsn_text(0x1_0000_00A0), "1/A0");
        assert_eq!(lsn(&lsn_text(123_456_789)), Some(123_456_789));
        assert_eq!(
            V96.create_slot("s1", "pglogical_output"),
            "SELECT lsn::text FROM pg_create_logical_replication_slot('s1', 'pglogical_output') AS s(name, lsn)"
        );
    }
}
