//! Typed models of a resource type's inputs and outputs: a struct per model, with what forces a
//! replacement, what is used only at create and what is secret declared once, beside the field
//! ([`model!`]). Providers read a node's inputs as their model at the boundary
//! ([`Model::from_attrs`]) and build what they observe from one ([`Model::to_attrs`]); builders and
//! handles name keys by the model's constants (`SecurityGroupArgs::vpc`), so a misspelled key does
//! not compile.
//!
//! It must never hold a revealed secret beyond the call that needed it: a model read from revealed
//! inputs lives only for that call, and `to_attrs` of an observed object leaves sensitive fields out.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::provider::ProviderError;
use crate::value::{Attrs, Value};

/// What the engine must know of one field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    pub key: &'static str,
    /// A change replaces the object (the provider cannot change it in place).
    pub replace: bool,
    /// Used only when the object is created; never diffed afterwards.
    pub create_only: bool,
    /// A secret: given as a secret reference, never a literal, never observed.
    pub sensitive: bool,
}

impl Field {
    pub const fn new(key: &'static str) -> Field {
        Field {
            key,
            replace: false,
            create_only: false,
            sensitive: false,
        }
    }
    pub const fn replace(self) -> Field {
        Field {
            replace: true,
            ..self
        }
    }
    pub const fn create_only(self) -> Field {
        Field {
            create_only: true,
            ..self
        }
    }
    pub const fn sensitive(self) -> Field {
        Field {
            sensitive: true,
            ..self
        }
    }
}

/// A field's key: its name, without the `r#` of a raw identifier (`r#type` is `type`, as serde
/// names it).
pub const fn key(name: &'static str) -> &'static str {
    let b = name.as_bytes();
    if b.len() > 2 && b[0] == b'r' && b[1] == b'#' {
        match std::str::from_utf8(b.split_at(2).1) {
            Ok(k) => k,
            Err(_) => name,
        }
    } else {
        name
    }
}

/// Which flag [`keys_with`] picks.
#[derive(Clone, Copy)]
pub enum Flag {
    Replace,
    CreateOnly,
    Sensitive,
}

/// The keys of `fields` with `flag` set, in declaration order, as a fixed array and a count (so
/// that the model's slices are constants).
pub const fn keys_with<const N: usize>(fields: &[Field], flag: Flag) -> ([&'static str; N], usize) {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < fields.len() {
        let f = fields[i];
        let set = match flag {
            Flag::Replace => f.replace,
            Flag::CreateOnly => f.create_only,
            Flag::Sensitive => f.sensitive,
        };
        if set {
            out[n] = f.key;
            n += 1;
        }
        i += 1;
    }
    (out, n)
}

/// A model of a type's inputs or outputs.
pub trait Model: Serialize + DeserializeOwned {
    const FIELDS: &'static [Field];
    const REPLACE: &'static [&'static str];
    const CREATE_ONLY: &'static [&'static str];
    const SENSITIVE: &'static [&'static str];

    /// The model of resolved (and, for the call, revealed) inputs or outputs. `what` names the
    /// node for the error, which means a plan and its type disagree (a bug to report, not a
    /// user's typo: builders name keys by the model's constants).
    fn from_attrs(what: &str, a: &Attrs) -> Result<Self, ProviderError> {
        let v = Value::Object(a.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        serde_json::from_value(v).map_err(|e| {
            ProviderError::new(format!(
                "{what}: its inputs do not fit its type ({e}); the plan was built by another version of cutover, or a value is still unresolved"
            ))
        })
    }

    /// The model as attributes, leaving out what is absent (`None`) and every sensitive field
    /// (never observed, stored or shown).
    fn to_attrs(&self) -> Attrs {
        let Ok(Value::Object(m)) = serde_json::to_value(self) else {
            return Attrs::new();
        };
        m.into_iter()
            .filter(|(k, v)| !v.is_null() && !Self::SENSITIVE.contains(&k.as_str()))
            .collect()
    }
}

/// A model struct: `name: Type [flags]` fields, each flag one of `replace`, `create_only` and
/// `sensitive`; a struct may end with `.. rest: Map` to take every other key (a parameter group's
/// `parameter.NAME` inputs), else a key the struct does not name is refused when read.
#[macro_export]
macro_rules! model {
    (
        $(#[doc = $doc:expr])*
        pub struct $name:ident {
            $(
                $(#[doc = $fdoc:expr])*
                $field:ident : $ty:ty $([$($flag:ident),+])?
            ),* $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[doc = $fdoc])* pub $field: $ty, )*
        }
        $crate::model!(@impl $name { $( $field $([$($flag),+])? ),* });
    };
    (
        $(#[doc = $doc:expr])*
        pub struct $name:ident {
            $(
                $(#[doc = $fdoc:expr])*
                $field:ident : $ty:ty $([$($flag:ident),+])?,
            )*
            ..
            $(#[doc = $rdoc:expr])*
            $rest:ident : $rty:ty $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            $( $(#[doc = $fdoc])* pub $field: $ty, )*
            $(#[doc = $rdoc])*
            #[serde(flatten)]
            pub $rest: $rty,
        }
        $crate::model!(@impl $name { $( $field $([$($flag),+])? ),* });
    };
    (@impl $name:ident { $( $field:ident $([$($flag:ident),+])? ),* }) => {
        #[allow(non_upper_case_globals, dead_code)]
        impl $name {
            $( pub const $field: &'static str = $crate::provider::model::key(stringify!($field)); )*
        }
        impl $crate::provider::model::Model for $name {
            const FIELDS: &'static [$crate::provider::model::Field] = &[
                $(
                    $crate::provider::model::Field::new($crate::provider::model::key(stringify!($field)))
                        $($( .$flag() )+)?
                ),*
            ];
            const REPLACE: &'static [&'static str] =
                $crate::model!(@pick $name, Replace, $($field)*);
            const CREATE_ONLY: &'static [&'static str] =
                $crate::model!(@pick $name, CreateOnly, $($field)*);
            const SENSITIVE: &'static [&'static str] =
                $crate::model!(@pick $name, Sensitive, $($field)*);
        }
    };
    (@pick $name:ident, $flag:ident, $($field:ident)*) => {{
        const N: usize = [$(stringify!($field)),*].len();
        const P: ([&'static str; N], usize) = $crate::provider::model::keys_with(
            <$name as $crate::provider::model::Model>::FIELDS,
            $crate::provider::model::Flag::$flag,
        );
        P.0.split_at(P.1).0
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    crate::model! {
        /// A model with every kind of field.
        pub struct Example {
            /// Cannot change in place.
            r#type: String [replace],
            name: Option<String> [replace, create_only],
            password: Option<String> [sensitive],
            size: u64,
            tags: Vec<String>,
        }
    }

    crate::model! {
        /// A model that takes every other key.
        pub struct Open {
            family: String [replace],
            ..
            rest: Attrs,
        }
    }

    fn attrs(v: serde_json::Value) -> Attrs {
        v.as_object().unwrap().clone().into_iter().collect()
    }

    #[test]
    fn flags_are_read_from_the_fields_in_declaration_order() {
        assert_eq!(Example::REPLACE, ["type", "name"]);
        assert_eq!(Example::CREATE_ONLY, ["name"]);
        assert_eq!(Example::SENSITIVE, ["password"]);
        assert_eq!(Example::r#type, "type", "a raw identifier's key has no r#");
        assert_eq!(Example::FIELDS.len(), 5);
        assert_eq!(Open::REPLACE, ["family"]);
    }

    #[test]
    fn a_model_reads_its_inputs_and_refuses_a_key_it_does_not_name() {
        let e = Example::from_attrs(
            "db",
            &attrs(json!({"type": "source", "size": 5, "tags": ["a"], "password": "x"})),
        )
        .unwrap();
        assert_eq!(e.r#type, "source");
        assert_eq!(e.name, None, "an absent optional field is None");
        assert_eq!(e.password.as_deref(), Some("x"));
        let err = Example::from_attrs(
            "db",
            &attrs(json!({"type": "source", "size": 5, "tags": [], "sise": 6})),
        )
        .unwrap_err();
        assert!(err.message.starts_with("db: "), "{}", err.message);
        assert!(err.message.contains("sise"), "{}", err.message);
        let err =
            Example::from_attrs("db", &attrs(json!({"type": "source", "tags": []}))).unwrap_err();
        assert!(
            err.message.contains("missing field `size`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn attributes_leave_out_what_is_absent_and_every_secret() {
        let e = Example {
            r#type: "target".into(),
            name: None,
            password: Some("hunter2".into()),
            size: 7,
            tags: vec![],
        };
        assert_eq!(
            e.to_attrs(),
            attrs(json!({"type": "target", "size": 7, "tags": []}))
        );
    }

    #[test]
    fn an_open_model_keeps_the_keys_it_does_not_name() {
        let a = attrs(json!({"family": "postgres15", "parameter.work_mem": {"value": "64"}}));
        let o = Open::from_attrs("pg", &a).unwrap();
        assert_eq!(o.family, "postgres15");
        assert_eq!(o.rest.len(), 1);
        assert_eq!(o.to_attrs(), a, "written back as read");
    }
}
