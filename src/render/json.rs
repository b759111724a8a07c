//! The preview as JSON for machines, and the saved plan that `apply --plan` checks against.
//! The format is documented in the README; fields are only ever added.

use serde::{Deserialize, Serialize};

use crate::planner::ChangeSet;

/// The JSON format's version.
pub const JSON_VERSION: u32 = 1;

/// The document: a version, then the change set.
#[derive(Debug, Serialize, Deserialize)]
pub struct PreviewDoc {
    pub format_version: u32,
    #[serde(flatten)]
    pub changes: ChangeSet,
}

/// Pretty JSON of a change set.
pub fn preview(cs: &ChangeSet) -> String {
    let doc = PreviewDoc {
        format_version: JSON_VERSION,
        changes: cs.clone(),
    };
    serde_json::to_string_pretty(&doc).expect("change sets serialise") + "\n"
}

/// Reads a saved plan.
pub fn read(text: &str) -> Result<ChangeSet, String> {
    let doc: PreviewDoc =
        serde_json::from_str(text).map_err(|e| {
            let looks_like = if text.trim_start().starts_with('{') {
                format!("it is JSON but not a saved plan ({e})")
            } else if text.starts_with("Plan `") || text.starts_with("### cutover: plan") {
                "it is a preview for people (text or markdown), not a saved plan".to_string()
            } else {
                format!("it is not a saved plan ({e})")
            };
            format!("{looks_like}. Save one with `plan preview STACK --format json --out FILE` and pass that file")
        })?;
    if doc.format_version != JSON_VERSION {
        return Err(format!(
            "saved plan format {} is not {JSON_VERSION}; save it again with this build",
            doc.format_version
        ));
    }
    Ok(doc.changes)
}
