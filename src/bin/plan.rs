//! The `plan` binary: the library's CLI with this repository's plans compiled in as modules, so
//! editing a plan recompiles only this small crate.

#[path = "../../plans/mod.rs"]
mod plans;

fn main() -> std::process::ExitCode {
    cutover::cli::main(&plans::all())
}
