//! Everything formatted for people or machines: previews as text, markdown and JSON, the graph as
//! Mermaid or DOT, live progress, the summary of an apply, and the run report.
//!
//! Rendering must never change what it renders, and never show a secret's value (values reach it
//! already displayed as `(secret env:NAME)`).

pub mod graph;
pub mod json;
pub mod markdown;
pub mod progress;
pub mod report;
pub mod text;
