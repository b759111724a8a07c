//! The planner's tests: what each kind of change plans to, holds, retirement, the order of deletes.

use super::*;
use crate::dsl::{NodeKind, Plan};
use crate::graph::Graph;
use crate::provider::builtin::{Null, Sleep};
use crate::provider::local_file::{Directory, File};
use crate::provider::registry_for;
use crate::state::{ResourceRecord, StepRecord};
use serde_json::json;

fn graph(p: Plan) -> Graph {
    let r = registry_for("local");
    Graph::build(p.finish(), &|t, k| r.resolve(t, k)).unwrap()
}

fn file_record(path: &str, content: &str, deps: &[&str]) -> NodeRecord {
    NodeRecord::Resource(ResourceRecord {
        type_name: "local_file.file".into(),
        id: path.into(),
        inputs: Attrs::from([
            ("path".into(), json!(path)),
            ("content".into(), json!(content)),
            ("mode".into(), json!("0644")),
        ]),
        outputs: Attrs::from([
            ("path".into(), json!(path)),
            ("checksum".into(), json!("00000000")),
        ]),
        deps: deps.iter().map(|s| s.to_string()).collect(),
        temporary: false,
        protect: false,
        retain_on_delete: false,
        retired: false,
        drift: vec![],
        updated_at: "t0".into(),
        location: None,
    })
}

fn dir_record(path: &str) -> NodeRecord {
    NodeRecord::Resource(ResourceRecord {
        type_name: "local_file.directory".into(),
        id: path.into(),
        inputs: Attrs::from([("path".into(), json!(path)), ("mode".into(), json!("0755"))]),
        outputs: Attrs::from([("path".into(), json!(path)), ("id".into(), json!(path))]),
        deps: vec![],
        temporary: false,
        protect: false,
        retain_on_delete: false,
        retired: false,
        drift: vec![],
        updated_at: "t0".into(),
        location: None,
    })
}

fn state(nodes: Vec<(&str, NodeRecord)>) -> State {
    let mut s = State::new("p", "s");
    for (n, r) in nodes {
        s.nodes.insert(n.into(), r);
    }
    s
}

fn action<'a>(cs: &'a ChangeSet, node: &str) -> &'a Action {
    cs.actions.iter().find(|a| a.node == node).unwrap()
}

fn demo_plan(content: &str, path: &str) -> Plan {
    let p = Plan::named("p", "s", "local");
    let d = p.add("dir", Directory::new("out"));
    p.add("f", File::new(d.path().join(path), content));
    p
}

#[test]
fn create_update_replace_and_noop() {
    let r = registry_for("local");
    let g = graph(demo_plan("hello", "/f.txt"));
    let cs = plan(&g, &state(vec![]), &r, &Options::default()).unwrap();
    assert_eq!(action(&cs, "dir").action, ActionKind::Create);
    assert_eq!(action(&cs, "f").action, ActionKind::Create);
    // The path copies the directory's input, so it is known at plan time.
    let path = action(&cs, "f")
        .changes
        .iter()
        .find(|c| c.attribute == "path")
        .unwrap();
    assert_eq!(path.after_text().as_deref(), Some("\"out/f.txt\""));
    assert_eq!(
        (cs.summary.add, cs.summary.change, cs.summary.destroy),
        (2, 0, 0)
    );

    let st = state(vec![
        ("dir", dir_record("out")),
        ("f", file_record("out/f.txt", "hello", &["dir"])),
    ]);
    let cs = plan(&g, &st, &r, &Options::default()).unwrap();
    assert!(!cs.has_changes(), "{cs:#?}");

    let g2 = graph(demo_plan("bye", "/f.txt"));
    let cs = plan(&g2, &st, &r, &Options::default()).unwrap();
    let a = action(&cs, "f");
    assert_eq!(a.action, ActionKind::Update);
    assert_eq!(a.changes.len(), 1);
    assert_eq!(a.changes[0].before_text().as_deref(), Some("\"hello\""));
    assert_eq!(a.changes[0].after_text().as_deref(), Some("\"bye\""));

    let g3 = graph(demo_plan("hello", "/g.txt"));
    let cs = plan(&g3, &st, &r, &Options::default()).unwrap();
    let a = action(&cs, "f");
    assert_eq!(a.action, ActionKind::Replace);
    assert!(a
        .changes
        .iter()
        .any(|c| c.attribute == "path" && c.forces_replacement));
    assert_eq!(a.reason, "`path` cannot change in place");
    assert_eq!(
        (cs.summary.add, cs.summary.destroy, cs.summary.replace),
        (1, 1, 1)
    );

    let opts = Options {
        replace: ["dir".to_string()].into(),
        ..Default::default()
    };
    let cs = plan(&g, &st, &r, &opts).unwrap();
    assert_eq!(action(&cs, "dir").action, ActionKind::Replace);
    // The replacement keeps the same path (known at plan time), so its dependent is unchanged.
    assert_eq!(action(&cs, "f").action, ActionKind::NoOp);
    // A dependent on an output that is not a copy of an input becomes unknown.
    let p = Plan::named("p", "s", "local");
    let f = p.add("f", File::new("out/f.txt", "x"));
    p.add("g", File::new("out/g.txt", f.checksum()));
    let g4 = graph(p);
    let mut g_rec = file_record("out/g.txt", "00000000", &["f"]);
    if let NodeRecord::Resource(x) = &mut g_rec {
        x.inputs.insert("content".into(), json!("00000000"));
    }
    let st4 = state(vec![
        ("f", file_record("out/f.txt", "x", &[])),
        ("g", g_rec),
    ]);
    assert!(!plan(&g4, &st4, &r, &Options::default())
        .unwrap()
        .has_changes());
    let opts = Options {
        replace: ["f".to_string()].into(),
        ..Default::default()
    };
    let cs = plan(&g4, &st4, &r, &opts).unwrap();
    let a = action(&cs, "g");
    assert_eq!(a.action, ActionKind::Update);
    assert_eq!(
        a.changes[0].after_text().as_deref(),
        Some("(known after apply)")
    );
    assert!(a.changes[0].unknown && a.changes[0].after.is_none());
}

#[test]
fn vanished_nodes_are_deleted_dependents_first() {
    let r = registry_for("local");
    let g = graph(Plan::named("p", "s", "local"));
    let st = state(vec![
        ("dir", dir_record("out")),
        ("f", file_record("out/f.txt", "x", &["dir"])),
        ("g", file_record("out/g.txt", "x", &["f"])),
    ]);
    let cs = plan(&g, &st, &r, &Options::default()).unwrap();
    let order: Vec<&str> = cs.actions.iter().map(|a| a.node.as_str()).collect();
    assert_eq!(order, vec!["g", "f", "dir"]);
    assert!(cs.actions.iter().all(|a| a.action == ActionKind::Delete));
    assert_eq!(cs.summary.destroy, 3);
}

#[test]
fn protected_nodes_refuse_destroy_and_replace() {
    let r = registry_for("local");
    let p = Plan::named("p", "s", "local");
    p.add("dir", Directory::new("elsewhere")).protect();
    let g = graph(p);
    let st = state(vec![("dir", dir_record("out"))]);
    let err = plan(&g, &st, &r, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node `dir` is protected and would be replaced"),
        "{err}"
    );
    let opts = Options {
        mode: Mode::DestroyAll,
        ..Default::default()
    };
    let err = plan(&g, &st, &r, &opts).unwrap_err().to_string();
    assert!(
        err.contains("node `dir` is protected and would be destroyed (destroy)"),
        "{err}"
    );
}

#[test]
fn steps_run_once_and_again_when_a_trigger_changes() {
    let r = registry_for("local");
    let mk = |trigger: &str| {
        let p = Plan::named("p", "s", "local");
        p.add("wait", Sleep::ms(1))
            .trigger("version", json!(trigger));
        graph(p)
    };
    let cs = plan(&mk("1"), &state(vec![]), &r, &Options::default()).unwrap();
    assert_eq!(action(&cs, "wait").action, ActionKind::Run);
    assert_eq!(action(&cs, "wait").reason, "not run yet");
    let done = NodeRecord::Step(StepRecord {
        type_name: "wait.sleep".into(),
        done_at: "t1".into(),
        triggers: Attrs::from([("version".into(), json!("1"))]),
        outputs: Attrs::new(),
        deps: vec![],
    });
    let st = state(vec![("wait", done)]);
    let cs = plan(&mk("1"), &st, &r, &Options::default()).unwrap();
    assert_eq!(action(&cs, "wait").action, ActionKind::Done);
    assert_eq!(cs.summary.steps_done, 1);
    let cs = plan(&mk("2"), &st, &r, &Options::default()).unwrap();
    assert_eq!(action(&cs, "wait").action, ActionKind::Run);
    assert_eq!(action(&cs, "wait").reason, "trigger `version` changed");
    // A converging step whose probe found work runs again, saying why; its dependents that
    // take its outputs as triggers run again too.
    let p = Plan::named("p", "s", "local");
    let wait = p.add("wait", Sleep::ms(1)).trigger("version", json!("1"));
    p.add("after", Sleep::ms(1))
        .trigger("before", wait.output::<String>("x"));
    let g = graph(p);
    let after = NodeRecord::Step(StepRecord {
        type_name: "wait.sleep".into(),
        done_at: "t2".into(),
        triggers: Attrs::from([("before".into(), json!("y"))]),
        outputs: Attrs::new(),
        deps: vec![],
    });
    let mut st = st;
    if let NodeRecord::Step(w) = st.nodes.get_mut("wait").unwrap() {
        w.outputs.insert("x".into(), json!("y"));
    }
    st.nodes.insert("after".into(), after);
    assert!(!plan(&g, &st, &r, &Options::default())
        .unwrap()
        .has_changes());
    let opts = Options {
        rerun: [("wait".to_string(), "its probe found work again".to_string())].into(),
        ..Default::default()
    };
    let cs = plan(&g, &st, &r, &opts).unwrap();
    assert_eq!(action(&cs, "wait").action, ActionKind::Run);
    assert_eq!(
        action(&cs, "wait").reason,
        "done at t1; its probe found work again"
    );
    assert_eq!(action(&cs, "after").action, ActionKind::Run);
}

#[test]
fn a_node_behind_two_gates_is_held_by_the_one_that_opens_last() {
    let r = registry_for("local");
    let p = Plan::named("p", "s", "local");
    // Declared with the later gate first: the order of declaration must not matter.
    let finish = p.gate("finish");
    let cutover = p.gate("cutover");
    let switch = p.add("switch", Null::new()).after(&cutover);
    let finish = finish.after(&switch);
    p.add("drop", Null::new()).after(&finish);
    let g = graph(p);
    let cs = plan(&g, &state(vec![]), &r, &Options::default()).unwrap();
    assert_eq!(
        action(&cs, "switch")
            .held_by
            .as_ref()
            .map(|h| h.to_string())
            .as_deref(),
        Some("gate `cutover`")
    );
    assert_eq!(
        action(&cs, "drop")
            .held_by
            .as_ref()
            .map(|h| h.to_string())
            .as_deref(),
        Some("gate `finish`")
    );
    let opts = Options {
        until: Some("switch".into()),
        ..Default::default()
    };
    let cs = plan(&g, &state(vec![]), &r, &opts).unwrap();
    assert_eq!(
        action(&cs, "drop")
            .held_by
            .as_ref()
            .map(|h| h.to_string())
            .as_deref(),
        Some("gate `finish`"),
        "a gate's hold is named before --until's"
    );
}

#[test]
fn gates_hold_everything_downstream_until_approved() {
    let r = registry_for("local");
    let p = Plan::named("p", "s", "local");
    let a = p.add("a", Null::new());
    let gate = p.gate("cutover").after(&a);
    let b = p.add("b", Null::new()).after(&gate);
    p.add("c", Null::new().input("x", b.id()));
    p.add("d", Null::new());
    let g = graph(p);
    let cs = plan(&g, &state(vec![]), &r, &Options::default()).unwrap();
    for n in ["cutover", "b", "c"] {
        assert_eq!(
            action(&cs, n)
                .held_by
                .as_ref()
                .map(|h| h.to_string())
                .as_deref(),
            Some("gate `cutover`"),
            "{n}"
        );
    }
    assert!(action(&cs, "a").held_by.is_none() && action(&cs, "d").held_by.is_none());
    assert_eq!(cs.summary.held, 3);
    let opts = Options {
        approve: ["cutover".to_string()].into(),
        ..Default::default()
    };
    let cs = plan(&g, &state(vec![]), &r, &opts).unwrap();
    assert!(cs.actions.iter().all(|a| a.held_by.is_none()));
    let opts = Options {
        until: Some("a".into()),
        approve: ["cutover".to_string()].into(),
        ..Default::default()
    };
    let cs = plan(&g, &state(vec![]), &r, &opts).unwrap();
    assert_eq!(
        action(&cs, "a")
            .held_by
            .as_ref()
            .map(|h| h.to_string())
            .as_deref(),
        Some("--until a")
    );
    assert!(action(&cs, "d").held_by.is_none());
    let opts = Options {
        until: Some("nope".into()),
        ..Default::default()
    };
    let err = plan(&g, &state(vec![]), &r, &opts).unwrap_err().to_string();
    assert!(err.contains("`nope` is not a node of this plan"), "{err}");
}

#[test]
fn moved_declarations_keep_the_object() {
    let r = registry_for("local");
    let p = Plan::named("p", "s", "local");
    p.add("target-dir", Directory::new("out"));
    p.moved("dir", "target-dir");
    let g = graph(p);
    let st = state(vec![("dir", dir_record("out"))]);
    let cs = plan(&g, &st, &r, &Options::default()).unwrap();
    assert_eq!(
        cs.moved,
        vec![("dir".to_string(), "target-dir".to_string())]
    );
    assert_eq!(action(&cs, "target-dir").action, ActionKind::NoOp);
    assert!(cs.actions.iter().all(|a| a.action != ActionKind::Delete));
}

#[test]
fn ignore_changes_and_retired_temporaries() {
    let r = registry_for("local");
    let p = Plan::named("p", "s", "local");
    p.add("f", File::new("out/f.txt", "new content"))
        .ignore_changes(&["content"])
        .temporary();
    let g = graph(p);
    let mut rec = file_record("out/f.txt", "old", &[]);
    if let NodeRecord::Resource(x) = &mut rec {
        x.temporary = true;
    }
    let st = state(vec![("f", rec.clone())]);
    let cs = plan(&g, &st, &r, &Options::default()).unwrap();
    assert_eq!(action(&cs, "f").action, ActionKind::NoOp);
    let opts = Options {
        mode: Mode::DestroyTemporary,
        ..Default::default()
    };
    let cs = plan(&g, &st, &r, &opts).unwrap();
    assert_eq!(action(&cs, "f").action, ActionKind::Delete);
    assert!(action(&cs, "f").retire);
    if let NodeRecord::Resource(x) = &mut rec {
        x.retired = true;
    }
    let cs = plan(&g, &state(vec![("f", rec)]), &r, &Options::default()).unwrap();
    assert_eq!(action(&cs, "f").action, ActionKind::Retired);
    assert!(!cs.has_changes());
}

#[test]
fn invalid_inputs_fail_offline_when_the_graph_is_built_with_the_node_named() {
    let r = registry_for("local");
    let p = Plan::named("p", "s", "local");
    p.add_raw(
        "f",
        NodeKind::Resource,
        "local_file.file",
        Attrs::from([("path".into(), json!("x")), ("mode".into(), json!("rwx"))]),
    );
    let err = Graph::build(p.finish(), &|t, k| r.resolve(t, k))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node `f` (local_file.file): input `mode` \"rwx\" is not an octal file mode"),
        "{err}"
    );
}

/// A hold is typed inside the library and reads in the JSON preview as it always did.
#[test]
fn a_hold_is_written_as_its_words_and_read_back() {
    for (h, text) in [
        (Hold::Gate("cutover".into()), "\"gate `cutover`\""),
        (Hold::Until("validate".into()), "\"--until validate\""),
    ] {
        assert_eq!(serde_json::to_string(&h).unwrap(), text);
        assert_eq!(serde_json::from_str::<Hold>(text).unwrap(), h);
    }
    let e = serde_json::from_str::<Hold>("\"approval\"").unwrap_err();
    assert!(
        e.to_string()
            .contains("neither gate `NAME` nor --until NODE"),
        "{e}"
    );
}
