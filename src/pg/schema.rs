//! Schema drift between a source and its target while replication runs: the tables, their
//! columns and types, the unique constraints and indexes, the foreign keys and check constraints,
//! and the sequences of both sides, read from the catalogs and compared. Logical replication
//! carries rows, not DDL, so a table created on one side only, a column added on one side, a type
//! changed, or a unique, foreign-key or check constraint on one side only loses or changes data at
//! the cutover (or changes which writes the new database accepts); those are errors, and a
//! non-unique index on one side only is a warning.
//!
//! As replication starts, a digest of each object of the source is recorded (`digest`, in the
//! replicate step's outputs); with it, each difference says which side changed since.
//!
//! It only reads the catalogs (no lock beyond what a catalog query takes) and never changes
//! either side.

use std::collections::{BTreeMap, BTreeSet};

use super::{PgError, Target};

/// What the comparison reads of one side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// `schema.table` to its columns (name, type, NOT NULL), in column order.
    pub tables: BTreeMap<String, Vec<Column>>,
    /// Index definitions without their names (`public.t USING btree (a)`), by uniqueness.
    pub unique: BTreeSet<String>,
    pub indexes: BTreeSet<String>,
    /// `schema.sequence`.
    pub sequences: BTreeSet<String>,
    /// Foreign keys and check constraints without their names (`public.t FOREIGN KEY (a)
    /// REFERENCES b(id)`; `NOT VALID` dropped: such a constraint still checks new rows).
    pub constraints: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
    pub not_null: bool,
}

/// What differs, in a person's words: errors stop a cutover, warnings are reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Drift {
    /// The refusal of a cutover (or a wait) that found errors.
    pub fn refusal(&self) -> String {
        format!(
            "the source's and the target's schemas differ in ways that lose or change data: {}. Make both sides match (the same DDL on the target, or undo it on the source; a new source table is taken in by a pg.extend_replication step), then run again",
            self.errors.join("; ")
        )
    }
}

/// Objects of the tool's own or of a data path's, never compared: DMS's control tables on the
/// target (`awsdms_*`).
fn ignored(table: &str) -> bool {
    table
        .split_once('.')
        .map(|(_, n)| n.starts_with("awsdms_"))
        .unwrap_or(false)
}

const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'";

/// Not a member of an extension (its objects come with it).
const NOT_EXTENSION: &str =
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype = 'e')";

/// Reads the catalog of `t`'s database.
pub async fn catalog(t: &Target) -> Result<Catalog, PgError> {
    let c = t.connect().await?;
    let mut out = Catalog::default();
    let cols = c
        .query(
            &format!(
                "SELECT format('%s.%s', n.nspname, c.relname), a.attname::text,
                        format_type(a.atttypid, a.atttypmod), a.attnotnull
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 WHERE c.relkind IN ('r','p') AND c.relpersistence = 'p' AND NOT c.relispartition
                   AND {USER_SCHEMAS} AND {NOT_EXTENSION}
                 ORDER BY 1, a.attnum"
            ),
            &[],
        )
        .await
        .map_err(t.err("read the tables' columns"))?;
    for r in &cols {
        let table: String = r.get(0);
        if ignored(&table) {
            continue;
        }
        let e = out.tables.entry(table).or_default();
        if let Some(name) = r.get::<_, Option<String>>(1) {
            e.push(Column {
                name,
                type_name: r.get(2),
                not_null: r.get(3),
            });
        }
    }
    let idx = c
        .query(
            &format!(
                "SELECT i.indisunique,
                        regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX (\"[^\"]+\"|\\S+) ON (ONLY )?', ''),
                        format('%s.%s', n.nspname, c.relname)
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r','p') AND {USER_SCHEMAS} AND {NOT_EXTENSION}"
            ),
            &[],
        )
        .await
        .map_err(t.err("read the indexes"))?;
    for r in &idx {
        if ignored(&r.get::<_, String>(2)) {
            continue;
        }
        let def: String = r.get(1);
        if r.get(0) {
            out.unique.insert(def);
        } else {
            out.indexes.insert(def);
        }
    }
    let seqs = c
        .query(
            &format!(
                "SELECT format('%s.%s', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind = 'S' AND {USER_SCHEMAS} AND {NOT_EXTENSION}"
            ),
            &[],
        )
        .await
        .map_err(t.err("read the sequences"))?;
    out.sequences = seqs.iter().map(|r| r.get(0)).collect();
    let cons = c
        .query(
            &format!(
                "SELECT format('%s.%s', n.nspname, c.relname),
                        replace(pg_get_constraintdef(k.oid), ' NOT VALID', '')
                 FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE k.contype IN ('f','c') AND c.relkind IN ('r','p') AND NOT c.relispartition
                   AND {USER_SCHEMAS} AND {NOT_EXTENSION}"
            ),
            &[],
        )
        .await
        .map_err(t.err("read the foreign keys and check constraints"))?;
    for r in &cons {
        let table: String = r.get(0);
        if !ignored(&table) {
            out.constraints
                .insert(format!("{table} {}", r.get::<_, String>(1)));
        }
    }
    Ok(out)
}

/// Compares the two sides.
pub fn compare(source: &Catalog, target: &Catalog) -> Drift {
    compare_since(None, source, target)
}

/// A digest of each object of a catalog (`table T`, `column T.c`, `unique DEF`, `index DEF`,
/// `sequence S`), recorded as replication starts so a later drift can say which side changed.
pub fn digest(c: &Catalog) -> BTreeMap<String, String> {
    let h = |s: &str| format!("{:08x}", crc32fast::hash(s.as_bytes()));
    let mut out = BTreeMap::new();
    for (t, cols) in &c.tables {
        out.insert(format!("table {t}"), h(""));
        for col in cols {
            out.insert(
                format!("column {t}.{}", col.name),
                h(&format!("{} {}", col.type_name, col.not_null)),
            );
        }
    }
    for u in &c.unique {
        out.insert(format!("unique {u}"), h(""));
    }
    for i in &c.indexes {
        out.insert(format!("index {i}"), h(""));
    }
    for s in &c.sequences {
        out.insert(format!("sequence {s}"), h(""));
    }
    for k in &c.constraints {
        out.insert(format!("constraint {k}"), h(""));
    }
    out
}

/// [`compare`], each error saying which side changed since `start` (the digest recorded as
/// replication started), when it is known.
pub fn compare_since(
    start: Option<&BTreeMap<String, String>>,
    source: &Catalog,
    target: &Catalog,
) -> Drift {
    let mut d = Drift::default();
    let mut keyed: Vec<(String, String)> = vec![];
    for (t, cols) in &source.tables {
        let Some(tcols) = target.tables.get(t) else {
            keyed.push((
                format!("table {t}"),
                format!("table `{t}` is on the source only"),
            ));
            continue;
        };
        for c in cols {
            match tcols.iter().find(|x| x.name == c.name) {
                None => keyed.push((
                    format!("column {t}.{}", c.name),
                    format!("column `{t}.{}` is on the source only", c.name),
                )),
                Some(x) if x.type_name != c.type_name => keyed.push((
                    format!("column {t}.{}", c.name),
                    format!(
                        "column `{t}.{}` is {} on the source and {} on the target",
                        c.name, c.type_name, x.type_name
                    ),
                )),
                Some(x) if x.not_null && !c.not_null => keyed.push((
                    format!("column {t}.{}", c.name),
                    format!(
                        "column `{t}.{}` is NOT NULL on the target only (a NULL from the source stops replication)",
                        c.name
                    ),
                )),
                Some(_) => {}
            }
        }
        for x in tcols {
            if !cols.iter().any(|c| c.name == x.name) {
                keyed.push((
                    format!("column {t}.{}", x.name),
                    format!("column `{t}.{}` is on the target only", x.name),
                ));
            }
        }
    }
    for t in target.tables.keys() {
        if !source.tables.contains_key(t) {
            keyed.push((
                format!("table {t}"),
                format!("table `{t}` is on the target only"),
            ));
        }
    }
    for u in source.unique.difference(&target.unique) {
        keyed.push((
            format!("unique {u}"),
            format!("unique index or constraint `{u}` is on the source only"),
        ));
    }
    for u in target.unique.difference(&source.unique) {
        keyed.push((
            format!("unique {u}"),
            format!(
                "unique index or constraint `{u}` is on the target only (rows the source accepts would stop replication)"
            ),
        ));
    }
    for (s, side) in one_sided(&source.sequences, &target.sequences) {
        keyed.push((
            format!("sequence {s}"),
            format!(
                "sequence `{s}` is on the {side} only (the cutover carries sequences over by name)"
            ),
        ));
    }
    for (k, side) in one_sided(&source.constraints, &target.constraints) {
        let effect = if side == "source" {
            "the target would accept writes the source refuses"
        } else if k.contains(" CHECK ") {
            "a row the source accepts stops replication"
        } else {
            "writes the source accepts would be refused after the cutover"
        };
        keyed.push((
            format!("constraint {k}"),
            format!("constraint `{k}` is on the {side} only ({effect})"),
        ));
    }
    for (i, side) in one_sided(&source.indexes, &target.indexes) {
        d.warnings.push(format!(
            "index `{i}` is on the {side} only (queries may run differently after the cutover)"
        ));
    }
    let (now_s, now_t) = match start {
        Some(_) => (digest(source), digest(target)),
        None => Default::default(),
    };
    for (key, message) in keyed {
        let side = start.map(|st| {
            let (was, s, t) = (st.get(&key), now_s.get(&key), now_t.get(&key));
            if was == t {
                " (changed on the source since replication started)"
            } else if was == s {
                " (changed on the target since replication started)"
            } else {
                " (changed on both sides since replication started)"
            }
        });
        d.errors.push(format!("{message}{}", side.unwrap_or("")));
    }
    d
}

/// What only one of the two sets has, with the side that has it.
fn one_sided<'a>(
    source: &'a BTreeSet<String>,
    target: &'a BTreeSet<String>,
) -> impl Iterator<Item = (&'a String, &'static str)> {
    source.symmetric_difference(target).map(move |x| {
        (
            x,
            if source.contains(x) {
                "source"
            } else {
                "target"
            },
        )
    })
}

/// Reads both sides and compares them (with `start`, the digest recorded as replication
/// started, each error says which side changed).
pub async fn drift(
    source: &Target,
    target: &Target,
    start: Option<&BTreeMap<String, String>>,
) -> Result<Drift, PgError> {
    let (s, t) = tokio::join!(catalog(source), catalog(target));
    Ok(compare_since(start, &s?, &t?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            not_null,
        }
    }

    fn base() -> Catalog {
        let mut c = Catalog::default();
        c.tables.insert(
            "public.a".into(),
            vec![col("id", "bigint", true), col("v", "text", false)],
        );
        c.unique.insert("public.a USING btree (id)".into());
        c.indexes.insert("public.a USING btree (v)".into());
        c.sequences.insert("public.a_id_seq".into());
        c
    }

    #[test]
    fn equal_catalogs_have_no_drift() {
        assert_eq!(compare(&base(), &base()), Drift::default());
    }

    #[test]
    fn each_kind_of_drift_is_named_with_its_side() {
        let s = base();
        let mut t = base();
        t.tables.get_mut("public.a").unwrap()[1] = col("v", "character varying(10)", true);
        t.tables
            .get_mut("public.a")
            .unwrap()
            .push(col("extra", "integer", false));
        t.tables.insert("public.only_t".into(), vec![]);
        t.unique.insert("public.a USING btree (v)".into());
        t.indexes.clear();
        t.sequences.clear();
        let d = compare(&s, &t);
        let all = d.errors.join("\n");
        for want in [
            "column `public.a.v` is text on the source and character varying(10) on the target",
            "column `public.a.extra` is on the target only",
            "table `public.only_t` is on the target only",
            "unique index or constraint `public.a USING btree (v)` is on the target only",
            "sequence `public.a_id_seq` is on the source only",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("`public.a USING btree (v)` is on the source only"));
        assert!(d.refusal().contains("pg.extend_replication"));
    }

    #[test]
    fn a_stricter_target_column_is_an_error_and_a_looser_one_is_not() {
        let s = base();
        let mut t = base();
        t.tables.get_mut("public.a").unwrap()[1] = col("v", "text", true);
        assert_eq!(compare(&s, &t).errors.len(), 1);
        assert!(compare(&t, &s).errors.is_empty());
    }

    #[test]
    fn with_the_digest_at_the_start_each_error_names_the_side_that_changed() {
        let start = digest(&base());
        let mut s = base();
        s.tables
            .get_mut("public.a")
            .unwrap()
            .push(col("added", "integer", false));
        let mut t = base();
        t.unique.insert("public.a USING btree (v)".into());
        let d = compare_since(Some(&start), &s, &t);
        assert_eq!(d.errors.len(), 2, "{:?}", d.errors);
        assert!(d.errors.iter().any(|e| e.contains("`public.a.added` is on the source only (changed on the source since replication started)")), "{:?}", d.errors);
        assert!(d.errors.iter().any(|e| e.contains("`public.a USING btree (v)` is on the target only (rows the source accepts would stop replication) (changed on the target since replication started)")), "{:?}", d.errors);
        // Without it, the same errors, without a side.
        assert!(compare(&s, &t)
            .errors
            .iter()
            .all(|e| !e.contains("since replication started")));
    }

    #[test]
    fn a_foreign_key_or_check_on_one_side_is_an_error_saying_what_it_changes() {
        let mut s = base();
        s.constraints
            .insert("public.a FOREIGN KEY (v) REFERENCES b(v)".into());
        let mut t = base();
        t.constraints.insert("public.a CHECK ((id > 0))".into());
        let d = compare(&s, &t);
        assert_eq!(d.errors.len(), 2, "{:?}", d.errors);
        assert!(d.errors.iter().any(|e| e == "constraint `public.a FOREIGN KEY (v) REFERENCES b(v)` is on the source only (the target would accept writes the source refuses)"), "{:?}", d.errors);
        assert!(d.errors.iter().any(|e| e == "constraint `public.a CHECK ((id > 0))` is on the target only (a row the source accepts stops replication)"), "{:?}", d.errors);
        t.constraints = s.constraints.clone();
        assert!(compare(&s, &t).errors.is_empty());
    }

    #[test]
    fn dms_control_tables_are_ignored() {
        assert!(ignored("public.awsdms_apply_exceptions"));
        assert!(!ignored("public.accounts"));
    }
}
