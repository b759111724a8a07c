//! The `plan` binary: the library's CLI with this repository's plans compiled in as modules, so
//! editing a plan recompiles only this small crate, and the library's providers handed to it the
//! same way.

#[path = "../../plans/mod.rs"]
mod plans;

fn main() -> std::process::ExitCode {
    let plans = plans::all();
    let providers = cutover::provider::standard();
    cutover::cli::main(&cutover::engine::Catalog {
        plans: &plans,
        providers: &providers,
    })
}
