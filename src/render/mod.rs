//! Everything formatted for people or machines: previews as text, markdown and JSON, the graph as
//! Mermaid or DOT, live progress, and the summary of an apply.
//!
//! Rendering must never change what it renders, and never show a secret's value (values reach it
//! already displayed as `(secret env:NAME)`).

pub mod graph;
pub mod json;
pub mod markdown;
pub mod progress;
pub mod text;
