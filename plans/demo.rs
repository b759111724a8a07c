//! The `demo` plan: a migration's shape rehearsed on local files. A target directory and its
//! configuration are provisioned, replica files created, a load recorded once, then a gate holds
//! the cutover until `--approve cutover`; after it the active pointer flips and the temporary
//! scratch file can be retired with `destroy --temporary`.

use cutover::prelude::*;

pub fn build(stack: &Stack) -> Result<Plan, PlanError> {
    let p = Plan::new(stack);
    let out: String = stack.get("out_dir")?;
    let greeting: String = stack.get("greeting")?;
    let replicas: u32 = stack.get("replicas")?;
    let settle_ms: u64 = stack.get_or("settle_ms", 300)?;

    let dir = p.add("target-dir", Directory::new(&out));
    let config = p.add(
        "target-config",
        File::new(
            dir.path().join("/config.txt"),
            format!("greeting = {greeting}\nreplicas = {replicas}\n"),
        )
        .mode(0o640),
    );
    let scratch = p
        .add(
            "scratch",
            File::new(dir.path().join("/scratch.txt"), "temporary working copy\n"),
        )
        .temporary();
    let mut settle = p.add("settle", Sleep::ms(settle_ms)).after(&config);
    for i in 1..=replicas {
        let r = p.add(
            &format!("replica-{i}"),
            File::new(
                dir.path().join(format!("/replica-{i}.txt")),
                config.checksum().join(format!(" replica {i}\n")),
            ),
        );
        settle = settle.after(&r);
    }
    let load = p
        .add(
            "record-load",
            Append::line(dir.path().join("/journal.txt"), "load finished"),
        )
        .after(&settle)
        .after(&scratch)
        .trigger("config", config.checksum());
    let gate = p.gate("cutover").after(&load);
    let flip = p
        .add(
            "active-pointer",
            File::new(dir.path().join("/active.txt"), "target\n"),
        )
        .after(&gate);
    p.add(
        "record-cutover",
        Append::line(dir.path().join("/journal.txt"), "cutover done"),
    )
    .after(&flip);
    Ok(p)
}
